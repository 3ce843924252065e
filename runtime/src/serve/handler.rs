//! The HTTP API: routing, the bearer token, the limits, and the JSON answers.
//!
//! `POST /v1/predict` takes a raw image body (any `image/*` or
//! `application/octet-stream` type, or none) or `multipart/form-data` with one image
//! per part, and answers `{"results": [{"name", "predictions": [{label, index,
//! probability}]}]}`, `?k=` classes per image. A bad image in a multipart body is
//! reported in its own result (`error`, `kind`) and the others are scored; a
//! request with no image scored gets a 4xx. Every error is JSON, `{"error": "...",
//! "kind": "..."}`, and counted by kind in `/metrics`.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use rayon::prelude::*;
use serde_json::{Value, json};

use super::State;
use crate::decode::decode_bytes;
use crate::error::ImageError;
use crate::scores::top_k;

type Answer = Response<Full<Bytes>>;

/// A request that cannot be answered normally: the status, and the JSON error.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    /// Other fields of the JSON answer (per-image results).
    pub extra: Option<(&'static str, Value)>,
    /// Already counted in the metrics (per image).
    pub counted: bool,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            message: message.into(),
            extra: None,
            counted: false,
        }
    }

    fn image(e: &ImageError) -> ApiError {
        let status = match e {
            ImageError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        ApiError::new(status, e.kind(), e.to_string())
    }

    fn answer(self) -> Answer {
        let mut body = json!({"error": self.message, "kind": self.kind});
        if let Some((key, value)) = self.extra {
            body[key] = value;
        }
        let mut response = json_answer(self.status, &body);
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Answers one request; never fails (errors become JSON answers).
pub async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Answer, Infallible> {
    let start = Instant::now();
    let path = req.uri().path().to_string();
    let is_predict = path == "/v1/predict";
    let answer = match route(&state, req).await {
        Ok(answer) => answer,
        Err(e) => {
            if !e.counted {
                state.metrics.error(e.kind);
            }
            e.answer()
        }
    };
    state.metrics.request(&path, answer.status().as_u16());
    if is_predict {
        state.metrics.predict_latency(start.elapsed().as_secs_f64());
    }
    Ok(answer)
}

async fn route(state: &State, req: Request<Incoming>) -> Result<Answer, ApiError> {
    let path = req.uri().path();
    if path == "/healthz" {
        return match *req.method() {
            Method::GET | Method::HEAD => Ok(json_answer(StatusCode::OK, &json!({"status": "ok"}))),
            _ => Err(method_not_allowed("GET")),
        };
    }
    let (expected, allowed) = match path {
        "/v1/predict" => (Method::POST, "POST"),
        "/v1/model" | "/metrics" => (Method::GET, "GET"),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no such endpoint: {path} (try POST /v1/predict, GET /v1/model, /healthz, /metrics)"
                ),
            ));
        }
    };
    authorize(state, &req)?;
    if *req.method() != expected {
        return Err(method_not_allowed(allowed));
    }
    match path {
        "/v1/model" => Ok(json_answer(StatusCode::OK, &state.model_json)),
        "/metrics" => {
            let mut answer = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            answer.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            Ok(answer)
        }
        _ => predict(state, req).await,
    }
}

fn method_not_allowed(allowed: &'static str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("use {allowed} on this endpoint"),
    )
}

/// With a token configured, every endpoint but /healthz needs
/// `Authorization: Bearer <token>`.
fn authorize(state: &State, req: &Request<Incoming>) -> Result<(), ApiError> {
    let Some(token) = &state.options.token else {
        return Ok(());
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if same_secret(g.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (send `Authorization: Bearer <token>`)",
        )),
    }
}

