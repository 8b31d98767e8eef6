//! Why a stream or a connection of ours (client or server) failed.

use std::sync::Arc;

use h2::Reason;

/// A stream's or a connection's failure. Cloned to every stream a
/// connection failure ends. "Peer" is the backend for our client, the
/// client for our server.
#[derive(Debug, Clone)]
pub enum Error {
    /// The peer reset the stream (RST_STREAM) with this code.
    Reset(Reason),
    /// The peer will not process the stream (REFUSED_STREAM, or above
    /// the last stream of its GOAWAY): nothing was done, a retry is safe.
    Refused,
    /// The peer ended the connection with GOAWAY and this error code.
    GoAway(Reason),
    /// The peer broke the protocol; we reset the stream or closed the
    /// connection with `reason`.
    Protocol { reason: Reason, what: &'static str },
    /// The connection's I/O failed or the peer closed it.
    Io(Arc<std::io::Error>),
    /// The connection closed with this stream unfinished.
    Closed,
    /// A keep-alive PING went unanswered: the peer is gone.
    KeepAliveTimedOut,
    /// We reset the stream ourselves (it was abandoned or its body failed).
    Cancelled(Reason),
}

impl Error {
    /// The HTTP/2 error code this failure carries (passed on to the other side's stream).
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Error::Reset(r) | Error::GoAway(r) | Error::Cancelled(r) => Some(*r),
            Error::Protocol { reason, .. } => Some(*reason),
            Error::Refused => Some(Reason::REFUSED_STREAM),
            Error::Io(_) | Error::Closed | Error::KeepAliveTimedOut => None,
        }
    }

    /// A PROTOCOL_ERROR by the peer, saying what.
    pub(crate) fn protocol(what: &'static str) -> Self {
        Error::Protocol { reason: Reason::PROTOCOL_ERROR, what }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Reset(r) => write!(f, "peer reset the stream: {r}"),
            Error::Refused => f.write_str("peer refused the stream"),
            Error::GoAway(r) => write!(f, "peer closed the connection: {r}"),
            Error::Protocol { reason, what } => write!(f, "HTTP/2 protocol error by the peer ({reason}): {what}"),
            Error::Io(e) => write!(f, "connection failed: {e}"),
            Error::Closed => f.write_str("connection closed"),
            Error::KeepAliveTimedOut => f.write_str("peer missed a keep-alive PING"),
            Error::Cancelled(r) => write!(f, "stream reset by Tollgate: {r}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(&**e),
            _ => None,
        }
    }
}
