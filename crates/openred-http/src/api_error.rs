//! The one error type of the HTTP APIs (directory, node P2P, node admin).
//! Every failure becomes
//! `{"error": CODE, "message": TEXT}` with a 4xx status; internal failures
//! are logged in full and answered with a generic message that leaks nothing.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use openred_core::error_code::ErrorCode;
use openred_core::wire::ErrorBody;

/// An error answered to an API client: a code of the contract
/// ([`ErrorCode`], which brings its status) and a message for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after_s: Option<u64>,
}

impl ApiError {
    /// An error with this code, answered with the code's status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_GATEWAY),
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// The same error with another status, for the few places where the
    /// contract answers a code with a status other than its usual one
    /// (each says why).
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    /// 429 Too Many Requests, with `Retry-After`.
    pub fn rate_limited(retry_after_s: u64) -> ApiError {
        ApiError {
            retry_after_s: Some(retry_after_s.max(1)),
            ..ApiError::new(ErrorCode::RateLimited, "too many requests; retry later")
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
            ErrorCode::Unavailable,
            "the service cannot serve this request right now",
        )
    }

    /// The machine-readable code.
    pub fn code(&self) -> ErrorCode {
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
                error: self.code,
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
        // serde's messages name the offending field and position, nothing
        // of the server's internals.
        let text = rejection.body_text();
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(ErrorCode::BodyTooLarge, text),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ApiError::new(ErrorCode::UnsupportedMediaType, text)
            }
            _ => match field_error(&rejection) {
                // A typed field (a node ID, a nonce) that does not parse is
                // answered with its own code and status.
                Some(code) => ApiError::new(code, text),
                // axum answers a body of the wrong shape with 422 and bad
                // syntax with 400: both are `bad_json`, each with axum's
                // status (the contract documents both).
                None if status.is_client_error() => {
                    ApiError::new(ErrorCode::BadJson, text).with_status(status)
                }
                None => ApiError::new(ErrorCode::BadJson, text),
            },
        }
    }
}

/// The code a typed wire field named when its text did not parse
/// (`openred_core::wire::typed`). Read from serde_json's own error under
/// axum's rejection, whose message starts with ours, never from the body
/// text, where a client's field names could imitate one.
fn field_error(rejection: &JsonRejection) -> Option<ErrorCode> {
    let JsonRejection::JsonDataError(e) = rejection else {
        return None;
    };
    let mut source = std::error::Error::source(e);
    while let Some(error) = source {
        if let Some(e) = error.downcast_ref::<serde_path_to_error::Error<serde_json::Error>>() {
            return ErrorCode::of_field_error(&e.inner().to_string());
        }
        source = error.source();
    }
    None
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::new(ErrorCode::BadQuery, rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::new(ErrorCode::BadPath, rejection.body_text())
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
        ErrorCode::BodyTooLarge,
        "the request body is larger than this route accepts",
    )
    .into_response()
}

async fn no_such_route() -> ApiError {
    ApiError::new(ErrorCode::NoSuchRoute, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not accept that method",
    )
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::new(ErrorCode::Internal, "internal error").into_response()
}
