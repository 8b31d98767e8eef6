//! Sending a call to a gRPC upstream: per-call load balancing over the
//! targets' multiplexed HTTP/2 connections, with passive health and the
//! call's `grpc-timeout` deadline.
//!
//! Calls go out on our own HTTP/2 client (`crate::http2::client`, which
//! says why not the h2 crate's). Bodies stream both ways frame by frame; HTTP/2 flow control is
//! the backpressure (the request pipe takes the next frame only once the
//! stream has window, and response window is handed back only as the client
//! takes frames). A request body that has fully arrived is sent inline.
//! Dropping the response (client gone) resets the backend stream.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::uri::{self, Authority, PathAndQuery};
use http::{HeaderValue, Request, Response, Uri, header};
use tokio::time::Instant;

use super::grpc_deadline::{DeadlineBody, parse_grpc_timeout};
use super::h2_stream::{ResponseBody, Start};
use super::{ConnectError, MAX_CONNECT_ATTEMPTS, TargetGuard, Upstream};
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::http2::client;
use crate::pipeline::forwarded::Forwarding;

/// A gRPC response head with its streaming body, and the guard that holds
/// the target's in-flight count until the body is done.
pub struct GrpcResponse {
    pub response: Response<Body>,
    pub guard: TargetGuard,
    pub target: Arc<str>,
}

/// Sends of one call on one target before giving up on refusals (a closing
/// connection at checkout, a stream the backend refused unprocessed).
const MAX_REFUSALS: usize = 3;

/// The phase named in a timeout error when the call's deadline passed.
pub const DEADLINE_PHASE: &str = "grpc-timeout deadline";

impl Upstream {
    /// Sends a prepared gRPC request (HTTP/2, `te: trailers`, origin-form
    /// path) to one target. Connect failures move to another target whatever
    /// the body: nothing has been read from it until a connection is ready.
    /// No `first_byte_timeout` here: a client stream may rightly run long
    /// before the response head; `grpc-timeout` bounds the call instead.
    ///
    /// Built without `async fn` layers: an `async fn`'s arguments stay in
    /// its future for its whole life, so the request's head would be held
    /// once per layer. Here the request is taken apart before any future
    /// exists, and the deadline wraps the call in place ([`SendGrpc`]).
    pub fn send_grpc(
        &self,
        req: Request<Body>,
        client_ip: IpAddr,
    ) -> SendGrpc<'_, impl Future<Output = CallResult> + '_> {
        let deadline = parse_grpc_timeout(req.headers()).map(|t| Instant::now() + t);
        let call = self.place_call(req, client_ip);
        SendGrpc { upstream: self, call, timer: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))) }
    }

    fn place_call(&self, req: Request<Body>, client_ip: IpAddr) -> impl Future<Output = CallResult> + '_ {
        let hash_input = self.hash_input(&req, &Forwarding::default(), client_ip);
        let (head, mut body) = req.into_parts();
        // Read (without waiting) what the body already holds: a unary call's
        // message usually has arrived, and then no task pipes the body.
        let start = Start::peek(&mut body);
        self.open_call(head, body, start, hash_input)
    }

    #[allow(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice; see `send_grpc`")]
    fn open_call(
        &self,
        mut head: http::request::Parts,
        body: Body,
        mut start: Start,
        hash_input: Vec<u8>,
    ) -> impl Future<Output = CallResult> + '_ {
        // An `async` block: it keeps the head once, an `async fn` twice.
        async move {
            // `preserve_host` left the client's Host; HTTP/2 carries it as :authority.
            let authority = head.headers.remove(header::HOST);
            drop_unfit_metadata(&mut head.headers);
            let mut tried = [usize::MAX; MAX_CONNECT_ATTEMPTS];
            let mut last_connect_error = None;
            // Taken by the first send that streams it (`Start::Streaming`).
            let mut body = Some(body);
            let mut refused = false;
            for attempt in 0..MAX_CONNECT_ATTEMPTS.min(self.targets.len()) {
                let Some((index, guard)) = self.claim_target(&hash_input, &mut tried, attempt).await? else { break };
                let target = &self.targets[index];
                head.uri = absolute_uri(&head.uri, authority.as_ref(), &target.authority)?;
                let block = client::encode_request(&head);
                // A connection may close between checkout and send (GOAWAY), and
                // a backend may refuse a stream it did not process (REFUSED_STREAM,
                // or above a GOAWAY's last stream; RFC 9113 §8.7): the call goes
                // again, on a fresh connection where the old one is closing, as
                // long as its whole request is still at hand (gRPC's transparent retry).
                for _ in 0..MAX_REFUSALS {
                    let sender = match self.grpc[index].sender().await {
                        Ok(s) => s,
                        Err(e) => {
                            self.note_connect_failure(target);
                            last_connect_error = Some(e);
                            break;
                        }
                    };
                    let (send, mut recv) = match sender.open(&block, start.is_empty()) {
                        Ok(halves) => halves,
                        Err(client::Error::Refused) => {
                            refused = true;
                            continue;
                        }
                        Err(e) => return Err(self.protocol_error(e)),
                    };
                    let pipe = start.send(&mut body, send).map_err(|e| self.protocol_error(e))?;
                    match std::future::poll_fn(|cx| recv.poll_response(cx)).await {
                        Ok(response) => {
                            target.record_success();
                            let response = response.map(|()| body::boxed(ResponseBody::new(recv, pipe)));
                            return Ok((response, guard, Arc::clone(&target.label)));
                        }
                        Err(client::Error::Refused) if start.replayable() => {
                            refused = true;
                            continue;
                        }
                        Err(e) => return Err(self.protocol_error(e)),
                    }
                }
            }
            match last_connect_error {
                // Every target refused the call, unprocessed: it may be tried again later.
                None if refused => Err(self.protocol_error(client::Error::Refused)),
                Some(ConnectError::Timeout) => {
                    Err(ProxyError::UpstreamTimeout { upstream: self.config.name.clone(), phase: "connect" })
                }
                Some(source) => Err(ProxyError::UpstreamConnect { upstream: self.config.name.clone(), source }),
                None => Err(ProxyError::UpstreamSaturated { upstream: self.config.name.clone() }),
            }
        }
    }

    fn protocol_error(&self, e: client::Error) -> ProxyError {
        ProxyError::UpstreamProtocol { upstream: self.config.name.clone(), source: Box::new(e) }
    }
}

