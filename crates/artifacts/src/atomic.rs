//! Atomic file writes: a temporary file in the target's directory, flushed to disk, then
//! renamed over the target, so readers see the old file or the new one, never a partial one.

use std::io::Write;
use std::path::Path;

/// An I/O error on a named file; `Display` is one line, `path: reason`.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct IoError {
    /// The file involved.
    pub path: String,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// Wraps `source` with the file it concerns.
    pub fn new(path: &Path, source: std::io::Error) -> Self {
        Self {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Writes `bytes` to `path` atomically (the parent directory must exist). On failure the
/// temporary file is removed and the old `path`, if any, is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The process id keeps two processes writing the same target from sharing a temp file.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| IoError::new(path, e))
}

/// Creates `path`'s parent directory if needed.
pub fn ensure_parent(path: &Path) -> Result<(), IoError> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|e| IoError::new(dir, e)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("artifacts-atomic-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.txt");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.txt")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_names_the_file_and_keeps_nothing() {
        let missing = std::env::temp_dir()
            .join(format!("artifacts-missing-{}", std::process::id()))
            .join("out.txt");
        let err = write_atomic(&missing, b"x").unwrap_err();
        assert!(
            err.to_string().starts_with(&missing.display().to_string()),
            "{err}"
        );
        assert!(!missing.exists());
    }
}
