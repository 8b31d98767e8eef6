//! Sending a call to a gRPC upstream: per-call load balancing over the
//! targets' multiplexed HTTP/2 connections, with passive health and the
//! call's `grpc-timeout` deadline.
//!
//! Bodies stream both ways frame by frame; HTTP/2 flow control is the
//! backpressure (hyper writes a request frame only when the stream has
//! window, and reads response frames only as the client takes them).
//! Dropping the response (client gone) resets the backend stream.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, Uri, header};
use tokio::time::Instant;

use super::grpc_deadline::{DeadlineBody, parse_grpc_timeout};
use super::{ConnectError, MAX_CONNECT_ATTEMPTS, TargetGuard, Upstream};
use crate::body::{self, Body};
use crate::error::ProxyError;

/// A gRPC response head with its streaming body, and the guard that holds
/// the target's in-flight count until the body is done.
pub struct GrpcResponse {
    pub response: Response<Body>,
    pub guard: TargetGuard,
    pub target: Arc<str>,
}

/// The phase named in a timeout error when the call's deadline passed.
pub const DEADLINE_PHASE: &str = "grpc-timeout deadline";

impl Upstream {
    /// Sends a prepared gRPC request (HTTP/2, `te: trailers`, origin-form
    /// path) to one target. Connect failures move to another target whatever
    /// the body: nothing has been read from it until a connection is ready.
    /// No `first_byte_timeout` here: a client stream may rightly run long
    /// before the response head; `grpc-timeout` bounds the call instead.
    pub async fn send_grpc(&self, req: Request<Body>, client_ip: IpAddr) -> Result<GrpcResponse, ProxyError> {
        let deadline = parse_grpc_timeout(req.headers()).map(|t| Instant::now() + t);
        let sending = self.place_call(req, client_ip);
        let (response, guard, target) = match deadline {
            None => sending.await?,
            Some(at) => tokio::time::timeout_at(at, sending).await.map_err(|_| ProxyError::UpstreamTimeout {
                upstream: self.config.name.clone(),
                phase: DEADLINE_PHASE,
            })??,
        };
        let (parts, incoming) = response.into_parts();
        let body = match deadline {
            None => body::boxed(incoming),
            Some(at) => body::boxed(DeadlineBody::new(body::boxed(incoming), at)),
        };
        Ok(GrpcResponse { response: Response::from_parts(parts, body), guard, target })
    }

    async fn place_call(
        &self,
        mut req: Request<Body>,
        client_ip: IpAddr,
    ) -> Result<(Response<hyper::body::Incoming>, TargetGuard, Arc<str>), ProxyError> {
        let hash_input = self.hash_input(&req, client_ip);
        // `preserve_host` left the client's Host; HTTP/2 carries it as :authority.
        let authority = req.headers_mut().remove(header::HOST);
        let mut tried = [usize::MAX; MAX_CONNECT_ATTEMPTS];
        let mut last_connect_error = None;
        for attempt in 0..MAX_CONNECT_ATTEMPTS.min(self.targets.len()) {
            let Some((index, guard)) = self.claim_target(&hash_input, &mut tried, attempt).await? else { break };
            let target = &self.targets[index];
            *req.uri_mut() = absolute_uri(req.uri(), authority.as_ref(), target.authority.as_str())?;
            // A connection may close between checkout and send (GOAWAY): the
            // request comes back unsent and goes on a fresh connection.
            let mut unsent = Some(req);
            for _ in 0..2 {
                let mut sender = match self.grpc[index].sender().await {
                    Ok(s) => s,
                    Err(e) => {
                        self.note_connect_failure(target);
                        last_connect_error = Some(e);
                        break;
                    }
                };
                let request = unsent.take().expect("a request is in hand");
                match sender.try_send_request(request).await {
                    Ok(response) => {
                        target.record_success();
                        return Ok((response, guard, Arc::clone(&target.label)));
                    }
                    Err(mut e) => match e.take_message() {
                        Some(back) => unsent = Some(back),
                        None => {
                            return Err(ProxyError::UpstreamProtocol {
                                upstream: self.config.name.clone(),
                                source: e.into_error(),
                            });
                        }
                    },
                }
            }
            match unsent {
                Some(back) => req = back,
                None => unreachable!("the request was either sent or handed back"),
            }
        }
        match last_connect_error {
            Some(ConnectError::Timeout) => {
                Err(ProxyError::UpstreamTimeout { upstream: self.config.name.clone(), phase: "connect" })
            }
            Some(source) => Err(ProxyError::UpstreamConnect { upstream: self.config.name.clone(), source }),
            None => Err(ProxyError::UpstreamSaturated { upstream: self.config.name.clone() }),
        }
    }
}

/// `http://AUTHORITY/path`: HTTP/2 needs `:scheme` and `:authority`
/// (RFC 9113 §8.3.1); the authority is the client's Host when the route
/// preserves it, else the target's address.
fn absolute_uri(current: &Uri, host: Option<&HeaderValue>, target: &str) -> Result<Uri, ProxyError> {
    let authority = host.and_then(|h| h.to_str().ok()).unwrap_or(target);
    let path = current.path_and_query().map_or("/", |pq| pq.as_str());
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .map_err(|_| ProxyError::BadRequest("invalid :authority"))
}
