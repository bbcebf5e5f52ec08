//! Evaluation errors: one line each.

use thiserror::Error;

/// Errors of the evaluation crate.
#[derive(Debug, Error)]
pub enum EvalError {
    /// From the shared diffusion crate (weights, sampler settings).
    #[error(transparent)]
    Diffusion(#[from] diffusion::Error),
    /// From the dataset crate.
    #[error(transparent)]
    Data(#[from] datasets::DataError),
    /// From the training crate (sampling, images, plots).
    #[error(transparent)]
    Training(#[from] training::TrainError),
    /// A bad argument or setting.
    #[error("{0}")]
    Invalid(String),
    /// A run stopped on request (a signal) after saving what it finished.
    #[error("{0}")]
    Stopped(String),
    /// A weights or statistics file that cannot be used.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// An I/O error on `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl From<artifacts::IoError> for EvalError {
    fn from(e: artifacts::IoError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}

impl EvalError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn file(path: &std::path::Path, reason: impl Into<String>) -> Self {
        Self::File {
            path: path.display().to_string(),
            reason: reason.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
