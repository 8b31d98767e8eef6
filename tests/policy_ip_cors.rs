//! `ip_filter`, PROXY protocol and `cors` against the real binary, for what
//! the shared policy table cannot express: clients on other source addresses
//! (loopback aliases 127.0.0.2.. and `::1`), PROXY protocol v1 from curl and
//! v1/v2 written by hand, connections closed before TLS, and config errors.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::core_kit::*;
use common::transport::write_cert;
use common::*;

/// Records `{client_ip}` where the backend can see it.
const STAMP: &str = "[policy.stamp]\nkind = \"headers\"\nrequest_set = { x-client = \"{client_ip}\" }\n";

/// A fresh port on `ip` (`127.0.0.1` or `::1`).
fn addr_on(ip: &str) -> SocketAddr {
    let listener = std::net::TcpListener::bind(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
    listener.local_addr().unwrap()
}

/// The config tail every test shares: one upstream and a catch-all route.
fn upstream_and_route(backend: SocketAddr, route_policies: &str) -> String {
    format!(
        "[[upstream]]\nname = \"b\"\ntargets = [\"{backend}\"]\n\n\
         [[route]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"b\"\npolicies = [{route_policies}]\n\n"
    )
}

/// The `x-client` header of the last request the backend saw.
fn last_client(backend: &Backend) -> String {
    let seen = backend.requests();
    let last = seen.last().expect("the backend saw a request");
    last.headers.get("x-client").expect("x-client set by the stamp policy").to_str().unwrap().to_string()
}

/// A TCP connection to `to` from the local address `source` (a loopback alias).
fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, Some(socket2::Protocol::TCP))
            .unwrap();
    socket.bind(&SocketAddr::new(source.parse().unwrap(), 0).into()).unwrap();
    socket.connect_timeout(&to.into(), Duration::from_secs(5)).unwrap();
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream
}

/// Reads until the server closes (EOF or reset) or the read timeout passes.
/// Returns the bytes and whether the server closed.
fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return (out, false),
            Err(_) => return (out, true), // reset
        }
    }
}

/// A PROXY v2 header (PROXY command, TCP) from `source` to `destination`.
fn proxy_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.push(0x21);
    let mut block = Vec::new();
    match (source, destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            out.push(0x11);
            block.extend_from_slice(&s.ip().octets());
            block.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            out.push(0x21);
            block.extend_from_slice(&s.ip().octets());
            block.extend_from_slice(&d.ip().octets());
        }
        _ => panic!("source and destination of one family"),
    }
    block.extend_from_slice(&source.port().to_be_bytes());
    block.extend_from_slice(&destination.port().to_be_bytes());
    out.extend_from_slice(&(block.len() as u16).to_be_bytes());
    out.extend_from_slice(&block);
    out
}

/// A v2 LOCAL header (the balancer's own health check): no address.
fn proxy_v2_local() -> Vec<u8> {
    let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    out.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    out
}

const GET_CLOSE: &[u8] = b"GET /who HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n";

/// Writes `prefix` + a GET on a fresh connection; returns the status code (0 when closed without one).
fn raw_get(addr: SocketAddr, prefix: &[u8]) -> u16 {
    let response = raw_exchange(addr, &[prefix, GET_CLOSE].concat());
    response.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|c| c.parse().ok()).unwrap_or(0)
}

