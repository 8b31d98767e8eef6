//! Upstreams: named groups of targets, the pooled HTTP/1.1 connections that
//! carry re-encoded requests to them, load balancing and passive health.

mod balancer;
mod grpc;
pub mod grpc_deadline;
pub mod h1;
mod h2_pool;
mod h2_stream;
mod pool;
mod target;
pub(crate) mod tls;
mod upgrade;

use std::net::IpAddr;
use std::sync::{Arc, Weak};

use http::{Request, Response};

pub use balancer::Balancer;
pub use grpc::{DEADLINE_PHASE, GrpcResponse};
pub use h2_pool::H2Pool;
pub use pool::{ConnectError, Pool, PoolSettings};
pub use target::{Target, TargetGuard};

use crate::body::Body;
use crate::config::{HashKey, UpstreamConfig, UpstreamProtocol};
use crate::error::ProxyError;
use crate::pipeline::forwarded::Forwarding;

/// How many targets one request may try when connecting fails.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// A backend service: its targets and how to pick one.
pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    pub targets: Vec<Arc<Target>>,
    balancer: Balancer,
    /// `protocol = "grpc"`: each target's HTTP/2 connections, by target index.
    grpc: Vec<H2Pool>,
}

/// A backend response with the guard that keeps its target's slot until
/// the response body has been relayed (the body itself holds the connection).
pub struct UpstreamResponse<B = h1::ResponseBody> {
    pub response: Response<B>,
    pub guard: TargetGuard,
    pub target: Arc<str>,
}

/// How one attempt on one target failed.
enum AttemptError {
    /// Nothing was sent: another target may be tried.
    Connect(ConnectError),
    /// The request went out (at least partly) and the exchange failed.
    Exchange(h1::H1Error),
}

impl Upstream {
    /// Builds the upstream; must run inside the tokio runtime (it starts the
    /// task that closes expired idle connections).
    pub fn new(config: &UpstreamConfig) -> Self {
        let settings = PoolSettings {
            max_idle: config.max_idle_per_target,
            idle_timeout: config.idle_timeout,
            connect_timeout: config.connect_timeout,
        };
        let targets: Vec<Arc<Target>> = config
            .targets
            .iter()
            .map(|t| {
                Arc::new(Target::with_pool(t.authority.clone(), t.weight, config.max_connections_per_target, settings))
            })
            .collect();
        spawn_idle_reaper(&targets, config.idle_timeout);
        let grpc = match config.protocol {
            UpstreamProtocol::Http1 => Vec::new(),
            UpstreamProtocol::Grpc => {
                let transport = tls::Transport::new(&config.name, config.tls.as_ref());
                targets
                    .iter()
                    .map(|t| {
                        H2Pool::new(
                            &t.authority,
                            config.connect_timeout,
                            transport.clone(),
                            config.grpc_connections_per_target,
                        )
                    })
                    .collect()
            }
        };
        Self {
            grpc,
            name: Arc::from(config.name.as_str()),
            balancer: Balancer::new(config.balance, &targets),
            config: config.clone(),
            targets,
        }
    }

    /// True for `protocol = "grpc"`: calls go over HTTP/2 with [`Upstream::send_grpc`].
    pub fn is_grpc(&self) -> bool {
        self.config.protocol == UpstreamProtocol::Grpc
    }

