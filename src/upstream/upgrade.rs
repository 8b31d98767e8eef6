//! Upgrade requests (WebSocket, RFC 6455 §4.1) to a backend: each on a new
//! HTTP/1.1 connection made with hyper's client connection API and
//! `with_upgrades()`, never taken from or returned to the keep-alive pool,
//! since after a 101 the connection belongs to the tunnel.
//!
//! Why hyper's client rather than tokio-tungstenite's: the request head is
//! the one the pipeline prepared (path rewrite, forwarding headers, policy
//! edits) and goes out as-is; a backend that refuses (401, 404, 503) gets its
//! response relayed to the client as plain HTTP, where tungstenite's client
//! would only report an error; the connect timeout, target choice, ejection
//! and connection limits are the same as for every other request.

use std::net::IpAddr;
use std::sync::Arc;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{MAX_CONNECT_ATTEMPTS, Target, Upstream, UpstreamResponse, copy_head, set_default_host};
use crate::body::Body;
use crate::error::ProxyError;
use crate::pipeline::forwarded::Forwarding;
use crate::upstream::ConnectError;

impl Upstream {
    /// Sends an upgrade request (no body) on a fresh connection to one
    /// target, trying other targets when connecting fails (nothing was sent,
    /// so that is safe). The response is the backend's answer; on 101 its
    /// connection can be taken with `hyper::upgrade::on`.
    pub async fn send_upgrade(
        &self,
        req: Request<Body>,
        client_ip: IpAddr,
    ) -> Result<UpstreamResponse<Incoming>, ProxyError> {
        let hash_input = self.hash_input(&req, &Forwarding::default(), client_ip);
        let mut tried = [usize::MAX; MAX_CONNECT_ATTEMPTS];
        let mut last_connect_error = None;
        for attempt in 0..MAX_CONNECT_ATTEMPTS.min(self.targets.len()) {
            let Some((index, guard)) = self.claim_target(&hash_input, &mut tried, attempt).await? else { break };
            let target = &self.targets[index];
            let mut sender = match self.connect_upgradable(target).await {
                Ok(s) => s,
                Err(e) => {
                    self.note_connect_failure(target);
                    last_connect_error = Some(e);
                    continue;
                }
            };
            let mut request = copy_head(&req);
            set_default_host(&mut request, target);
            return match tokio::time::timeout(self.config.first_byte_timeout, sender.send_request(request)).await {
                Ok(Ok(response)) => {
                    target.record_success();
                    Ok(UpstreamResponse { response, guard, target: Arc::clone(&target.label) })
                }
                Ok(Err(source)) => {
                    Err(ProxyError::UpstreamProtocol { upstream: self.config.name.clone(), source: source.into() })
                }
                Err(_) => Err(ProxyError::UpstreamTimeout { upstream: self.config.name.clone(), phase: "upgrade" }),
            };
        }
        match last_connect_error {
            Some(ConnectError::Timeout) => {
                Err(ProxyError::UpstreamTimeout { upstream: self.config.name.clone(), phase: "connect" })
            }
            Some(source) => Err(ProxyError::UpstreamConnect { upstream: self.config.name.clone(), source }),
            None => Err(ProxyError::UpstreamSaturated { upstream: self.config.name.clone() }),
        }
    }

    /// A new HTTP/1.1 connection whose driver hands the socket over after a 101.
    async fn connect_upgradable(
        &self,
        target: &Target,
    ) -> Result<hyper::client::conn::http1::SendRequest<Body>, ConnectError> {
        let connecting = tokio::net::TcpStream::connect(target.authority.as_str());
        let stream = match tokio::time::timeout(self.config.connect_timeout, connecting).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(ConnectError::Io(e)),
            Err(_) => return Err(ConnectError::Timeout),
        };
        let _ = stream.set_nodelay(true);
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(ConnectError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(error = %e, "upstream upgrade connection ended with an error");
            }
        });
        Ok(sender)
    }
}
