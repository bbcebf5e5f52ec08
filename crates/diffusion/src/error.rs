//! Typed errors of the diffusion crate.
//!
//! Every fallible entry point returns [`Error`]; its `Display` is one line that names the
//! offending value, field or tensor, so binaries can print it as is.

use thiserror::Error;

/// Errors returned by the diffusion crate.
#[derive(Debug, Error)]
pub enum Error {
    /// A noise-schedule setting is out of its valid range.
    #[error("invalid noise schedule: {0}")]
    Schedule(String),
    /// A model (U-Net) configuration is inconsistent.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A precision name other than `f32` or `bf16`.
    #[error("unknown precision `{0}` (expected f32 or bf16)")]
    UnknownPrecision(String),
    /// A sampler setting (steps, eta, guidance, labels, ...) is out of range.
    #[error("invalid sampler setting: {0}")]
    Sampler(String),
    /// A weights file could not be used with the given config.
    #[error("weights {path}: {reason}")]
    Weights {
        /// The file (or `<bytes>` for in-memory weights).
        path: String,
        /// What is wrong, naming the tensor where one is at fault.
        reason: String,
    },
    /// A config JSON could not be read or parsed.
    #[error("config {path}: {reason}")]
    ConfigFile {
        /// The file (or `<json>` for an in-memory string).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An I/O error while reading or writing `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl From<artifacts::IoError> for Error {
    fn from(e: artifacts::IoError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
