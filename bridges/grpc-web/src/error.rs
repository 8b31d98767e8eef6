//! Why a gRPC-Web request body could not be translated, with the gRPC status
//! each failure is answered with (a clear status, never a hang).

use std::sync::{Arc, OnceLock};

use crate::Code;

/// A malformed gRPC-Web request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrpcWebError {
    /// `-text` body that is not base64 (RFC 4648 §4, standard alphabet, padded groups).
    InvalidBase64,
    /// `-text` body whose length is not a whole number of 4-character groups.
    TruncatedBase64,
    /// A frame whose flag byte is neither 0x00 (message) nor 0x01 (compressed message).
    BadFrameFlag(u8),
    /// A trailer frame (flag 0x80) sent by the client: only servers send trailers.
    TrailersInRequest,
    /// The body ended inside a frame's 5-byte header or its message.
    TruncatedFrame,
}

impl GrpcWebError {
    /// The gRPC status the client gets: bad base64 is the client's argument
    /// (INVALID_ARGUMENT); broken framing is a protocol error (INTERNAL, as
    /// gRPC implementations answer one).
    pub fn code(&self) -> Code {
        match self {
            GrpcWebError::InvalidBase64 | GrpcWebError::TruncatedBase64 => Code::InvalidArgument,
            _ => Code::Internal,
        }
    }
}

impl std::fmt::Display for GrpcWebError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrpcWebError::InvalidBase64 => f.write_str("grpc-web-text request body is not valid base64"),
            GrpcWebError::TruncatedBase64 => {
                f.write_str("grpc-web-text request body ends inside a 4-character base64 group")
            }
            GrpcWebError::BadFrameFlag(flag) => {
                write!(f, "grpc-web request frame has flag byte 0x{flag:02x}; expected 0x00 or 0x01")
            }
            GrpcWebError::TrailersInRequest => f.write_str("grpc-web request carries a trailer frame (flag 0x80)"),
            GrpcWebError::TruncatedFrame => f.write_str("grpc-web request body ends inside a frame"),
        }
    }
}

impl std::error::Error for GrpcWebError {}

/// Where the request decoder leaves its error so the response side (and the
/// gateway, if no response head came) can answer with its status: the
/// request body's own error only reaches the upstream connection.
#[derive(Debug, Clone, Default)]
pub struct ErrorSlot(Arc<OnceLock<GrpcWebError>>);

impl ErrorSlot {
    /// Records the first error; later ones are ignored.
    pub fn set(&self, error: GrpcWebError) {
        let _ = self.0.set(error);
    }

    /// The recorded error, if the request body was malformed.
    pub fn get(&self) -> Option<&GrpcWebError> {
        self.0.get()
    }
}
