//! Response builders. [`error`] is the one place an [`ApiError`] becomes an
//! HTTP response with a Kubernetes `Status` body (house rule 5); handlers
//! return `Result<Response, ApiError>` and never build error bodies.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;

use crate::api::negotiate::{Encoding, JSON, PROTOBUF};
use crate::api::status::ApiError;
use support::log_gate::LogGate;

/// The body type of every response.
pub type Body = Full<Bytes>;

/// What handlers produce.
pub type HandlerResult = Result<Response<Body>, ApiError>;

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Body> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// A JSON (or other typed) body with status 200.
pub fn ok(content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    with_type(StatusCode::OK, content_type, Bytes::from(body))
}

/// A plain-text body (health probes, metrics).
pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    with_type(status, content_type, Bytes::from(body))
}

/// The `Status` answer for `error`. Logged here too, by class: a 5xx is the
/// server's problem (warned, at most once per `gate` interval), the rest are
/// the client's (debug).
/// The body is encoded as `encoding` (see [`crate::api::negotiate::error_encoding`]).
pub fn error(error: &ApiError, gate: &LogGate, encoding: Encoding) -> Response<Body> {
    let status = error.status_code();
    match gate.open().filter(|_| status.is_server_error()) {
        Some(suppressed) => {
            tracing::warn!(code = status.as_u16(), %error, suppressed, "request failed")
        }
        None => tracing::debug!(code = status.as_u16(), %error, "request refused"),
    }
    match encoding {
        Encoding::Json => with_type(status, JSON, Bytes::from(error.to_status_json())),
        Encoding::Protobuf => with_type(status, PROTOBUF, Bytes::from(error.to_status_protobuf())),
    }
}

/// Serialises a wire value; a failure is an internal error.
pub fn json_bytes<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    crate::api::types::to_json(value).map_err(encode_failed)
}

/// A body that could not be encoded is an internal error.
pub fn encode_failed(e: crate::api::types::Error) -> ApiError {
    ApiError::Internal {
        message: e.to_string(),
    }
}
