#![warn(missing_docs)]
//! The HTTP sampling service.
//!
//! `POST /v1/generate` (JSON in, base64 PNGs out), `GET /v1/generate.png`, `GET /v1/model`
//! (the served model's config, weight URLs and content hash), `GET /healthz`,
//! `GET /metrics` (Prometheus), `GET /openapi.json` (generated with utoipa), and the browser
//! page (`/`, `/pkg/*`, `/weights/*`). Sampling runs on batch executor threads that batch the
//! requests in flight step by step (one model call per step for all of them, the same pixels
//! as alone; [`worker`]). Requests are admitted by capacity and deadline ([`admission`]): when
//! they can join a batch now, or are predicted to finish within their time limit, while the
//! rows held stay within a bound; otherwise 503 with a `Retry-After` from the prediction. A
//! request whose client is gone leaves the queue at once or its batch at the next step; bad
//! input is a 4xx `{"error": "..."}` naming the field; shutdown lets in-flight requests finish.

pub mod admission;
pub mod api;
pub mod app;
pub mod load;
pub mod metrics;
pub mod step_time;
pub mod worker;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use diffusion::ModelConfig;

use crate::api::ModelInfo;
use crate::app::{router, AppState};
use crate::metrics::Metrics;
use crate::worker::Pool;

/// Settings of the service.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Weights (`NAME.safetensors`, with `NAME.json` beside it).
    pub weights: PathBuf,
    /// Batch executors (threads), each with its own copy of the model.
    pub workers: usize,
    /// Rows per batched model call (a guided image counts twice); 1 serves one row at a
    /// time. A request with more rows takes each step over several calls.
    pub max_batch: usize,
    /// Rows one request puts in a call while others share it (`None`: half of `max_batch`).
    pub max_request_rows: Option<usize>,
    /// Rows held at most, in flight and waiting (`None`: from the image size,
    /// [`admission::default_max_rows`]).
    pub max_rows: Option<usize>,
    /// Per-request time limit.
    pub timeout: Duration,
    /// Directory served at `/` (holds `index.html` and `pkg/`).
    pub static_dir: PathBuf,
    /// The device the executors sample on (the CPU, or a GPU backend compiled in).
    pub device: burn::tensor::Device,
}

/// Errors starting the service.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad weights or config.
    #[error(transparent)]
    Model(#[from] diffusion::Error),
    /// Socket errors.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Loads the model and builds the shared state (the worker pool starts here).
pub fn state(config: &ServeConfig) -> Result<Arc<AppState>, ServeError> {
    let config_file = diffusion::weights::config_path(&config.weights);
    let model_config = ModelConfig::load(&config_file)?;
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|source| diffusion::Error::Io {
            path: path.display().to_string(),
            source,
        })
    };
    let bytes = read(&config.weights)?;
    let config_bytes = read(&config_file)?;
    let model_info = model_info(
        &model_config,
        (&config.weights, &bytes),
        (&config_file, &config_bytes),
    )?;
    let metrics = Arc::new(Metrics::default());
    let limits = admission::Limits {
        executors: config.workers,
        max_batch: config.max_batch,
        max_request_rows: config
            .max_request_rows
            .unwrap_or(config.max_batch.div_ceil(2)),
        max_rows: config.max_rows.unwrap_or_else(|| {
            let elems = model_config.unet.image_shape().iter().product();
            admission::default_max_rows(elems, config.workers, config.max_batch)
        }),
        timeout: config.timeout,
    };
    let pool = Pool::start(
        model_config.clone(),
        Arc::new(bytes),
        limits,
        metrics.clone(),
        config.device.clone(),
    )?;
    let weights_dir = config
        .weights
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    Ok(Arc::new(AppState {
        config: model_config,
        pool,
        metrics,
        timeout: config.timeout,
        static_dir: config.static_dir.clone(),
        weights_dir,
        model_info,
    }))
}

/// `GET /v1/model`'s answer for these weights and config files (both served from `/weights/`).
fn model_info(
    model_config: &ModelConfig,
    (weights, weights_bytes): (&std::path::Path, &[u8]),
    (config_file, config_bytes): (&std::path::Path, &[u8]),
) -> Result<ModelInfo, ServeError> {
    use sha2::{Digest, Sha256};
    let config: serde_json::Value =
        serde_json::from_slice(config_bytes).map_err(|e| diffusion::Error::ConfigFile {
            path: config_file.display().to_string(),
            reason: e.to_string(),
        })?;
    let url = |p: &std::path::Path| {
        let name = p
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        format!("/weights/{name}")
    };
    let digest = Sha256::new()
        .chain_update(weights_bytes)
        .chain_update(config_bytes)
        .finalize();
    Ok(ModelInfo {
        config,
        image_shape: model_config.unet.image_shape(),
        num_classes: model_config.unet.num_classes,
        weights_url: url(weights),
        config_url: url(config_file),
        sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        weights_bytes: weights_bytes.len() as u64,
    })
}

/// Serves on `listener` until `shutdown` resolves, then stops accepting and lets in-flight
/// requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
