//! Connection and request limits (DDoS protection) attacked on loopback by
//! real clients, each attack bounded in count and time, each showing that a
//! well-behaved client is still served meanwhile: per-IP connection and
//! request caps, the request timeout, slowloris (on headers and on bodies),
//! slow reading (the send timeout), HTTP/2 rapid reset (CVE-2023-44487) and
//! the HTTP/2 idle timeout.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::core_kit::{json, run_check};
use common::rate_kit::statuses;
use common::*;
use hyper::Response;

/// A gateway whose listener has `listener_keys`, proxying everything to `backend`.
fn gateway(backend: &Backend, listener_keys: &str) -> Tollgate {
    Tollgate::start_with(&format!(
        "{listener_keys}\n\n[[upstream]]\nname = \"b\"\ntargets = [\"{}\"]\n\n\
         [[route]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"b\"\n",
        backend.addr
    ))
}

/// curl from a given loopback source address; the status (0 when the connection failed).
fn get_from(source: &str, url: &str) -> u16 {
    curl_full(&["--max-time", "5", "--interface", source, url]).0
}

/// A TCP connection to `to` from the loopback address `from`.
fn connect_from(from: &str, to: std::net::SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&format!("{from}:0").parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
    socket.connect(&to.into()).unwrap();
    socket.into()
}

/// Whether the server closes `stream` within `limit` (EOF or reset).
fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn connections_over_the_per_ip_cap_are_closed_while_other_ips_are_served() {
    let backend = Backend::fixed("ok");
    let tollgate = gateway(&backend, "max_connections_per_ip = 2");
    // From 127.0.0.3: the harness's readiness probe came from 127.0.0.1 and may still hold a slot there.
    let held: Vec<TcpStream> = (0..2).map(|_| connect_from("127.0.0.3", tollgate.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));

    let mut third = connect_from("127.0.0.3", tollgate.addr);
    assert!(closed_within(&mut third, Duration::from_secs(3)), "the third connection from 127.0.0.3 is closed");
    assert_eq!(get_from("127.0.0.3", &tollgate.url("/x")), 0, "127.0.0.3 has no slot left");
    assert_eq!(get_from("127.0.0.2", &tollgate.url("/x")), 200, "another client IP is served");

    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get_from("127.0.0.3", &tollgate.url("/x")), 200, "closed connections give their slots back");
}

#[test]
fn requests_over_the_per_ip_rate_get_429_while_other_ips_are_served() {
    let backend = Backend::fixed("ok");
    let tollgate = gateway(&backend, "max_requests_per_ip = \"5/m\"");
    let urls: Vec<String> = (0..7).map(|i| tollgate.url(&format!("/{i}"))).collect();
    assert_eq!(statuses(&["--interface", "127.0.0.1"], &urls), [200, 200, 200, 200, 200, 429, 429]);
    let (status, headers, body) = curl_full(&["--interface", "127.0.0.1", &tollgate.url("/again")]);
    assert_eq!(status, 429);
    let retry_after: u64 = header_value(&headers, "retry-after").unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry_after), "one request every 12 s: Retry-After {retry_after}");
    assert_eq!(json(&body)["error"], "rate_limited");
    assert_eq!(get_from("127.0.0.2", &tollgate.url("/x")), 200, "another client IP has its own budget");
    assert_eq!(backend.requests().len(), 6, "refused requests never reach the backend");
    // Each 429 is a debug line at most, not a warning per request.
    assert!(!tollgate.log().contains("WARN"), "{}", tollgate.log());
}

#[test]
fn request_timeout_answers_504_while_the_upstream_is_still_busy() {
    let backend = Backend::start(|req| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        Response::new(full("done"))
    });
    let tollgate = gateway(&backend, "request_timeout = \"300ms\"");
    let started = Instant::now();
    let (status, _, body) = curl_full(&["--max-time", "10", &tollgate.url("/slow")]);
    assert_eq!(status, 504);
    assert_eq!(json(&body)["error"], "request_timeout");
    assert!(started.elapsed() < Duration::from_secs(3), "answered at the timeout: {:?}", started.elapsed());
    assert_eq!(curl_full(&[&tollgate.url("/fast")]).0, 200, "fast requests are unaffected");
}

