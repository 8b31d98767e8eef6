//! gRPC status codes, named, so the bridge and the core speak of them alike.
//!
//! Numbers from the gRPC status code list
//! (<https://github.com/grpc/grpc/blob/master/doc/statuscodes.md>).

use http::StatusCode;

/// A gRPC status code as carried in `grpc-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    /// The decimal text that goes in `grpc-status`.
    pub fn as_str(self) -> &'static str {
        const TEXT: [&str; 17] =
            ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16"];
        TEXT[self as usize]
    }

    /// The code a gRPC client infers from a non-200 HTTP status when the
    /// response carries no `grpc-status`, per "HTTP to gRPC Status Code
    /// Mapping" (<https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md>).
    pub fn from_http(status: StatusCode) -> Code {
        match status.as_u16() {
            400 => Code::Internal,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            429 | 502 | 503 | 504 => Code::Unavailable,
            _ => Code::Unknown,
        }
    }
}

/// Percent-encodes a `grpc-message` value: the gRPC over HTTP/2 spec
/// (PROTOCOL-HTTP2.md, "Responses") allows only printable ASCII except `%`
/// unencoded.
pub fn percent_encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_print_as_their_numbers() {
        assert_eq!(Code::Ok.as_str(), "0");
        assert_eq!(Code::Unimplemented.as_str(), "12");
        assert_eq!(Code::Unauthenticated.as_str(), "16");
    }

    #[test]
    fn http_statuses_map_per_the_grpc_mapping_doc() {
        assert_eq!(Code::from_http(StatusCode::NOT_FOUND), Code::Unimplemented);
        assert_eq!(Code::from_http(StatusCode::BAD_GATEWAY), Code::Unavailable);
        assert_eq!(Code::from_http(StatusCode::IM_A_TEAPOT), Code::Unknown);
    }

    #[test]
    fn messages_are_percent_encoded_outside_printable_ascii() {
        assert_eq!(percent_encode_message("100% sure\n"), "100%25 sure%0A");
        assert_eq!(percent_encode_message("é"), "%C3%A9");
    }
}
