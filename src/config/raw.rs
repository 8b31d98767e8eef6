//! The config file as written: serde structs that mirror the TOML one to one.
//!
//! Every struct denies unknown keys, and values that later checks must point
//! at keep their source span (`Spanned`) so an error can name the line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub log: RawLog,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub upstream: Vec<RawUpstream>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
    /// `[policy.NAME]` tables; each is parsed by its kind (see `policy`).
    #[serde(default)]
    pub policy: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub worker_threads: Option<Spanned<i64>>,
    pub shutdown_grace: Option<Spanned<String>>,
    pub gather_events: Option<Spanned<String>>,
    pub gather_after_busy: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<Spanned<String>>,
    pub level: Option<Spanned<String>>,
    pub access_log: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub bind: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<String>,
    pub bind: Spanned<String>,
    pub tls: Option<RawTls>,
    #[serde(default)]
    pub policies: Vec<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_headers: Option<Spanned<i64>>,
    pub max_body_bytes: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub max_connections: Option<Spanned<i64>>,
    pub h2_max_concurrent_streams: Option<Spanned<i64>>,
    // Connection and request limits (DDoS protection); see `listen::limits`.
    pub max_connections_per_ip: Option<Spanned<i64>>,
    pub max_requests_per_ip: Option<Spanned<String>>,
    pub request_timeout: Option<Spanned<String>>,
    pub body_timeout: Option<Spanned<String>>,
    pub send_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub h2_max_pending_accept_reset_streams: Option<Spanned<i64>>,
    pub h2_max_local_error_reset_streams: Option<Spanned<i64>>,
    pub proxy_protocol: Option<bool>,
    pub merge_slashes: Option<bool>,
    /// QUIC + HTTP/3 on the same port number over UDP (TLS listeners only).
    pub http3: Option<Spanned<bool>>,
    /// HTTP/3 tuning; only with `http3 = true`.
    pub quic: Option<Spanned<RawQuic>>,
}

/// `quic = { zero_rtt = false, retry = false, alt_svc_max_age = "24h", max_concurrent_streams = 100 }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuic {
    pub zero_rtt: Option<bool>,
    pub retry: Option<bool>,
    pub alt_svc_max_age: Option<Spanned<String>>,
    pub max_concurrent_streams: Option<Spanned<i64>>,
    pub webtransport: Option<bool>,
}

/// `tls = { cert = "...", key = "..." }` or `tls = { certs = [ { cert, key }, ... ] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    #[serde(default)]
    pub certs: Vec<RawCertPair>,
    pub min_version: Option<Spanned<String>>,
    pub client_auth: Option<RawClientAuth>,
}

/// `client_auth = { ca = "ca.pem", mode = "require" | "request" }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientAuth {
    pub ca: Spanned<String>,
    pub mode: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: Spanned<String>,
    pub protocol: Option<Spanned<String>>,
    pub targets: Spanned<Vec<RawTarget>>,
    pub balance: Option<Spanned<String>>,
    pub hash_key: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub first_byte_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_connections_per_target: Option<Spanned<i64>>,
    pub max_idle_per_target: Option<Spanned<i64>>,
    pub eject_after: Option<Spanned<i64>>,
    pub eject_for: Option<Spanned<String>>,
    /// gRPC upstreams: `tls = { ca = "ca.pem", server_name = "api.internal" }`.
    pub tls: Option<RawUpstreamTls>,
    /// gRPC upstreams: multiplexed HTTP/2 connections per target.
    pub grpc_connections_per_target: Option<Spanned<i64>>,
}

/// TLS towards a gRPC upstream's targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    pub ca: Spanned<String>,
    pub server_name: Option<Spanned<String>>,
}

/// A target is `"host:port"` or `{ address = "host:port", weight = 3 }`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "expected a target: \"host:port\" or { address = \"host:port\", weight = N }")]
pub enum RawTarget {
    // Plain types: serde's untagged enums buffer their input, which loses spans.
    Address(String),
    Weighted(RawWeightedTarget),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeightedTarget {
    pub address: String,
    pub weight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Spanned<String>,
    #[serde(rename = "match", default)]
    pub matcher: RawMatch,
    pub upstream: Option<Spanned<String>>,
    pub static_dir: Option<Spanned<String>>,
    pub strip_prefix: Option<bool>,
    pub rewrite: Option<Spanned<String>>,
    pub preserve_host: Option<bool>,
    pub forward_headers: Option<Vec<Spanned<String>>>,
    pub request_id_header: Option<bool>,
    pub grpc_json: Option<RawGrpcJson>,
    pub max_body_bytes: Option<Spanned<i64>>,
    #[serde(default)]
    pub policies: Vec<Spanned<String>>,
    // WebSocket bridge (`config::WebSocketRoute`): "tunnel" or "http", then its limits.
    pub websocket: Option<Spanned<String>>,
    pub websocket_max_message_bytes: Option<Spanned<i64>>,
    pub websocket_max_frame_bytes: Option<Spanned<i64>>,
    pub websocket_idle_timeout: Option<Spanned<String>>,
    pub websocket_ping_interval: Option<Spanned<String>>,
    pub websocket_method: Option<Spanned<String>>,
    pub websocket_path: Option<Spanned<String>>,
    #[serde(default)]
    pub websocket_headers: BTreeMap<String, Spanned<String>>,
    pub websocket_in_flight: Option<Spanned<i64>>,
    pub websocket_push_path: Option<Spanned<String>>,
}

/// `grpc_json = { descriptors = "api.pb", services = ["pkg.Service"] }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrpcJson {
    pub descriptors: Spanned<String>,
    #[serde(default)]
    pub services: Vec<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub host: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub path_regex: Option<Spanned<String>>,
    pub method: Option<Spanned<OneOrMany>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
}

/// `method = "GET"` or `method = ["GET", "HEAD"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "expected a string or a list of strings")]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}