#[test]
fn a_client_on_a_denied_loopback_alias_gets_403_and_the_others_get_through() {
    let backend = Backend::fixed("ok");
    let edge = "[policy.edge]\nkind = \"ip_filter\"\nallow = [\"127.0.0.0/8\"]\ndeny = [\"127.0.0.2/32\"]\n";
    let tollgate = Tollgate::start_with(&format!(
        "policies = [\"edge\", \"stamp\"]\n\n{}{edge}\n{STAMP}",
        upstream_and_route(backend.addr, "")
    ));
    let url = tollgate.url("/who");
    for proto in Proto::ALL {
        let (status, _, body) = curl_proto(proto, &["--interface", "127.0.0.2", &url]);
        assert_eq!(status, 403, "{proto:?}: {}", String::from_utf8_lossy(&body));
        let error = json(&body);
        assert_eq!(error["error"], "ip_denied", "{error}");
        assert!(error["message"].as_str().unwrap().contains("127.0.0.2"), "{error}");

        for allowed in ["127.0.0.1", "127.0.0.3"] {
            let before = backend.requests().len();
            let (status, _, _) = curl_proto(proto, &["--interface", allowed, &url]);
            assert_eq!(status, 200, "{proto:?} from {allowed}");
            assert_eq!(backend.requests().len(), before + 1);
            assert_eq!(last_client(&backend), allowed);
        }
    }
    assert_eq!(backend.requests().len(), 4, "the denied requests never reached the backend");
    assert!(tollgate.wait_for_log("client=127.0.0.3", Duration::from_secs(5)), "{}", tollgate.log());
}

#[test]
fn ipv6_loopback_clients_are_filtered_by_ipv6_rules() {
    let backend = Backend::fixed("ok");
    let v6 = addr_on("::1");
    let v4 = addr_on("127.0.0.1");
    let config = format!(
        "[[listener]]\nname = \"v6\"\nbind = \"{v6}\"\npolicies = [\"edge\", \"stamp\"]\n\n\
         [[listener]]\nname = \"v4\"\nbind = \"{v4}\"\npolicies = [\"edge\", \"stamp\"]\n\n{}\
         [policy.edge]\nkind = \"ip_filter\"\nallow = [\"::1/128\"]\n\n{STAMP}",
        upstream_and_route(backend.addr, "")
    );
    let _tollgate = Tollgate::start(&config, v6);
    for proto in Proto::ALL {
        let (status, _, _) = curl_proto(proto, &["-g", &format!("http://{v6}/who")]);
        assert_eq!(status, 200, "{proto:?} over ::1");
        assert_eq!(last_client(&backend), "::1");
        let (status, _, _) = curl_proto(proto, &[&format!("http://{v4}/who")]);
        assert_eq!(status, 403, "{proto:?}: 127.0.0.1 is not in the IPv6-only allow list");
    }

    let denied = Backend::fixed("ok");
    let v6b = addr_on("::1");
    let config = format!(
        "[[listener]]\nname = \"v6\"\nbind = \"{v6b}\"\npolicies = [\"edge\"]\n\n{}\
         [policy.edge]\nkind = \"ip_filter\"\ndeny = [\"::1\"]\n",
        upstream_and_route(denied.addr, "")
    );
    let _tollgate = Tollgate::start(&config, v6b);
    let (status, _, _) = curl_proto(Proto::H2c, &["-g", &format!("http://{v6b}/who")]);
    assert_eq!(status, 403);
    assert!(denied.requests().is_empty());
}

#[test]
fn x_forwarded_for_is_believed_only_from_a_trusted_proxy() {
    let backend = Backend::fixed("ok");
    let edge = "[policy.edge]\nkind = \"ip_filter\"\ndeny = [\"203.0.113.0/24\"]\ntrusted_proxies = [\"127.0.0.2\"]\n";
    let tollgate =
        Tollgate::start_with(&format!("\n{}{edge}\n{STAMP}", upstream_and_route(backend.addr, "\"edge\", \"stamp\"")));
    let url = tollgate.url("/who");
    for proto in Proto::ALL {
        // From the trusted proxy: its X-Forwarded-For decides.
        let (status, _, _) =
            curl_proto(proto, &["--interface", "127.0.0.2", "-H", "X-Forwarded-For: 203.0.113.9", &url]);
        assert_eq!(status, 403, "{proto:?}: the proxy says the client is denied");

        // The same header from anyone else is a spoof and is ignored.
        let (status, _, _) =
            curl_proto(proto, &["--interface", "127.0.0.1", "-H", "X-Forwarded-For: 203.0.113.9", &url]);
        assert_eq!(status, 200, "{proto:?}: spoofed header");
        assert_eq!(last_client(&backend), "127.0.0.1");

        // Only the entry the proxy appended counts, not the client's own claim to its left.
        let (status, _, _) =
            curl_proto(proto, &["--interface", "127.0.0.2", "-H", "X-Forwarded-For: 203.0.113.9, 198.51.100.7", &url]);
        assert_eq!(status, 200, "{proto:?}");
        assert_eq!(last_client(&backend), "198.51.100.7");
    }
    assert!(tollgate.wait_for_log("client=198.51.100.7", Duration::from_secs(5)), "{}", tollgate.log());
}