    /// Sends a prepared request (origin-form URI, headers already rewritten)
    /// to one target, trying other targets when connecting fails and the
    /// request can still be sent whole (nothing of it has gone out).
    /// `forwarding`: the fields [`prepare_request_deferred`] left to write.
    ///
    /// [`prepare_request_deferred`]: crate::pipeline::forwarded::prepare_request_deferred
    pub fn send(
        &self,
        req: Request<Body>,
        forwarding: Forwarding,
        client_ip: IpAddr,
    ) -> impl Future<Output = Result<UpstreamResponse, ProxyError>> + '_ {
        // Everything up to the first wait happens here, before the future is
        // built: it then holds the prepared request, not the request and the
        // result of preparing it (a future is moved whole when it is awaited).
        let hash_input = self.hash_input(&req, &forwarding, client_ip);
        let had_host = req.headers().contains_key(http::header::HOST);
        let prepared = h1::Prepared::gather(req, forwarding).map_err(|e| self.exchange_error(e));
        self.send_prepared(prepared, hash_input, had_host)
    }

    /// An `async` block rather than an `async fn`, which would keep the
    /// prepared request (400 bytes) twice in this future, boxed per request.
    #[allow(clippy::manual_async_fn, reason = "an async fn keeps its arguments twice")]
    fn send_prepared(
        &self,
        mut prepared: Result<h1::Prepared, ProxyError>,
        hash_input: Vec<u8>,
        had_host: bool,
    ) -> impl Future<Output = Result<UpstreamResponse, ProxyError>> + '_ {
        async move {
            // Used in place: `prepared?` would make a second copy in the future.
            let prepared = match &mut prepared {
                Ok(prepared) => prepared,
                Err(_) => return Err(prepared.err().expect("an error")),
            };
            let mut tried = [usize::MAX; MAX_CONNECT_ATTEMPTS];
            let mut last_connect_error = None;

            for attempt in 0..MAX_CONNECT_ATTEMPTS.min(self.targets.len()) {
                let Some((index, guard)) = self.claim_target(&hash_input, &mut tried, attempt).await? else { break };
                let target = &self.targets[index];
                if !had_host {
                    // `preserve_host = false` or no Host from the client: the backend sees its own address.
                    prepared.set_host(target.authority.as_str());
                }
                prepared.encode();
                let deadline = tokio::time::Instant::now() + self.config.first_byte_timeout;
                match exchange(target, prepared, deadline).await {
                    Ok(response) => {
                        target.record_success();
                        return Ok(UpstreamResponse { response, guard, target: Arc::clone(&target.label) });
                    }
                    Err(AttemptError::Connect(e)) => {
                        self.note_connect_failure(target);
                        last_connect_error = Some(e);
                        if !prepared.is_replayable() {
                            break;
                        }
                    }
                    Err(AttemptError::Exchange(h1::H1Error::FirstByteTimeout)) => {
                        return Err(ProxyError::UpstreamTimeout {
                            upstream: self.config.name.clone(),
                            phase: "first byte",
                        });
                    }
                    Err(AttemptError::Exchange(e)) => return Err(self.exchange_error(e)),
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

    /// The client's fault (its body broke or went over the limit) or the backend's.
    fn exchange_error(&self, e: h1::H1Error) -> ProxyError {
        match e {
            h1::H1Error::ClientBody(body) => {
                if let Some(limit) = crate::body::body_too_large_limit(&*body) {
                    ProxyError::BodyTooLarge { limit }
                } else if let Some(after) = crate::body::body_stalled_after(&*body) {
                    ProxyError::BodyStalled { after }
                } else {
                    ProxyError::BadRequest("the request body is malformed or incomplete")
                }
            }
            h1::H1Error::RequestLength(_) => ProxyError::BadRequest("the request body does not match its length"),
            h1::H1Error::RequestLengthInvalid(what) => ProxyError::BadRequest(what),
            e => ProxyError::UpstreamProtocol { upstream: self.config.name.clone(), source: e.into() },
        }
    }

    /// Picks the next target this request has not tried and claims a
    /// connection slot on it (every protocol's send loop starts here).
    /// `Ok(None)`: no target left; an error when every slot stays busy.
    async fn claim_target(
        &self,
        hash_input: &[u8],
        tried: &mut [usize; MAX_CONNECT_ATTEMPTS],
        attempt: usize,
    ) -> Result<Option<(usize, TargetGuard)>, ProxyError> {
        let Some(index) = self.balancer.pick(&self.targets, hash_input, &tried[..attempt]) else { return Ok(None) };
        tried[attempt] = index;
        match self.targets[index].acquire(self.config.connect_timeout).await {
            Some(guard) => Ok(Some((index, guard))),
            None => Err(ProxyError::UpstreamSaturated { upstream: self.config.name.clone() }),
        }
    }

    /// Counts a failed connect against `target`, logging when it gets ejected.
    fn note_connect_failure(&self, target: &Target) {
        if target.record_connect_failure(self.config.eject_after, self.config.eject_for) {
            tracing::warn!(upstream = %self.name, target = %target.label, "target ejected after consecutive connect failures");
        }
    }

    fn hash_input(&self, req: &Request<Body>, forwarding: &Forwarding, client_ip: IpAddr) -> Vec<u8> {
        if !matches!(self.balancer, Balancer::Hash) {
            return Vec::new();
        }
        match &self.config.hash_key {
            HashKey::Header(name) => match req.headers().get(name).cloned().or_else(|| forwarding.get(name)) {
                Some(v) => v.as_bytes().to_vec(),
                None => client_ip.to_string().into_bytes(),
            },
            HashKey::ClientIp => client_ip.to_string().into_bytes(),
        }
    }
}

/// Runs one request on a pooled connection to `target`, or a new one. A
/// pooled connection the backend closed while idle is passed over as long
/// as the request can still go out whole.
async fn exchange(
    target: &Arc<Target>,
    prepared: &mut h1::Prepared,
    deadline: tokio::time::Instant,
) -> Result<Response<h1::ResponseBody>, AttemptError> {
    while let Some(conn) = target.pool.checkout() {
        match h1::exchange(conn, prepared, true, target, deadline).await {
            Ok(response) => return Ok(response),
            Err(failed) if failed.retryable => continue,
            Err(failed) => return Err(AttemptError::Exchange(failed.error)),
        }
    }
    // Boxed: connecting is the rare path, and its state would otherwise
    // enlarge every request's future.
    let conn = Box::pin(target.pool.connect(&target.authority)).await.map_err(AttemptError::Connect)?;
    h1::exchange(conn, prepared, false, target, deadline).await.map_err(|failed| AttemptError::Exchange(failed.error))
}

/// `preserve_host = false` (or a client that sent no Host): the backend sees
/// its own address, since HTTP/1.1 requires a Host (RFC 9112 §3.2).
fn set_default_host(req: &mut Request<Body>, target: &Target) {
    if !req.headers().contains_key(http::header::HOST) {
        let host =
            http::HeaderValue::from_str(target.authority.as_str()).expect("an authority is a valid header value");
        req.headers_mut().insert(http::header::HOST, host);
    }
}

/// A body-less copy of a request head, for retrying on another target.
fn copy_head(req: &Request<Body>) -> Request<Body> {
    let mut copy = Request::new(crate::body::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    copy
}

/// Closes idle connections past `idle_timeout` even when no traffic comes
/// to check them out; ends when the upstream is dropped (config reload).
fn spawn_idle_reaper(targets: &[Arc<Target>], idle_timeout: std::time::Duration) {
    let weak: Vec<Weak<Target>> = targets.iter().map(Arc::downgrade).collect();
    let period = (idle_timeout / 2).max(std::time::Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let mut alive = false;
            for target in weak.iter().filter_map(Weak::upgrade) {
                alive = true;
                target.pool.evict_expired();
            }
            if !alive {
                return;
            }
        }
    });
}
