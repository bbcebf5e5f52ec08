//! Resumable evaluation: the work of an `eval` run cut into chunks, each kept on disk as soon
//! as it is done, so a run of 10,000 samples on a small CPU can be stopped (Ctrl-C, a session's
//! end, a crash) and resumed by running the same command again, losing at most the chunk in
//! progress.
//!
//! A chunk is a safetensors file named by its key: a SHA-256 of everything that decides its
//! contents (the model's weight bytes, its config, the sampler, the guidance scale, the seed,
//! which samples), so a chunk made with other settings is never mistaken for this run's, and
//! changing a setting simply starts new chunks. It holds the samples as 8-bit pixels (what is
//! scored, as a saved PNG would hold them) and, once computed, their Inception features.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

use crate::error::{EvalError, Result};

/// The SHA-256 of `parts` (hex), each part length-prefixed so that no two lists collide.
pub fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What one chunk holds: `n` images as 8-bit pixels (`[n, c, h, w]`) and, when computed, their
/// Inception pool3 features (`[n, 2048]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The images, 8-bit, channel-major (empty for chunks of real data, whose pixels the
    /// dataset holds).
    pub pixels: Vec<u8>,
    /// Their Inception features, or empty when not computed.
    pub features: Vec<f32>,
}

/// A directory of finished chunks.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    dir: PathBuf,
}

impl ChunkStore {
    /// The chunks under `dir` (created when the first chunk is saved).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.safetensors"))
    }

    /// The chunk saved under `key`, if there is a readable one. A damaged file (a disk that
    /// filled up, an edit by hand) counts as absent: the chunk is made again.
    pub fn load(&self, key: &str) -> Option<Chunk> {
        let bytes = std::fs::read(self.path(key)).ok()?;
        let st = SafeTensors::deserialize(&bytes).ok()?;
        let pixels = match st.tensor("pixels") {
            Ok(t) if t.dtype() == Dtype::U8 => t.data().to_vec(),
            Ok(_) => return None,
            Err(_) => Vec::new(),
        };
        let features = match st.tensor("features") {
            Ok(t) if t.dtype() == Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
            Ok(_) => return None,
            Err(_) => Vec::new(),
        };
        Some(Chunk { pixels, features })
    }

    /// Saves `chunk` under `key`, atomically (a stop mid-write leaves the old file or none).
    pub fn save(&self, key: &str, chunk: &Chunk) -> Result<()> {
        let path = self.path(key);
        let err = |e: safetensors::SafeTensorError| EvalError::file(&path, e.to_string());
        let features: Vec<u8> = chunk
            .features
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut views = Vec::new();
        if !chunk.pixels.is_empty() {
            let view = TensorView::new(Dtype::U8, vec![chunk.pixels.len()], &chunk.pixels);
            views.push(("pixels", view.map_err(err)?));
        }
        if !features.is_empty() {
            let view = TensorView::new(Dtype::F32, vec![chunk.features.len()], &features);
            views.push(("features", view.map_err(err)?));
        }
        let bytes = safetensors::serialize(views, None::<HashMap<String, String>>).map_err(err)?;
        std::fs::create_dir_all(&self.dir).map_err(|e| EvalError::io(&self.dir, e))?;
        artifacts::write_atomic(&path, &bytes)?;
        Ok(())
    }

    /// Deletes the chunk saved under `key` (once what it fed is saved elsewhere).
    pub fn remove(&self, key: &str) {
        let _ = std::fs::remove_file(self.path(key));
    }
}

/// Does `n` items in chunks of `size` (the last may be shorter), keeping each in `store`:
/// chunk `start..start + len` is taken from its file (named `key(start, len)`) when `complete`
/// says that holds all this run needs; otherwise `make(start, len, kept)` makes it (or completes
/// `kept`, what the file held), it is saved, `progress` hears the items done so far, and
/// `stop` may end the run there. `progress` first hears what earlier runs finished. Returns the
/// chunks in order. Without a store every chunk is made and nothing is kept.
#[allow(clippy::too_many_arguments)]
pub fn chunked(
    store: Option<&ChunkStore>,
    n: usize,
    size: usize,
    key: impl Fn(usize, usize) -> String,
    complete: impl Fn(&Chunk, usize) -> bool,
    mut make: impl FnMut(usize, usize, Option<Chunk>) -> Result<Chunk>,
    mut progress: impl FnMut(usize),
    mut stop: impl FnMut(usize) -> Result<()>,
) -> Result<Vec<Chunk>> {
    let spans: Vec<(usize, usize)> = (0..n)
        .step_by(size.max(1))
        .map(|a| (a, size.max(1).min(n - a)))
        .collect();
    let mut kept: Vec<Option<Chunk>> = spans
        .iter()
        .map(|&(a, len)| store.and_then(|s| s.load(&key(a, len))))
        .collect();
    let is_done = |c: &Option<Chunk>, len: usize| c.as_ref().is_some_and(|c| complete(c, len));
    let mut done: usize = spans
        .iter()
        .zip(&kept)
        .filter(|((_, len), c)| is_done(c, *len))
        .map(|((_, len), _)| len)
        .sum();
    progress(done);
    for (&(a, len), slot) in spans.iter().zip(kept.iter_mut()) {
        if is_done(slot, len) {
            continue;
        }
        let chunk = make(a, len, slot.take())?;
        if let Some(s) = store {
            s.save(&key(a, len), &chunk)?;
        }
        *slot = Some(chunk);
        done += len;
        progress(done);
        stop(done)?;
    }
    Ok(kept.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_damaged_ones_are_absent() {
        let dir = std::env::temp_dir().join(format!("eval-chunks-{}", std::process::id()));
        let store = ChunkStore::new(&dir);
        let k = key(&["model", "w=3", "0"]);
        assert_ne!(k, key(&["model", "w=3", "1"]));
        assert_ne!(key(&["ab", "c"]), key(&["a", "bc"]));
        assert!(store.load(&k).is_none());
        let chunk = Chunk {
            pixels: vec![0, 7, 255],
            features: vec![1.5, -2.0],
        };
        store.save(&k, &chunk).unwrap();
        assert_eq!(store.load(&k), Some(chunk));
        let real = Chunk {
            pixels: vec![],
            features: vec![0.25],
        };
        store.save(&k, &real).unwrap();
        assert_eq!(store.load(&k), Some(real));
        std::fs::write(store.path(&k), b"not a chunk").unwrap();
        assert!(store.load(&k).is_none());
        store.remove(&k);
        assert!(!store.path(&k).exists());
        std::fs::remove_dir_all(dir).ok();
    }
}