#[test]
fn proxy_protocol_v1_from_curl_gives_the_client_address_on_cleartext_and_tls() {
    let backend = Backend::fixed("ok");
    let certs = tempfile::tempdir().unwrap();
    let cert = write_cert(certs.path(), "gw", "localhost", &["localhost"]);
    let plain = addr_on("127.0.0.1");
    let tls = addr_on("127.0.0.1");
    let config = format!(
        "[[listener]]\nname = \"plain\"\nbind = \"{plain}\"\nproxy_protocol = true\nheader_read_timeout = \"2s\"\n\
         policies = [\"edge\", \"stamp\"]\n\n\
         [[listener]]\nname = \"tls\"\nbind = \"{tls}\"\nproxy_protocol = true\npolicies = [\"edge\", \"stamp\"]\n\
         tls = {{ cert = \"{}\", key = \"{}\" }}\n\n{}\
         [policy.edge]\nkind = \"ip_filter\"\ndeny = [\"127.0.0.3\"]\n\n{STAMP}",
        cert.cert.display(),
        cert.key.display(),
        upstream_and_route(backend.addr, "")
    );
    let _tollgate = Tollgate::start(&config, plain);
    let url = format!("http://{plain}/who");
    for proto in Proto::ALL {
        let (status, _, _) = curl_proto(proto, &["--haproxy-protocol", "--interface", "127.0.0.2", &url]);
        assert_eq!(status, 200, "{proto:?}");
        assert_eq!(last_client(&backend), "127.0.0.2");
        let (status, _, _) = curl_proto(proto, &["--haproxy-protocol", "--interface", "127.0.0.3", &url]);
        assert_eq!(status, 403, "{proto:?}: the address in the PROXY header is filtered");
        // Without the header the listener refuses to guess.
        let (status, _, _) = curl_proto(proto, &["--max-time", "5", &url]);
        assert_eq!(status, 0, "{proto:?}: a connection without a PROXY header is closed");
    }

    // The header comes before the TLS handshake.
    let resolve = format!("localhost:{}:127.0.0.1", tls.port());
    let https = format!("https://localhost:{}/who", tls.port());
    let (status, headers, _) =
        curl_full(&["--http2", "-k", "--resolve", &resolve, "--haproxy-protocol", "--interface", "127.0.0.2", &https]);
    assert_eq!(status, 200, "{headers}");
    assert!(headers.starts_with("HTTP/2"), "{headers}");
    assert_eq!(last_client(&backend), "127.0.0.2");
    let (status, _, _) = curl_full(&["--http2", "-k", "--max-time", "5", "--resolve", &resolve, &https]);
    assert_eq!(status, 0, "TLS without a PROXY header");
}

