//! Training errors: one line each.

use thiserror::Error;

/// Errors of the training crate.
#[derive(Debug, Error)]
pub enum TrainError {
    /// From the shared diffusion crate (config, weights, sampler settings).
    #[error(transparent)]
    Diffusion(#[from] diffusion::Error),
    /// From the dataset crate.
    #[error(transparent)]
    Data(#[from] datasets::DataError),
    /// A bad argument or setting.
    #[error("{0}")]
    Invalid(String),
    /// A checkpoint that cannot be used.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The checkpoint directory or file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Training stopped because too many consecutive steps were not finite.
    #[error("{0}")]
    Diverged(String),
    /// Stopped on request (a signal) after checkpointing the last completed step.
    #[error("stopped by {reason} at step {step}; checkpoint → {checkpoint} (continue with --resume {run})")]
    Stopped {
        /// What asked for the stop (`SIGTERM`, `SIGINT`).
        reason: String,
        /// Steps completed and saved.
        step: u64,
        /// The checkpoint directory written.
        checkpoint: String,
        /// The run directory.
        run: String,
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

impl From<artifacts::IoError> for TrainError {
    fn from(e: artifacts::IoError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}

impl TrainError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = TrainError> = std::result::Result<T, E>;
