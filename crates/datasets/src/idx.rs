//! IDX files (the MNIST / Fashion-MNIST format), raw or gzipped.
//!
//! An IDX file is a big-endian header — magic `0x0000 08 NN` (type `0x08` = unsigned byte,
//! `NN` = number of dimensions), then one `u32` size per dimension — followed by the data.

use std::io::Read;
use std::path::Path;

use crate::dataset::Dataset;
use crate::error::{DataError, Result};

/// Decodes a possibly gzipped byte buffer (gzip is recognised by its magic bytes).
pub fn maybe_gunzip(bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| DataError::format(path, format!("corrupt gzip data ({e})")))?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// Parses an unsigned-byte IDX buffer with `rank` dimensions; returns (dims, data).
pub fn parse_idx(bytes: &[u8], rank: usize, path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(DataError::format(
            path,
            format!(
                "truncated IDX header ({} bytes, need {header})",
                bytes.len()
            ),
        ));
    }
    let expect = [0, 0, 0x08, rank as u8];
    if bytes[..4] != expect {
        return Err(DataError::format(
            path,
            format!(
                "not an unsigned-byte IDX file of rank {rank} (magic {:02x?}, expected {expect:02x?})",
                &bytes[..4]
            ),
        ));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let n: usize = dims.iter().product();
    let data = &bytes[header..];
    if data.len() != n {
        return Err(DataError::format(
            path,
            format!(
                "IDX header says {dims:?} = {n} bytes but the file has {} ({})",
                data.len(),
                if data.len() < n {
                    "truncated"
                } else {
                    "trailing data"
                }
            ),
        ));
    }
    Ok((dims, data.to_vec()))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    maybe_gunzip(bytes, path)
}

/// Reads an images file (rank 3: n × h × w) and a labels file (rank 1: n) into a grey
/// [`Dataset`] named `name`.
pub fn load_idx_pair(
    images: &Path,
    labels: &Path,
    name: &str,
    class_names: Vec<String>,
) -> Result<Dataset> {
    from_idx_bytes(
        &read(images)?,
        images,
        &read(labels)?,
        labels,
        name,
        class_names,
    )
}

/// Like [`load_idx_pair`] on buffers already read (and un-gzipped).
pub fn from_idx_bytes(
    images: &[u8],
    images_path: &Path,
    labels: &[u8],
    labels_path: &Path,
    name: &str,
    class_names: Vec<String>,
) -> Result<Dataset> {
    let (idims, pixels) = parse_idx(images, 3, images_path)?;
    let (ldims, label_bytes) = parse_idx(labels, 1, labels_path)?;
    if idims[0] != ldims[0] {
        return Err(DataError::format(
            labels_path,
            format!(
                "{} labels for {} images in {}",
                ldims[0],
                idims[0],
                images_path.display()
            ),
        ));
    }
    if let Some(&l) = label_bytes
        .iter()
        .find(|&&l| l as usize >= class_names.len())
    {
        return Err(DataError::format(
            labels_path,
            format!("label {l} out of range for {} classes", class_names.len()),
        ));
    }
    let labels = label_bytes.into_iter().map(usize::from).collect();
    Dataset::new(name, pixels, labels, [1, idims[1], idims[2]], class_names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx(rank: u8, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, rank];
        for d in dims {
            v.extend(d.to_be_bytes());
        }
        v.extend(data);
        v
    }

    #[test]
    fn parses_and_rejects() {
        let p = Path::new("x.idx");
        let good = idx(3, &[2, 2, 2], &[1, 2, 3, 4, 5, 6, 7, 8]);
        let (dims, data) = parse_idx(&good, 3, p).unwrap();
        assert_eq!((dims, data.len()), (vec![2, 2, 2], 8));
        let e = parse_idx(&good[..10], 3, p).unwrap_err().to_string();
        assert!(e.contains("truncated IDX header"), "{e}");
        let e = parse_idx(&good[..good.len() - 1], 3, p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = parse_idx(&good, 1, p).unwrap_err().to_string();
        assert!(
            e.starts_with("x.idx: not an unsigned-byte IDX file of rank 1"),
            "{e}"
        );
        let e = maybe_gunzip(vec![0x1f, 0x8b, 1, 2, 3], p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("corrupt gzip"), "{e}");
    }

    #[test]
    fn label_count_and_range_are_checked() {
        let p = Path::new("l");
        let images = idx(3, &[2, 1, 1], &[0, 255]);
        let names = vec!["a".to_string(), "b".to_string()];
        let ok = from_idx_bytes(&images, p, &idx(1, &[2], &[0, 1]), p, "t", names.clone()).unwrap();
        assert_eq!(ok.labels, vec![0, 1]);
        let e = from_idx_bytes(&images, p, &idx(1, &[3], &[0, 1, 1]), p, "t", names.clone());
        assert!(e.unwrap_err().to_string().contains("3 labels for 2 images"));
        let e = from_idx_bytes(&images, p, &idx(1, &[2], &[0, 7]), p, "t", names);
        assert!(e.unwrap_err().to_string().contains("label 7 out of range"));
    }
}
