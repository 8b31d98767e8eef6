//! Upstreams: named groups of targets, the pooled HTTP/1.1 client that
//! re-encodes requests for them, load balancing and passive health.

mod balancer;
mod target;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub use balancer::Balancer;
pub use target::{Target, TargetGuard};

use crate::body::Body;
use crate::config::{HashKey, UpstreamConfig};
use crate::error::ProxyError;

/// How many targets one request may try when connecting fails.
const MAX_CONNECT_ATTEMPTS: usize = 3;

/// A backend service: its targets, how to pick one, and a connection pool.
pub struct Upstream {
    pub name: Arc<str>,
    pub config: UpstreamConfig,
    pub targets: Vec<Arc<Target>>,
    balancer: Balancer,
    client: Client<HttpConnector, Body>,
}

/// A backend response with the guard that keeps its target's slot busy
/// until the response body has been relayed.
pub struct UpstreamResponse {
    pub response: Response<Incoming>,
    pub guard: TargetGuard,
    pub target: Arc<str>,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Self {
        let targets: Vec<Arc<Target>> = config
            .targets
            .iter()
            .map(|t| Arc::new(Target::new(t.authority.clone(), t.weight, config.max_connections_per_target)))
            .collect();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(config.idle_timeout)
            .pool_max_idle_per_host(config.max_idle_per_target)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .set_host(false)
            .build(connector);
        Self {
            name: Arc::from(config.name.as_str()),
            balancer: Balancer::new(config.balance, &targets),
            config: config.clone(),
            targets,
            client,
        }
    }

    /// Sends a request whose URI carries only path and query (headers already
    /// prepared) to one target, retrying other targets on connect failure when
    /// the request has no body (nothing has been sent, so a retry is safe).
    pub async fn send(&self, req: Request<Body>, client_ip: IpAddr) -> Result<UpstreamResponse, ProxyError> {
        let hash_input = self.hash_input(&req, client_ip);
        let path: PathAndQuery = req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        let replayable = http_body::Body::is_end_stream(req.body()) && self.targets.len() > 1;
        let (mut parts, body) = req.into_parts();
        let mut body = Some(body);
        let mut tried: Vec<usize> = Vec::new();
        let mut last_connect_error = None;

        for _ in 0..MAX_CONNECT_ATTEMPTS.min(self.targets.len()) {
            let Some(index) = self.balancer.pick(&self.targets, &hash_input, &tried) else {
                break;
            };
            tried.push(index);
            let target = &self.targets[index];
            let Some(guard) = target.acquire(self.config.connect_timeout).await else {
                return Err(ProxyError::UpstreamSaturated { upstream: self.config.name.clone() });
            };
            let request_body = match body.take() {
                Some(b) => b,
                None => crate::body::empty(),
            };
            let mut upstream_req = Request::new(request_body);
            *upstream_req.method_mut() = parts.method.clone();
            *upstream_req.uri_mut() = target_uri(&target.authority, &path);
            *upstream_req.headers_mut() =
                if replayable { parts.headers.clone() } else { std::mem::take(&mut parts.headers) };
            if !upstream_req.headers().contains_key(http::header::HOST) {
                // `preserve_host = false`: the backend sees its own address.
                let host =
                    http::HeaderValue::from_str(target.authority.as_str()).expect("authority is a valid header value");
                upstream_req.headers_mut().insert(http::header::HOST, host);
            }

            let sent = tokio::time::timeout(self.config.first_byte_timeout, self.client.request(upstream_req)).await;
            match sent {
                Ok(Ok(response)) => {
                    target.record_success();
                    return Ok(UpstreamResponse { response, guard, target: Arc::clone(&target.label) });
                }
                Ok(Err(e)) if e.is_connect() => {
                    if target.record_connect_failure(self.config.eject_after, self.config.eject_for) {
                        tracing::warn!(upstream = %self.name, target = %target.label, "target ejected after consecutive connect failures");
                    }
                    if is_timeout(&e) {
                        return Err(ProxyError::UpstreamTimeout {
                            upstream: self.config.name.clone(),
                            phase: "connect",
                        });
                    }
                    last_connect_error = Some(e);
                    if !replayable {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    if let Some(limit) = body_limit_in(&e) {
                        return Err(ProxyError::BodyTooLarge { limit });
                    }
                    return Err(ProxyError::UpstreamProtocol { upstream: self.config.name.clone(), source: e });
                }
                Err(_elapsed) => {
                    return Err(ProxyError::UpstreamTimeout {
                        upstream: self.config.name.clone(),
                        phase: "first byte",
                    });
                }
            }
        }
        match last_connect_error {
            Some(source) => Err(ProxyError::UpstreamConnect { upstream: self.config.name.clone(), source }),
            None => Err(ProxyError::UpstreamSaturated { upstream: self.config.name.clone() }),
        }
    }

    fn hash_input(&self, req: &Request<Body>, client_ip: IpAddr) -> Vec<u8> {
        if !matches!(self.balancer, Balancer::Hash) {
            return Vec::new();
        }
        match &self.config.hash_key {
            HashKey::Header(name) => match req.headers().get(name) {
                Some(v) => v.as_bytes().to_vec(),
                None => client_ip.to_string().into_bytes(),
            },
            HashKey::ClientIp => client_ip.to_string().into_bytes(),
        }
    }
}

fn target_uri(authority: &Authority, path: &PathAndQuery) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(path.clone());
    Uri::from_parts(parts).expect("scheme, authority and path are all valid")
}

fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        current = e.source();
    }
    false
}

fn body_limit_in(err: &(dyn std::error::Error + 'static)) -> Option<u64> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(too_large) = e.downcast_ref::<crate::body::BodyTooLarge>() {
            return Some(too_large.limit);
        }
        current = e.source();
    }
    None
}
