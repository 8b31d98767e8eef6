//! Upstream behaviour through the real binary against real backends: load
//! balancing (weighted round robin, least request, random, hash by header and
//! by client IP), passive ejection and re-admission, per-target connection
//! limits, connect and first-byte timeouts, cancellation when the client goes
//! away, and keep-alive pooling towards backends.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::transport::*;
use common::*;
use hyper::Response;

/// `targets = [...]` entries: `(address, weight)`.
fn weighted_targets(targets: &[(SocketAddr, u32)]) -> String {
    let items: Vec<String> = targets.iter().map(|(a, w)| format!("{{ address = \"{a}\", weight = {w} }}")).collect();
    format!("[{}]", items.join(", "))
}

/// A Tollgate with upstream `u` (`targets` is a TOML array, `keys` extra lines)
/// behind a catch-all route; `extra` is appended (e.g. an `[admin]` table).
fn start_upstream(targets: &str, keys: &str, extra: &str) -> Tollgate {
    Tollgate::start_with(&format!(
        "[[upstream]]\nname = \"u\"\ntargets = {targets}\n{keys}\n\n\
         [[route]]\nname = \"all\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"u\"\n\n{extra}"
    ))
}

fn plain_targets(targets: &[SocketAddr]) -> String {
    let items: Vec<String> = targets.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// One curl run fetching `url` `n` times over one connection; returns the
/// concatenated bodies (each backend answers with a one-letter name).
fn fetch_many(url: &str, n: usize, extra: &[&str]) -> String {
    let mut args: Vec<&str> = vec!["--max-time", "60"];
    args.extend_from_slice(extra);
    args.extend(std::iter::repeat_n(url, n));
    let out = curl(&args);
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn letter_counts(bodies: &str) -> HashMap<char, usize> {
    let mut counts = HashMap::new();
    for c in bodies.chars() {
        *counts.entry(c).or_insert(0) += 1;
    }
    counts
}

/// A backend that answers `name` after `delay`.
fn slow_backend(name: &'static str, delay: Duration) -> Backend {
    Backend::start(move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::new(full(name))
    })
}

/// Runs curl on another thread; the handle yields (http code, body, seconds taken).
fn curl_in_background(args: Vec<String>) -> std::thread::JoinHandle<(u16, String, f64)> {
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut all: Vec<&str> = vec!["-w", "\n%{http_code}"];
        all.extend(args.iter().map(String::as_str));
        let out = curl(&all);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string(), started.elapsed().as_secs_f64())
    })
}

fn json_body(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(body)))
}

#[test]
fn round_robin_splits_requests_exactly_by_weight() {
    let (a, b, c) = (Backend::fixed("a"), Backend::fixed("b"), Backend::fixed("c"));
    let targets = weighted_targets(&[(a.addr, 3), (b.addr, 2), (c.addr, 1)]);
    let tollgate = start_upstream(&targets, "balance = \"round_robin\"", "");

    let bodies = fetch_many(&tollgate.url("/rr"), 60, &[]);
    let counts = letter_counts(&bodies);
    assert_eq!((counts[&'a'], counts[&'b'], counts[&'c']), (30, 20, 10), "{bodies}");
    assert_eq!((a.requests().len(), b.requests().len(), c.requests().len()), (30, 20, 10));
    // Smooth: each cycle of 6 interleaves the targets instead of bursting.
    for cycle in bodies.as_bytes().chunks(6) {
        let mut sorted = cycle.to_vec();
        sorted.sort();
        assert_eq!(sorted, b"aaabbc", "every cycle of six has the weighted mix: {bodies}");
    }
    assert!(!bodies.contains("aaa"), "weighted round robin is interleaved: {bodies}");
}

