//! The one error type of the HTTP APIs (directory, node P2P, node admin).
//! Every failure becomes
//! `{"error": CODE, "message": TEXT}` with a 4xx status; internal failures
//! are logged in full and answered with a generic message that leaks nothing.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use openred_core::wire::ErrorBody;

/// An error answered to an API client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// A code of the public contract that clients act on, with the
    /// status it is always answered with.
    pub fn coded(
        code: openred_core::error_code::ErrorCode,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError::new(
            StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST),
            code.as_str(),
            message,
        )
    }

    /// 400 Bad Request.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 Not Found.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    /// 409 Conflict.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    /// 429 Too Many Requests, with `Retry-After`.
    pub fn rate_limited(retry_after_s: u64) -> ApiError {
        ApiError {
            retry_after_s: Some(retry_after_s.max(1)),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; retry later",
            )
        }
    }

    /// The same error with a `Retry-After` of `seconds` (at least 1).
    pub fn with_retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after_s = Some(seconds.max(1));
        self
    }

    /// An internal failure (database, I/O). Logged here with its cause; the
    /// client only learns that the service is unavailable (503, so that a
    /// client retries, and never a 500 with internals).
    pub fn internal(context: &str, error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "{context}");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the service cannot serve this request right now",
        )
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.code.to_owned(),
                message: self.message,
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> ApiError {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "bad_json",
        };
        // serde's messages name the offending field and position, nothing
        // of the server's internals.
        let status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::bad_request("bad_query", rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::bad_request("bad_path", rejection.body_text())
    }
}

/// Gives a router the behaviour every OpenRed API shares: JSON 404 and 405
/// answers, a body size limit (413 `body_too_large` in JSON, whatever
/// extractor hit it), and a panic caught and answered as a JSON 500 instead
/// of a dropped connection.
pub fn harden(router: Router, max_body_bytes: usize) -> Router {
    router
        .fallback(no_such_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::map_response(too_large_as_json))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
}

/// Routes that take raw bytes (`Bytes`, the encrypted P2P frames) meet the
/// body limit inside axum's extractor, which answers 413 in plain text;
/// every other error of ours is JSON, so that one is rewritten here.
async fn too_large_as_json(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if response.status() != StatusCode::PAYLOAD_TOO_LARGE || is_json {
        return response;
    }
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "the request body is larger than this route accepts",
    )
    .into_response()
}

async fn no_such_route() -> ApiError {
    ApiError::not_found("no_such_route", "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
    .into_response()
}
