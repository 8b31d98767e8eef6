//! WebSocket bridge against real peers: the real binary between Rust
//! (tungstenite framing, hand-made frames, an `h2` RFC 8441 client) and
//! Python `websockets` clients and servers.
//!
//! Tunnel mode: echo, subprotocols, ping/pong, close codes both ways,
//! backend failures, and the RFC 6455 conformance basics (fragments,
//! interleaved control frames, UTF-8, sizes, masking, close edge cases).
//! Message mode: requests per message, ordering, SSE and chunked replies,
//! server push, failures.

mod common;
mod ws_support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::core_kit::ChunkedBody;
use common::transport::{channel_body, write_cert};
use common::*;
use futures_util::{SinkExt, StreamExt};
use hyper::Response;
use tokio::io::AsyncWriteExt;
use tollgate_websocket::Message;
use tollgate_websocket::close;
use ws_support::*;

/// A gateway with a cleartext and a TLS listener and one WebSocket route
/// (`route_keys` added to it) to `backend`.
struct Rig {
    tollgate: Tollgate,
    tls_addr: SocketAddr,
    _certs: tempfile::TempDir,
}

impl Rig {
    fn start(backend: SocketAddr, route_keys: &str, extra: &str) -> Rig {
        let certs = tempfile::tempdir().unwrap();
        let cert = write_cert(certs.path(), "gw", "localhost", &["localhost"]);
        let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let tls_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = format!(
            "[[listener]]\nname = \"plain\"\nbind = \"{plain}\"\n\n\
             [[listener]]\nname = \"tls\"\nbind = \"{tls_addr}\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\n\n\
             [[upstream]]\nname = \"ws\"\ntargets = [\"{backend}\"]\n\n\
             [[route]]\nname = \"ws\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"ws\"\n{route_keys}\n\n{extra}\n",
            cert.cert.display(),
            cert.key.display(),
        );
        Rig { tollgate: Tollgate::start(&config, plain), tls_addr, _certs: certs }
    }

    fn addr(&self) -> SocketAddr {
        self.tollgate.addr
    }
}

const TUNNEL: &str = "websocket = \"tunnel\"\nwebsocket_max_message_bytes = 4096\nwebsocket_max_frame_bytes = 4096\n";