#[test]
fn least_request_sends_most_requests_to_the_fast_target_under_concurrency() {
    let fast = Backend::fixed("f");
    let slow = slow_backend("s", Duration::from_millis(1500));
    let tollgate = start_upstream(&plain_targets(&[fast.addr, slow.addr]), "balance = \"least_request\"", "");

    let url = tollgate.url("/lr");
    let clients: Vec<_> = (0..20)
        .map(|i| {
            std::thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 40 }));
            curl_in_background(vec!["--max-time".into(), "10".into(), url.clone()])
        })
        .collect();
    let results: Vec<(u16, String, f64)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(results.iter().all(|(code, _, _)| *code == 200), "{results:?}");
    let to_slow = results.iter().filter(|(_, body, _)| body == "s").count();
    // Round robin or random would give the slow target about 10 of 20; least
    // request sends it one only while both are equally idle.
    assert!(to_slow <= 3, "slow target got {to_slow} of 20: {results:?}");
    assert_eq!(fast.requests().len() + slow.requests().len(), 20);
}

#[test]
fn random_spreads_requests_by_weight_in_no_fixed_order() {
    let (a, b) = (Backend::fixed("a"), Backend::fixed("b"));
    let targets = weighted_targets(&[(a.addr, 3), (b.addr, 1)]);
    let tollgate = start_upstream(&targets, "balance = \"random\"", "");

    let bodies = fetch_many(&tollgate.url("/random"), 400, &[]);
    let counts = letter_counts(&bodies);
    assert_eq!(counts.values().sum::<usize>(), 400);
    let share_a = counts.get(&'a').copied().unwrap_or(0);
    // Expected 300, standard deviation about 8.7.
    assert!((250..=350).contains(&share_a), "weight 3 target got {share_a} of 400");
    // Round robin repeats a fixed cycle (period 4 for weights 3:1); random does not.
    let seq = bodies.as_bytes();
    assert!((0..seq.len() - 4).any(|i| seq[i] != seq[i + 4]), "picks follow a fixed cycle: {bodies}");
}

#[test]
fn header_hash_keeps_each_key_on_one_target_and_spreads_keys() {
    let backends = [Backend::fixed("a"), Backend::fixed("b"), Backend::fixed("c")];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let tollgate = start_upstream(&plain_targets(&addrs), "balance = \"hash\"\nhash_key = \"header:x-user\"", "");

    let url = tollgate.url("/hash");
    let mut chosen = HashMap::new();
    for user in 0..30 {
        let header = format!("x-user: user-{user}");
        let bodies = fetch_many(&url, 4, &["-H", &header]);
        let first = bodies.chars().next().unwrap();
        assert!(bodies.chars().all(|c| c == first), "user-{user} moved between targets: {bodies}");
        chosen.insert(user, first);
    }
    // The choice is a function of the key: it holds on a new connection, later.
    for user in [0, 7, 19, 29] {
        let bodies = fetch_many(&url, 2, &["-H", &format!("x-user: user-{user}")]);
        assert_eq!(bodies, format!("{0}{0}", chosen[&user]), "user-{user}");
    }
    let used: HashSet<char> = chosen.values().copied().collect();
    assert_eq!(used.len(), 3, "30 keys spread over all three targets: {chosen:?}");
}

#[test]
fn client_ip_hash_keeps_each_client_address_on_one_target() {
    let backends = [Backend::fixed("a"), Backend::fixed("b"), Backend::fixed("c")];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let tollgate = start_upstream(&plain_targets(&addrs), "balance = \"hash\"\nhash_key = \"client_ip\"", "");

    let url = tollgate.url("/ip");
    let mut chosen = HashMap::new();
    // All of 127.0.0.0/8 is loopback: each source address is a distinct client.
    for host in 2..22 {
        let source = format!("127.0.0.{host}");
        // A spoofed X-Forwarded-For must not change the pick: the key is the peer address.
        let spoof = format!("X-Forwarded-For: 10.0.0.{host}");
        let mut bodies = fetch_many(&url, 3, &["--interface", &source]);
        bodies.push_str(&fetch_many(&url, 2, &["--interface", &source, "-H", &spoof, "-H", "x-user: other"]));
        let first = bodies.chars().next().unwrap();
        assert!(bodies.chars().all(|c| c == first), "client {source} moved between targets: {bodies}");
        chosen.insert(host, first);
    }
    let used: HashSet<char> = chosen.values().copied().collect();
    assert!(used.len() >= 2, "20 client addresses all hashed to one target: {chosen:?}");
    // Every backend saw only requests from the addresses hashed to it.
    for (backend, name) in backends.iter().zip(['a', 'b', 'c']) {
        let expected = chosen.values().filter(|&&c| c == name).count() * 5;
        assert_eq!(backend.requests().len(), expected, "backend {name}");
    }
}