#[test]
fn slowloris_connections_are_cut_at_the_header_timeout_while_a_normal_client_is_served() {
    let backend = Backend::fixed("ok");
    let tollgate = gateway(&backend, "header_read_timeout = \"2s\"");
    let addr = tollgate.addr;
    let started = Instant::now();
    // 40 clients, each sending one header line every 200 ms and never finishing.
    let attackers: Vec<_> = (0..40)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: victim\r\n");
                let mut buf = [0u8; 512];
                for i in 0..40 {
                    match stream.read(&mut buf) {
                        Ok(0) => return Some(started.elapsed()),
                        Ok(_) => {} // a 408 before the close is fine too
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return Some(started.elapsed()),
                    }
                    if stream.write_all(format!("X-Slow-{i}: a\r\n").as_bytes()).is_err() {
                        return Some(started.elapsed());
                    }
                }
                None
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Meanwhile a normal client is served at once.
    let normal = Instant::now();
    assert_eq!(curl_full(&["--max-time", "3", &tollgate.url("/x")]).0, 200);
    assert!(normal.elapsed() < Duration::from_millis(1500), "served in {:?}", normal.elapsed());
    for attacker in attackers {
        let cut = attacker.join().unwrap().expect("a slowloris connection stayed open for 8 s");
        assert!(cut < Duration::from_secs(5), "cut after {cut:?}");
    }
}

#[test]
fn a_request_body_that_stops_coming_gets_408_at_the_body_timeout_on_http1_and_h2_while_a_slow_steady_one_passes() {
    use http_body_util::BodyExt;
    let backend = Backend::start(|req| async move {
        let len = req.into_body().collect().await.map(|b| b.to_bytes().len()).unwrap_or(0);
        Response::new(full(len.to_string()))
    });
    let tollgate = gateway(&backend, "body_timeout = \"500ms\"");
    let addr = tollgate.addr;

    // HTTP/1.1: 3 of 10 declared bytes, then nothing. The answer comes at the
    // timeout, and the connection closes (the rest of the body never will).
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc").unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("the gateway closes the connection after its 408");
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"error\":\"body_timeout\""), "{answer}");
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(4), "answered after {took:?}");

    // HTTP/2: a HEADERS and one DATA frame, the stream left open.
    runtime().block_on(async {
        let (client, _connection) = h2_client(addr).await;
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post(format!("http://{addr}/upload")).body(()).unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        body.send_data(Bytes::from_static(b"abc"), false).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), response).await.expect("an answer").unwrap();
        assert_eq!(response.status(), 408);
        // The connection serves the next request.
        assert_eq!(h2_get(&mut client, addr, "/after").await.unwrap(), 200);
    });

    // A slow but steady upload: a chunk every 300 ms, 1.8 s in all, each gap under the timeout.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream
        .write_all(b"POST /steady HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .unwrap();
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(300));
        stream.write_all(b"1\r\na\r\n").unwrap();
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n6"), "the backend got all 6 bytes: {answer}");
}

#[test]
fn a_client_that_stops_reading_is_cut_at_the_send_timeout_on_http1_and_h2_and_the_backend_stops_producing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    const TOTAL: u64 = 256 << 20;
    let produced = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&produced);
    let backend = Backend::start(move |req| {
        let counter = Arc::clone(&counter);
        let small = req.uri().path() == "/small";
        async move {
            if small {
                return Response::new(full("a whole answer in one chunk"));
            }
            Response::new(common::transport::generated_body_counted(TOTAL, 64 << 10, true, counter))
        }
    });
    let tollgate = gateway(&backend, "send_timeout = \"500ms\"");
    let addr = tollgate.addr;

    // HTTP/1.1: ask for 256 MiB and read nothing for 3 s. The gateway gives up
    // at the send timeout: reading afterwards ends (EOF) well short of the
    // whole, and the backend stopped producing.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let at_cut = produced.load(Ordering::Relaxed);
    assert!(at_cut < TOTAL, "the backend produced everything");
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut received = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => received += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(ended, "the connection was still open 5 s after reading resumed ({received} bytes)");
    assert!(received < TOTAL, "the whole body arrived: no cut");
    std::thread::sleep(Duration::from_millis(500));
    assert!(produced.load(Ordering::Relaxed) < at_cut + (64 << 20), "the backend kept producing after the cut");

    // HTTP/2: a client whose window for the response is zero gets its stream reset.
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (client, connection) =
            h2::client::Builder::new().initial_window_size(0).handshake::<_, Bytes>(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        // A long answer, and a short one whose only chunk is also its last.
        for path in ["/big-h2", "/small"] {
            let request = http::Request::get(format!("http://{addr}{path}")).body(()).unwrap();
            client = client.ready().await.unwrap();
            let (response, _) = client.send_request(request, true).unwrap();
            let response = response.await.unwrap();
            assert_eq!(response.status(), 200);
            let mut body = response.into_body();
            let error = tokio::time::timeout(Duration::from_secs(5), body.data())
                .await
                .unwrap_or_else(|_| panic!("{path}: the stream did not end within 5 s"))
                .expect("a reset, not the end of the body")
                .expect_err("no data can come through a zero window");
            assert_eq!(error.reason(), Some(h2::Reason::CANCEL), "{path}: {error}");
        }
    });
}

