//! TLS listeners through the real binary: ALPN (h2 and http/1.1), TLS 1.2
//! and 1.3 (and `min_version`), certificates chosen by SNI, forwarding
//! headers saying `https`, and real TLS clients (curl, openssl, nghttp, h2load).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::transport::*;
use common::*;

/// A Tollgate with one TLS listener (`tls` is the inline table's content)
/// proxying everything to `backend`.
fn start_tls(tls: &str, backend: &Backend) -> Tollgate {
    let addr = free_addr();
    let config = format!(
        "[[listener]]\nname = \"secure\"\nbind = \"{addr}\"\ntls = {{ {tls} }}\n\n\
         [[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\n\
         [[route]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"b\"\n",
        backend.addr
    );
    Tollgate::start(&config, addr)
}

/// `cert = "...", key = "..."` for one certificate.
fn single(cert: &TestCert) -> String {
    format!("cert = \"{}\", key = \"{}\"", cert.cert.display(), cert.key.display())
}

fn https(addr: SocketAddr, path: &str) -> String {
    format!("https://{addr}{path}")
}

/// Runs curl with `-v`, returning (exit code, stdout, stderr).
fn curl_verbose(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["-v", "--max-time", "10"];
    all.extend_from_slice(args);
    let out = curl(&all);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `subject=` line openssl s_client prints for the served certificate.
fn served_subject(addr: SocketAddr, sni: Option<&str>) -> String {
    let mut args = vec!["s_client".to_string(), "-connect".into(), addr.to_string()];
    match sni {
        Some(name) => args.extend(["-servername".to_string(), name.to_string()]),
        None => args.push("-noservername".into()),
    }
    let out = run_with_timeout(std::process::Command::new("openssl").args(&args), Duration::from_secs(10));
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.strip_prefix("subject=")).map(|s| s.trim().to_string()).unwrap_or_else(|| {
        panic!("no certificate served (sni {sni:?}):\n{text}\n{}", String::from_utf8_lossy(&out.stderr))
    })
}

#[test]
fn alpn_negotiates_h2_and_http1_on_one_tls_port() {
    let backend = Backend::fixed("over tls");
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path(), "localhost", "localhost", &["localhost", "127.0.0.1"]);
    let tollgate = start_tls(&single(&cert), &backend);
    let url = https(tollgate.addr, "/alpn");

    let (code, headers, body) = curl_full(&["--http2", "-k", &url]);
    assert_eq!(code, 200, "{}", tollgate.log());
    assert!(headers.starts_with("HTTP/2 200"), "curl --http2 should get HTTP/2 via ALPN: {headers}");
    assert_eq!(body, b"over tls");

    let (code, headers, body) = curl_full(&["--http1.1", "-k", &url]);
    assert_eq!(code, 200);
    assert!(headers.starts_with("HTTP/1.1 200"), "curl --http1.1 should get HTTP/1.1: {headers}");
    assert_eq!(body, b"over tls");

    let (_, _, stderr) = curl_verbose(&["--http2", "-k", "-o", "/dev/null", &url]);
    assert!(stderr.contains("ALPN: server accepted h2"), "{stderr}");
    let (_, _, stderr) = curl_verbose(&["--http1.1", "-k", "-o", "/dev/null", &url]);
    assert!(stderr.contains("ALPN: server accepted http/1.1"), "{stderr}");

    // The backend saw which protocol each client spoke.
    let via: Vec<String> = backend.requests().iter().map(|r| r.headers["via"].to_str().unwrap().to_string()).collect();
    assert_eq!(&via[..2], ["2 tollgate", "1.1 tollgate"]);
}

#[test]
fn plain_http_to_a_tls_port_gets_a_readable_400_and_reaches_no_backend() {
    let backend = Backend::fixed("never");
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path(), "localhost", "localhost", &["localhost", "127.0.0.1"]);
    let tollgate = start_tls(&single(&cert), &backend);
    let (code, headers, body) = curl_full(&["--http1.1", &format!("http://{}/oops", tollgate.addr)]);
    assert_eq!(code, 400, "{headers}");
    let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error body");
    assert_eq!(json["error"], "plain_http_on_tls", "{json}");
    assert!(backend.requests().is_empty());
    // TLS clients on the same port are served as before.
    let (code, _, body) = curl_full(&["-k", &https(tollgate.addr, "/fine")]);
    assert_eq!((code, &body[..]), (200, &b"never"[..]));
}