#[test]
fn connect_failures_eject_a_target_until_eject_for_has_passed() {
    let good = Backend::fixed("g");
    let dead = free_addr(); // nothing listens here: connections are refused
    let admin = free_addr();
    let tollgate = start_upstream(
        &plain_targets(&[dead, good.addr]),
        "balance = \"round_robin\"\neject_after = 2\neject_for = \"1s\"",
        &format!("[admin]\nbind = \"{admin}\"\n"),
    );
    assert!(wait_for_port(admin, Duration::from_secs(5)));
    let dead_label = dead.to_string();
    assert!(target_healthy(admin, "u", &dead_label), "targets start healthy");

    // Bodiless requests that hit the refusing target are retried on the other: all succeed.
    let url = tollgate.url("/eject");
    let mut sent = 0;
    // The ejection happened during the last request: not before it started.
    let mut ejected_at = Instant::now();
    while target_healthy(admin, "u", &dead_label) {
        assert!(sent < 10, "dead target never ejected after {sent} requests; log:\n{}", tollgate.log());
        ejected_at = Instant::now();
        let (code, _, body) = curl_full(&[&url]);
        assert_eq!((code, body.as_slice()), (200, &b"g"[..]), "request {sent}");
        sent += 1;
    }
    assert!(sent >= 1, "ejection needs failures first");
    assert!(tollgate.wait_for_log("target ejected", Duration::from_secs(2)), "{}", tollgate.log());

    // The address comes back to life, but while ejected it gets no traffic.
    let revived = backend_on(dead, |_req| async move { Response::new(full("r")) });
    let bodies = fetch_many(&url, 10, &[]);
    assert!(ejected_at.elapsed() < Duration::from_millis(950), "too slow to observe the ejection window");
    assert_eq!(bodies, "gggggggggg", "an ejected target is skipped");
    assert!(revived.requests().is_empty());

    // After eject_for it is a candidate again (and healthy on the status page).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !target_healthy(admin, "u", &dead_label) {
        assert!(Instant::now() < deadline, "target never re-admitted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(ejected_at.elapsed() >= Duration::from_millis(990), "re-admitted before eject_for");
    let bodies = fetch_many(&url, 10, &[]);
    let counts = letter_counts(&bodies);
    assert_eq!(counts.get(&'r'), Some(&5), "re-admitted target gets its round-robin share: {bodies}");
    assert_eq!(revived.requests().len(), 5);
}

#[test]
fn connection_limit_queues_a_second_request_until_the_first_finishes() {
    let (backend, counters) = counting_backend(|_req| async move {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        Response::new(full("done"))
    });
    let tollgate = start_upstream(&plain_targets(&[backend.addr]), "max_connections_per_target = 1", "");

    let url = tollgate.url("/limited");
    let first = curl_in_background(vec!["--max-time".into(), "10".into(), url.clone()]);
    std::thread::sleep(Duration::from_millis(150));
    let second = curl_in_background(vec!["--max-time".into(), "10".into(), url]);
    let (first, second) = (first.join().unwrap(), second.join().unwrap());

    // Documented in upstream/target.rs: a request waits up to connect_timeout
    // (default 5 s) for a slot, so both succeed, one after the other.
    assert_eq!((first.0, first.1.as_str()), (200, "done"));
    assert_eq!((second.0, second.1.as_str()), (200, "done"));
    assert_eq!(counters.max_in_flight(), 1, "the backend never had two requests at once");
    assert!(second.2 >= 1.7, "second request did not wait for the slot ({:.2} s)", second.2);
}

#[test]
fn connection_limit_answers_503_when_no_slot_frees_within_connect_timeout() {
    let (backend, counters) = counting_backend(|_req| async move {
        tokio::time::sleep(Duration::from_millis(2000)).await;
        Response::new(full("done"))
    });
    let tollgate = start_upstream(
        &plain_targets(&[backend.addr]),
        "max_connections_per_target = 1\nconnect_timeout = \"300ms\"",
        "",
    );

    let url = tollgate.url("/limited");
    let first = curl_in_background(vec!["--max-time".into(), "10".into(), url.clone()]);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let (code, _, body) = curl_full(&["--max-time", "10", &url]);
    let waited = started.elapsed();
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json_body(&body)["error"], "upstream_saturated");
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_millis(1500), "{waited:?}");

    let first = first.join().unwrap();
    assert_eq!((first.0, first.1.as_str()), (200, "done"));
    assert_eq!(backend.requests().len(), 1, "the refused request never reached the backend");
    assert_eq!(counters.max_in_flight(), 1);
}

