//! Which close code answers which failure (RFC 6455 §7.4.1 and the IANA
//! "WebSocket Close Code Number Registry", which adds 1012–1014).

use tungstenite::error::{Error, ProtocolError};
pub use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Utf8Bytes;
pub use tungstenite::protocol::frame::coding::CloseCode;

/// 1014 Bad Gateway (IANA registry): we are a gateway and the backend sent
/// something invalid; tungstenite names it only as a number.
pub const BAD_GATEWAY: u16 = 1014;

/// How a peer's read failed, as far as closing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFault {
    /// The peer broke the framing rules (bad opcode, unmasked client frame,
    /// fragmented control frame, reserved bits...): 1002 (RFC 6455 §7.4.1).
    Protocol,
    /// A text message that is not UTF-8: 1007 (RFC 6455 §8.1).
    InvalidUtf8,
    /// A frame or message over the configured limit: 1009 (RFC 6455 §7.4.1).
    TooBig,
    /// The connection closed or reset without a close handshake: there is
    /// nobody left to send a close frame to.
    Gone,
}

impl ReadFault {
    /// Classifies a tungstenite read error.
    pub fn of(err: &Error) -> ReadFault {
        match err {
            Error::Utf8(_) => ReadFault::InvalidUtf8,
            Error::Capacity(_) => ReadFault::TooBig,
            Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => ReadFault::Gone,
            Error::Protocol(_) | Error::AttackAttempt => ReadFault::Protocol,
            _ => ReadFault::Gone,
        }
    }

    /// The close code to send the faulty peer, if it can still be reached.
    pub fn code(self) -> Option<CloseCode> {
        match self {
            ReadFault::Protocol => Some(CloseCode::Protocol),
            ReadFault::InvalidUtf8 => Some(CloseCode::Invalid),
            ReadFault::TooBig => Some(CloseCode::Size),
            ReadFault::Gone => None,
        }
    }

    /// Short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadFault::Protocol => "protocol_error",
            ReadFault::InvalidUtf8 => "invalid_utf8",
            ReadFault::TooBig => "too_big",
            ReadFault::Gone => "gone",
        }
    }
}

/// A close frame with a static reason (reasons are at most 123 bytes, RFC 6455 §5.5.1).
pub fn frame(code: impl Into<CloseCode>, reason: &'static str) -> CloseFrame {
    debug_assert!(reason.len() <= 123);
    CloseFrame { code: code.into(), reason: Utf8Bytes::from_static(reason) }
}

/// The numeric code of an optional close frame (1005 "no status" when absent, RFC 6455 §7.1.5).
pub fn code_of(frame: Option<&CloseFrame>) -> u16 {
    frame.map_or(1005, |f| f.code.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_map_to_the_rfc_codes() {
        let utf8 = Error::Utf8("bad".into());
        assert_eq!(ReadFault::of(&utf8).code(), Some(CloseCode::Invalid));
        let proto = Error::Protocol(ProtocolError::FragmentedControlFrame);
        assert_eq!(u16::from(ReadFault::of(&proto).code().unwrap()), 1002);
        let reset = Error::Protocol(ProtocolError::ResetWithoutClosingHandshake);
        assert_eq!(ReadFault::of(&reset), ReadFault::Gone);
        let big = Error::Capacity(tungstenite::error::CapacityError::MessageTooLong { size: 2, max_size: 1 });
        assert_eq!(u16::from(ReadFault::of(&big).code().unwrap()), 1009);
        assert_eq!(u16::from(CloseCode::from(BAD_GATEWAY)), 1014);
        assert_eq!(code_of(None), 1005);
    }
}