#[test]
fn tls12_and_tls13_clients_are_both_accepted_by_default() {
    let backend = Backend::fixed("ok");
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path(), "localhost", "localhost", &["localhost"]);
    let tollgate = start_tls(&single(&cert), &backend);
    let url = https(tollgate.addr, "/");

    let (rc, stdout, stderr) = curl_verbose(&["-k", "--tlsv1.2", "--tls-max", "1.2", &url]);
    assert_eq!(rc, 0, "TLS 1.2 client refused: {stderr}");
    assert_eq!(stdout, "ok");
    assert!(stderr.contains("SSL connection using TLSv1.2"), "{stderr}");

    let (rc, stdout, stderr) = curl_verbose(&["-k", "--tlsv1.3", &url]);
    assert_eq!(rc, 0, "TLS 1.3 client refused: {stderr}");
    assert_eq!(stdout, "ok");
    assert!(stderr.contains("SSL connection using TLSv1.3"), "{stderr}");
}

#[test]
fn min_version_1_3_refuses_a_tls12_only_client() {
    let backend = Backend::fixed("ok");
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path(), "localhost", "localhost", &["localhost"]);
    let tollgate = start_tls(&format!("{}, min_version = \"1.3\"", single(&cert)), &backend);
    let url = https(tollgate.addr, "/");

    let (rc, stdout, stderr) = curl_verbose(&["-k", "--tlsv1.2", "--tls-max", "1.2", &url]);
    // curl exit 35: SSL connect error (the handshake failed).
    assert_eq!(rc, 35, "a TLS 1.2-only client must fail the handshake; stdout {stdout:?}, stderr:\n{stderr}");
    assert!(stdout.is_empty());

    let (rc, stdout, stderr) = curl_verbose(&["-k", "--tlsv1.3", &url]);
    assert_eq!(rc, 0, "{stderr}");
    assert_eq!(stdout, "ok");
    assert!(stderr.contains("SSL connection using TLSv1.3"), "{stderr}");
    assert_eq!(backend.requests().len(), 1, "only the TLS 1.3 request reached the backend");
}

#[test]
fn certificate_is_chosen_by_sni_and_the_first_one_answers_unknown_or_missing_names() {
    let backend = Backend::fixed("sni");
    let dir = tempfile::tempdir().unwrap();
    let a = write_cert(dir.path(), "a", "a.test certificate", &["a.test"]);
    let b = write_cert(dir.path(), "b", "b.test certificate", &["b.test"]);
    let wild = write_cert(dir.path(), "wild", "wildcard certificate", &["*.wild.test"]);
    let pairs: Vec<String> = [&a, &b, &wild]
        .iter()
        .map(|c| format!("{{ cert = \"{}\", key = \"{}\" }}", c.cert.display(), c.key.display()))
        .collect();
    let tollgate = start_tls(&format!("certs = [{}]", pairs.join(", ")), &backend);
    let addr = tollgate.addr;

    assert_eq!(served_subject(addr, Some("a.test")), "CN = a.test certificate");
    assert_eq!(served_subject(addr, Some("b.test")), "CN = b.test certificate");
    assert_eq!(served_subject(addr, Some("B.Test")), "CN = b.test certificate", "names compare case-insensitively");
    assert_eq!(served_subject(addr, Some("x.wild.test")), "CN = wildcard certificate");
    assert_eq!(
        served_subject(addr, Some("wild.test")),
        "CN = a.test certificate",
        "a wildcard does not cover its apex"
    );
    assert_eq!(served_subject(addr, Some("unknown.test")), "CN = a.test certificate", "unknown SNI gets the first");
    assert_eq!(served_subject(addr, None), "CN = a.test certificate", "no SNI gets the first");

    // Real clients that verify: each name's own certificate is the only trust anchor,
    // so the request succeeds only when that exact certificate is served.
    let port = addr.port();
    for (name, cert) in [("a.test", &a), ("b.test", &b)] {
        let resolve = format!("{name}:{port}:127.0.0.1");
        let url = format!("https://{name}:{port}/who");
        let (rc, stdout, stderr) =
            curl_verbose(&["--cacert", cert.cert.to_str().unwrap(), "--resolve", &resolve, &url]);
        assert_eq!(rc, 0, "{name} with its own certificate as CA: {stderr}");
        assert_eq!(stdout, "sni");
        assert!(stderr.contains(&format!("subject: CN={name} certificate")), "{stderr}");
    }
    // b.test presented with a.test's certificate as the only CA must fail verification.
    let resolve = format!("b.test:{port}:127.0.0.1");
    let (rc, _, stderr) = curl_verbose(&[
        "--cacert",
        a.cert.to_str().unwrap(),
        "--resolve",
        &resolve,
        &format!("https://b.test:{port}/"),
    ]);
    assert_eq!(rc, 60, "b.test must not be served a.test's certificate: {stderr}");
}