/// A listening socket that never accepts, with its one-slot accept queue
/// already full, so new connections hang in the handshake (SYNs dropped).
fn unanswered_address() -> (socket2::Socket, Vec<TcpStream>, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => fillers.push(s),
            Err(_) => return (socket, fillers, addr),
        }
    }
    panic!("the accept queue never filled up");
}

#[test]
fn connect_timeout_answers_504() {
    let (_socket, _fillers, addr) = unanswered_address();
    let tollgate = start_upstream(&plain_targets(&[addr]), "connect_timeout = \"500ms\"", "");

    let started = Instant::now();
    let (code, _, body) = curl_full(&["--max-time", "10", &tollgate.url("/hang")]);
    let took = started.elapsed();
    assert_eq!(code, 504, "{}", String::from_utf8_lossy(&body));
    let json = json_body(&body);
    assert_eq!(json["error"], "upstream_timeout");
    assert!(json["message"].as_str().unwrap().contains("connect"), "{json}");
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(3), "{took:?}");
}

#[test]
fn a_bodyless_request_whose_connect_times_out_is_retried_on_another_target() {
    let (_socket, _fillers, hanging) = unanswered_address();
    let good = Backend::fixed("good");
    let tollgate = start_upstream(&plain_targets(&[hanging, good.addr]), "connect_timeout = \"300ms\"", "");
    for _ in 0..4 {
        let (code, _, body) = curl_full(&["--max-time", "10", &tollgate.url("/")]);
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(body, b"good");
    }
}

#[test]
fn a_request_with_a_body_whose_connect_times_out_goes_whole_to_another_target() {
    let (_socket, _fillers, hanging) = unanswered_address();
    let echo = common::core_kit::echo_backend();
    let tollgate = start_upstream(&plain_targets(&[hanging, echo.addr]), "connect_timeout = \"300ms\"", "");
    for i in 0..4 {
        let payload = format!("payload {i}");
        let (code, _, body) = curl_full(&["--max-time", "10", "--data-binary", &payload, &tollgate.url("/")]);
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(String::from_utf8_lossy(&body), payload, "the body reached the second target whole");
    }
}

