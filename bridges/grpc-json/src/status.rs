//! gRPC status → HTTP status and a JSON error body, for a transcoded call
//! that failed. The mapping is `google.rpc.Code`'s documented HTTP mapping
//! (`google/rpc/code.proto`), as gRPC-JSON gateways apply it.

use http::StatusCode;

/// The HTTP status for gRPC status `code` (a `grpc-status` value).
pub fn http_status(code: u32) -> StatusCode {
    match code {
        0 => StatusCode::OK,
        1 => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST), // CANCELLED: client closed request
        3 | 9 | 11 => StatusCode::BAD_REQUEST, // INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE
        4 => StatusCode::GATEWAY_TIMEOUT,      // DEADLINE_EXCEEDED
        5 => StatusCode::NOT_FOUND,
        6 | 10 => StatusCode::CONFLICT,     // ALREADY_EXISTS, ABORTED
        7 => StatusCode::FORBIDDEN,         // PERMISSION_DENIED
        8 => StatusCode::TOO_MANY_REQUESTS, // RESOURCE_EXHAUSTED
        12 => StatusCode::NOT_IMPLEMENTED,
        14 => StatusCode::SERVICE_UNAVAILABLE,
        16 => StatusCode::UNAUTHORIZED,
        _ => StatusCode::INTERNAL_SERVER_ERROR, // UNKNOWN, INTERNAL, DATA_LOSS, unknown codes
    }
}

/// A `grpc-message` value as text: percent-decoded (PROTOCOL-HTTP2.md,
/// "Responses"), or as sent when it is not validly encoded.
pub fn decode_grpc_message(value: &[u8]) -> String {
    let raw = String::from_utf8_lossy(value);
    crate::template::percent_decode(&raw, true).unwrap_or_else(|| raw.into_owned())
}

/// `{"code":5,"message":"..."}`: the JSON shape of `google.rpc.Status`.
pub fn error_body(code: u32, message: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "code": code, "message": message })).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_grpc_code_has_its_documented_http_status() {
        let expected = [200, 499, 500, 400, 504, 404, 409, 403, 429, 400, 409, 400, 501, 500, 503, 500, 401];
        for (code, status) in expected.iter().enumerate() {
            assert_eq!(http_status(code as u32).as_u16(), *status, "grpc-status {code}");
        }
        assert_eq!(http_status(99), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn grpc_messages_are_percent_decoded_when_they_can_be() {
        assert_eq!(decode_grpc_message(b"no item 404 (gone %25)"), "no item 404 (gone %)");
        assert_eq!(decode_grpc_message(b"caf%C3%A9"), "café");
        assert_eq!(decode_grpc_message(b"100% raw"), "100% raw");
    }

    #[test]
    fn the_error_body_is_a_google_rpc_status_in_json() {
        let body: serde_json::Value = serde_json::from_slice(&error_body(5, "no \"such\" thing")).unwrap();
        assert_eq!(body, serde_json::json!({"code": 5, "message": "no \"such\" thing"}));
    }
}