#[test]
fn idle_http1_keep_alive_connections_are_closed_at_the_header_timeout() {
    let backend = Backend::fixed("ok");
    let tollgate = gateway(&backend, "header_read_timeout = \"1s\"");
    let mut stream = TcpStream::connect(tollgate.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    stream.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let answered = Instant::now();
    // Still open well before the deadline: a second request is served.
    std::thread::sleep(Duration::from_millis(400));
    stream.write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let n = stream.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "kept alive under the timeout");
    let second = Instant::now();
    assert_eq!(stream.read(&mut buf).unwrap(), 0, "closed once idle");
    let idle = second.elapsed();
    assert!(idle >= Duration::from_millis(900) && idle < Duration::from_secs(4), "closed after {idle:?}");
    assert!(answered.elapsed() > Duration::from_millis(1300));
}

#[test]
fn a_response_body_streaming_past_the_header_timeout_is_not_cut() {
    use common::transport::channel_body;
    let backend = Backend::start(|_req| async move {
        let (tx, body) = channel_body(1);
        tokio::spawn(async move {
            for i in 0..6 {
                tokio::time::sleep(Duration::from_millis(400)).await;
                if tx.send(Bytes::from(format!("chunk {i}\n"))).await.is_err() {
                    return;
                }
            }
        });
        Response::new(body)
    });
    let tollgate = gateway(&backend, "header_read_timeout = \"1s\"");
    let started = Instant::now();
    let (status, _, body) = curl_full(&["--max-time", "10", &tollgate.url("/stream")]);
    assert_eq!(status, 200);
    assert_eq!(String::from_utf8(body).unwrap().lines().count(), 6, "every chunk, over 2.4 s");
    assert!(started.elapsed() > Duration::from_secs(2));
}

/// An HTTP/2 (h2c) client connection driven on the current runtime.
async fn h2_client(
    addr: SocketAddr,
) -> (h2::client::SendRequest<Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    (client, tokio::spawn(connection))
}

/// One GET on an h2 connection; its status.
async fn h2_get(client: &mut h2::client::SendRequest<Bytes>, addr: SocketAddr, path: &str) -> Result<u16, h2::Error> {
    let ready = client.clone().ready().await?;
    *client = ready;
    let request = http::Request::get(format!("http://{addr}{path}")).body(()).unwrap();
    let (response, _) = client.send_request(request, true)?;
    let response = response.await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(status)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

#[test]
fn http2_rapid_reset_gets_goaway_while_a_well_behaved_connection_keeps_working() {
    let backend = Backend::fixed("ok");
    let tollgate = gateway(&backend, "");
    let addr = tollgate.addr;
    let backend = &backend;
    runtime().block_on(async move {
        let (mut good, good_conn) = h2_client(addr).await;
        assert_eq!(h2_get(&mut good, addr, "/before").await.unwrap(), 200);

        // The attack: open a stream and cancel it at once, 5000 times on one
        // connection, from its own single-threaded runtime so the frames leave
        // in bursts (HEADERS, RST_STREAM, HEADERS, ...) as attack tools send them.
        let attack = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let (mut client, connection) = h2_client(addr).await;
                let mut opened = 0usize;
                for _ in 0..5000 {
                    client = match client.ready().await {
                        Ok(c) => c,
                        Err(_) => break,
                    };
                    let request = http::Request::get(format!("http://{addr}/attack")).body(()).unwrap();
                    match client.send_request(request, false) {
                        Ok((response, mut stream)) => {
                            stream.send_reset(h2::Reason::CANCEL);
                            drop(response);
                            opened += 1;
                        }
                        Err(_) => break,
                    }
                    if opened.is_multiple_of(100) {
                        tokio::task::yield_now().await; // let the connection task write a burst
                    }
                }
                let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
                (opened, ended.map(|joined| joined.unwrap()))
            })
        });

        // The well-behaved connection is served throughout.
        for i in 0..20 {
            assert_eq!(h2_get(&mut good, addr, &format!("/during/{i}")).await.unwrap(), 200);
        }
        let (opened, ended) = tokio::task::spawn_blocking(move || attack.join().unwrap()).await.unwrap();
        let ended = ended.expect("the attacking connection is closed by the server");
        let error = ended.expect_err("the server ends the attacking connection with an error GOAWAY");
        assert!(error.is_go_away() || error.is_io(), "{error:?}");
        if error.is_go_away() {
            assert_eq!(error.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{error:?}");
        }
        assert!(opened < 5000, "the attacker was cut off before finishing ({opened} streams)");
        let attack_requests = backend.requests().iter().filter(|r| r.uri.contains("attack")).count();
        assert!(attack_requests < 100, "{attack_requests} attack requests reached the backend");

        assert_eq!(h2_get(&mut good, addr, "/after").await.unwrap(), 200);
        drop(good);
        let _ = good_conn.await;
    });
    assert!(tollgate.child.id() > 0);
    let (status, _, body) = curl_full(&["--http2-prior-knowledge", &tollgate.url("/new")]);
    assert_eq!(status, 200, "new connections are served: {}\n{}", String::from_utf8_lossy(&body), tollgate.log());
}

