//! gRPC upstreams with real peers: a Python `grpcio` client calls a Python
//! `grpcio` server through Tollgate (unary, server-, client- and
//! bidirectional streaming, errors with details, metadata incl. `-bin`,
//! deadlines, cancellation, balancing), and curl plays a raw gRPC client
//! against a Rust backend that stalls on purpose (gateway-made deadlines).

mod common;
mod grpc_support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use grpc_support::*;

fn gateway(targets: &[SocketAddr]) -> Tollgate {
    Tollgate::start_with(&grpc_config(targets, "", ""))
}

#[test]
fn unary_and_every_streaming_kind_pass_through() {
    let backend = GrpcBackend::start("b1");
    let tollgate = gateway(&[backend.addr]);
    assert_eq!(grpc_client(tollgate.addr, "unary")["reply"], "echo:hello");
    assert_eq!(grpc_client(tollgate.addr, "client_stream")["reply"], "got 3: a,bb,ccc");
    assert_eq!(grpc_client(tollgate.addr, "bidi")["replies"], serde_json::json!(["bidi:x", "bidi:y", "bidi:z"]));

    // Four messages 300 ms apart arrive as they are sent, not at the end.
    let stream = grpc_client(tollgate.addr, "server_stream");
    assert_eq!(stream["replies"], serde_json::json!(["msg-0", "msg-1", "msg-2", "msg-3"]));
    let times: Vec<f64> = stream["times"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
    assert!(times[3] - times[0] > 0.6, "messages were batched: {times:?}");

    // 3 MiB each way: past the HTTP/2 windows, so flow control has to move it.
    let big = grpc_client(tollgate.addr, "big");
    assert_eq!(big["ok"], true, "{big}");
    assert!(tollgate.wait_for_log("path=/test.Echo/Bidi route=grpc upstream=g", Duration::from_secs(5)));
}

#[test]
fn error_status_details_and_metadata_pass_through_both_ways() {
    let backend = GrpcBackend::start("b1");
    let tollgate = gateway(&[backend.addr]);
    let fail = grpc_client(tollgate.addr, "fail");
    assert_eq!(fail["code"], "FAILED_PRECONDITION", "{fail}");
    assert_eq!(fail["details"], "precondition failed: 100% broken");
    assert_eq!(fail["trailers"]["grpc-status-details-bin"], "080912046f6f7073");

    let meta = grpc_client(tollgate.addr, "metadata");
    let seen = &meta["seen"];
    assert_eq!(seen["x-plain"], "hello", "{meta}");
    assert_eq!(seen["x-blob-bin"], "00ff10", "binary metadata arrives byte for byte");
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(meta["initial"]["echo-x-blob-bin"], "00ff10", "{meta}");
    assert_eq!(meta["trailers"]["x-trailer-bin"], "0001fe");
    assert_eq!(meta["trailers"]["x-trailer"], "done");
}

#[test]
fn a_grpc_route_adds_only_the_forwarding_metadata_it_lists() {
    let backend = GrpcBackend::start("b1");
    let lean = "forward_headers = [\"x-forwarded-for\"]\nrequest_id_header = false";
    let tollgate = Tollgate::start_with(&grpc_config(&[backend.addr], lean, ""));
    let meta = grpc_client(tollgate.addr, "metadata");
    let seen = &meta["seen"];
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1", "{meta}");
    assert_eq!(seen["x-plain"], "hello", "{meta}");
    for absent in ["x-forwarded-proto", "x-forwarded-host", "forwarded", "via", "x-request-id"] {
        assert!(seen.get(absent).is_none(), "{absent} reached the backend: {meta}");
        assert!(meta["initial"].get(absent).is_none(), "{absent} reached the client: {meta}");
    }
    assert_eq!(meta["trailers"]["x-trailer"], "done");

    // The default adds all of them, and the request id both ways.
    let full = gateway(&[backend.addr]);
    let meta = grpc_client(full.addr, "metadata");
    for present in ["x-forwarded-proto", "forwarded", "via", "x-request-id"] {
        assert!(meta["seen"].get(present).is_some(), "{present} missing at the backend: {meta}");
    }
    assert_eq!(meta["initial"]["via"], "2 tollgate", "{meta}");
    assert_eq!(meta["initial"]["x-request-id"], meta["seen"]["x-request-id"], "{meta}");
}

#[test]
fn a_deadline_ends_the_call_and_the_backend_sees_it_cancelled() {
    let backend = GrpcBackend::start("b1");
    let tollgate = gateway(&[backend.addr]);
    let late = grpc_client(tollgate.addr, "deadline");
    assert_eq!(late["code"], "DEADLINE_EXCEEDED", "{late}");
    assert!(late["elapsed"].as_f64().unwrap() < 2.0, "{late}");
    assert!(backend.wait_for("CANCELLED Slow", Duration::from_secs(5)), "the backend kept working");
}

#[test]
fn a_client_cancel_resets_the_backend_stream() {
    let backend = GrpcBackend::start("b1");
    let tollgate = gateway(&[backend.addr]);
    assert_eq!(grpc_client(tollgate.addr, "cancel")["cancelled"], true);
    assert!(backend.wait_for("CANCELLED Slow", Duration::from_secs(5)), "the backend never saw the cancel");
}

#[test]
fn calls_are_balanced_per_call_and_a_dead_target_is_skipped() {
    let (b1, b2) = (GrpcBackend::start("b1"), GrpcBackend::start("b2"));
    let dead = common::transport::free_addr();
    let tollgate = gateway(&[b1.addr, b2.addr, dead]);
    let names = grpc_client(tollgate.addr, "whoami");
    let names: Vec<&str> = names["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert_eq!(names.len(), 8, "every call succeeded, the dead target's ones on another target");
    assert!(names.contains(&"b1") && names.contains(&"b2"), "one client connection, calls spread: {names:?}");
}

#[test]
fn a_restarted_backend_gets_the_next_calls_on_a_new_connection() {
    let before = GrpcBackend::start("before");
    let addr = before.addr;
    let tollgate = gateway(&[addr]);
    assert_eq!(grpc_client(tollgate.addr, "unary")["reply"], "echo:hello");
    // Killed: the kernel closes its end of Tollgate's multiplexed connections.
    drop(before);
    std::thread::sleep(Duration::from_millis(300));
    let _after = GrpcBackend::start_on("after", addr.port());
    let names = grpc_client(tollgate.addr, "whoami");
    let names: Vec<&str> = names["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    assert_eq!(names, vec!["after"; 8], "every call went to the new process on a fresh connection");
}

#[test]
fn calls_keep_succeeding_while_the_backend_ends_connections_with_goaway() {
    // grpcio ends each connection after 300 ms: GOAWAY, a grace period for
    // the calls on it, then the close; new calls must go on fresh connections.
    let backend = GrpcBackend::start_aging("aging", 300);
    let tollgate = gateway(&[backend.addr]);
    for _ in 0..5 {
        let names = grpc_client(tollgate.addr, "whoami");
        let names: Vec<&str> = names["names"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
        assert_eq!(names, vec!["aging"; 8], "a call failed across a GOAWAY");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn gateway_failures_are_grpc_statuses() {
    let backend = GrpcBackend::start("b1");
    let tollgate = gateway(&[backend.addr]);
    let no_route = grpc_client(tollgate.addr, "status:/other.Svc/Method");
    assert_eq!(no_route["code"], "UNIMPLEMENTED", "{no_route}");
    assert_eq!(no_route["details"], "no route matches this request");

    let down = Tollgate::start_with(&grpc_config(&[common::transport::free_addr()], "", ""));
    let unavailable = grpc_client(down.addr, "status:/test.Echo/Unary");
    assert_eq!(unavailable["code"], "UNAVAILABLE", "{unavailable}");
    assert!(unavailable["details"].as_str().unwrap().contains("unreachable"), "{unavailable}");
}

#[test]
fn grpc_timeout_is_enforced_by_the_gateway_before_and_after_the_response_head() {
    let backend = StallingBackend::start();
    let tollgate = gateway(&[backend.addr]);

    // No head by the deadline: a trailers-only DEADLINE_EXCEEDED.
    let start = Instant::now();
    let (headers, body) = raw_grpc(&tollgate, b"ping", "/stall.Svc/Head", &["-H", "grpc-timeout: 300m"]);
    assert_eq!(header_value(&headers, "grpc-status").as_deref(), Some("4"), "{headers}");
    assert!(body.is_empty());
    assert!(start.elapsed() < Duration::from_secs(3));

    // Head and one message, then silence: the message, then DEADLINE_EXCEEDED trailers.
    let (headers, body) = raw_grpc(&tollgate, b"ping", "/stall.Svc/Body", &["-H", "grpc-timeout: 300m"]);
    assert_eq!(frames(&body), vec![(0, b"first".to_vec())]);
    assert_eq!(header_value(&headers, "grpc-status").as_deref(), Some("4"), "trailers: {headers}");

    // Both backend streams were reset, not left running.
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.dropped.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(backend.dropped.load(Ordering::SeqCst), 2);
}

#[test]
fn concurrent_calls_share_a_few_multiplexed_connections() {
    // Default: two connections per target; `grpc_connections_per_target` changes it.
    for (extra, expected) in [("", 2), ("grpc_connections_per_target = 4", 4)] {
        let backend = StallingBackend::start();
        let config = grpc_config(&[backend.addr], "", "")
            .replace("connect_timeout = \"1s\"", &format!("connect_timeout = \"1s\"\n{extra}"));
        let tollgate = Tollgate::start_with(&config);
        // 20 concurrent calls, each its own client connection.
        let start = Instant::now();
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let url = tollgate.url("/stall.Svc/Hold");
                let dir = tempfile::tempdir().unwrap();
                std::thread::spawn(move || {
                    let body = write_file(dir.path(), "req", &frame(b"x"));
                    let data = format!("@{}", body.display());
                    let args =
                        ["--http2-prior-knowledge", "-H", "content-type: application/grpc", "--data-binary", &data];
                    let (code, headers, _) = curl_full(&[&args[..], &[&url]].concat());
                    (code, header_value(&headers, "grpc-status"))
                })
            })
            .collect();
        for call in calls {
            assert_eq!(call.join().unwrap(), (200, Some("0".to_string())));
        }
        assert!(start.elapsed() < Duration::from_secs(4), "calls ran one after another: {:?}", start.elapsed());
        // Calls go round robin over the slots, so 20 calls open every one of them and no more.
        let connections = backend.connections.load(Ordering::SeqCst);
        assert_eq!(connections, expected, "{extra:?}: upstream connections for 20 calls");
    }
}

#[test]
fn grpc_connections_per_target_is_only_for_grpc_upstreams() {
    let (out, path) = common::core_kit::run_check(
        "[[upstream]]\nname = \"web\"\ntargets = [\"127.0.0.1:9\"]\ngrpc_connections_per_target = 3\n",
        &[],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{path}:4: upstream.web.grpc_connections_per_target: only for")), "{stderr}");
}

#[test]
fn tls_backends_are_verified_and_spoken_to_over_h2() {
    let dir = tempfile::tempdir().unwrap();
    let cert = common::transport::write_cert(dir.path(), "backend", "localhost", &["localhost"]);
    let other = common::transport::write_cert(dir.path(), "other", "localhost", &["localhost"]);
    let backend = GrpcBackend::start_tls("secure", &cert.cert, &cert.key);
    let tls = |ca: &std::path::Path| {
        format!(
            "[[upstream]]\nname = \"g\"\nprotocol = \"grpc\"\ntargets = [\"{}\"]\n\
             tls = {{ ca = \"{}\", server_name = \"localhost\" }}\n\n\
             [[route]]\nname = \"grpc\"\nmatch = {{ path_prefix = \"/test.Echo/\" }}\nupstream = \"g\"\n",
            backend.addr,
            ca.display()
        )
    };
    let tollgate = Tollgate::start_with(&tls(&cert.cert));
    assert_eq!(grpc_client(tollgate.addr, "unary")["reply"], "echo:hello");
    assert_eq!(grpc_client(tollgate.addr, "bidi")["replies"], serde_json::json!(["bidi:x", "bidi:y", "bidi:z"]));

    // A backend whose certificate the configured CA did not issue is not trusted.
    let untrusted = Tollgate::start_with(&tls(&other.cert));
    let refused = grpc_client(untrusted.addr, "status:/test.Echo/Unary");
    assert_eq!(refused["code"], "UNAVAILABLE", "{refused}");
    assert!(untrusted.wait_for_log("certificate", Duration::from_secs(5)), "{}", untrusted.log());
}

#[test]
fn upstream_tls_is_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = write_file(dir.path(), "ca.pem", b"not a certificate");
    let config = |protocol: &str, ca: &std::path::Path| {
        format!(
            "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n\n[[upstream]]\nname = \"g\"\nprotocol = \"{protocol}\"\n\
             targets = [\"127.0.0.1:2\"]\ntls = {{ ca = \"{}\" }}\n",
            ca.display()
        )
    };
    let check = |config: String| {
        let dir = tempfile::tempdir().unwrap();
        let path = write_file(dir.path(), "gateway.toml", config.as_bytes());
        let out =
            std::process::Command::new(Tollgate::binary()).arg("check").arg("--config").arg(&path).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, text) = check(config("http1", &not_pem));
    assert!(!ok);
    assert!(text.contains("upstream.g.tls") && text.contains("\"grpc\" only"), "{text}");
    let (ok, text) = check(config("grpc", &not_pem));
    assert!(!ok);
    assert!(text.contains("upstream.g.tls.ca") && text.contains("no PEM certificate"), "{text}");
}

#[test]
fn a_flood_of_small_messages_to_a_slow_reader_arrives_whole() {
    // Many small DATA frames pile up in the upstream connection while the client
    // does not read; h2 treats too many buffered small frames as abuse unless the
    // windows are sized for it, and would reset every call on the connection.
    let backend = StallingBackend::start();
    let tollgate = gateway(&[backend.addr]);
    let addr = tollgate.addr;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (bytes, frames, status) = runtime.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        // This client itself must not take the pile-up for abuse: the test is about the gateway.
        let (client, connection) =
            h2::client::Builder::new().data_frame_budget(usize::MAX).handshake::<_, bytes::Bytes>(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post(format!("http://{addr}/stall.Svc/Flood"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut upload) = client.send_request(request, false).unwrap();
        upload.send_data(frame(b"go").into(), true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        // A slow reader: nothing read for a while, so the backend's frames back up.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut body = response.into_body();
        let (mut bytes, mut frames) = (0, 0);
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("the stream was not reset");
            bytes += chunk.len();
            frames += 1;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await.expect("trailers arrive").expect("trailers are present");
        (bytes, frames, trailers.get("grpc-status").map(|v| v.to_str().unwrap().to_string()))
    });
    assert_eq!(bytes, FLOOD_MESSAGES * 69, "every message arrived");
    assert_eq!(status.as_deref(), Some("0"));
    // The backend sent a DATA frame per message; what had piled up went on in larger frames.
    assert!(frames * 4 < FLOOD_MESSAGES, "{frames} DATA frames for {FLOOD_MESSAGES} messages");
}

/// Opens a raw h2c call to `/stall.Svc/Echo` through `addr` with `extra`
/// request headers: the response to come and the upload half.
async fn open_echo(
    addr: SocketAddr,
    extra: &[(&str, &str)],
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::post(format!("http://{addr}/stall.Svc/Echo"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    client.send_request(request.body(()).unwrap(), false).unwrap()
}

/// A raw h2c client call to `/stall.Svc/Echo` through `addr`: `run` drives
/// the upload and returns once the call is done; returns what `run` returned.
fn echo_call<F, Fut, T>(addr: SocketAddr, run: F) -> T
where
    F: FnOnce(h2::SendStream<bytes::Bytes>, h2::RecvStream, http::HeaderMap) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async move {
        let (response, mut upload) = open_echo(addr, &[]).await;
        // The first message goes before the response head: the backend answers only once it has a request.
        upload.send_data(frame(b"one").into(), false).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers().clone();
        run(upload, response.into_body(), headers).await
    })
}

/// The next DATA chunk of `body`, within two seconds.
async fn next_chunk(body: &mut h2::RecvStream) -> Vec<u8> {
    let chunk = tokio::time::timeout(Duration::from_secs(2), body.data()).await;
    let chunk = chunk.expect("the message came back while the upload was still open").unwrap().unwrap();
    let _ = body.flow_control().release_capacity(chunk.len());
    chunk.to_vec()
}

#[test]
fn a_client_stream_is_relayed_message_by_message_with_its_trailers() {
    let backend = StallingBackend::start();
    let tollgate = gateway(&[backend.addr]);
    let trailers = echo_call(tollgate.addr, |mut upload, mut body, _| async move {
        // Each message makes the round trip before the next one is sent: nothing waits for the body's end.
        assert_eq!(frames(&next_chunk(&mut body).await), vec![(0, b"one".to_vec())]);
        upload.send_data(frame(b"two").into(), false).unwrap();
        assert_eq!(frames(&next_chunk(&mut body).await), vec![(0, b"two".to_vec())]);
        // Request trailers reach the backend too.
        let mut request_trailers = http::HeaderMap::new();
        request_trailers.insert("x-t", http::HeaderValue::from_static("last"));
        upload.send_trailers(request_trailers).unwrap();
        assert!(body.data().await.is_none());
        body.trailers().await.unwrap().unwrap()
    });
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["echo-x-t"], "last");
}

#[test]
fn a_unary_call_whose_body_has_arrived_keeps_its_metadata_and_trailers() {
    let backend = StallingBackend::start();
    let tollgate = gateway(&[backend.addr]);
    // HEADERS and the one DATA frame (END_STREAM) go out together: the
    // gateway finds the whole body there and sends it without a pipe task.
    let addr = tollgate.addr;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (headers, body, trailers) = runtime.block_on(async move {
        let (response, mut upload) = open_echo(addr, &[("x-meta", "kept")]).await;
        upload.send_data(frame(b"whole").into(), true).unwrap();
        let response = response.await.unwrap();
        let headers = response.headers().clone();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        (headers, bytes, body.trailers().await.unwrap().unwrap())
    });
    assert_eq!(headers["content-type"], "application/grpc");
    assert!(headers.contains_key("x-request-id"), "{headers:?}");
    assert_eq!(headers["echo-x-meta"], "kept", "the call's metadata reached the backend");
    assert_eq!(frames(&body), vec![(0, b"whole".to_vec())]);
    assert_eq!(trailers["grpc-status"], "0");
    assert!(!trailers.contains_key("echo-x-t"));
}

#[test]
fn an_abandoned_client_stream_resets_the_backend_stream() {
    let backend = StallingBackend::start();
    let tollgate = gateway(&[backend.addr]);
    echo_call(tollgate.addr, |upload, mut body, _| async move {
        assert_eq!(frames(&next_chunk(&mut body).await), vec![(0, b"one".to_vec())]);
        // The client goes away mid-stream: dropping both halves resets its stream.
        drop((upload, body));
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    // The gateway passed the reset on, so the backend's handler was dropped unfinished.
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend.dropped.load(Ordering::SeqCst) < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(backend.dropped.load(Ordering::SeqCst), 1, "the backend stream was left open");
}
