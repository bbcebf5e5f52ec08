//! The router: handlers, error mapping, request logging and metrics, static files.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use diffusion::ModelConfig;
use tower_http::services::{ServeDir, ServeFile};
use utoipa::OpenApi;

use crate::admission::Refusal;
use crate::api::{
    validate, ErrorBody, GenerateQuery, GenerateRequest, GenerateResponse, Job, ModelInfo,
    SamplerName, MAX_BODY,
};
use crate::metrics::Metrics;
use crate::worker::{JobOutput, Pool, SubmitError};

/// Shared state of the service.
pub struct AppState {
    /// The model's config (classes, T, image shape).
    pub config: ModelConfig,
    /// The sampling workers.
    pub pool: Pool,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Per-request time limit (queueing and sampling).
    pub timeout: Duration,
    /// Directory served at `/` (`index.html`, `pkg/`).
    pub static_dir: PathBuf,
    /// Directory served at `/weights/`.
    pub weights_dir: PathBuf,
    /// What `GET /v1/model` answers.
    pub model_info: ModelInfo,
}

/// The OpenAPI document, generated from the handler annotations and the API types.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "rust-ddpm sampling service",
        description = "Class-conditional DDPM/DDIM sampling with classifier-free guidance."
    ),
    paths(generate_json, generate_png, model, healthz, metrics),
    components(schemas(GenerateRequest, GenerateResponse, ErrorBody, SamplerName, ModelInfo))
)]
pub struct ApiDoc;

/// An error response: `{"error": "..."}` with a status, and a `Retry-After` (seconds) where
/// the service predicts when it could take the request.
pub struct ApiError(StatusCode, String, Option<u64>);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.0, Json(ErrorBody { error: self.1 })).into_response();
        if let Some(s) = self.2 {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

fn err(status: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(status, msg.into(), None)
}

/// The answer to a refused request.
fn refused(r: Refusal, timeout: Duration) -> ApiError {
    let busy = |msg: String, s: u64| ApiError(StatusCode::SERVICE_UNAVAILABLE, msg, Some(s));
    match r {
        Refusal::Deadline {
            retry_after_s,
            predicted_s,
        } => busy(
            format!(
                "busy: this request would finish in about {predicted_s:.0} s, past the {:.0} s time limit; retry in {retry_after_s} s",
                timeout.as_secs_f64()
            ),
            retry_after_s,
        ),
        Refusal::Capacity { retry_after_s } => busy(
            format!("busy: the rows in flight and waiting are at the service's bound; retry in {retry_after_s} s"),
            retry_after_s,
        ),
        Refusal::TooLarge { rows, max_rows } => err(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("num_images: the request needs {rows} rows (images, twice when guided), over the service's bound of {max_rows} (--max-rows)"),
        ),
        Refusal::Closed => err(
            StatusCode::SERVICE_UNAVAILABLE,
            "the service is shutting down",
        ),
    }
}

/// Runs a validated job on the pool within the time limit.
async fn run(state: &AppState, job: Job) -> Result<JobOutput, ApiError> {
    let n = job.num_images as u64;
    let ticket = state
        .pool
        .submit(job)
        .map_err(|SubmitError::Refused(r)| refused(r, state.timeout))?;
    // Abandons the job when this future is dropped before it is answered (the client went
    // away: the server drops the handler) or when the time limit passes: its rows leave the
    // queue at once, or the batch at the next step.
    let abandon = ticket.abandon_on_drop;
    let answer = tokio::time::timeout(state.timeout, ticket.result).await;
    if matches!(answer, Ok(Ok(_))) {
        abandon.answered();
    } else {
        drop(abandon);
    }
    match answer {
        Ok(Ok(Ok(out))) => {
            state
                .metrics
                .images
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            Ok(out)
        }
        Ok(Ok(Err(e))) => Err(err(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Ok(Err(_)) => Err(err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the sampling worker stopped",
        )),
        Err(_) => Err(err(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "sampling took longer than the {} s limit",
                state.timeout.as_secs_f64()
            ),
        )),
    }
}

fn check_request(state: &AppState, req: &GenerateRequest) -> Result<Job, ApiError> {
    let seed = req.seed.unwrap_or_else(random_seed);
    validate(req, &state.config, seed).map_err(|m| err(StatusCode::UNPROCESSABLE_ENTITY, m))
}

/// A seed for requests that ask for a random one (53 bits, exact in JSON numbers).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() >> 11
}