/// A placed call's response head, the target's guard and label.
type CallResult = Result<(Response<Body>, TargetGuard, Arc<str>), ProxyError>;

pin_project_lite::pin_project! {
    /// [`Upstream::send_grpc`]'s future: the call, raced against its
    /// `grpc-timeout` deadline when it has one, both held in place.
    pub struct SendGrpc<'a, F> {
        upstream: &'a Upstream,
        #[pin]
        call: F,
        // The deadline, when the call has one (boxed: most calls have
        // none, and a timer would take room in every call's future).
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F: Future<Output = CallResult>> Future for SendGrpc<'_, F> {
    type Output = Result<GrpcResponse, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (response, guard, target) = match this.call.poll(cx) {
            Poll::Ready(result) => result?,
            Poll::Pending => {
                if let Some(timer) = this.timer
                    && timer.as_mut().poll(cx).is_ready()
                {
                    // The call is dropped with this future, which resets its backend stream.
                    return Poll::Ready(Err(ProxyError::UpstreamTimeout {
                        upstream: this.upstream.config.name.clone(),
                        phase: DEADLINE_PHASE,
                    }));
                }
                return Poll::Pending;
            }
        };
        let response = match this.timer.as_ref() {
            None => response,
            Some(timer) => {
                let at = timer.deadline();
                response.map(|body| body::boxed(DeadlineBody::new(body, at)))
            }
        };
        Poll::Ready(Ok(GrpcResponse { response, guard, target }))
    }
}

/// `http://AUTHORITY/path`: HTTP/2 needs `:scheme` and `:authority`
/// (RFC 9113 §8.3.1); the authority is the client's Host when the route
/// preserves it, else the target's address. Built from parts already
/// parsed (the path, the target's authority): nothing is re-parsed per call
/// but a preserved Host.
fn absolute_uri(current: &Uri, host: Option<&HeaderValue>, target: &Authority) -> Result<Uri, ProxyError> {
    let mut parts = uri::Parts::default();
    parts.scheme = Some(uri::Scheme::HTTP);
    parts.authority = Some(match host {
        Some(h) if h.to_str().is_ok() => {
            Authority::try_from(h.as_bytes()).map_err(|_| ProxyError::BadRequest("invalid :authority"))?
        }
        _ => target.clone(),
    });
    parts.path_and_query = Some(current.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("invalid :authority"))
}

/// Removes fields whose names gRPC metadata cannot carry: keys are
/// `[0-9a-z_.-]` only (PROTOCOL-HTTP2.md, "Custom-Metadata"), while an HTTP
/// field name may also hold `!#$%&'*+^`|~`. An HTTP/JSON or gRPC-Web client
/// may send such a field; passed on, a gRPC backend fails the whole call
/// (grpcio: INTERNAL, "Illegal header key"). They cannot reach it as
/// metadata, so they do not go.
fn drop_unfit_metadata(headers: &mut http::HeaderMap) {
    let fits = |name: &http::HeaderName| {
        name.as_str().bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'))
    };
    if headers.keys().all(fits) {
        return;
    }
    let unfit: Vec<http::HeaderName> = headers.keys().filter(|name| !fits(name)).cloned().collect();
    for name in unfit {
        tracing::debug!(field = %name, "field not passed to the gRPC backend: not a metadata key");
        headers.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_grpc_metadata_cannot_carry_are_dropped_and_the_rest_kept() {
        let mut headers = http::HeaderMap::new();
        for name in ["x-user.id_2", "co*tent-type", "x%y", "authorization", "x~tilde"] {
            headers.insert(http::HeaderName::from_bytes(name.as_bytes()).unwrap(), "v".parse().unwrap());
        }
        super::drop_unfit_metadata(&mut headers);
        let mut kept: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["authorization", "x-user.id_2"]);
    }

    /// Every HTTP/2 call's future is boxed whole (cache-cold memory when
    /// many are in flight), so its size is a cost per call: the request is
    /// taken apart before the future exists, the deadline's timer boxed
    /// (most calls have none), and the call an `async` block that keeps its
    /// head once: 728 bytes, 24 of them for keeping a whole request through
    /// the wait for its response, to send it again if the backend refuses it
    /// (1,072 with `open_call` an `async fn`, 1,856 with `async fn` layers
    /// each keeping the request, 1,192 with the timer inline).
    #[tokio::test]
    async fn a_call_future_stays_small() {
        let config = crate::config::parse(
            std::path::Path::new("t.toml"),
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n\
             [[upstream]]\nname = \"u\"\nprotocol = \"grpc\"\ntargets = [\"127.0.0.1:1\"]\n\
             [[route]]\nname = \"r\"\nupstream = \"u\"\n",
        )
        .unwrap();
        let upstream = super::Upstream::new(&config.upstreams[0]);
        let call = upstream.send_grpc(http::Request::new(crate::body::empty()), "127.0.0.1".parse().unwrap());
        let size = std::mem::size_of_val(&call);
        assert!(size <= 728, "the gRPC call's future grew to {size} bytes (debug build)");
    }
}
