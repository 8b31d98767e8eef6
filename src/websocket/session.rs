//! Access-log lines for a WebSocket connection: one when it opens, one when
//! it closes with its duration, messages and bytes each way and how it ended.
//! (The upgrade request itself also gets the ordinary access line, status 101/200.)

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use tollgate_websocket::relay::Report;

use crate::config::WebSocketMode;
use crate::listen::limits::IpConnectionGuard;
use crate::model::RequestContext;

/// What the open and close lines say, copied from the upgrade request.
pub struct Session {
    request_id: String,
    client: IpAddr,
    listener: Arc<str>,
    protocol: &'static str,
    route: Option<Arc<str>>,
    pub(super) upstream: Option<Arc<str>>,
    pub(super) target: Option<Arc<str>>,
    mode: &'static str,
    start: Instant,
    enabled: bool,
    /// Counts the upgraded connection against `max_connections_per_ip` while the session lives.
    pub(super) held: Option<IpConnectionGuard>,
    /// Counts the session for shutdown, which waits for the last one.
    _live: crate::gauge::Live,
}

impl Session {
    pub fn new(ctx: &RequestContext, mode: WebSocketMode, enabled: bool) -> Self {
        Self {
            request_id: ctx.id_str().to_string(),
            client: ctx.client_ip,
            listener: Arc::clone(&ctx.connection.listener.name),
            protocol: ctx.protocol.as_str(),
            route: ctx.route.clone(),
            upstream: ctx.upstream.clone(),
            target: ctx.target.clone(),
            mode: match mode {
                WebSocketMode::Tunnel => "tunnel",
                WebSocketMode::Http => "http",
            },
            start: Instant::now(),
            enabled,
            held: None,
            _live: crate::gauge::WEBSOCKET_SESSIONS.enter(),
        }
    }

    /// The connection was handed over and the bridge is running.
    pub fn opened(&self) {
        if !self.enabled {
            return;
        }
        tracing::info!(
            target: "access",
            event = "websocket_open",
            request_id = %self.request_id,
            client = %self.client,
            listener = %self.listener,
            protocol = self.protocol,
            mode = self.mode,
            route = self.route.as_deref().unwrap_or("-"),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            target = self.target.as_deref().unwrap_or("-"),
        );
    }

    /// The connection ended; `report` counts data messages and payload bytes.
    pub fn closed(&self, report: &Report) {
        if !self.enabled {
            return;
        }
        tracing::info!(
            target: "access",
            event = "websocket_close",
            request_id = %self.request_id,
            client = %self.client,
            listener = %self.listener,
            protocol = self.protocol,
            mode = self.mode,
            route = self.route.as_deref().unwrap_or("-"),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            target = self.target.as_deref().unwrap_or("-"),
            duration_ms = self.start.elapsed().as_secs_f64() * 1000.0,
            messages_in = report.upstream.messages,
            bytes_in = report.upstream.bytes,
            messages_out = report.downstream.messages,
            bytes_out = report.downstream.bytes,
            end = %report.end,
        );
    }
}
