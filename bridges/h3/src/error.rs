//! Typed errors at the bridge boundary.

/// A connection-level or stream-level HTTP/3 failure (the peer's fault or
/// the connection's end; the core logs it and moves on).
#[derive(Debug)]
pub enum H3Error {
    /// The QUIC connection or its HTTP/3 control streams failed or closed.
    Connection(h3::error::ConnectionError),
    /// One request stream failed (reset, malformed request, headers too large).
    Stream(h3::error::StreamError),
    /// A bidirectional WebTransport stream where a request may come: our
    /// framing does not use them, so it was refused (the client's mistake,
    /// not the connection's).
    WebTransportStream,
    /// The request body failed before the request could be handed on.
    Body(BodyError),
}

impl std::fmt::Display for H3Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            H3Error::Connection(e) => write!(f, "HTTP/3 connection: {e}"),
            H3Error::Stream(e) => write!(f, "HTTP/3 stream: {e}"),
            H3Error::WebTransportStream => f.write_str("bidirectional WebTransport stream refused"),
            H3Error::Body(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for H3Error {}

impl H3Error {
    /// True when the peer closed cleanly (H3_NO_ERROR or an idle timeout):
    /// not worth a warning.
    pub fn is_graceful(&self) -> bool {
        match self {
            H3Error::Connection(e) => e.is_h3_no_error() || format!("{e}").contains("timeout"),
            H3Error::Stream(e) => e.is_h3_no_error(),
            H3Error::WebTransportStream => false,
            H3Error::Body(BodyError::Stream(e)) => e.is_h3_no_error(),
            H3Error::Body(BodyError::Length { .. }) => false,
        }
    }
}

/// Reading the request body failed.
#[derive(Debug)]
pub enum BodyError {
    /// The client reset the stream, or the connection went away mid-body.
    Stream(h3::error::StreamError),
    /// The DATA frames came to more, or ended at less, than the request's
    /// `content-length` (RFC 9114 §4.1.2: a malformed request, which must
    /// not reach a backend as if it were whole).
    Length { declared: u64, received: u64 },
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Stream(e) => write!(f, "HTTP/3 request body: {e}"),
            BodyError::Length { declared, received } => {
                write!(f, "HTTP/3 request body: {received} bytes or more against a content-length of {declared}")
            }
        }
    }
}

impl std::error::Error for BodyError {}

/// Sending a response failed.
#[derive(Debug)]
pub enum SendError {
    /// The client stopped the stream or the connection closed.
    Stream(h3::error::StreamError),
    /// The response body failed mid-stream (for example the backend died);
    /// the stream was reset so the client cannot take a truncated body for a whole one.
    Body(Box<dyn std::error::Error + Send + Sync>),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Stream(e) => write!(f, "HTTP/3 response: {e}"),
            SendError::Body(e) => write!(f, "response body failed mid-stream: {e}"),
        }
    }
}

impl std::error::Error for SendError {}
