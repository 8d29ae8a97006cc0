//! Every error the API answers is JSON in Argo CD's shape:
//! `{"code": GRPC_CODE, "message": "...", "error": "..."}`, whatever produced it: a
//! handler, an extractor that refused the body, or the router finding no route.

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

/// The largest error body the rewrite reads; a larger one is replaced, not read.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The gRPC status code Argo CD's API gives with an HTTP status, as its gateway
/// maps them.
pub fn grpc_code(status: StatusCode) -> u16 {
    match status.as_u16() {
        400 | 415 | 422 => 3, // InvalidArgument
        401 => 16,            // Unauthenticated
        403 => 7,             // PermissionDenied
        404 => 5,             // NotFound
        405 | 501 => 12,      // Unimplemented
        408 | 504 => 4,       // DeadlineExceeded
        409 => 6,             // AlreadyExists
        412 => 9,             // FailedPrecondition
        429 => 8,             // ResourceExhausted
        499 => 1,             // Cancelled
        503 => 14,            // Unavailable
        _ => 13,              // Internal
    }
}

/// The error body for `status` with `message`.
pub fn body(status: StatusCode, message: &str) -> Value {
    json!({ "code": grpc_code(status), "message": message, "error": message })
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// Rewrites an error response that is not JSON yet (axum's own rejections, a
/// missing route, the webhook's text) into the JSON shape, keeping its text as
/// the message.
pub async fn to_json(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (mut parts, body_in) = response.into_parts();
    let text = match axum::body::to_bytes(body_in, MAX_ERROR_BODY).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let bytes = body(status, &message).to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_argo_cd_for_the_common_statuses() {
        assert_eq!(grpc_code(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(grpc_code(StatusCode::FORBIDDEN), 7);
        assert_eq!(grpc_code(StatusCode::NOT_FOUND), 5);
        assert_eq!(grpc_code(StatusCode::BAD_REQUEST), 3);
        assert_eq!(grpc_code(StatusCode::INTERNAL_SERVER_ERROR), 13);
    }

    #[tokio::test]
    async fn a_plain_text_error_becomes_json_with_its_text() {
        let response = Response::builder()
            .status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .body(Body::from(
                "Expected request with `Content-Type: application/json`",
            ))
            .unwrap();
        let rewritten = to_json(response).await;
        assert_eq!(rewritten.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let bytes = axum::body::to_bytes(rewritten.into_body(), 1 << 16)
            .await
            .unwrap();
        let json: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["code"], 3);
        assert!(json["message"].as_str().unwrap().contains("Content-Type"));
        assert_eq!(json["message"], json["error"]);
    }
}
