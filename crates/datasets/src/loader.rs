//! Deterministic batches on a background thread.
//!
//! The batch for training step `s` depends only on the dataset, the seed and `s`: epoch
//! `e = s / (n / batch_size)` uses a Fisher–Yates permutation seeded by `(seed, e)`, and the
//! optional horizontal flips of step `s` are seeded by `(seed, s)`. A run resumed at step `s`
//! therefore sees exactly the batches the uninterrupted run would have seen. A worker thread
//! prepares the next batches (decode to `f32` in [-1, 1], flip) while the model trains.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use portable_rng::NoiseRng;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};

/// Batching settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Images per batch (the last partial batch of each epoch is dropped).
    pub batch_size: usize,
    /// Seed of the shuffling and flipping.
    pub seed: u64,
    /// Flip each image left-right with probability ½.
    pub horizontal_flip: bool,
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
}

/// One batch: images normalised to [-1, 1], channels-first, and labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The training step this batch belongs to.
    pub step: u64,
    /// `batch_size · channels · height · width` values.
    pub images: Vec<f32>,
    /// One label per image.
    pub labels: Vec<usize>,
    /// `[batch_size, channels, height, width]`.
    pub shape: [usize; 4],
}

/// SplitMix64 finaliser: decorrelates `(seed, stream, index)` into one generator seed.
pub fn mix_seed(seed: u64, stream: u64, index: u64) -> u64 {
    let mut z = seed
        ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const STREAM_EPOCH: u64 = 1;
const STREAM_FLIP: u64 = 2;

/// The permutation of `0..n` used in `epoch`.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = NoiseRng::new(mix_seed(seed, STREAM_EPOCH, epoch));
    let mut perm: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    perm
}

fn batches_per_epoch(dataset: &Dataset, config: &LoaderConfig) -> Result<usize> {
    if config.batch_size == 0 {
        return Err(DataError::Invalid("batch size must be at least 1".into()));
    }
    let bpe = dataset.len() / config.batch_size;
    if bpe == 0 {
        return Err(DataError::Invalid(format!(
            "dataset {} has {} images, fewer than one batch of {}",
            dataset.name,
            dataset.len(),
            config.batch_size
        )));
    }
    Ok(bpe)
}

/// Builds the batch of `step` given that epoch's permutation.
fn assemble(
    dataset: &Dataset,
    config: &LoaderConfig,
    step: u64,
    perm: &[usize],
    bpe: usize,
) -> Batch {
    let b = config.batch_size;
    let k = (step % bpe as u64) as usize;
    let [c, h, w] = dataset.image_shape();
    let mut flips = NoiseRng::new(mix_seed(config.seed, STREAM_FLIP, step));
    let mut images = Vec::with_capacity(b * c * h * w);
    let mut labels = Vec::with_capacity(b);
    for &i in &perm[k * b..(k + 1) * b] {
        let img = dataset.image_f32(i);
        if config.horizontal_flip && flips.uniform() < 0.5 {
            for row in img.chunks_exact(w) {
                images.extend(row.iter().rev());
            }
        } else {
            images.extend(img);
        }
        labels.push(dataset.labels[i]);
    }
    Batch {
        step,
        images,
        labels,
        shape: [b, c, h, w],
    }
}

/// The batch of `step`, computed directly (what the loader thread produces).
pub fn batch_at(dataset: &Dataset, config: &LoaderConfig, step: u64) -> Result<Batch> {
    let bpe = batches_per_epoch(dataset, config)?;
    let perm = epoch_permutation(dataset.len(), config.seed, step / bpe as u64);
    Ok(assemble(dataset, config, step, &perm, bpe))
}

/// A background producer of consecutive batches.
pub struct BatchLoader {
    rx: Receiver<Batch>,
    worker: Option<JoinHandle<()>>,
    /// Batches per epoch.
    pub batches_per_epoch: usize,
}

impl BatchLoader {
    /// Starts producing the batches of steps `start_step, start_step + 1, …`.
    pub fn new(dataset: Arc<Dataset>, config: LoaderConfig, start_step: u64) -> Result<Self> {
        let bpe = batches_per_epoch(&dataset, &config)?;
        let (tx, rx) = sync_channel(config.prefetch.max(1));
        let worker = std::thread::Builder::new()
            .name("batch-loader".into())
            .spawn(move || {
                let mut epoch = u64::MAX;
                let mut perm = Vec::new();
                for step in start_step.. {
                    let e = step / bpe as u64;
                    if e != epoch {
                        perm = epoch_permutation(dataset.len(), config.seed, e);
                        epoch = e;
                    }
                    if tx
                        .send(assemble(&dataset, &config, step, &perm, bpe))
                        .is_err()
                    {
                        return; // the consumer is gone
                    }
                }
            })
            .map_err(|e| DataError::Invalid(format!("cannot start the loader thread: {e}")))?;
        Ok(Self {
            rx,
            worker: Some(worker),
            batches_per_epoch: bpe,
        })
    }

    /// The next batch (blocks until the worker has it ready).
    pub fn next_batch(&mut self) -> Batch {
        self.rx
            .recv()
            .expect("the loader thread never stops while the loader lives")
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        // Closing the receiver makes the worker's next send fail, so it exits.
        let (_, dead) = sync_channel(1);
        drop(std::mem::replace(&mut self.rx, dead));
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        let pixels: Vec<u8> = (0..n * 4).map(|i| (i * 7 % 256) as u8).collect();
        let labels = (0..n).map(|i| i % 3).collect();
        Dataset::new(
            "toy",
            pixels,
            labels,
            [1, 2, 2],
            vec!["a".into(), "b".into(), "c".into()],
        )
        .unwrap()
    }

    fn cfg(flip: bool) -> LoaderConfig {
        LoaderConfig {
            batch_size: 4,
            seed: 9,
            horizontal_flip: flip,
            prefetch: 2,
        }
    }

    #[test]
    fn loader_matches_direct_batches_and_resumes_exactly() {
        let ds = Arc::new(toy(10)); // 2 batches per epoch, 2 images dropped each epoch
        let mut full = BatchLoader::new(ds.clone(), cfg(true), 0).unwrap();
        let first: Vec<Batch> = (0..7).map(|_| full.next_batch()).collect();
        for (s, b) in first.iter().enumerate() {
            assert_eq!(b, &batch_at(&ds, &cfg(true), s as u64).unwrap());
            assert!(b.images.iter().all(|v| (-1.0..=1.0).contains(v)));
        }
        let mut resumed = BatchLoader::new(ds.clone(), cfg(true), 3).unwrap();
        for b in &first[3..] {
            assert_eq!(&resumed.next_batch(), b);
        }
        // Each epoch is a permutation: no image twice within an epoch.
        let perm = epoch_permutation(10, 9, 0);
        let mut sorted = perm.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(perm, epoch_permutation(10, 9, 1));
    }

    #[test]
    fn flips_mirror_rows() {
        let ds = toy(8);
        let plain = batch_at(&ds, &cfg(false), 0).unwrap();
        let flipped = batch_at(&ds, &cfg(true), 0).unwrap();
        let mut n_flipped = 0;
        for (p, f) in plain.images.chunks(4).zip(flipped.images.chunks(4)) {
            if p != f {
                assert_eq!([f[0], f[1], f[2], f[3]], [p[1], p[0], p[3], p[2]]);
                n_flipped += 1;
            }
        }
        assert!(n_flipped > 0);
    }

    #[test]
    fn too_small_dataset_is_an_error() {
        let ds = Arc::new(toy(3));
        let e = BatchLoader::new(ds, cfg(false), 0)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("fewer than one batch of 4"), "{e}");
    }
}