/// Sample images.
#[utoipa::path(
    post,
    path = "/v1/generate",
    request_body(content = GenerateRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The images", body = GenerateResponse),
        (status = 400, description = "Malformed JSON, wrong types or unknown fields", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 415, description = "Content type is not application/json", body = ErrorBody),
        (status = 422, description = "A value out of range", body = ErrorBody),
        (status = 503, description = "Busy: it would not finish within the time limit, or the rows held are at the bound (Retry-After: when it would be admitted, predicted)", body = ErrorBody),
        (status = 504, description = "Over the time limit", body = ErrorBody)
    )
)]
async fn generate_json(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<GenerateResponse>, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.split(';').next().map(str::trim) != Some("application/json") {
        return Err(err(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("content type must be application/json, not `{ct}`"),
        ));
    }
    let body = body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            err(
                status,
                format!("request body is over the {MAX_BODY}-byte limit"),
            )
        } else {
            err(status, e.body_text())
        }
    })?;
    // serde would also accept a struct written as an array; the API takes objects only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(err(
            StatusCode::BAD_REQUEST,
            "invalid request: the body must be a JSON object",
        ));
    }
    // serde_path_to_error prefixes the failing field's path to serde's message.
    let mut de = serde_json::Deserializer::from_slice(&body);
    let req: GenerateRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match path.as_str() {
            "." | "" | "?" => err(StatusCode::BAD_REQUEST, format!("invalid request: {inner}")),
            field => err(StatusCode::BAD_REQUEST, format!("{field}: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| err(StatusCode::BAD_REQUEST, format!("invalid request: {e}")))?;
    let job = check_request(&state, &req)?;
    let seed = job.seed;
    let out = run(&state, job).await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(Json(GenerateResponse {
        images: out.pngs.iter().map(|p| b64.encode(p)).collect(),
        seed,
        class_label: req.class_label,
        guidance_scale: req.guidance_scale,
        sampler: req.sampler,
        num_inference_steps: req.num_inference_steps,
        eta: req.eta,
        use_karras_sigmas: req.use_karras_sigmas,
        elapsed_ms: out.elapsed_ms,
    }))
}

/// Sample one image and return it as a PNG.
#[utoipa::path(
    get,
    path = "/v1/generate.png",
    params(
        ("class_label" = Option<u32>, Query, description = "Class; omit for unconditional"),
        ("guidance_scale" = Option<f64>, Query, description = "Guidance scale (default 3)"),
        ("sampler" = Option<SamplerName>, Query, description = "ddpm (default), ddim, dpmsolver++ or sde-dpmsolver++"),
        ("num_inference_steps" = Option<u32>, Query, description = "Steps (default 50)"),
        ("eta" = Option<f64>, Query, description = "DDIM eta (default 0)"),
        ("use_karras_sigmas" = Option<bool>, Query, description = "DPM-Solver++ with Karras noise levels (default false)"),
        ("seed" = Option<u64>, Query, description = "Seed (default 0)")
    ),
    responses(
        (status = 200, description = "The image", content_type = "image/png"),
        (status = 400, description = "Bad query", body = ErrorBody),
        (status = 422, description = "A value out of range", body = ErrorBody),
        (status = 503, description = "Busy (see Retry-After)", body = ErrorBody)
    )
)]
async fn generate_png(
    State(state): State<Arc<AppState>>,
    query: Result<Query<GenerateQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| err(StatusCode::BAD_REQUEST, e.body_text()))?;
    let req = GenerateRequest::from(q);
    let job = check_request(&state, &req)?;
    let out = run(&state, job).await?;
    let png = out.pngs.into_iter().next().unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "image/png")], png).into_response())
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "OK", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String)))]
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        ApiDoc::openapi()
            .to_pretty_json()
            .expect("the document serialises"),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    err(StatusCode::NOT_FOUND, "no such route")
}

/// Logs one line per request and records metrics.
async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    let secs = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    state.metrics.observe(&route, status, secs);
    tracing::info!(%method, route, status, latency_ms = secs * 1e3, "request");
    response
}

/// The served model: config, image shape, classes, weight URLs and a content hash (the browser
/// page loads the weights named here and keys its cache by the hash).
#[utoipa::path(
    get,
    path = "/v1/model",
    responses((status = 200, description = "The served model", body = ModelInfo))
)]
async fn model(State(state): State<Arc<AppState>>) -> Json<ModelInfo> {
    Json(state.model_info.clone())
}

/// Cross-origin isolation (COOP + COEP) on every answer: it gives the page SharedArrayBuffer,
/// so the CPU bundle can sample on several threads (`pkg/threads/`). Everything the page loads
/// is same-origin, which `require-corp` allows.
async fn isolate(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-embedder-policy",
        HeaderValue::from_static("require-corp"),
    );
    res
}

/// Builds the router.
pub fn router(state: Arc<AppState>) -> Router {
    let index = ServeFile::new(state.static_dir.join("index.html"));
    Router::new()
        .route("/v1/generate", post(generate_json))
        .route("/v1/generate.png", get(generate_png))
        .route("/v1/model", get(model))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route_service("/", index.clone())
        .route_service("/index.html", index)
        .nest_service("/pkg", ServeDir::new(state.static_dir.join("pkg")))
        .nest_service("/weights", ServeDir::new(&state.weights_dir))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::map_response(isolate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}