#[test]
fn proxy_protocol_headers_written_by_hand_set_the_peer_for_every_request() {
    let backend = Backend::fixed("ok");
    let gateway = addr_on("127.0.0.1");
    let config = format!(
        "[[listener]]\nname = \"lb\"\nbind = \"{gateway}\"\nproxy_protocol = true\npolicies = [\"edge\", \"stamp\"]\n\n{}\
         [policy.edge]\nkind = \"ip_filter\"\ndeny = [\"203.0.113.0/24\", \"2001:db8:dead::/48\"]\n\n{STAMP}",
        upstream_and_route(backend.addr, "")
    );
    let _tollgate = Tollgate::start(&config, gateway);
    let port = gateway.port();

    let v1 = format!("PROXY TCP4 198.51.100.7 127.0.0.1 40000 {port}\r\n");
    assert_eq!(raw_get(gateway, v1.as_bytes()), 200);
    assert_eq!(last_client(&backend), "198.51.100.7");
    let seen = backend.requests();
    assert_eq!(seen.last().unwrap().headers["x-forwarded-for"], "198.51.100.7", "forwarded as the client");

    let v1_denied = format!("PROXY TCP4 203.0.113.9 127.0.0.1 40000 {port}\r\n");
    assert_eq!(raw_get(gateway, v1_denied.as_bytes()), 403);

    let v1_six = format!("PROXY TCP6 2001:db8::7 ::1 40000 {port}\r\n");
    assert_eq!(raw_get(gateway, v1_six.as_bytes()), 200);
    assert_eq!(last_client(&backend), "2001:db8::7");

    let v2_four = proxy_v2("198.51.100.8:5000".parse().unwrap(), gateway);
    assert_eq!(raw_get(gateway, &v2_four), 200);
    assert_eq!(last_client(&backend), "198.51.100.8");

    let v2_six = proxy_v2("[2001:db8:beef::1]:5000".parse().unwrap(), format!("[::1]:{port}").parse().unwrap());
    assert_eq!(raw_get(gateway, &v2_six), 200);
    assert_eq!(last_client(&backend), "2001:db8:beef::1");

    let v2_denied = proxy_v2("[2001:db8:dead::1]:5000".parse().unwrap(), format!("[::1]:{port}").parse().unwrap());
    assert_eq!(raw_get(gateway, &v2_denied), 403);

    // LOCAL (the balancer's health check) keeps the socket's own address.
    assert_eq!(raw_get(gateway, &proxy_v2_local()), 200);
    assert_eq!(last_client(&backend), "127.0.0.1");

    // One header per connection: keep-alive requests after it share the address.
    let mut stream = TcpStream::connect(gateway).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let keep_alive = b"GET /one HTTP/1.1\r\nHost: gateway\r\n\r\n";
    stream.write_all(&[&v2_four[..], keep_alive].concat()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    stream.write_all(GET_CLOSE).unwrap();
    let (responses, _) = read_until_closed(&mut stream);
    let responses = String::from_utf8_lossy(&responses);
    assert_eq!(responses.matches("HTTP/1.1 200").count(), 2, "{responses}");
    let seen = backend.requests();
    assert_eq!(seen.len(), 7);
    assert!(seen[5..].iter().all(|r| r.headers["x-client"] == "198.51.100.8"));
}

#[test]
fn malformed_truncated_or_slow_proxy_headers_close_the_connection() {
    let backend = Backend::fixed("ok");
    let gateway = addr_on("127.0.0.1");
    let config = format!(
        "[[listener]]\nname = \"lb\"\nbind = \"{gateway}\"\nproxy_protocol = true\nheader_read_timeout = \"1s\"\n\n{}",
        upstream_and_route(backend.addr, "")
    );
    let tollgate = Tollgate::start(&config, gateway);

    // Closed at once, no response: no header, a bad address, a wrong family, an unknown v2 version.
    let mut bad_version = proxy_v2("198.51.100.8:5000".parse().unwrap(), gateway);
    bad_version[12] = 0x31;
    for bad in [
        &b""[..],
        b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n",
        b"PROXY TCP6 198.51.100.7 127.0.0.1 1 2\r\n",
        b"PROXY TCP4 198.51.100.7 127.0.0.1 1 2\n",
        &bad_version,
    ] {
        let started = Instant::now();
        let response = raw_exchange(gateway, &[bad, GET_CLOSE].concat());
        assert_eq!(response, "", "answered after {:?}", String::from_utf8_lossy(bad));
        assert!(started.elapsed() < Duration::from_millis(900), "closed without waiting for the timeout");
    }

    // A header that stops half way (v1, and v2 cut inside its address block) is closed at the timeout.
    let v2 = proxy_v2("198.51.100.8:5000".parse().unwrap(), gateway);
    for partial in [&b"PROXY TCP4 198.51.100.7 "[..], &v2[..20]] {
        let mut stream = TcpStream::connect(gateway).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(partial).unwrap();
        let started = Instant::now();
        let (bytes, closed) = read_until_closed(&mut stream);
        let waited = started.elapsed();
        assert!(closed && bytes.is_empty(), "the server should close a stalled header");
        assert!(waited >= Duration::from_millis(800) && waited < Duration::from_secs(4), "closed after {waited:?}");
    }

    // A well-formed header is still served.
    assert_eq!(raw_get(gateway, &v2), 200);
    drop(tollgate);
}

#[test]
fn on_connect_closes_denied_clients_before_the_tls_handshake() {
    let backend = Backend::fixed("ok");
    let certs = tempfile::tempdir().unwrap();
    let cert = write_cert(certs.path(), "gw", "localhost", &["localhost"]);
    let tls = addr_on("127.0.0.1");
    let lb = addr_on("127.0.0.1");
    let config = format!(
        "[[listener]]\nname = \"tls\"\nbind = \"{tls}\"\npolicies = [\"edge\"]\n\
         tls = {{ cert = \"{}\", key = \"{}\" }}\n\n\
         [[listener]]\nname = \"lb\"\nbind = \"{lb}\"\nproxy_protocol = true\npolicies = [\"edge\"]\n\n{}\
         [policy.edge]\nkind = \"ip_filter\"\ndeny = [\"127.0.0.2\", \"203.0.113.0/24\"]\non_connect = true\n\n\
         [log]\nlevel = \"info,tollgate::listen=debug\"\n",
        cert.cert.display(),
        cert.key.display(),
        upstream_and_route(backend.addr, "")
    );
    let tollgate = Tollgate::start(&config, tls);

    // Denied: closed without a byte, although we have not even sent a ClientHello.
    let mut denied = connect_from("127.0.0.2", tls);
    let started = Instant::now();
    let (bytes, closed) = read_until_closed(&mut denied);
    assert!(closed && bytes.is_empty(), "a denied peer's connection is closed at once");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Allowed: the server waits for the handshake.
    let mut allowed = connect_from("127.0.0.3", tls);
    allowed.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let (bytes, closed) = read_until_closed(&mut allowed);
    assert!(!closed && bytes.is_empty(), "an allowed peer's connection stays open for TLS");
    drop(allowed);

    let resolve = format!("localhost:{}:127.0.0.1", tls.port());
    let https = format!("https://localhost:{}/who", tls.port());
    let (status, _, _) = curl_full(&["--http2", "-k", "--resolve", &resolve, "--interface", "127.0.0.2", &https]);
    assert_eq!(status, 0, "no TLS for a denied client");
    let (status, _, _) = curl_full(&["--http2", "-k", "--resolve", &resolve, "--interface", "127.0.0.3", &https]);
    assert_eq!(status, 200);

    // Behind a PROXY protocol balancer the header's address is what is checked at connect time.
    let claim = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 40000 {}\r\n", lb.port());
    assert_eq!(raw_get(lb, claim("203.0.113.9").as_bytes()), 0, "closed without an HTTP response");
    assert_eq!(raw_get(lb, claim("198.51.100.7").as_bytes()), 200);

    assert_eq!(backend.requests().len(), 2);
    assert!(tollgate.wait_for_log("denied by ip_filter", Duration::from_secs(5)), "{}", tollgate.log());
}

#[test]
fn cors_preflights_never_reach_the_backend_and_gateway_errors_carry_cors_headers() {
    // The upstream is a closed port: a preflight that reached it would be a 502.
    let nowhere = addr_on("127.0.0.1");
    let cors = "[policy.browser]\nkind = \"cors\"\nallow_origins = [\"http://localhost:*\"]\n\
                allow_methods = [\"*\"]\nallow_headers = [\"*\"]\nallow_credentials = true\nmax_age = \"2m\"\n";
    let tollgate =
        Tollgate::start_with(&format!("policies = [\"browser\"]\n\n{}{cors}", upstream_and_route(nowhere, "")));
    let url = tollgate.url("/api/items");
    for proto in Proto::ALL {
        let (status, headers, _) = curl_proto(
            proto,
            &[
                "-X",
                "OPTIONS",
                "-H",
                "Origin: http://localhost:5173",
                "-H",
                "Access-Control-Request-Method: DELETE",
                "-H",
                "Access-Control-Request-Headers: authorization, x-trace",
                &url,
            ],
        );
        assert_eq!(status, 204, "{proto:?}: {headers}");
        // `*` mirrors the request, which also covers Authorization (a wildcard never does).
        assert_eq!(header_value(&headers, "access-control-allow-methods").as_deref(), Some("DELETE"), "{headers}");
        assert_eq!(
            header_value(&headers, "access-control-allow-headers").as_deref(),
            Some("authorization, x-trace"),
            "{headers}"
        );
        assert_eq!(header_value(&headers, "access-control-allow-origin").as_deref(), Some("http://localhost:5173"));
        assert_eq!(header_value(&headers, "access-control-allow-credentials").as_deref(), Some("true"));
        assert_eq!(header_value(&headers, "access-control-max-age").as_deref(), Some("120"));

        // The real request fails upstream (502, made by the gateway) and the browser may still read it.
        let (status, headers, body) = curl_proto(proto, &["-H", "Origin: http://localhost:5173", &url]);
        assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
        assert_eq!(header_value(&headers, "access-control-allow-origin").as_deref(), Some("http://localhost:5173"));
        assert_eq!(header_value(&headers, "vary").as_deref(), Some("Origin"));

        // Another origin: a 204 with nothing a browser would accept.
        let (status, headers, _) = curl_proto(
            proto,
            &[
                "-X",
                "OPTIONS",
                "-H",
                "Origin: https://localhost.evil",
                "-H",
                "Access-Control-Request-Method: GET",
                &url,
            ],
        );
        assert_eq!(status, 204);
        assert!(!headers.to_ascii_lowercase().contains("access-control-allow"), "{headers}");
    }
}

#[test]
fn bad_ip_filter_cors_and_proxy_protocol_settings_are_config_errors_naming_the_line() {
    let base = "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:18080\"\n\n";
    let cases = [
        (
            format!("{base}[policy.edge]\nkind = \"ip_filter\"\nallow = [\"10.0.0.0/8\",\n  \"10.0.0.300/32\"]\n"),
            ":8: policy.edge.allow: ",
            "10.0.0.300/32",
        ),
        (
            format!("{base}[policy.edge]\nkind = \"ip_filter\"\ntrusted_proxies = [\"::1/129\"]\n"),
            ":7: policy.edge.trusted_proxies: ",
            "::1/129",
        ),
        (format!("{base}[policy.edge]\nkind = \"ip_filter\"\nalow = []\n"), ":7: policy.edge.alow: ", "unknown field"),
        (
            format!("{base}[policy.browser]\nkind = \"cors\"\nallow_origins = [\"*\"]\nallow_credentials = true\n"),
            ":7: policy.browser.allow_origins: ",
            "every site",
        ),
        (
            format!("{base}[policy.browser]\nkind = \"cors\"\nallow_origins = [\"https://app.example/\"]\n"),
            ":7: policy.browser.allow_origins: ",
            "no path",
        ),
        (base.replace("\n\n", "\nproxy_protocol = \"yes\"\n\n"), ":4: ", "invalid type"),
    ];
    for (config, location, message) in cases {
        let (out, path) = run_check(&config, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "accepted:\n{config}\n{stderr}");
        assert!(stderr.contains(&format!("{path}{location}")), "expected `{location}` in:\n{stderr}");
        assert!(stderr.contains(message), "expected `{message}` in:\n{stderr}");
    }
}
