//! CIFAR-10 binary batches (`data_batch_1.bin` … `data_batch_5.bin`, `test_batch.bin`).
//!
//! Each record is 1 label byte followed by 3 × 32 × 32 pixel bytes, channels-first (R, G, B
//! planes): exactly what [`Dataset`] stores.

use std::path::Path;

use crate::dataset::Dataset;
use crate::dataset::Split;
use crate::error::{DataError, Result};

const RECORD: usize = 1 + 3 * 32 * 32;

/// The ten CIFAR-10 classes.
pub fn class_names() -> Vec<String> {
    [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Parses the records of one batch file's bytes, appending to `pixels` and `labels`.
pub fn parse_batch(
    bytes: &[u8],
    path: &Path,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<usize>,
) -> Result<()> {
    if bytes.is_empty() || bytes.len() % RECORD != 0 {
        return Err(DataError::format(
            path,
            format!(
                "{} bytes is not a whole number of CIFAR-10 records ({RECORD} bytes each): truncated or not a CIFAR-10 binary batch",
                bytes.len()
            ),
        ));
    }
    for rec in bytes.chunks_exact(RECORD) {
        if rec[0] >= 10 {
            return Err(DataError::format(
                path,
                format!("label {} out of range 0..=9", rec[0]),
            ));
        }
        labels.push(rec[0] as usize);
        pixels.extend_from_slice(&rec[1..]);
    }
    Ok(())
}

/// Loads CIFAR-10 from the directory holding the binary batches
/// (`cifar-10-batches-bin/`): the five `data_batch_*.bin` for train, `test_batch.bin` for test.
pub fn load(dir: &Path, split: Split) -> Result<Dataset> {
    let files: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    };
    let (mut pixels, mut labels) = (Vec::new(), Vec::new());
    for f in files {
        let path = dir.join(f);
        let bytes = std::fs::read(&path).map_err(|e| DataError::io(&path, e))?;
        parse_batch(&bytes, &path, &mut pixels, &mut labels)?;
    }
    Dataset::new(
        format!("cifar10/{}", split.name()),
        pixels,
        labels,
        [3, 32, 32],
        class_names(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_records_and_rejects_truncation() {
        let p = Path::new("b.bin");
        let mut rec = vec![3u8];
        rec.extend((0..3072).map(|i| (i % 251) as u8));
        let two = [rec.clone(), rec.clone()].concat();
        let (mut px, mut lb) = (vec![], vec![]);
        parse_batch(&two, p, &mut px, &mut lb).unwrap();
        assert_eq!((lb, px.len()), (vec![3, 3], 6144));
        let e = parse_batch(&two[..5000], p, &mut vec![], &mut vec![])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("b.bin: 5000 bytes is not a whole number"),
            "{e}"
        );
        rec[0] = 12;
        let e = parse_batch(&rec, p, &mut vec![], &mut vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("label 12 out of range"), "{e}");
    }
}
