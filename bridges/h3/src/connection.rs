//! One HTTP/3 connection: SETTINGS, the control streams, and request streams
//! handed out one by one.

use std::future::poll_fn;

use bytes::Bytes;
use h3::proto::frame::Frame;
use h3::server::RequestResolver;
use http::{Request, Version, header};

use crate::body::RequestBody;
use crate::error::H3Error;
use crate::respond::Responder;
use crate::webtransport::{SessionConnection, SessionRequest};

/// HTTP/3 settings the core chooses per listener.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// SETTINGS_MAX_FIELD_SECTION_SIZE: a larger request header block gets 431
    /// (RFC 9114 §4.2.2), answered by h3 before the request reaches us.
    pub max_field_section_size: u64,
    /// Offer WebTransport (SETTINGS_ENABLE_WEBTRANSPORT, extended CONNECT,
    /// datagrams), one session per connection.
    pub webtransport: bool,
}

/// A QUIC connection speaking HTTP/3. Its owner must keep calling
/// [`Connection::accept`]: that also drives the control stream (SETTINGS, GOAWAY).
pub struct Connection {
    inner: h3::server::Connection<h3_quinn::Connection, Bytes>,
    /// Kept for a WebTransport session, whose streams we open ourselves.
    quic: quinn::Connection,
}

impl Connection {
    /// Exchanges SETTINGS on a freshly accepted QUIC connection.
    pub async fn new(quic: quinn::Connection, settings: &Settings) -> Result<Self, H3Error> {
        let mut builder = h3::server::builder();
        builder.max_field_section_size(settings.max_field_section_size);
        if settings.webtransport {
            builder
                .enable_webtransport(true)
                .enable_extended_connect(true)
                .enable_datagram(true)
                .max_webtransport_sessions(1)
                .send_grease(true);
        }
        let inner = builder.build(h3_quinn::Connection::new(quic.clone())).await.map_err(H3Error::Connection)?;
        Ok(Self { inner, quic })
    }

    /// The next request stream, or `None` once the client has said GOAWAY and
    /// its requests are done. Headers are not read yet: see [`Incoming::resolve`].
    pub async fn accept(&mut self) -> Result<Option<Incoming>, H3Error> {
        Ok(self.inner.accept().await.map_err(H3Error::Connection)?.map(Incoming))
    }

    /// Turns this connection into the home of a WebTransport session
    /// (the session needs the whole connection: its streams arrive where
    /// h3 accepts requests); later requests on it come from
    /// [`SessionConnection::accept`].
    pub async fn into_session(self, request: SessionRequest) -> Result<SessionConnection, H3Error> {
        SessionConnection::open(request, self.inner, self.quic).await
    }

    /// Sends GOAWAY (RFC 9114 §5.2): requests already accepted go on, new
    /// ones are refused with H3_REQUEST_REJECTED so the client may retry elsewhere.
    pub async fn goaway(&mut self) -> Result<(), H3Error> {
        self.inner.shutdown(0).await.map_err(H3Error::Connection)
    }
}

/// A request stream whose headers have not been read yet.
pub struct Incoming(RequestResolver<h3_quinn::Connection, Bytes>);

/// What a request stream turned out to carry.
#[allow(clippy::large_enum_variant)] // moved once per request; boxing a variant would cost each an allocation
pub enum Resolved {
    /// An HTTP request, with its streaming body and the response half.
    Request(Request<RequestBody>, Responder),
    /// An extended CONNECT with `:protocol = webtransport`: answer it with
    /// [`Connection::into_session`] or [`SessionRequest::refuse`].
    WebTransport(SessionRequest),
}

impl Incoming {
    /// Reads the request headers (QPACK) and splits the stream into the
    /// request (with its streaming body) and the half that sends the response.
    ///
    /// A request that may have a body of unknown length is held until its
    /// first DATA frame or FIN, except gRPC and CONNECT streams, whose
    /// clients may wait for the server before sending anything.
    ///
    /// A bidirectional WebTransport stream (its first frame says so,
    /// draft-02 §4.2) is not a request: it is refused, as our framing does
    /// not use them.
    pub async fn resolve(self) -> Result<Resolved, H3Error> {
        let mut resolver = self.0;
        // What `resolve_request` does, with a look at the first frame in between.
        let first = poll_fn(|cx| resolver.frame_stream.poll_next(cx)).await;
        if let Ok(Some(Frame::WebTransportStream(_))) = first {
            // Dropping the stream stops it both ways.
            return Err(H3Error::WebTransportStream);
        }
        let resolved = resolver.accept_with_frame(first).map_err(H3Error::Stream)?;
        let (head, stream) = resolved.resolve().await.map_err(H3Error::Stream)?;
        if crate::webtransport::is_session_request(&head) {
            return Ok(Resolved::WebTransport(SessionRequest::new(head, stream)));
        }
        let (send, recv) = stream.split();
        let (mut parts, ()) = head.into_parts();
        parts.version = Version::HTTP_3;
        let length = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
        let mut body = RequestBody::new(recv, length);
        let waits_for_server = parts.method == http::Method::CONNECT
            || parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        if length.is_none() && !waits_for_server {
            body.settle().await.map_err(H3Error::Body)?;
        }
        Ok(Resolved::Request(Request::from_parts(parts, body), Responder::new(send)))
    }

    /// A stream accepted by a session's connection.
    pub(crate) fn new(resolver: RequestResolver<h3_quinn::Connection, Bytes>) -> Self {
        Incoming(resolver)
    }
}