#[test]
fn first_byte_timeout_answers_504() {
    let backend = slow_backend("late", Duration::from_secs(3));
    let tollgate = start_upstream(&plain_targets(&[backend.addr]), "first_byte_timeout = \"500ms\"", "");

    let started = Instant::now();
    let (code, _, body) = curl_full(&["--max-time", "10", &tollgate.url("/slow")]);
    let took = started.elapsed();
    assert_eq!(code, 504, "{}", String::from_utf8_lossy(&body));
    let json = json_body(&body);
    assert_eq!(json["error"], "upstream_timeout");
    assert!(json["message"].as_str().unwrap().contains("first byte"), "{json}");
    assert!(took >= Duration::from_millis(450) && took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(backend.requests().len(), 1, "the backend was reached; it was just too slow");
}

/// The deadline is each request's own, also on a kept-alive connection whose
/// earlier requests armed the timer for earlier deadlines.
#[test]
fn first_byte_timeout_counts_from_each_request_on_a_reused_connection() {
    let (backend, counters) = counting_backend(|req: hyper::Request<hyper::body::Incoming>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        hyper::Response::new(full("done"))
    });
    let tollgate = start_upstream(&plain_targets(&[backend.addr]), "first_byte_timeout = \"600ms\"", "");
    // Fast requests, the last 400 ms before the slow one: its deadline is
    // 600 ms after it started, not 600 ms after any of these.
    for _ in 0..3 {
        assert_eq!(curl_full(&[&tollgate.url("/fast")]).0, 200);
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = Instant::now();
    let (code, _, body) = curl_full(&["--max-time", "10", &tollgate.url("/slow")]);
    let took = started.elapsed();
    assert_eq!(code, 504, "{}", String::from_utf8_lossy(&body));
    assert!(took >= Duration::from_millis(550) && took < Duration::from_millis(2500), "{took:?}");
    assert_eq!(counters.connections(), 1, "all four went over one kept-alive connection");
    // A request after the timeout gets a new connection and is answered.
    assert_eq!(curl_full(&[&tollgate.url("/fast")]).0, 200);
}

/// A backend whose `/stream` sends a tick every 100 ms for up to 30 s
/// (recording when a send first fails: its reader went away) and whose other
/// paths answer `ok` at once.
fn ticking_backend() -> (Backend, Arc<Mutex<Option<Instant>>>) {
    let stopped: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let stopped_in = Arc::clone(&stopped);
    let backend = Backend::start(move |req| {
        let stopped = Arc::clone(&stopped_in);
        async move {
            if req.uri().path() != "/stream" {
                return Response::new(full("ok"));
            }
            let (tx, body) = channel_body(1);
            tokio::spawn(async move {
                for _ in 0..300 {
                    if tx.send(Bytes::from_static(b"tick\n")).await.is_err() {
                        *stopped.lock().unwrap() = Some(Instant::now());
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            Response::new(body)
        }
    });
    (backend, stopped)
}

#[test]
fn client_disconnect_cancels_the_backend_response_stream() {
    let (backend, stopped) = ticking_backend();
    let tollgate = start_upstream(&plain_targets(&[backend.addr]), "", "");

    for flag in ["--http1.1", "--http2-prior-knowledge"] {
        *stopped.lock().unwrap() = None;
        let out = curl(&[flag, "-N", "--max-time", "1", &tollgate.url("/stream")]);
        let client_gone = Instant::now();
        assert_eq!(out.status.code(), Some(28), "{flag}: curl should time out mid-stream");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("tick\n"), "{flag}: the stream had started");

        let deadline = client_gone + Duration::from_secs(3);
        let noticed = loop {
            if let Some(at) = *stopped.lock().unwrap() {
                break at;
            }
            assert!(Instant::now() < deadline, "{flag}: backend still streaming 3 s after the client left");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(noticed.saturating_duration_since(client_gone) < Duration::from_secs(3));
    }
    assert_eq!(backend.requests().len(), 2);
}

#[test]
fn client_disconnect_before_the_response_cancels_the_backend_request() {
    // The backend's handler is dropped (not completed) when its connection closes.
    let dropped: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let dropped_in = Arc::clone(&dropped);
    let backend = Backend::start(move |_req| {
        let guard = DropRecorder(Arc::clone(&dropped_in));
        async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_secs(20)).await;
            std::mem::forget(_guard);
            Response::new(full("too late"))
        }
    });
    let tollgate = start_upstream(&plain_targets(&[backend.addr]), "", "");

    let out = curl(&["--max-time", "1", &tollgate.url("/never")]);
    let client_gone = Instant::now();
    assert_eq!(out.status.code(), Some(28));
    let deadline = client_gone + Duration::from_secs(3);
    while dropped.lock().unwrap().is_none() {
        assert!(Instant::now() < deadline, "backend request still pending 3 s after the client left");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Records when it is dropped.
struct DropRecorder(Arc<Mutex<Option<Instant>>>);

impl Drop for DropRecorder {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(Instant::now());
    }
}

#[test]
fn keep_alive_pools_backend_connections_across_client_connections() {
    let (backend, counters) = counting_backend(|_req| async move { Response::new(full("ok")) });
    let tollgate = start_upstream(&plain_targets(&[backend.addr]), "", "");

    // 30 separate client processes, so 30 downstream connections, one after another.
    for i in 0..30 {
        let (code, _, body) = curl_full(&[&tollgate.url(&format!("/pooled/{i}"))]);
        assert_eq!((code, body.as_slice()), (200, &b"ok"[..]));
    }
    // And 30 more, one after another on one h2c connection (h2load: curl 7.88
    // cannot reuse a prior-knowledge connection, curl/curl#10634).
    let out = run_with_timeout(
        std::process::Command::new("h2load").args(["-n", "30", "-c", "1", "-m", "1", &tollgate.url("/pooled/h2")]),
        Duration::from_secs(30),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("30 succeeded, 0 failed, 0 errored"), "{text}");
    assert!(text.contains("status codes: 30 2xx"), "{text}");

    assert_eq!(backend.requests().len(), 60);
    let connections = counters.connections();
    assert!(connections <= 2, "60 sequential requests opened {connections} backend connections");
}

#[test]
fn an_h2_stream_reset_cancels_its_backend_request_and_keeps_the_connection() {
    let (backend, stopped) = ticking_backend();
    let tollgate = start_upstream(&plain_targets(&[backend.addr]), "", "");
    let addr = tollgate.addr;

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = h2c_client(addr).await;
        let request = http::Request::get(format!("http://{addr}/stream")).body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let mut body = response.await.unwrap().into_body();
        let first = body.data().await.unwrap().unwrap();
        assert_eq!(&first[..], b"tick\n");
        // Dropping the stream's handles sends RST_STREAM(CANCEL); the connection stays open.
        drop(body);
        let reset_at = Instant::now();
        loop {
            if stopped.lock().unwrap().is_some() {
                break;
            }
            assert!(reset_at.elapsed() < Duration::from_secs(3), "backend still streaming 3 s after the stream reset");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // The same connection still serves requests.
        let mut client = client.ready().await.unwrap();
        let request = http::Request::get(format!("http://{addr}/after")).body(()).unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        let mut text = Vec::new();
        while let Some(chunk) = body.data().await {
            text.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(text, b"ok");
    });
}

#[test]
fn an_h2_upload_the_client_resets_reaches_the_backend_broken_not_short() {
    // What the backend made of the request body: Ok (complete) or Err (cut).
    let outcome: Arc<Mutex<Option<Result<usize, String>>>> = Arc::default();
    let record = Arc::clone(&outcome);
    let backend = Backend::start(move |req| {
        let record = Arc::clone(&record);
        async move {
            let read = http_body_util::BodyExt::collect(req.into_body()).await;
            *record.lock().unwrap() = Some(read.map(|c| c.to_bytes().len()).map_err(|e| e.to_string()));
            Response::new(full("read"))
        }
    });
    let tollgate = start_upstream(&plain_targets(&[backend.addr]), "", "");
    let addr = tollgate.addr;

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = h2c_client(addr).await;
        // No Content-Length: the backend gets it chunked, so only the framing can say it was cut.
        let request = http::Request::post(format!("http://{addr}/upload")).body(()).unwrap();
        let (_response, mut upload) = client.send_request(request, false).unwrap();
        for _ in 0..16 {
            upload.send_data(Bytes::from(vec![b'x'; 16 * 1024]), false).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        upload.send_reset(h2::Reason::CANCEL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while outcome.lock().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the backend never saw the upload end");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let seen = outcome.lock().unwrap().clone();
    assert!(matches!(seen, Some(Err(_))), "the backend must see a broken body, not a short one: {seen:?}");
}

#[test]
fn a_client_leaving_mid_response_frees_the_targets_connection_slot() {
    let (backend, stopped) = ticking_backend();
    let admin = free_addr();
    let tollgate = start_upstream(
        &plain_targets(&[backend.addr]),
        "max_connections_per_target = 1\nconnect_timeout = \"500ms\"",
        &format!("[admin]\nbind = \"{admin}\"\n"),
    );
    assert!(wait_for_port(admin, Duration::from_secs(5)));

    for round in 0..3 {
        let out = curl(&["-N", "--max-time", "1", &tollgate.url("/stream")]);
        assert_eq!(out.status.code(), Some(28), "round {round}: the stream was cut by the client");
        // The single slot must come back: the next request gets it instead of a 503.
        let (code, _, body) = curl_full(&["--max-time", "5", &tollgate.url("/quick")]);
        assert_eq!((code, body.as_slice()), (200, &b"ok"[..]), "round {round}: {}", String::from_utf8_lossy(&body));
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while stopped.lock().unwrap().is_none() {
        assert!(Instant::now() < deadline, "backend stream never cancelled");
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = admin_status(admin);
    assert_eq!(status["upstreams"][0]["targets"][0]["in_flight"], 0, "{status}");
}
