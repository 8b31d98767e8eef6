//! Raw → typed: every check that needs more than one key, with locations.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::uri::Authority;
use http::{HeaderName, HeaderValue, Method};
use toml::Spanned;

use super::error::{ConfigError, SourceMap};
use super::raw::*;
use super::units::{expand_env, parse_duration};
use super::*;

type Result<T> = std::result::Result<T, ConfigError>;

pub(super) fn validate(path: &Path, text: &str) -> Result<Config> {
    let src = SourceMap { file: path, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| src.toml_error(&e))?;
    let v = Validator { src };
    v.config(raw)
}

struct Validator<'a> {
    src: SourceMap<'a>,
}

impl Validator<'_> {
    fn err<T>(&self, span: std::ops::Range<usize>, key: impl Into<String>, msg: impl Into<String>) -> Result<T> {
        Err(self.src.error(span, key, msg))
    }

    /// A string value with `${ENV}` expanded.
    fn string(&self, value: &Spanned<String>, key: &str) -> Result<String> {
        expand_env(value.get_ref()).map_err(|m| self.src.error(value.span(), key, m))
    }

    fn duration(&self, value: &Option<Spanned<String>>, key: &str, default: Duration) -> Result<Duration> {
        match value {
            None => Ok(default),
            Some(v) => parse_duration(&self.string(v, key)?).map_err(|m| self.src.error(v.span(), key, m)),
        }
    }

    /// A duration no longer than `max`: a longer one is a typo or a misunderstanding.
    fn duration_at_most(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        default: Duration,
        max: Duration,
    ) -> Result<Duration> {
        let duration = self.duration(value, key, default)?;
        match value {
            Some(v) if duration > max => self.err(v.span(), key, format!("must be at most {max:?}, got {duration:?}")),
            _ => Ok(duration),
        }
    }

    fn positive(&self, value: &Option<Spanned<i64>>, key: &str, default: u64, max: u64) -> Result<u64> {
        match value {
            None => Ok(default),
            Some(v) if *v.get_ref() < 1 || *v.get_ref() as u64 > max => {
                self.err(v.span(), key, format!("must be between 1 and {max}, got {}", v.get_ref()))
            }
            Some(v) => Ok(*v.get_ref() as u64),
        }
    }

    fn socket_addr(&self, value: &Spanned<String>, key: &str) -> Result<SocketAddr> {
        let text = self.string(value, key)?;
        text.parse().map_err(|_| {
            self.src.error(
                value.span(),
                key,
                format!("`{text}` is not an address; write IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\""),
            )
        })
    }

    fn config(&self, raw: RawConfig) -> Result<Config> {
        let runtime = RuntimeConfig {
            worker_threads: self.positive(
                &raw.runtime.worker_threads,
                "runtime.worker_threads",
                default_workers(),
                1024,
            )? as usize,
            shutdown_grace: self.duration(
                &raw.runtime.shutdown_grace,
                "runtime.shutdown_grace",
                Duration::from_secs(30),
            )?,
            gather: crate::gather::Gather {
                wait: self.duration_at_most(
                    &raw.runtime.gather_events,
                    "runtime.gather_events",
                    crate::gather::Gather::DEFAULT.wait,
                    crate::gather::Gather::MAX,
                )?,
                after_busy: self.duration(
                    &raw.runtime.gather_after_busy,
                    "runtime.gather_after_busy",
                    crate::gather::Gather::DEFAULT.after_busy,
                )?,
            },
        };
        let log = self.log(&raw.log)?;
        let admin = match &raw.admin {
            Some(a) => Some(AdminConfig { bind: self.socket_addr(&a.bind, "admin.bind")? }),
            None => None,
        };

        let mut upstreams = Vec::new();
        let mut upstream_names = HashMap::new();
        for u in &raw.upstream {
            let up = self.upstream(u)?;
            if upstream_names.insert(up.name.clone(), up.protocol).is_some() {
                return self.err(u.name.span(), "upstream.name", format!("upstream `{}` is defined twice", up.name));
            }
            upstreams.push(up);
        }

        let policies = self.policies(&raw)?;
        let policy_names: HashSet<String> = policies.iter().map(|(n, _)| n.clone()).collect();

        let mut routes = Vec::new();
        let mut route_names = HashSet::new();
        for r in &raw.route {
            let route = self.route(r, &upstream_names, &policy_names)?;
            if !route_names.insert(route.name.clone()) {
                return self.err(r.name.span(), "route.name", format!("route `{}` is defined twice", route.name));
            }
            routes.push(route);
        }

        let mut listeners = Vec::new();
        let mut binds = HashSet::new();
        let mut listener_names = HashSet::new();
        for l in &raw.listener {
            let listener = self.listener(l, &policy_names)?;
            if !listener_names.insert(listener.name.clone()) {
                return self.err(
                    l.name.span(),
                    "listener.name",
                    format!("listener `{}` is defined twice", listener.name),
                );
            }
            if !binds.insert(listener.bind) {
                return self.err(
                    l.bind.span(),
                    format!("listener.{}.bind", listener.name),
                    format!("{} is bound by another listener", listener.bind),
                );
            }
            listeners.push(listener);
        }
        if listeners.is_empty() {
            return Err(self
                .src
                .error_at_file("listener", "no [[listener]] is configured; add one with `name` and `bind`"));
        }
        if let Some(admin) = &admin
            && binds.contains(&admin.bind)
        {
            let span = raw.admin.as_ref().map(|a| a.bind.span()).unwrap_or(0..0);
            return self.err(span, "admin.bind", format!("{} is also bound by a listener", admin.bind));
        }

        crate::route::sort_by_precedence(&mut routes);
        Ok(Config { source: self.src.file.to_path_buf(), runtime, log, admin, listeners, upstreams, routes, policies })
    }

    fn log(&self, raw: &RawLog) -> Result<LogConfig> {
        let format = match &raw.format {
            None => LogFormat::Text,
            Some(f) => match f.get_ref().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return self.err(
                        f.span(),
                        "log.format",
                        format!("`{other}` is not a log format; use \"text\" or \"json\""),
                    );
                }
            },
        };
        let level = match &raw.level {
            None => "info".to_string(),
            Some(l) => {
                let text = self.string(l, "log.level")?;
                if tracing_subscriber::EnvFilter::try_new(&text).is_err() {
                    return self.err(
                        l.span(),
                        "log.level",
                        format!("`{text}` is not a log filter; use e.g. \"info\" or \"tollgate=debug\""),
                    );
                }
                text
            }
        };
        Ok(LogConfig { format, level, access_log: raw.access_log.unwrap_or(true) })
    }

    /// Checks each `policies = [...]` name against the `[policy.NAME]` tables.
    fn policy_refs(&self, refs: &[Spanned<String>], key: &str, known: &HashSet<String>) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for p in refs {
            if !known.contains(p.get_ref()) {
                return self.err(
                    p.span(),
                    key,
                    format!("unknown policy `{}`: no [policy.{}] section", p.get_ref(), p.get_ref()),
                );
            }
            names.push(p.get_ref().clone());
        }
        Ok(names)
    }

    /// Parses every `[policy.NAME]` by its `kind`, keeping spans for errors.
    fn policies(&self, raw: &RawConfig) -> Result<Vec<(String, crate::policy::PolicySpec)>> {
        use toml::de::{DeTable, DeValue, ValueDeserializer};
        if raw.policy.is_empty() {
            return Ok(Vec::new());
        }
        let doc = DeTable::parse(self.src.text).map_err(|e| self.src.toml_error(&e))?;
        let mut specs = Vec::new();
        for (key, value) in doc.into_inner() {
            if key.get_ref().as_ref() != "policy" {
                continue;
            }
            let DeValue::Table(tables) = value.into_inner() else { continue };
            for (name, table) in tables {
                let name = name.get_ref().to_string();
                let span = table.span();
                let kind = match table.get_ref() {
                    DeValue::Table(t) => t.iter().find(|(k, _)| k.get_ref().as_ref() == "kind").map(|(_, v)| v),
                    _ => return self.err(span, format!("policy.{name}"), "must be a table"),
                };
                let kind = match kind.map(|k| k.get_ref()) {
                    Some(DeValue::String(s)) => s.to_string(),
                    _ => {
                        return self.err(
                            span,
                            format!("policy.{name}.kind"),
                            format!("needs `kind`, one of {}", crate::policy::KINDS.join(", ")),
                        );
                    }
                };
                let spec = crate::policy::parse_spec(&kind, ValueDeserializer::from(table)).map_err(|e| {
                    let at = e.span.clone().unwrap_or(span.clone());
                    let inner = if e.key.is_empty() {
                        self.src
                            .text
                            .get(at.clone())
                            .filter(|t| t.len() <= 64 && !t.contains('\n'))
                            .unwrap_or("")
                            .trim()
                            .to_string()
                    } else {
                        e.key.clone()
                    };
                    let full =
                        if inner.is_empty() { format!("policy.{name}") } else { format!("policy.{name}.{inner}") };
                    self.src.error(at, full, e.message)
                })?;
                specs.push((name.clone(), spec.named(&name)));
            }
        }
        Ok(specs)
    }

    fn listener(&self, raw: &RawListener, policies: &HashSet<String>) -> Result<ListenerConfig> {
        let name = self.string(&raw.name, "listener.name")?;
        let key = |k: &str| format!("listener.{name}.{k}");
        let bind = self.socket_addr(&raw.bind, &key("bind"))?;
        let policy_names = self.policy_refs(&raw.policies, &key("policies"), policies)?;
        let tls = match &raw.tls {
            None => None,
            Some(t) => Some(self.tls(t, &key("tls"))?),
        };
        let max_body_bytes = match &raw.max_body_bytes {
            None => None,
            Some(_) => Some(self.positive(&raw.max_body_bytes, &key("max_body_bytes"), 0, u64::MAX >> 1)?),
        };
        let max_connections = match &raw.max_connections {
            None => None,
            Some(_) => Some(self.positive(&raw.max_connections, &key("max_connections"), 0, 10_000_000)? as usize),
        };
        let max_header_bytes =
            self.positive(&raw.max_header_bytes, &key("max_header_bytes"), 16 * 1024, 1 << 20)? as usize;
        if max_header_bytes < 8192 {
            // Below 8 KiB ordinary browser requests (cookies, long URLs) start to be refused.
            let span = raw.max_header_bytes.as_ref().map(|v| v.span()).unwrap_or(0..0);
            return self.err(span, key("max_header_bytes"), "must be at least 8192");
        }
        let limits = ListenerLimits {
            max_header_bytes,
            max_headers: self.positive(&raw.max_headers, &key("max_headers"), 100, 10_000)? as usize,
            max_body_bytes,
            header_read_timeout: self.duration(
                &raw.header_read_timeout,
                &key("header_read_timeout"),
                Duration::from_secs(10),
            )?,
            max_connections,
            h2_max_concurrent_streams: self.positive(
                &raw.h2_max_concurrent_streams,
                &key("h2_max_concurrent_streams"),
                100,
                1 << 20,
            )? as u32,
            max_connections_per_ip: match &raw.max_connections_per_ip {
                None => None,
                Some(_) => {
                    Some(self.positive(&raw.max_connections_per_ip, &key("max_connections_per_ip"), 0, 10_000_000)?
                        as usize)
                }
            },
            max_requests_per_ip: match &raw.max_requests_per_ip {
                None => None,
                Some(v) => {
                    let k = key("max_requests_per_ip");
                    Some(super::units::parse_rate(&self.string(v, &k)?).map_err(|m| self.src.error(v.span(), k, m))?)
                }
            },
            request_timeout: match &raw.request_timeout {
                None => None,
                Some(_) => Some(self.duration(&raw.request_timeout, &key("request_timeout"), Duration::ZERO)?),
            },
            // nginx's client_body_timeout default.
            body_timeout: self.duration(&raw.body_timeout, &key("body_timeout"), Duration::from_secs(60))?,
            // nginx's send_timeout default.
            send_timeout: self.duration(&raw.send_timeout, &key("send_timeout"), Duration::from_secs(60))?,
            idle_timeout: self.duration(&raw.idle_timeout, &key("idle_timeout"), Duration::from_secs(300))?,
            // h2's own defaults, stated so they show in the docs and can be tuned.
            h2_max_pending_accept_reset_streams: self.positive(
                &raw.h2_max_pending_accept_reset_streams,
                &key("h2_max_pending_accept_reset_streams"),
                20,
                100_000,
            )? as usize,
            h2_max_local_error_reset_streams: self.positive(
                &raw.h2_max_local_error_reset_streams,
                &key("h2_max_local_error_reset_streams"),
                1024,
                1_000_000,
            )? as usize,
        };
        let zero = [
            (&raw.request_timeout, "request_timeout", limits.request_timeout.is_some_and(|d| d.is_zero())),
            (&raw.idle_timeout, "idle_timeout", limits.idle_timeout.is_zero()),
            (&raw.body_timeout, "body_timeout", limits.body_timeout.is_zero()),
            (&raw.send_timeout, "send_timeout", limits.send_timeout.is_zero()),
        ];
        for (value, name, is_zero) in zero {
            if let (Some(v), true) = (value, is_zero) {
                return self.err(v.span(), key(name), "must be longer than 0");
            }
        }
        let http3 = self.http3(raw, tls.is_some(), &limits, &key)?;
        Ok(ListenerConfig {
            name,
            bind,
            tls,
            limits,
            policies: policy_names,
            proxy_protocol: raw.proxy_protocol.unwrap_or(false),
            merge_slashes: raw.merge_slashes.unwrap_or(true),
            http3,
        })
    }

    /// `http3 = true` (+ `quic = {...}`): needs TLS, and cannot sit behind a
    /// PROXY protocol sender (that header is a TCP thing).
    fn http3(
        &self,
        raw: &RawListener,
        has_tls: bool,
        limits: &ListenerLimits,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Option<super::Http3Config>> {
        let enabled = raw.http3.as_ref().is_some_and(|v| *v.get_ref());
        if !enabled {
            if let Some(quic) = &raw.quic {
                return self.err(quic.span(), key("quic"), "needs `http3 = true` on the listener");
            }
            return Ok(None);
        }
        let span = raw.http3.as_ref().map_or(0..0, |v| v.span());
        if !has_tls {
            return self.err(span, key("http3"), "HTTP/3 needs TLS: add `tls = { cert = ..., key = ... }`");
        }
        if raw.proxy_protocol == Some(true) {
            return self.err(span, key("http3"), "cannot be combined with `proxy_protocol` (a TCP-only header)");
        }
        let quic = raw.quic.as_ref().map(|q| q.get_ref());
        let none_string = None;
        let none_int = None;
        Ok(Some(super::Http3Config {
            zero_rtt: quic.and_then(|q| q.zero_rtt).unwrap_or(false),
            retry: quic.and_then(|q| q.retry).unwrap_or(false),
            webtransport: quic.and_then(|q| q.webtransport).unwrap_or(true),
            alt_svc_max_age: self.duration(
                quic.map_or(&none_string, |q| &q.alt_svc_max_age),
                &key("quic.alt_svc_max_age"),
                Duration::from_secs(24 * 3600),
            )?,
            max_concurrent_streams: self.positive(
                quic.map_or(&none_int, |q| &q.max_concurrent_streams),
                &key("quic.max_concurrent_streams"),
                u64::from(limits.h2_max_concurrent_streams),
                1 << 20,
            )? as u32,
        }))
    }

    fn tls(&self, raw: &RawTls, key: &str) -> Result<TlsConfig> {
        let mut certs = Vec::new();
        match (&raw.cert, &raw.key) {
            (Some(cert), Some(k)) => certs.push(self.cert_pair(cert, k, key)?),
            (Some(cert), None) => {
                return self.err(cert.span(), format!("{key}.key"), "`cert` needs a `key`");
            }
            (None, Some(k)) => {
                return self.err(k.span(), format!("{key}.cert"), "`key` needs a `cert`");
            }
            (None, None) => {}
        }
        for pair in &raw.certs {
            certs.push(self.cert_pair(&pair.cert, &pair.key, &format!("{key}.certs"))?);
        }
        if certs.is_empty() {
            return Err(self.src.error_at_file(key, "needs `cert` and `key`, or `certs = [{ cert, key }, ...]`"));
        }
        let min_version = match &raw.min_version {
            None => TlsVersion::Tls12,
            Some(v) => match v.get_ref().as_str() {
                "1.2" => TlsVersion::Tls12,
                "1.3" => TlsVersion::Tls13,
                other => {
                    return self.err(
                        v.span(),
                        format!("{key}.min_version"),
                        format!("`{other}` is not supported; use \"1.2\" or \"1.3\""),
                    );
                }
            },
        };
        let client_auth = match &raw.client_auth {
            None => None,
            Some(c) => {
                let mode = match &c.mode {
                    None => ClientAuthMode::Require,
                    Some(m) => match m.get_ref().as_str() {
                        "require" => ClientAuthMode::Require,
                        "request" => ClientAuthMode::Request,
                        other => {
                            return self.err(
                                m.span(),
                                format!("{key}.client_auth.mode"),
                                format!("`{other}` is not a mode; use \"require\" or \"request\""),
                            );
                        }
                    },
                };
                Some(ClientAuthConfig { ca: self.existing_file(&c.ca, &format!("{key}.client_auth.ca"))?, mode })
            }
        };
        let tls = TlsConfig { certs, min_version, client_auth };
        // Build the real rustls config now so a bad PEM fails `check`, not the first handshake.
        crate::listen::tls::server_config(&tls).map_err(|e| {
            let span = raw
                .cert
                .as_ref()
                .map(|c| c.span())
                .or_else(|| raw.certs.first().map(|c| c.cert.span()))
                .unwrap_or(0..0);
            let span = match &e {
                crate::listen::tls::TlsError::ClientCa { .. } => raw.client_auth.as_ref().map_or(span, |c| c.ca.span()),
                _ => span,
            };
            self.src.error(span, key, e.to_string())
        })?;
        Ok(tls)
    }

    fn cert_pair(&self, cert: &Spanned<String>, key: &Spanned<String>, prefix: &str) -> Result<CertPair> {
        let cert_path = self.existing_file(cert, &format!("{prefix}.cert"))?;
        let key_path = self.existing_file(key, &format!("{prefix}.key"))?;
        Ok(CertPair { cert: cert_path, key: key_path })
    }

    fn existing_file(&self, value: &Spanned<String>, key: &str) -> Result<PathBuf> {
        let path = PathBuf::from(self.string(value, key)?);
        if !path.is_file() {
            return self.err(value.span(), key, format!("file `{}` does not exist", path.display()));
        }
        Ok(path)
    }

    fn upstream(&self, raw: &RawUpstream) -> Result<UpstreamConfig> {
        let name = self.string(&raw.name, "upstream.name")?;
        let key = |k: &str| format!("upstream.{name}.{k}");
        let protocol = match &raw.protocol {
            None => UpstreamProtocol::Http1,
            Some(p) => match p.get_ref().as_str() {
                "http1" => UpstreamProtocol::Http1,
                "grpc" => UpstreamProtocol::Grpc,
                other => {
                    return self.err(
                        p.span(),
                        key("protocol"),
                        format!("`{other}` is not a protocol; use \"http1\" or \"grpc\""),
                    );
                }
            },
        };
        let mut targets = Vec::new();
        let span = raw.targets.span();
        for t in raw.targets.get_ref() {
            let (address, weight) = match t {
                RawTarget::Address(a) => (a, None),
                RawTarget::Weighted(w) => (&w.address, w.weight),
            };
            let text = expand_env(address).map_err(|m| self.src.error(span.clone(), key("targets"), m))?;
            let authority: Authority = match text.parse() {
                Ok(a) => a,
                Err(_) => return self.err(span, key("targets"), format!("`{text}` is not HOST:PORT")),
            };
            // `Authority::port` is `None` for a port that does not fit a u16, too.
            let port_text = authority.as_str().rsplit_once(':').map(|(_, p)| p);
            if !port_text.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())) {
                return self.err(span, key("targets"), format!("`{text}` needs a port, e.g. \"{text}:80\""));
            }
            if authority.port_u16().is_none_or(|p| p == 0) {
                return self.err(span, key("targets"), format!("`{text}`: the port must be between 1 and 65535"));
            }
            let weight = match weight {
                None => 1,
                Some(w) if (1..=1000).contains(&w) => w as u32,
                Some(_) => return self.err(span, key("targets.weight"), "must be between 1 and 1000"),
            };
            targets.push(TargetConfig { authority, weight });
        }
        if targets.is_empty() {
            return self.err(raw.targets.span(), key("targets"), "needs at least one target");
        }
        let balance = match &raw.balance {
            None => Balance::RoundRobin,
            Some(b) => match b.get_ref().as_str() {
                "round_robin" => Balance::RoundRobin,
                "least_request" => Balance::LeastRequest,
                "random" => Balance::Random,
                "hash" => Balance::Hash,
                other => {
                    return self.err(
                        b.span(),
                        key("balance"),
                        format!("`{other}` is not a balancer; use round_robin, least_request, random or hash"),
                    );
                }
            },
        };
        let hash_key = match &raw.hash_key {
            None => HashKey::ClientIp,
            Some(h) => match h.get_ref().as_str() {
                "client_ip" => HashKey::ClientIp,
                other => match other.strip_prefix("header:").map(HeaderName::try_from) {
                    Some(Ok(name)) => HashKey::Header(name),
                    _ => {
                        return self.err(
                            h.span(),
                            key("hash_key"),
                            format!("`{other}` is not a hash key; use \"client_ip\" or \"header:NAME\""),
                        );
                    }
                },
            },
        };
        let max_connections_per_target = match &raw.max_connections_per_target {
            None => None,
            Some(_) => {
                Some(self.positive(&raw.max_connections_per_target, &key("max_connections_per_target"), 0, 1_000_000)?
                    as usize)
            }
        };
        Ok(UpstreamConfig {
            name: name.clone(),
            protocol,
            targets,
            balance,
            hash_key,
            connect_timeout: self.duration(&raw.connect_timeout, &key("connect_timeout"), Duration::from_secs(5))?,
            first_byte_timeout: self.duration(
                &raw.first_byte_timeout,
                &key("first_byte_timeout"),
                Duration::from_secs(60),
            )?,
            idle_timeout: self.duration(&raw.idle_timeout, &key("idle_timeout"), Duration::from_secs(90))?,
            max_connections_per_target,
            max_idle_per_target: self.positive(&raw.max_idle_per_target, &key("max_idle_per_target"), 256, 1_000_000)?
                as usize,
            eject_after: self.positive(&raw.eject_after, &key("eject_after"), 3, 1000)? as u32,
            eject_for: self.duration(&raw.eject_for, &key("eject_for"), Duration::from_secs(10))?,
            tls: self.upstream_tls(raw, protocol, &key)?,
            grpc_connections_per_target: self.grpc_connections(raw, protocol, &key)?,
        })
    }

    /// `grpc_connections_per_target`: 1–64, gRPC upstreams only.
    fn grpc_connections(
        &self,
        raw: &RawUpstream,
        protocol: UpstreamProtocol,
        key: &dyn Fn(&str) -> String,
    ) -> Result<usize> {
        let name = "grpc_connections_per_target";
        if let Some(value) = &raw.grpc_connections_per_target
            && protocol != UpstreamProtocol::Grpc
        {
            return self.err(value.span(), key(name), "only for protocol = \"grpc\" upstreams");
        }
        Ok(self.positive(&raw.grpc_connections_per_target, &key(name), 2, 64)? as usize)
    }

    fn upstream_tls(
        &self,
        raw: &RawUpstream,
        protocol: UpstreamProtocol,
        key: &dyn Fn(&str) -> String,
    ) -> Result<Option<UpstreamTls>> {
        let Some(tls) = &raw.tls else { return Ok(None) };
        if protocol != UpstreamProtocol::Grpc {
            return self.err(tls.ca.span(), key("tls"), "TLS to upstreams is available for protocol = \"grpc\" only");
        }
        let ca = self.existing_file(&tls.ca, &key("tls.ca"))?;
        let has_cert = std::fs::read(&ca)
            .map(|pem| String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----"))
            .unwrap_or(false);
        if !has_cert {
            return self.err(tls.ca.span(), key("tls.ca"), format!("`{}` holds no PEM certificate", ca.display()));
        }
        let server_name = match &tls.server_name {
            None => None,
            Some(name) => {
                let text = self.string(name, &key("tls.server_name"))?;
                if rustls::pki_types::ServerName::try_from(text.as_str()).is_err() {
                    return self.err(name.span(), key("tls.server_name"), format!("`{text}` is not a DNS name or IP"));
                }
                Some(text)
            }
        };
        Ok(Some(UpstreamTls { ca, server_name }))
    }

    fn route(
        &self,
        raw: &RawRoute,
        upstreams: &HashMap<String, UpstreamProtocol>,
        policies: &HashSet<String>,
    ) -> Result<RouteConfig> {
        let name = self.string(&raw.name, "route.name")?;
        let key = |k: &str| format!("route.{name}.{k}");
        let policy_names = self.policy_refs(&raw.policies, &key("policies"), policies)?;
        let matcher = self.route_match(&raw.matcher, &key("match"))?;
        let action = match (&raw.upstream, &raw.static_dir) {
            (Some(u), None) => {
                let upstream = self.string(u, &key("upstream"))?;
                if !upstreams.contains_key(&upstream) {
                    return self.err(u.span(), key("upstream"), format!("no upstream named `{upstream}`"));
                }
                RouteAction::Proxy { upstream }
            }
            (None, Some(d)) => {
                let dir = PathBuf::from(self.string(d, &key("static_dir"))?);
                if !dir.is_dir() {
                    return self.err(
                        d.span(),
                        key("static_dir"),
                        format!("directory `{}` does not exist", dir.display()),
                    );
                }
                RouteAction::Static { dir }
            }
            (Some(u), Some(_)) => {
                return self.err(u.span(), key("upstream"), "a route has either `upstream` or `static_dir`, not both");
            }
            (None, None) => {
                return self.err(raw.name.span(), key("upstream"), "a route needs `upstream` or `static_dir`");
            }
        };
        let websocket = self.websocket(raw, &key)?;
        let strip_prefix = raw.strip_prefix.unwrap_or(false);
        if strip_prefix && !matches!(matcher.path, Some(PathMatch::Prefix(_))) {
            return self.err(raw.name.span(), key("strip_prefix"), "needs `match.path_prefix`");
        }
        let rewrite = match &raw.rewrite {
            None => None,
            Some(r) => {
                let text = self.string(r, &key("rewrite"))?;
                if matcher.path.is_none() {
                    return self.err(
                        r.span(),
                        key("rewrite"),
                        "needs `match.path`, `match.path_prefix` or `match.path_regex`",
                    );
                }
                if strip_prefix {
                    return self.err(r.span(), key("rewrite"), "use either `rewrite` or `strip_prefix`");
                }
                Some(text)
            }
        };
        let max_body_bytes = match &raw.max_body_bytes {
            None => None,
            Some(_) => Some(self.positive(&raw.max_body_bytes, &key("max_body_bytes"), 0, u64::MAX >> 1)?),
        };
        let forward_headers = self.forward_headers(raw.forward_headers.as_deref(), &key("forward_headers"))?;
        let grpc_json = match &raw.grpc_json {
            None => None,
            Some(g) => {
                let grpc_upstream = match &action {
                    RouteAction::Proxy { upstream } => upstreams.get(upstream) == Some(&UpstreamProtocol::Grpc),
                    RouteAction::Static { .. } => false,
                };
                if !grpc_upstream {
                    return self.err(
                        g.descriptors.span(),
                        key("grpc_json"),
                        "needs an upstream with `protocol = \"grpc\"`",
                    );
                }
                if strip_prefix || rewrite.is_some() {
                    return self.err(
                        g.descriptors.span(),
                        key("grpc_json"),
                        "the gRPC method names the backend path: no `strip_prefix` or `rewrite` with it",
                    );
                }
                Some(self.grpc_json(g, &key("grpc_json"))?)
            }
        };
        Ok(RouteConfig {
            name,
            matcher,
            action,
            strip_prefix,
            rewrite,
            preserve_host: raw.preserve_host.unwrap_or(true),
            forward_headers,
            request_id_header: raw.request_id_header.unwrap_or(true),
            grpc_json,
            max_body_bytes,
            policies: policy_names,
            websocket,
        })
    }

    /// `grpc_json = { descriptors, services }`: the descriptor set read
    /// and its rules built now, so that a bad file or rule stops the load.
    fn grpc_json(&self, raw: &RawGrpcJson, key: &str) -> Result<tollgate_grpc_json::Transcoder> {
        let descriptors_key = format!("{key}.descriptors");
        let path = self.existing_file(&raw.descriptors, &descriptors_key)?;
        let bytes = std::fs::read(&path).or_else(|e| {
            self.err(raw.descriptors.span(), &descriptors_key, format!("cannot read `{}`: {e}", path.display()))
        })?;
        let services =
            raw.services.iter().map(|s| self.string(s, &format!("{key}.services"))).collect::<Result<Vec<_>>>()?;
        tollgate_grpc_json::Transcoder::from_descriptor_set(&bytes, &services).or_else(|e| {
            let span = match &e {
                tollgate_grpc_json::LoadError::NoSuchService(name) => {
                    raw.services.iter().find(|s| s.get_ref() == name).map_or(raw.descriptors.span(), |s| s.span())
                }
                _ => raw.descriptors.span(),
            };
            self.err(span, key, format!("`{}`: {e}", path.display()))
        })
    }

    /// `forward_headers = ["x-forwarded-for", ...]`: names from
    /// [`ForwardHeader::ALL`], any case; absent means all of them.
    fn forward_headers(&self, raw: Option<&[Spanned<String>]>, key: &str) -> Result<ForwardHeaders> {
        let Some(names) = raw else { return Ok(ForwardHeaders::ALL) };
        let mut set = ForwardHeaders::NONE;
        for name in names {
            let text = self.string(name, key)?;
            match ForwardHeader::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(&text)) {
                Some(field) => set = set.with(field),
                None => {
                    let known = ForwardHeader::ALL.map(ForwardHeader::name).join(", ");
                    return self.err(name.span(), key, format!("`{text}` is not one of {known}"));
                }
            }
        }
        Ok(set)
    }

    /// `websocket = "tunnel" | "http"` and its `websocket_*` keys; those
    /// keys without `websocket`, or message-mode keys on a tunnel, are errors.
    fn websocket(&self, raw: &RawRoute, key: &dyn Fn(&str) -> String) -> Result<Option<WebSocketRoute>> {
        let message_keys = [
            (raw.websocket_method.as_ref().map(Spanned::span), "websocket_method"),
            (raw.websocket_path.as_ref().map(Spanned::span), "websocket_path"),
            (raw.websocket_headers.values().next().map(Spanned::span), "websocket_headers"),
            (raw.websocket_in_flight.as_ref().map(Spanned::span), "websocket_in_flight"),
            (raw.websocket_push_path.as_ref().map(Spanned::span), "websocket_push_path"),
        ];
        let mode = match &raw.websocket {
            None => {
                let tunnel_keys = [
                    (raw.websocket_max_message_bytes.as_ref().map(Spanned::span), "websocket_max_message_bytes"),
                    (raw.websocket_max_frame_bytes.as_ref().map(Spanned::span), "websocket_max_frame_bytes"),
                    (raw.websocket_idle_timeout.as_ref().map(Spanned::span), "websocket_idle_timeout"),
                    (raw.websocket_ping_interval.as_ref().map(Spanned::span), "websocket_ping_interval"),
                ];
                if let Some((Some(span), name)) = message_keys.into_iter().chain(tunnel_keys).find(|(s, _)| s.is_some())
                {
                    return self.err(span, key(name), "needs `websocket = \"tunnel\"` or `\"http\"` on the route");
                }
                return Ok(None);
            }
            Some(m) => match m.get_ref().as_str() {
                "tunnel" => WebSocketMode::Tunnel,
                "http" => WebSocketMode::Http,
                other => {
                    return self.err(
                        m.span(),
                        key("websocket"),
                        format!("`{other}` is not a WebSocket mode; use \"tunnel\" or \"http\""),
                    );
                }
            },
        };
        if raw.upstream.is_none() {
            let span = raw.websocket.as_ref().map_or(0..0, Spanned::span);
            return self.err(span, key("websocket"), "a WebSocket route needs `upstream`");
        }
        if mode == WebSocketMode::Tunnel
            && let Some((Some(span), name)) = message_keys.into_iter().find(|(s, _)| s.is_some())
        {
            return self.err(span, key(name), "only for `websocket = \"http\"` (message mode)");
        }
        const MAX_MESSAGE: u64 = 1 << 30;
        let max_message_bytes =
            self.positive(&raw.websocket_max_message_bytes, &key("websocket_max_message_bytes"), 1 << 20, MAX_MESSAGE)?
                as usize;
        let max_frame_bytes = self.positive(
            &raw.websocket_max_frame_bytes,
            &key("websocket_max_frame_bytes"),
            max_message_bytes as u64,
            MAX_MESSAGE,
        )? as usize;
        let idle_timeout =
            self.duration(&raw.websocket_idle_timeout, &key("websocket_idle_timeout"), Duration::from_secs(300))?;
        if idle_timeout.is_zero() {
            let span = raw.websocket_idle_timeout.as_ref().map_or(0..0, Spanned::span);
            return self.err(span, key("websocket_idle_timeout"), "must be more than 0s");
        }
        let ping_interval =
            self.duration(&raw.websocket_ping_interval, &key("websocket_ping_interval"), Duration::from_secs(30))?;
        let method = match &raw.websocket_method {
            None => Method::POST,
            Some(m) => Method::from_bytes(m.get_ref().to_ascii_uppercase().as_bytes()).map_err(|_| {
                self.src.error(m.span(), key("websocket_method"), format!("`{}` is not a method", m.get_ref()))
            })?,
        };
        let path = |value: &Option<Spanned<String>>, name: &str| -> Result<Option<String>> {
            match value {
                None => Ok(None),
                Some(v) => {
                    let text = self.string(v, &key(name))?;
                    if !text.starts_with('/') || http::uri::PathAndQuery::try_from(text.as_str()).is_err() {
                        return self.err(v.span(), key(name), "must be a path starting with `/`");
                    }
                    Ok(Some(text))
                }
            }
        };
        let mut headers = Vec::new();
        for (name, value) in &raw.websocket_headers {
            let k = key(&format!("websocket_headers.{name}"));
            let header_name = HeaderName::try_from(name.as_str())
                .map_err(|_| self.src.error(value.span(), &k, format!("`{name}` is not a header name")))?;
            let header_value = HeaderValue::try_from(self.string(value, &k)?)
                .map_err(|_| self.src.error(value.span(), &k, "not a valid header value"))?;
            headers.push((header_name, header_value));
        }
        Ok(Some(WebSocketRoute {
            mode,
            max_message_bytes,
            max_frame_bytes,
            idle_timeout,
            ping_interval: (!ping_interval.is_zero()).then_some(ping_interval),
            method,
            path: path(&raw.websocket_path, "websocket_path")?,
            headers,
            in_flight: self.positive(&raw.websocket_in_flight, &key("websocket_in_flight"), 1, 1024)? as usize,
            push_path: path(&raw.websocket_push_path, "websocket_push_path")?,
        }))
    }

    fn route_match(&self, raw: &RawMatch, key: &str) -> Result<RouteMatch> {
        let host = match &raw.host {
            None => None,
            Some(h) => {
                let text = self.string(h, &format!("{key}.host"))?.to_ascii_lowercase();
                Some(match text.strip_prefix("*.") {
                    Some(rest) if !rest.is_empty() && !rest.contains('*') => HostMatch::Suffix(format!(".{rest}")),
                    _ if !text.is_empty() && !text.contains('*') => HostMatch::Exact(text),
                    _ => {
                        return self.err(
                            h.span(),
                            format!("{key}.host"),
                            format!("`{text}` is not a host; use \"api.example.com\" or \"*.example.com\""),
                        );
                    }
                })
            }
        };
        let paths = [(&raw.path, "path"), (&raw.path_prefix, "path_prefix"), (&raw.path_regex, "path_regex")];
        let mut path = None;
        for (value, name) in paths {
            let Some(v) = value else { continue };
            if path.is_some() {
                return self.err(
                    v.span(),
                    format!("{key}.{name}"),
                    "use only one of `path`, `path_prefix`, `path_regex`",
                );
            }
            let text = self.string(v, &format!("{key}.{name}"))?;
            if name != "path_regex" && !text.starts_with('/') {
                return self.err(v.span(), format!("{key}.{name}"), "must start with `/`");
            }
            path = Some(match name {
                "path" => PathMatch::Exact(text),
                "path_prefix" => PathMatch::Prefix(text),
                _ => {
                    // Anchor so a regex matches the whole path, like Envoy's safe_regex.
                    let anchored = format!("^(?:{text})$");
                    match regex::Regex::new(&anchored) {
                        Ok(re) => PathMatch::Regex(re),
                        Err(e) => {
                            return self.err(v.span(), format!("{key}.{name}"), format!("bad regex: {e}"));
                        }
                    }
                }
            });
        }
        let mut methods = Vec::new();
        if let Some(m) = &raw.method {
            let span = m.span();
            for name in m.get_ref().clone_vec() {
                match Method::from_bytes(name.to_ascii_uppercase().as_bytes()) {
                    Ok(method) => methods.push(method),
                    Err(_) => {
                        return self.err(span, format!("{key}.method"), format!("`{name}` is not a method"));
                    }
                }
            }
        }
        let mut headers = Vec::new();
        for (name, value) in &raw.headers {
            let header_name = HeaderName::try_from(name.as_str()).map_err(|_| {
                self.src.error(value.span(), format!("{key}.headers"), format!("`{name}` is not a header name"))
            })?;
            let text = self.string(value, &format!("{key}.headers.{name}"))?;
            let header_value = HeaderValue::try_from(text).map_err(|_| {
                self.src.error(value.span(), format!("{key}.headers.{name}"), "not a valid header value")
            })?;
            headers.push((header_name, header_value));
        }
        Ok(RouteMatch { host, path, methods, headers })
    }
}

fn default_workers() -> u64 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u64)
}

impl OneOrMany {
    fn clone_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}