// ---------------------------------------------------------------------------
// Tunnel mode
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_tunnel_relays_messages_subprotocol_pings_and_close_codes_and_logs_the_session() {
    let backend = EchoBackend::start().await;
    let rig = Rig::start(backend.addr, TUNNEL, "");
    let (head, mut ws) = connect_h1(
        rig.addr(),
        "/chat?room=1",
        &[("Sec-WebSocket-Protocol", "superchat, chat"), ("Sec-WebSocket-Extensions", "permessage-deflate")],
    )
    .await;
    assert_eq!(header_in(&head, "sec-websocket-protocol").as_deref(), Some("chat"), "{head}");
    assert_eq!(header_in(&head, "sec-websocket-extensions"), None, "the backend declined the offer: {head}");
    assert_eq!(header_in(&head, "set-cookie").as_deref(), Some("session=echo"), "end-to-end fields of the 101: {head}");

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(vec![0u8, 1, 2, 255]));
    ws.send(Message::Ping(Bytes::from_static(b"ping-1"))).await.unwrap();
    // The pong comes back (from the gateway's hop, and the backend's relayed).
    match ws.next().await.unwrap().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"ping-1"),
        other => panic!("expected a pong, got {other:?}"),
    }
    ws.send(Message::Close(Some(close::frame(4001u16, "client bye")))).await.unwrap();
    let echoed = next_close(&mut ws).await.expect("a close answer");
    assert_eq!(u16::from(echoed.code), 4001);

    assert!(rig.tollgate.wait_for_log("websocket_close", Duration::from_secs(5)), "{}", rig.tollgate.log());
    let seen = backend.seen.lock().unwrap();
    let backend_head = &seen.heads[0];
    assert!(backend_head.starts_with("GET /chat?room=1 HTTP/1.1"), "{backend_head}");
    assert!(header_in(backend_head, "x-forwarded-for").is_some(), "{backend_head}");
    assert_eq!(
        header_in(backend_head, "sec-websocket-extensions").as_deref(),
        Some("permessage-deflate"),
        "the offer goes to the backend: {backend_head}"
    );
    assert_ne!(header_in(backend_head, "sec-websocket-key").as_deref(), Some(KEY), "a fresh key per hop");
    assert_eq!(seen.pings, vec![Bytes::from_static(b"ping-1")]);
    assert_eq!(seen.closes, vec![(4001, "client bye".to_string())]);
    let log = rig.tollgate.log();
    let open = log.lines().find(|l| l.contains("websocket_open")).expect("open line");
    assert!(open.contains("mode=\"tunnel\"") || open.contains("mode=tunnel"), "{open}");
    let closed = log.lines().find(|l| l.contains("websocket_close")).unwrap();
    for field in
        ["messages_in=2", "bytes_in=9", "messages_out=2", "bytes_out=9", "end=client_close_4001", "duration_ms="]
    {
        assert!(closed.contains(field), "{field} in {closed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc8441_clients_over_h2c_and_h2_tls_reach_the_http1_backend() {
    let backend = EchoBackend::start().await;
    let rig = Rig::start(backend.addr, TUNNEL, "");
    let (status, headers, ws) = connect_h2c(rig.addr(), "/h2c", &[("sec-websocket-protocol", "chat")]).await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("sec-websocket-protocol").unwrap(), "chat");
    assert_eq!(headers.get("set-cookie").unwrap(), "session=echo");
    let mut ws = ws.unwrap();
    ws.send(Message::text("over h2c")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("over h2c"));
    ws.send(Message::Close(Some(close::frame(1000u16, "")))).await.unwrap();
    assert_eq!(next_close(&mut ws).await.map(|f| u16::from(f.code)), Some(1000));

    let tls = tls_h2(rig.tls_addr).await;
    let authority = format!("localhost:{}", rig.tls_addr.port());
    let (status, _, ws) = connect_h2(tls, &authority, "https", "/tls", &[]).await;
    assert_eq!(status, 200);
    let mut ws = ws.unwrap();
    ws.send(Message::binary(vec![7u8; 3000])).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(vec![7u8; 3000]));

    let seen = backend.seen.lock().unwrap();
    assert!(seen.heads[0].starts_with("GET /h2c HTTP/1.1"), "{}", seen.heads[0]);
    assert!(seen.heads[1].starts_with("GET /tls HTTP/1.1"), "{}", seen.heads[1]);
    assert_eq!(header_in(&seen.heads[1], "x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(header_in(&seen.heads[1], "upgrade").as_deref(), Some("websocket"));
}

/// The Python `websockets` echo backend (`tests/websocket_peers/echo_server.py`) and its address.
fn python_echo_server() -> (std::process::Child, SocketAddr) {
    let mut server = Command::new(".venv/bin/python")
        .arg("tests/websocket_peers/echo_server.py")
        .stdout(Stdio::piped())
        .spawn()
        .expect("python venv with websockets (scripts/test.sh installs it)");
    let mut port = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.take().unwrap()), &mut port).unwrap();
    (server, format!("127.0.0.1:{}", port.trim()).parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_the_tunnel_back_without_queueing_and_then_gets_every_byte_in_order() {
    // 24 MiB echoed through a Python `websockets` backend while the client
    // reads nothing for a while. Its receive buffer is kept small, so the
    // tunnel's writes to it back up (would-block, then the writable event on
    // the tunnel threads) and the tunnel stops reading the backend; how far
    // back the stall reaches depends on how large the kernel lets the other
    // sockets' buffers grow. Tollgate's memory stays flat meanwhile, and then
    // every message arrives whole and in order.
    let (mut server, backend) = python_echo_server();
    let rig = Rig::start(
        backend,
        "websocket = \"tunnel\"\nwebsocket_max_message_bytes = 131072\nwebsocket_max_frame_bytes = 131072\n",
        "",
    );
    let before = rig.tollgate.rss_kib();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut tcp = socket.connect(rig.addr()).await.unwrap();
    let upgrade = format!(
        "GET /flood HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n\r\n",
        rig.addr()
    );
    tcp.write_all(upgrade.as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    assert_eq!(status_of(&head), 101, "{head}");
    let ws = tollgate_websocket::client_stream(tcp, &tollgate_websocket::Limits::default()).await;
    // The tunnel starts just after the 101 went out.
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", rig.tollgate.pid()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !threads().iter().any(|name| name.starts_with("tollgate-ws-")) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        threads().iter().any(|name| name.starts_with("tollgate-ws-")),
        "a plain-TCP tunnel runs on the tunnel threads: {:?}",
        threads()
    );
    const MESSAGES: usize = 384;
    let payload = |i: usize| Message::binary((0..64 * 1024).map(|j| (i * 7 + j) as u8).collect::<Vec<u8>>());
    let (mut tx, mut rx) = ws.split();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = tokio::spawn({
        let sent = sent.clone();
        async move {
            for i in 0..MESSAGES {
                tx.send(payload(i)).await.unwrap();
                sent.store(i + 1, std::sync::atomic::Ordering::Relaxed);
            }
            tx
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled_at = sent.load(std::sync::atomic::Ordering::Relaxed);
    let stalled_rss = rig.tollgate.rss_kib();
    assert!(
        stalled_rss < before + 16 * 1024,
        "no queue grows while stalled: {before} KiB before, {stalled_rss} KiB with {stalled_at} messages sent"
    );
    for i in 0..MESSAGES {
        let message = tokio::time::timeout(Duration::from_secs(20), rx.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} in time"))
            .expect("stream open")
            .expect("valid message");
        assert!(message == payload(i), "message {i} arrives whole and in order");
    }
    let mut ws = writer.await.unwrap().reunite(rx).unwrap();
    ws.send(Message::Close(Some(close::frame(1000u16, "done")))).await.unwrap();
    assert_eq!(next_close(&mut ws).await.map(|f| u16::from(f.code)), Some(1000));
    assert!(rig.tollgate.wait_for_log("websocket_close", Duration::from_secs(5)), "{}", rig.tollgate.log());
    let log = rig.tollgate.log();
    let closed = log.lines().find(|l| l.contains("websocket_close")).unwrap();
    let bytes = MESSAGES * 64 * 1024;
    for field in [format!("messages_in={MESSAGES}"), format!("bytes_in={bytes}"), format!("messages_out={MESSAGES}")] {
        assert!(closed.contains(&field), "{field} in {closed}");
    }
    let _ = server.kill();
    let _ = server.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_client_and_server_negotiate_permessage_deflate_through_the_tunnel() {
    let (mut server, backend) = python_echo_server();
    let rig = Rig::start(backend, TUNNEL, "");
    let output = transport::run_with_timeout(
        Command::new(".venv/bin/python").args([
            "tests/websocket_peers/client.py",
            &format!("ws://{}/py", rig.addr()),
            "tunnel",
        ]),
        Duration::from_secs(20),
    );
    let _ = server.kill();
    let _ = server.wait();
    assert!(output.status.success(), "{}\n{}", String::from_utf8_lossy(&output.stderr), rig.tollgate.log());
    let result = core_kit::json(&output.stdout);
    assert_eq!(result["subprotocol"], "chat");
    let extensions = result["extensions"].as_str().unwrap_or_default();
    assert!(extensions.starts_with("permessage-deflate"), "both ends agreed on compression across us: {result}");
    assert_eq!(result["big_text_ok"], true, "a compressed 180 KB text round-trips: {result}");
    assert_eq!(result["text"], "hello");
    assert_eq!(result["binary"], serde_json::json!([0, 1, 2]));
    assert_eq!(result["pong"], true);
    assert_eq!(result["close_code"], 4003, "the backend's close code reaches the client: {result}");
    assert_eq!(result["close_reason"], "py done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragments_with_interleaved_control_frames_reach_the_backend_as_one_message() {
    let backend = EchoBackend::start().await;
    let rig = Rig::start(backend.addr, TUNNEL, "");
    let (head, mut tcp) = upgrade_raw(rig.addr(), "/", &[]).await;
    assert_eq!(status_of(&head), 101);
    let mut bytes = frame(false, 0x1, b"Hel", true);
    bytes.extend(frame(true, 0x9, b"mid", true)); // ping between fragments (RFC 6455 §5.4)
    bytes.extend(frame(false, 0x0, b"lo ", true));
    bytes.extend(frame(false, 0x0, "wörld".as_bytes(), true));
    bytes.extend(frame(true, 0x0, b"!", true));
    tcp.write_all(&bytes).await.unwrap();
    let mut pong = None;
    let mut text = None;
    while pong.is_none() || text.is_none() {
        let (fin, opcode, payload) = read_frame(&mut tcp).await.expect("a frame");
        match opcode {
            0xA => pong = Some(payload),
            0x1 => {
                assert!(fin);
                text = Some(String::from_utf8(payload).unwrap());
            }
            other => panic!("unexpected opcode {other}"),
        }
    }
    assert_eq!(pong.unwrap(), b"mid");
    assert_eq!(text.unwrap(), "Hello wörld!");
    assert_eq!(backend.seen.lock().unwrap().messages, vec![Message::text("Hello wörld!")]);
}

/// Sends `bytes` after the handshake and expects a close with `code`, the
/// backend getting a clean 1001.
async fn expect_close_for(bytes: Vec<u8>, code: u16, what: &str) {
    let backend = EchoBackend::start().await;
    let rig = Rig::start(backend.addr, TUNNEL, "");
    let (head, mut tcp) = upgrade_raw(rig.addr(), "/", &[]).await;
    assert_eq!(status_of(&head), 101);
    tcp.write_all(&bytes).await.unwrap();
    assert_eq!(read_close_code(&mut tcp).await, Some(code), "{what}");
    // The backend hears of it as a clean close, never a reset.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while backend.seen.lock().unwrap().closes.is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closes = backend.seen.lock().unwrap().closes.clone();
    assert_eq!(closes.first().map(|c| c.0), Some(1001), "{what}: backend closes {closes:?}");
    assert!(rig.tollgate.wait_for_log("websocket_close", Duration::from_secs(5)), "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_text_is_closed_with_1007_even_across_fragments() {
    expect_close_for(frame(true, 0x1, &[0x66, 0xff, 0x6f], true), 1007, "invalid byte").await;
    let mut split = frame(false, 0x1, &[0x61, 0xe2, 0x82], true); // € cut short...
    split.extend(frame(true, 0x0, &[0x61], true)); // ...and never finished
    expect_close_for(split, 1007, "truncated sequence across fragments").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_violations_are_closed_with_1002() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (frame(true, 0x1, b"hi", false), "unmasked client frame (RFC 6455 §5.1)"),
        (frame(true, 0x9, &[0u8; 126], true), "control frame over 125 bytes (§5.5)"),
        (frame(false, 0x9, b"p", true), "fragmented control frame (§5.5)"),
        (frame(true, 0x0, b"x", true), "continuation with nothing to continue (§5.4)"),
        (frame(true, 0x3, b"x", true), "reserved opcode (§5.2)"),
        (
            {
                let mut f = frame(true, 0x1, b"x", true);
                f[0] |= 0x40;
                f
            },
            "RSV1 without a negotiated extension (§5.2)",
        ),
        (
            {
                let mut f = frame(false, 0x1, b"a", true);
                f.extend(frame(true, 0x1, b"b", true));
                f
            },
            "new data frame inside a fragmented message (§5.4)",
        ),
        (frame(true, 0x8, &[0x03], true), "close payload of one byte (§5.5.1)"),
    ];
    for (bytes, what) in cases {
        expect_close_for(bytes, 1002, what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frames_and_messages_are_closed_with_1009() {
    expect_close_for(frame(true, 0x2, &[0u8; 5000], true), 1009, "one frame over 4096").await;
    let mut fragments = frame(false, 0x2, &[0u8; 2000], true);
    fragments.extend(frame(false, 0x0, &[0u8; 2000], true));
    fragments.extend(frame(true, 0x0, &[0u8; 2000], true));
    expect_close_for(fragments, 1009, "a message over 4096 in small fragments").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_with_a_reserved_code_is_answered_1002_and_an_empty_close_is_echoed() {
    // 1005 must never be sent on the wire (RFC 6455 §7.4.1).
    let backend = EchoBackend::start().await;
    let rig = Rig::start(backend.addr, TUNNEL, "");
    let (_, mut tcp) = upgrade_raw(rig.addr(), "/", &[]).await;
    tcp.write_all(&frame(true, 0x8, &1005u16.to_be_bytes(), true)).await.unwrap();
    assert_eq!(read_close_code(&mut tcp).await, Some(1002));

    let (_, mut tcp) = upgrade_raw(rig.addr(), "/", &[]).await;
    tcp.write_all(&frame(true, 0x8, &[], true)).await.unwrap();
    assert_eq!(read_close_code(&mut tcp).await, Some(1005), "an empty close is answered with an empty close");
    // The server closes the TCP connection after the handshake (RFC 6455 §7.1.1).
    assert!(read_frame(&mut tcp).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_close_codes_and_failures_reach_the_client() {
    let backend = EchoBackend::start().await;
    let rig = Rig::start(backend.addr, TUNNEL, "");

    let (_, mut ws) = connect_h1(rig.addr(), "/close4002", &[]).await;
    ws.send(Message::text("x")).await.unwrap();
    let frame = next_close(&mut ws).await.unwrap();
    assert_eq!((u16::from(frame.code), frame.reason.as_str()), (4002, "backend done"));

    let (_, mut ws) = connect_h1(rig.addr(), "/reset", &[]).await;
    ws.send(Message::text("x")).await.unwrap();
    let frame = next_close(&mut ws).await.unwrap();
    assert_eq!(u16::from(frame.code), 1011, "a backend that vanishes gives 1011");
    assert!(rig.tollgate.wait_for_log("end=backend_gone", Duration::from_secs(5)), "{}", rig.tollgate.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_refusing_backend_answers_the_upgrade_over_http() {
    let rig = Rig::start(transport::free_addr(), TUNNEL, "");
    let (head, _) = upgrade_raw(rig.addr(), "/", &[]).await;
    assert_eq!(status_of(&head), 502, "{head}\n{}", rig.tollgate.log());

    let refusing = Backend::start(|_req| async {
        let mut r = Response::new(full("go away"));
        *r.status_mut() = hyper::StatusCode::FORBIDDEN;
        r
    });
    let rig = Rig::start(refusing.addr, TUNNEL, "");
    let (head, _) = upgrade_raw(rig.addr(), "/", &[]).await;
    assert_eq!(status_of(&head), 403, "the backend's refusal is relayed: {head}");
    let (status, _, _) = connect_h2c(rig.addr(), "/", &[]).await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_handshakes_are_refused_before_the_backend() {
    let backend = EchoBackend::start().await;
    let rig = Rig::start(backend.addr, TUNNEL, "");
    let mut tcp = tokio::net::TcpStream::connect(rig.addr()).await.unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut tcp).await;
    assert_eq!(status_of(&head), 426, "{head}");
    assert_eq!(header_in(&head, "sec-websocket-version").as_deref(), Some("13"));
    // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
    assert_eq!(header_in(&head, "upgrade").as_deref(), Some("websocket"), "{head}");

    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    for bad in [
        "Sec-WebSocket-Key: short\r\n".to_string(),
        // Two keys: the backend could answer for another than we checked.
        format!("{key}Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"),
        // A body: after the 101 one side would read it as frames.
        format!("{key}Content-Length: 5\r\n"),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(rig.addr()).await.unwrap();
        let request = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{bad}Sec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let body = if bad.contains("Content-Length") { &b"hello"[..] } else { &b""[..] };
        tcp.write_all(body).await.unwrap();
        let head = read_head(&mut tcp).await;
        assert_eq!(status_of(&head), 400, "{bad:?}: {head}");
    }
    assert!(backend.seen.lock().unwrap().heads.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_answers_pings_is_closed_as_idle() {
    let backend = EchoBackend::start().await;
    let keys = format!("{TUNNEL}websocket_idle_timeout = \"1s\"\nwebsocket_ping_interval = \"300ms\"\n");
    let rig = Rig::start(backend.addr, &keys, "");
    let (_, mut tcp) = upgrade_raw(rig.addr(), "/silent", &[]).await;
    let started = std::time::Instant::now();
    let mut pings = 0;
    let code = loop {
        let (_, opcode, payload) = read_frame(&mut tcp).await.expect("frames until close");
        match opcode {
            0x9 => pings += 1,
            0x8 => break u16::from_be_bytes([payload[0], payload[1]]),
            other => panic!("opcode {other}"),
        }
    };
    assert!(pings >= 1, "pinged while silent");
    assert_eq!(code, 1001);
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(rig.tollgate.wait_for_log("end=idle_timeout", Duration::from_secs(5)));
}

// ---------------------------------------------------------------------------
// Message mode
// ---------------------------------------------------------------------------

/// A plain HTTP/1.1 backend: `/rpc` echoes the message with the bridge's
/// headers (earlier sequence numbers answer later), `/sse` answers with
/// events, `/chunks` with a chunked body, `/push` streams the body put in the returned slot.
fn http_backend() -> (Backend, std::sync::Arc<std::sync::Mutex<Option<TestBody>>>) {
    let push_body = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = std::sync::Arc::clone(&push_body);
    let backend = Backend::start(move |req| {
        let slot = std::sync::Arc::clone(&slot);
        async move {
            use http_body_util::BodyExt;
            let path = req.uri().path().to_string();
            let h = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
            let (seq, id, principal, kind, ctype) = (
                h("x-websocket-sequence"),
                h("x-websocket-connection-id"),
                h("x-websocket-principal"),
                h("x-websocket-message-type"),
                h("content-type"),
            );
            let method = req.method().to_string();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            match path.as_str() {
                "/sse" => {
                    let mut r = Response::new(ChunkedBody::boxed_from(vec![
                        Bytes::from("data: first\n\n: comment\n"),
                        Bytes::from("data: sec"),
                        Bytes::from("ond\ndata: line\n\n"),
                    ]));
                    r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
                    r
                }
                "/chunks" => Response::new(ChunkedBody::boxed_from(vec![Bytes::from("c1"), Bytes::from("c2")])),
                // Two chunks, then the connection dies without the last chunk.
                "/broken" => {
                    let chunks = [Ok(Bytes::from("b1")), Ok(Bytes::from("b2")), Err("backend died".into())];
                    let body = futures_util::stream::iter(chunks).then(|chunk| async move {
                        // Each chunk leaves before the next (or the failure) comes.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        chunk.map(hyper::body::Frame::data)
                    });
                    Response::new(BodyExt::boxed(http_body_util::StreamBody::new(body)))
                }
                "/push" => match slot.lock().unwrap().take() {
                    Some(body) => {
                        let mut r = Response::new(body);
                        r.headers_mut().insert("content-type", "text/event-stream".parse().unwrap());
                        r
                    }
                    None => Response::new(full("no push")),
                },
                _ => {
                    let n: u64 = seq.parse().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(800u64.saturating_sub(n * 100))).await;
                    Response::new(full(format!(
                        "{method} {path} seq={seq} kind={kind} type={ctype} principal={principal} id_set={} body={}",
                        !id.is_empty(),
                        String::from_utf8_lossy(&body)
                    )))
                }
            }
        }
    });
    (backend, push_body)
}

const JWT_SECRET: &str = "websocket-secret-0123456789abcdef-0123";

fn token(sub: &str) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = serde_json::json!({"sub": sub, "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_mode_posts_each_message_and_replies_in_order_with_the_principal() {
    let (backend, _) = http_backend();
    let keys = "websocket = \"http\"\nwebsocket_path = \"/rpc\"\nwebsocket_in_flight = 4\npolicies = [\"jwt\"]\n";
    let policy = format!("[policy.jwt]\nkind = \"jwt\"\nsecret = \"{JWT_SECRET}\"\n");
    let rig = Rig::start(backend.addr, keys, &policy);
    let auth = format!("Bearer {}", token("alice"));
    let (_, mut ws) = connect_h1(rig.addr(), "/ws", &[("Authorization", &auth)]).await;
    let started = std::time::Instant::now();
    for i in 1..=4 {
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
    }
    for i in 1..=4 {
        assert_eq!(
            next_data(&mut ws).await,
            Message::text(format!(
                "POST /rpc seq={i} kind=text type=text/plain; charset=utf-8 principal=alice id_set=true body=m{i}"
            ))
        );
    }
    // The four requests ran at once (~700 ms), not one at a time (700+600+500+400 ms).
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    ws.send(Message::binary(vec![1u8, 2])).await.unwrap();
    assert!(
        matches!(next_data(&mut ws).await, Message::Binary(b) if b.starts_with(b"POST /rpc seq=5 kind=binary type=application/octet-stream"))
    );
    ws.send(Message::Close(Some(close::frame(1000u16, "")))).await.unwrap();
    assert_eq!(next_close(&mut ws).await.map(|f| u16::from(f.code)), Some(1000));
    assert!(rig.tollgate.wait_for_log("websocket_close", Duration::from_secs(5)));
    let closed = rig.tollgate.log().lines().find(|l| l.contains("websocket_close")).unwrap().to_string();
    assert!(closed.contains("messages_in=5") && closed.contains("messages_out=5"), "{closed}");
    let ids: std::collections::HashSet<String> = backend
        .requests()
        .iter()
        .map(|r| r.headers["x-websocket-connection-id"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "one connection id for all messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_mode_streams_sse_events_and_chunks_as_separate_messages_over_h2() {
    let (backend, _) = http_backend();
    let rig = Rig::start(backend.addr, "websocket = \"http\"\n", "");
    let (status, _, ws) = connect_h2c(rig.addr(), "/sse", &[]).await;
    assert_eq!(status, 200);
    let mut ws = ws.unwrap();
    ws.send(Message::text("go")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("first"));
    assert_eq!(next_data(&mut ws).await, Message::text("second\nline"));

    let (_, mut ws) = connect_h1(rig.addr(), "/chunks", &[]).await;
    ws.send(Message::binary(vec![0u8])).await.unwrap();
    let mut got = Vec::new();
    while got.concat() != b"c1c2" {
        match next_data(&mut ws).await {
            Message::Binary(b) => got.push(b.to_vec()),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_mode_pushes_server_sent_events_from_a_long_lived_request() {
    let (backend, slot) = http_backend();
    let (tx, body) = channel_body(4);
    *slot.lock().unwrap() = Some(body);
    let keys = "websocket = \"http\"\nwebsocket_path = \"/rpc\"\nwebsocket_push_path = \"/push\"\n";
    let rig = Rig::start(backend.addr, keys, "");
    let (_, mut ws) = connect_h1(rig.addr(), "/ws", &[]).await;
    tx.send(Bytes::from("data: news 1\n\n")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("news 1"));
    ws.send(Message::text("ask")).await.unwrap();
    assert!(matches!(next_data(&mut ws).await, Message::Text(t) if t.as_str().ends_with("body=ask")));
    tx.send(Bytes::from("data: news 2\n\n")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("news 2"));
    let push = backend.requests().into_iter().find(|r| r.uri == "/push").expect("push request");
    assert_eq!(push.method, "GET");
    assert_eq!(push.headers["accept"], "text/event-stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_mode_reply_cut_off_by_the_backend_closes_with_1011_after_what_arrived() {
    let (backend, _) = http_backend();
    let rig = Rig::start(backend.addr, "websocket = \"http\"\nwebsocket_path = \"/broken\"\n", "");
    // Raw frames on the client side, as tungstenite takes some close codes for protocol errors.
    let (_, mut tcp) = upgrade_raw(rig.addr(), "/", &[]).await;
    tcp.write_all(&frame(true, 0x1, b"go", true)).await.unwrap();
    assert_eq!(read_frame(&mut tcp).await, Some((true, 0x1, b"b1".to_vec())));
    assert_eq!(read_frame(&mut tcp).await, Some((true, 0x1, b"b2".to_vec())));
    assert_eq!(read_close_code(&mut tcp).await, Some(1011), "the reply broke: an internal error, not a clean end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_mode_with_an_unreachable_backend_closes_with_1014_and_python_clients_work() {
    let rig = Rig::start(transport::free_addr(), "websocket = \"http\"\n", "");
    let (_, mut tcp) = upgrade_raw(rig.addr(), "/", &[]).await;
    tcp.write_all(&frame(true, 0x1, b"hi", true)).await.unwrap();
    assert_eq!(read_close_code(&mut tcp).await, Some(1014));

    let (backend, _) = http_backend();
    let rig = Rig::start(backend.addr, "websocket = \"http\"\nwebsocket_path = \"/rpc\"\n", "");
    let output = transport::run_with_timeout(
        Command::new(".venv/bin/python").args([
            "tests/websocket_peers/client.py",
            &format!("ws://{}/py", rig.addr()),
            "message",
        ]),
        Duration::from_secs(20),
    );
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let replies = core_kit::json(&output.stdout);
    for (i, word) in ["one", "two", "three"].iter().enumerate() {
        let reply = replies[i].as_str().unwrap();
        assert!(reply.contains(&format!("seq={}", i + 1)) && reply.ends_with(&format!("body={word}")), "{reply}");
    }
}

#[test]
fn config_errors_name_the_websocket_key() {
    let (out, _) = core_kit::run_check(
        "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n[[upstream]]\nname = \"u\"\ntargets = [\"127.0.0.1:2\"]\n\
         [[route]]\nname = \"r\"\nupstream = \"u\"\nwebsocket = \"tunnel\"\nwebsocket_path = \"/x\"\n",
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("route.r.websocket_path") && stderr.contains("message mode"), "{stderr}");
    let (out, _) = core_kit::run_check(
        "[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:1\"\n[[upstream]]\nname = \"u\"\ntargets = [\"127.0.0.1:2\"]\n\
         [[route]]\nname = \"r\"\nupstream = \"u\"\nwebsocket = \"socket\"\n",
        &[],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains(":12:") || stderr.contains("line 12") || stderr.contains("route.r.websocket"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_counts_against_max_connections_per_ip() {
    let backend = EchoBackend::start().await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = format!(
        "[[listener]]\nname = \"l\"\nbind = \"{addr}\"\nmax_connections_per_ip = 1\n\n\
         [[upstream]]\nname = \"ws\"\ntargets = [\"{}\"]\n\n\
         [[route]]\nname = \"ws\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"ws\"\nwebsocket = \"tunnel\"\n",
        backend.addr
    );
    let tollgate = Tollgate::start(&config, addr);
    // The start-up probe connection counts too, until the gateway sees it close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, mut ws) = connect_h1(addr, "/", &[]).await;
    ws.send(Message::text("up")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("up"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The HTTP/1.1 connection task is gone, the WebSocket still counts.
    let (head, _) = upgrade_raw(addr, "/", &[]).await;
    assert_eq!(status_of(&head), 0, "second connection refused: {head}");
    ws.send(Message::Close(None)).await.unwrap();
    next_close(&mut ws).await;
    drop(ws);
    assert!(tollgate.wait_for_log("websocket_close", Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, mut again) = connect_h1(addr, "/", &[]).await;
    again.send(Message::text("again")).await.unwrap();
    assert_eq!(next_data(&mut again).await, Message::text("again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ws_client_through_the_tunnel_over_tls() {
    let backend = EchoBackend::start().await;
    let rig = Rig::start(backend.addr, TUNNEL, "");
    let output = transport::run_with_timeout(
        Command::new("node")
            .args(["tests/websocket_peers/client.js", &format!("wss://localhost:{}/node", rig.tls_addr.port())])
            .env("NODE_TLS_REJECT_UNAUTHORIZED", "0"),
        Duration::from_secs(20),
    );
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let result = core_kit::json(&output.stdout);
    assert_eq!(result["subprotocol"], "chat");
    assert_eq!(result["text"], "hello from node");
    assert_eq!(result["binary"], serde_json::json!([9, 8, 7]));
    assert_eq!(result["pong"], "node-ping");
    assert_eq!(result["close_code"], 4001);
    assert!(rig.tollgate.wait_for_log("end=client_close_4001", Duration::from_secs(5)));
    assert_eq!(backend.seen.lock().unwrap().closes, vec![(4001, "node bye".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_sending_invalid_frames_gets_1002_and_the_client_1014() {
    // A raw backend: a valid 101, then a masked frame, which a server must never send (RFC 6455 §5.1).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let (code_tx, code_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let head = read_head(&mut tcp).await;
        let key = header_in(&head, "sec-websocket-key").unwrap();
        let accept = tollgate_websocket::handshake::accept_key(key.as_bytes());
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept.to_str().unwrap()
        );
        tcp.write_all(answer.as_bytes()).await.unwrap();
        tcp.write_all(&frame(true, 0x1, b"masked", true)).await.unwrap();
        // The gateway's close frame to us is masked (it is the client here): unmask it.
        let mut h = [0u8; 2];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut h).await.unwrap();
        let mut rest = vec![0u8; 4 + (h[1] & 0x7f) as usize];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut rest).await.unwrap();
        let (key, payload) = rest.split_at(4);
        let code = u16::from_be_bytes([payload[0] ^ key[0], payload[1] ^ key[1]]);
        let _ = code_tx.send((h[0] & 0x0f, code));
    });
    let rig = Rig::start(backend_addr, TUNNEL, "");
    let (head, mut tcp) = upgrade_raw(rig.addr(), "/", &[]).await;
    assert_eq!(status_of(&head), 101);
    assert_eq!(read_close_code(&mut tcp).await, Some(1014), "bad gateway for the client");
    drop(tcp);
    let (opcode, code) = tokio::time::timeout(Duration::from_secs(5), code_rx).await.unwrap().unwrap();
    assert_eq!((opcode, code), (0x8, 1002), "protocol error for the backend");
    assert!(rig.tollgate.wait_for_log("end=backend_protocol_error", Duration::from_secs(5)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_in_the_same_packets_as_the_handshakes_are_relayed_first() {
    // The tunnel takes the sockets over from hyper: what hyper had read past
    // each handshake (the backend's greeting after its 101, a client's frame
    // sent without waiting for ours) must come before anything read later.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let head = read_head(&mut tcp).await;
        let key = header_in(&head, "sec-websocket-key").unwrap();
        let accept = tollgate_websocket::handshake::accept_key(key.as_bytes());
        let mut answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            accept.to_str().unwrap()
        )
        .into_bytes();
        answer.extend(frame(true, 0x1, b"greeting", false));
        tcp.write_all(&answer).await.unwrap();
        // The gateway masks what it sends us (it is the client here).
        let mut h = [0u8; 2];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut h).await.unwrap();
        let mut rest = vec![0u8; 4 + (h[1] & 0x7f) as usize];
        tokio::io::AsyncReadExt::read_exact(&mut tcp, &mut rest).await.unwrap();
        let (key, payload) = rest.split_at(4);
        let payload: Vec<u8> = payload.iter().zip(key.iter().cycle()).map(|(b, k)| b ^ k).collect();
        let _ = seen_tx.send(payload);
    });
    let rig = Rig::start(backend_addr, TUNNEL, "");
    let mut tcp = tokio::net::TcpStream::connect(rig.addr()).await.unwrap();
    let mut request = format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        rig.addr()
    )
    .into_bytes();
    request.extend(frame(true, 0x1, b"eager", true));
    tcp.write_all(&request).await.unwrap();
    assert_eq!(status_of(&read_head(&mut tcp).await), 101);
    let (_, opcode, payload) = read_frame(&mut tcp).await.expect("the backend's greeting");
    assert_eq!((opcode, payload.as_slice()), (0x1, &b"greeting"[..]));
    let seen = tokio::time::timeout(Duration::from_secs(5), seen_rx).await.unwrap().unwrap();
    assert_eq!(seen, b"eager");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_open_websockets_with_1001_and_exits() {
    let backend = EchoBackend::start().await;
    let mut rig = Rig::start(backend.addr, TUNNEL, "");
    let (_, mut h1) = connect_h1(rig.addr(), "/", &[]).await;
    let (_, _, h2) = connect_h2c(rig.addr(), "/", &[]).await;
    let mut h2 = h2.unwrap();
    h1.send(Message::text("a")).await.unwrap();
    assert_eq!(next_data(&mut h1).await, Message::text("a"));
    h2.send(Message::text("b")).await.unwrap();
    assert_eq!(next_data(&mut h2).await, Message::text("b"));
    rig.tollgate.signal("TERM");
    let started = std::time::Instant::now();
    assert_eq!(next_close(&mut h1).await.map(|f| u16::from(f.code)), Some(1001));
    assert_eq!(next_close(&mut h2).await.map(|f| u16::from(f.code)), Some(1001));
    let status = rig.tollgate.wait_exit(Duration::from_secs(10)).expect("exits after closing the sessions");
    assert!(status.success(), "{}", rig.tollgate.log());
    assert!(started.elapsed() < Duration::from_secs(5), "no waiting out the grace period");
    assert_eq!(backend.seen.lock().unwrap().closes.iter().filter(|c| c.0 == 1001).count(), 2);
    assert_eq!(rate_kit::count(&rig.tollgate.log(), "end=shutdown"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_mode_pings_a_silent_client_and_closes_it_as_idle_only_when_it_stops_answering() {
    let (backend, _) = http_backend();
    let keys = "websocket = \"http\"\nwebsocket_path = \"/rpc\"\nwebsocket_idle_timeout = \"1s\"\nwebsocket_ping_interval = \"300ms\"\n";
    let rig = Rig::start(backend.addr, keys, "");
    // A client that answers pings (tungstenite does so on its own) outlives the idle timeout.
    let (_, mut ws) = connect_h1(rig.addr(), "/live", &[]).await;
    let silent_until = std::time::Instant::now() + Duration::from_millis(2500);
    let mut pings = 0;
    while std::time::Instant::now() < silent_until {
        match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(other) => panic!("unexpected while silent: {other:?}"),
            Err(_) => {}
        }
    }
    assert!(pings >= 2, "pinged while silent: {pings}");
    ws.send(Message::Text("still here".into())).await.unwrap();
    let reply = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("a reply").unwrap().unwrap() {
            Message::Text(t) => break t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert!(reply.ends_with("body=still here"), "{reply}");

    // A client that never answers (raw socket) is closed with 1001 after the idle timeout.
    let (_, mut tcp) = upgrade_raw(rig.addr(), "/silent", &[]).await;
    let mut raw_pings = 0;
    let code = loop {
        let (_, opcode, payload) = read_frame(&mut tcp).await.expect("frames until close");
        match opcode {
            0x9 => raw_pings += 1,
            0x8 => break u16::from_be_bytes([payload[0], payload[1]]),
            other => panic!("opcode {other}"),
        }
    };
    assert!(raw_pings >= 1);
    assert_eq!(code, 1001);
}
