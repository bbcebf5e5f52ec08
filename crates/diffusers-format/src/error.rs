//! What can go wrong reading or writing a diffusers folder: one line each, naming the file and
//! the field or tensor.

/// A conversion error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error(transparent)]
    Io(#[from] artifacts::IoError),
    /// A config file is not what a `UNet2DModel` / scheduler config can be.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: String,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// The model uses something this toolkit's U-Net cannot express.
    #[error("{path}: {field} = {value} is not supported ({why})")]
    Unsupported {
        /// The config file.
        path: String,
        /// The field.
        field: String,
        /// Its value, as JSON.
        value: String,
        /// What is supported instead.
        why: String,
    },
    /// The weights file does not match the config.
    #[error("{path}: {reason}")]
    Weights {
        /// The weights file.
        path: String,
        /// What is wrong, naming the tensor.
        reason: String,
    },
    /// The toolkit's own model config or weights were rejected.
    #[error(transparent)]
    Model(#[from] diffusion::Error),
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;
