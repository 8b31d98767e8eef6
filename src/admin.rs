//! The admin endpoint: `/healthz` for probes, `/status` as JSON and `/` as a
//! small HTML status page (listeners, routes, upstream targets and their
//! health, request counters).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::body::{self, Body};
use crate::gauge;
use crate::pipeline::Gateway;

/// Shared state the admin pages read.
pub struct Admin {
    pub gateway: Arc<ArcSwap<Gateway>>,
    pub started: Instant,
}

impl Admin {
    /// Serves admin requests on `tcp` until `stop` flips.
    pub async fn run(self: Arc<Self>, tcp: TcpListener, mut stop: watch::Receiver<bool>) {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.changed() => break,
                accepted = tcp.accept() => match accepted { Ok(a) => a, Err(_) => continue },
            };
            let admin = Arc::clone(&self);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = Arc::clone(&admin);
                    async move { Ok::<_, Infallible>(admin.answer(&req)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Body> {
        match req.uri().path() {
            "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n".into()),
            "/status" => respond(StatusCode::OK, "application/json", self.status().to_string()),
            "/" => respond(StatusCode::OK, "text/html; charset=utf-8", self.page()),
            _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        }
    }

    /// The status document, also rendered by the HTML page.
    pub fn status(&self) -> serde_json::Value {
        let gateway = self.gateway.load();
        let stats = &gateway.stats;
        let config = &gateway.config;
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "requests": {
                "total": stats.requests.load(Ordering::Relaxed),
                "2xx": stats.responses_2xx.load(Ordering::Relaxed),
                "3xx": stats.responses_3xx.load(Ordering::Relaxed),
                "4xx": stats.responses_4xx.load(Ordering::Relaxed),
                "5xx": stats.responses_5xx.load(Ordering::Relaxed),
                "in_flight": stats.active.load(Ordering::Relaxed),
            },
            "open": {
                "http_connections": gauge::HTTP_CONNECTIONS.get(),
                "websocket_sessions": gauge::WEBSOCKET_SESSIONS.get(),
                "quic_connections": gauge::QUIC_CONNECTIONS.get(),
            },
            "listeners": config.listeners.iter().map(|l| json!({
                "name": l.name, "bind": l.bind.to_string(), "tls": l.tls.is_some(), "http3": l.http3.is_some(),
            })).collect::<Vec<_>>(),
            "http3": {
                "connections": gauge::QUIC_CONNECTIONS.get(),
                "streams": gauge::HTTP3_STREAMS.get(),
            },
            "routes": config.routes.iter().map(|r| json!({
                "name": r.name,
                "action": match &r.action {
                    crate::config::RouteAction::Proxy { upstream } => format!("upstream {upstream}"),
                    crate::config::RouteAction::Static { dir } => format!("static {}", dir.display()),
                },
            })).collect::<Vec<_>>(),
            "upstreams": gateway.upstreams.iter().map(|u| json!({
                "name": &*u.name,
                "targets": u.targets.iter().map(|t| json!({
                    "address": &*t.label, "weight": t.weight, "healthy": t.is_healthy(), "in_flight": t.in_flight(),
                    "idle_connections": t.pool.idle_count(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }

    fn page(&self) -> String {
        let status = self.status();
        let pretty = serde_json::to_string_pretty(&status).unwrap_or_default();
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Tollgate status</title>\
             <meta http-equiv=\"refresh\" content=\"5\">\
             <style>body{{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto}}pre{{background:#f4f4f4;padding:1em}}</style>\
             </head><body><h1>Tollgate {}</h1><p>Up {} s, {} requests served. Machine-readable: <a href=\"/status\">/status</a>, \
             probe: <a href=\"/healthz\">/healthz</a>.</p><pre>{}</pre></body></html>",
            env!("CARGO_PKG_VERSION"),
            status["uptime_seconds"],
            status["requests"]["total"],
            html_escape(&pretty),
        )
    }
}

fn respond(status: StatusCode, content_type: &'static str, text: String) -> Response<Body> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    response
}

fn html_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