/// Compares without an early exit, so timing does not reveal a matching prefix.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn predict(state: &State, req: Request<Incoming>) -> Result<Answer, ApiError> {
    // Admission: a bounded number of requests at once, the rest are told to retry.
    let Ok(_permit) = state.admission.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!(
                "server busy ({} requests in progress), retry later",
                state.options.max_requests
            ),
        ));
    };
    let _in_flight = state.metrics.in_flight();
    let k = parse_k(req.uri().query(), state.labels.len())?;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let multipart = content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data");
    if !multipart && !is_image_type(&content_type) {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Content-Type '{content_type}' is not an image: send image bytes (image/*, application/octet-stream) or multipart/form-data"
            ),
        ));
    }
    let body = read_body(state, req.into_body()).await?;
    let images = if multipart {
        split_multipart(&content_type, body, state.options.max_images).await?
    } else {
        vec![(None, body)]
    };
    let work = score(state, images, k);
    match tokio::time::timeout(state.options.request_timeout, work).await {
        Ok(answer) => answer,
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "not scored within the request timeout ({:?}), retry later",
                state.options.request_timeout
            ),
        )),
    }
}

/// `?k=N`: classes per image, 1 by default, capped at the number of classes.
fn parse_k(query: Option<&str>, classes: usize) -> Result<usize, ApiError> {
    let mut k = 1;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key == "k" {
            k = value
                .parse::<usize>()
                .ok()
                .filter(|&k| k >= 1)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_query",
                        format!("k must be a whole number >= 1, got '{value}'"),
                    )
                })?;
        }
    }
    Ok(k.min(classes))
}

fn is_image_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.is_empty() || essence == "application/octet-stream" || essence.starts_with("image/")
}

/// The whole body, within the size limit and the read timeout (slow clients).
async fn read_body(state: &State, body: Incoming) -> Result<Bytes, ApiError> {
    let limit = state.options.max_body_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body over the limit of {limit} bytes"),
        )
    };
    // A declared Content-Length over the limit is refused before reading a byte.
    if hyper::body::Body::size_hint(&body).lower() > limit as u64 {
        return Err(too_large());
    }
    let read = Limited::new(body, limit).collect();
    match tokio::time::timeout(state.options.read_timeout, read).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "read_timeout",
            format!(
                "the request body did not arrive within {:?}",
                state.options.read_timeout
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_body",
            format!("cannot read the request body: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The parts of a multipart body: (file name or field name, bytes).
async fn split_multipart(
    content_type: &str,
    body: Bytes,
    max_images: usize,
) -> Result<Vec<(Option<String>, Bytes)>, ApiError> {
    let bad = |e: multer::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_multipart",
            format!("malformed multipart body: {e}"),
        )
    };
    let boundary = multer::parse_boundary(content_type).map_err(bad)?;
    let stream = futures_util::stream::once(async move { Ok::<Bytes, Infallible>(body) });
    let mut parts = multer::Multipart::new(stream, boundary);
    let mut images = vec![];
    while let Some(field) = parts.next_field().await.map_err(bad)? {
        let name = field.file_name().or(field.name()).map(str::to_string);
        images.push((name, field.bytes().await.map_err(bad)?));
        if images.len() > max_images {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_images",
                format!("more than {max_images} images in one request"),
            ));
        }
    }
    if images.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_images",
            "the multipart body has no parts",
        ));
    }
    Ok(images)
}

/// Decodes on the decode pool, infers through the batcher, builds the answer.
async fn score(
    state: &State,
    images: Vec<(Option<String>, Bytes)>,
    k: usize,
) -> Result<Answer, ApiError> {
    let decoding = state.batcher.decoding();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let preprocess = state.preprocess.clone();
    let limits = state.options.limits;
    let names: Vec<Option<String>> = images.iter().map(|(n, _)| n.clone()).collect();
    state.pool.spawn(move || {
        let tensors: Vec<Result<Vec<f32>, ImageError>> = images
            .par_iter()
            .map(|(name, bytes)| {
                let shown = name.as_deref().unwrap_or("request body");
                let img = decode_bytes(bytes, Path::new(shown), &limits)?;
                let mut out = vec![0.0; preprocess.tensor_len()];
                preprocess.apply(&img, &mut out);
                Ok(out)
            })
            .collect();
        let _ = tx.send(tensors);
    });
    let tensors = rx.await.map_err(|_| internal("the decode pool stopped"))?;
    let mut input = vec![];
    let mut good = 0;
    for t in tensors.iter().flatten() {
        input.extend_from_slice(t);
        good += 1;
    }
    let mut rows = if good > 0 {
        decoding
            .submit(input, good)
            .await
            .map_err(|_| internal("the inference thread stopped"))?
            .map_err(|reason| internal(&reason))?
            .into_iter()
    } else {
        drop(decoding);
        vec![].into_iter()
    };
    state.metrics.images_scored(good);

    let mut results = vec![];
    let mut first_error = None;
    for (name, tensor) in names.into_iter().zip(&tensors) {
        let mut result = json!({"name": name});
        match tensor {
            Ok(_) => {
                let probs = rows.next().ok_or_else(|| internal("missing result row"))?;
                let preds: Vec<Value> = top_k(&probs, k)
                    .into_iter()
                    .map(|c| json!({"label": state.labels[c], "index": c, "probability": probs[c]}))
                    .collect();
                result["predictions"] = Value::Array(preds);
            }
            Err(e) => {
                state.metrics.error(e.kind());
                result["error"] = json!(e.to_string());
                result["kind"] = json!(e.kind());
                first_error.get_or_insert(e);
            }
        }
        results.push(result);
    }
    if good == 0 {
        // Nothing scored: the answer is the (first) image's error, with all results.
        let e = first_error.ok_or_else(|| internal("no image and no error"))?;
        let mut error = ApiError::image(e);
        error.counted = true;
        if results.len() > 1 {
            error.extra = Some(("results", Value::Array(results)));
        }
        return Err(error);
    }
    Ok(json_answer(StatusCode::OK, &json!({"results": results})))
}

fn internal(reason: &str) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("inference failed: {reason}"),
    )
}

fn json_answer(status: StatusCode, body: &Value) -> Answer {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_from_the_query() {
        assert_eq!(parse_k(None, 10).unwrap(), 1);
        assert_eq!(parse_k(Some("k=3"), 10).unwrap(), 3);
        assert_eq!(parse_k(Some("x=1&k=50"), 10).unwrap(), 10);
        assert_eq!(parse_k(Some("k=0"), 10).unwrap_err().kind, "bad_query");
        assert_eq!(parse_k(Some("k=two"), 10).unwrap_err().kind, "bad_query");
    }

    #[test]
    fn image_content_types() {
        for ok in [
            "",
            "image/png",
            "IMAGE/JPEG; q=1",
            "application/octet-stream",
        ] {
            assert!(is_image_type(ok), "{ok}");
        }
        for bad in ["text/plain", "application/json"] {
            assert!(!is_image_type(bad), "{bad}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"ab", b"abc"));
    }
}