#[test]
fn backend_sees_https_in_x_forwarded_proto_and_forwarded() {
    let backend = Backend::fixed("ok");
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path(), "localhost", "localhost", &["localhost"]);
    let tollgate = start_tls(&single(&cert), &backend);

    for flag in ["--http1.1", "--http2"] {
        let (code, _, _) = curl_full(&[flag, "-k", &https(tollgate.addr, "/proto")]);
        assert_eq!(code, 200);
    }
    // A client's own claim is replaced, not trusted.
    let (code, _, _) = curl_full(&["-k", "-H", "X-Forwarded-Proto: http", &https(tollgate.addr, "/proto")]);
    assert_eq!(code, 200);

    let seen = backend.requests();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(request.headers["x-forwarded-proto"], "https", "{:?}", request.headers);
        let forwarded = request.headers["forwarded"].to_str().unwrap();
        assert!(forwarded.contains("proto=https"), "{forwarded}");
        assert!(forwarded.contains("for=127.0.0.1"), "{forwarded}");
    }

    // The same listener without TLS says http: the value comes from the connection.
    let plain = Backend::fixed("ok");
    let cleartext = Tollgate::start_with(&format!(
        "[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\n\
         [[route]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"b\"\n",
        plain.addr
    ));
    let (code, _, _) = curl_full(&[&cleartext.url("/proto")]);
    assert_eq!(code, 200);
    assert_eq!(plain.requests()[0].headers["x-forwarded-proto"], "http");
}

#[test]
fn nghttp_and_h2load_speak_http2_over_tls() {
    let backend = Backend::fixed("from backend via h2");
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path(), "localhost", "localhost", &["localhost"]);
    let tollgate = start_tls(&single(&cert), &backend);
    let url = https(tollgate.addr, "/nghttp");

    let out = run_with_timeout(std::process::Command::new("nghttp").args(["-nv", &url]), Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "nghttp failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("The negotiated protocol: h2"), "{text}");
    assert!(text.contains(":status: 200"), "{text}");
    assert!(text.contains("recv DATA frame <length=19"), "the 19-byte body arrives as DATA: {text}");
    assert!(text.contains("x-request-id:"), "{text}");

    // 200 requests, 2 connections, 10 streams each: all multiplexed over TLS.
    let out = run_with_timeout(
        std::process::Command::new("h2load").args(["-n", "200", "-c", "2", "-m", "10", &url]),
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert!(text.contains("200 succeeded, 0 failed, 0 errored"), "{text}");
    assert!(text.contains("status codes: 200 2xx"), "{text}");
    assert_eq!(backend.requests().len(), 201);
}

#[test]
fn a_client_that_never_completes_the_handshake_is_disconnected() {
    let backend = Backend::fixed("ok");
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path(), "localhost", "localhost", &["localhost"]);
    let addr = free_addr();
    let config = format!(
        "[[listener]]\nname = \"secure\"\nbind = \"{addr}\"\nheader_read_timeout = \"1s\"\ntls = {{ {} }}\n\n\
         [[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\n\
         [[route]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"b\"\n",
        single(&cert),
        backend.addr
    );
    let tollgate = Tollgate::start(&config, addr);

    // Connect and send nothing: the handshake never starts.
    let mut idle = std::net::TcpStream::connect(tollgate.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = std::io::Read::read(&mut idle, &mut buf).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0, "the gateway closes the silent connection");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(4), "closed after {waited:?}");

    // Other clients are unaffected.
    let (code, _, body) = curl_full(&["-k", &https(tollgate.addr, "/")]);
    assert_eq!((code, body.as_slice()), (200, &b"ok"[..]));
}