#[test]
fn idle_http2_connections_are_closed_gracefully_after_idle_timeout() {
    let backend = Backend::fixed("ok");
    let tollgate = gateway(&backend, "idle_timeout = \"500ms\"");
    let addr = tollgate.addr;
    runtime().block_on(async move {
        let (mut client, connection) = h2_client(addr).await;
        assert_eq!(h2_get(&mut client, addr, "/one").await.unwrap(), 200);
        let idle_from = Instant::now();
        // Keep the client handle: only the server may end this connection.
        let ended = tokio::time::timeout(Duration::from_secs(5), connection)
            .await
            .expect("the idle connection is closed by the server")
            .unwrap();
        let waited = idle_from.elapsed();
        if let Err(e) = ended {
            assert_eq!(e.reason(), Some(h2::Reason::NO_ERROR), "a graceful GOAWAY: {e:?}");
        }
        assert!(waited >= Duration::from_millis(400), "closed too early: {waited:?}");
        drop(client);

        // A connection in use is not idle.
        let (mut busy, busy_conn) = h2_client(addr).await;
        for i in 0..8 {
            assert_eq!(h2_get(&mut busy, addr, &format!("/{i}")).await.unwrap(), 200);
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(!busy_conn.is_finished(), "requests every 150 ms keep the connection open");
    });
}

#[test]
fn bad_limit_values_name_the_line_and_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("max_requests_per_ip = \"lots\"", ":4: listener.l.max_requests_per_ip", "not a rate"),
        ("max_connections_per_ip = 0", ":4: listener.l.max_connections_per_ip", "between 1"),
        ("request_timeout = \"soon\"", ":4: listener.l.request_timeout", "not a duration"),
        ("idle_timeout = \"0s\"", ":4: listener.l.idle_timeout", "longer than 0"),
        ("body_timeout = \"0ms\"", ":4: listener.l.body_timeout", "longer than 0"),
        ("send_timeout = \"0s\"", ":4: listener.l.send_timeout", "longer than 0"),
        ("h2_max_pending_accept_reset_streams = 0", ":4: listener.l.h2_max_pending_accept_reset_streams", "between 1"),
        ("h2_max_local_error_reset_streams = -5", ":4: listener.l.h2_max_local_error_reset_streams", "between 1"),
    ];
    for (line, location, words) in cases {
        let config = format!("[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n{line}\n");
        let (out, path) = run_check(&config, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{line} should be rejected");
        assert!(stderr.contains(&format!("{path}{location}")), "{line}: expected `{location}` in: {stderr}");
        assert!(stderr.contains(words), "{line}: expected `{words}` in: {stderr}");
    }
    let good = "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\nmax_connections_per_ip = 50\n\
                max_requests_per_ip = \"100/s\"\nrequest_timeout = \"30s\"\nidle_timeout = \"2m\"\nbody_timeout = \"20s\"\nsend_timeout = \"20s\"\n\
                h2_max_pending_accept_reset_streams = 50\nh2_max_local_error_reset_streams = 200\n";
    let (out, _) = run_check(good, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
