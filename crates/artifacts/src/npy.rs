//! NumPy `.npy` arrays of `f32`: written for exact comparisons (`trainer sample --npy`) and
//! read back (`trainer sample --latents`, a starting x_T from NumPy or PyTorch).

use std::path::Path;

use crate::atomic::{ensure_parent, write_atomic, IoError};

/// NumPy `.npy` (format 1.0) bytes for little-endian `f32` values of `shape`.
pub fn npy_bytes(values: &[f32], shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_str = if dims.len() == 1 {
        format!("({},)", dims[0])
    } else {
        format!("({})", dims.join(", "))
    };
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape_str}, }}");
    // Magic (6) + version (2) + header length (2) + header, padded with spaces to a multiple of
    // 64 and ended with a newline.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    for v in values {
        out.extend(v.to_le_bytes());
    }
    out
}

/// Writes `values` of `shape` as `.npy`, atomically.
pub fn save_npy(path: &Path, values: &[f32], shape: &[usize]) -> Result<(), IoError> {
    ensure_parent(path)?;
    write_atomic(path, &npy_bytes(values, shape))
}

/// Parses `.npy` bytes (format 1.x or 2.x) holding little-endian `f32` (`<f4`) or `f64`
/// (`<f8`, narrowed) in C order; returns the values and the shape. The error is one line.
pub fn parse_npy(bytes: &[u8]) -> Result<(Vec<f32>, Vec<usize>), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (no \\x93NUMPY magic)".into());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!(".npy format version {v} is not supported")),
    };
    let header = bytes
        .get(start..start + header_len)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or("the .npy header is cut short or not text")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = header
            .find(&format!("'{key}'"))
            .ok_or_else(|| format!("the .npy header has no '{key}'"))?;
        Ok(header[at + key.len() + 2..]
            .trim_start()
            .trim_start_matches(':')
            .trim_start())
    };
    let descr = field("descr")?;
    let width = if descr.starts_with("'<f4'") {
        4
    } else if descr.starts_with("'<f8'") {
        8
    } else {
        let d = descr.split(',').next().unwrap_or(descr);
        return Err(format!(
            "dtype {d} is not supported: save float32 (or float64)"
        ));
    };
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-order arrays are not supported: save a C-order array".into());
    }
    let shape_text = field("shape")?;
    let inner = shape_text
        .strip_prefix('(')
        .and_then(|s| s.split(')').next())
        .ok_or("the .npy shape is not a tuple")?;
    let shape = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| format!("bad dimension `{s}` in the .npy shape"))
        })
        .collect::<Result<Vec<usize>, String>>()?;
    let count = shape
        .iter()
        .try_fold(width, |acc: usize, &d| acc.checked_mul(d))
        .ok_or("the .npy shape is too large")?
        / width;
    let data = &bytes[start + header_len..];
    if Some(data.len()) != count.checked_mul(width) {
        return Err(format!(
            "the .npy data holds {} bytes; shape {shape:?} of {width}-byte floats needs {}",
            data.len(),
            count * width
        ));
    }
    let values = if width == 4 {
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect()
    };
    Ok((values, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_and_bad_files_are_errors() {
        let values = [1.0f32, -2.0, 0.5, 3.25, 0.0, 7.0];
        let bytes = npy_bytes(&values, &[1, 2, 3]);
        assert_eq!(parse_npy(&bytes).unwrap(), (values.to_vec(), vec![1, 2, 3]));
        assert_eq!(parse_npy(&npy_bytes(&[4.0], &[1])).unwrap().1, vec![1]);
        assert!(parse_npy(b"hello").unwrap_err().contains("not a .npy"));
        assert!(parse_npy(&bytes[..bytes.len() - 4])
            .unwrap_err()
            .contains("needs 24"));
        let mut int = bytes.clone();
        let at = int.windows(3).position(|w| w == b"<f4").unwrap();
        int[at + 1] = b'i';
        assert!(parse_npy(&int)
            .unwrap_err()
            .contains("'<i4' is not supported"));
    }
}
