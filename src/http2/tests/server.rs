//! The server against a scripted client speaking raw frames: malformed
//! requests, floods, flow control, shutdown (real clients, curl, nghttp,
//! h2load, grpcio, browsers, are in the integration tests).

use std::future::poll_fn;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::Reason;
use http::{HeaderMap, Request};
use http_body::Body as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Peer;
use crate::http2::frame::{self, flag, kind, setting};
use crate::http2::server::{Server, encode_response};
use crate::http2::{Error, RecvBody, RecvHalf, SendHalf, Settings, hpack};

const SETTINGS: Settings = Settings {
    stream_window: 1 << 20,
    connection_window: 1 << 20,
    max_header_list_size: 1024,
    max_concurrent_streams: 2,
    max_early_resets: 5,
    max_peer_faults: 5,
    keep_alive_interval: Duration::from_secs(30),
    keep_alive_timeout: Duration::from_secs(20),
};

type Accepted = (Request<()>, SendHalf, RecvHalf);

/// A server on its own task, handing each request it accepts to the test.
fn serve(io: DuplexStream) -> (mpsc::UnboundedReceiver<Accepted>, JoinHandle<Result<(), Error>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut server = Server::new(io, SETTINGS);
    let task = tokio::spawn(poll_fn(move |cx| {
        server.poll_keep_alive(cx);
        server.poll_read(cx);
        while let Some(accepted) = server.accept() {
            let _ = tx.send(accepted);
        }
        server.poll_flush_or_end(cx)
    }));
    (rx, task)
}

/// A client that has sent the preface and empty SETTINGS, and read ours.
async fn connected() -> (Peer, mpsc::UnboundedReceiver<Accepted>, JoinHandle<Result<(), Error>>) {
    connected_through(1 << 20).await
}

/// [`connected`], over a pipe that buffers `capacity` bytes each way.
async fn connected_through(
    capacity: usize,
) -> (Peer, mpsc::UnboundedReceiver<Accepted>, JoinHandle<Result<(), Error>>) {
    let (ours, theirs) = tokio::io::duplex(capacity);
    let (accepted, task) = serve(ours);
    let mut peer = Peer::new(theirs);
    peer.write(frame::PREFACE).await;
    peer.settings(&[]).await;
    let (head, payload) = peer.read_frame().await;
    assert_eq!(head.kind, kind::SETTINGS);
    let params: Vec<(u16, u32)> = payload
        .chunks(6)
        .map(|p| (u16::from_be_bytes([p[0], p[1]]), u32::from_be_bytes([p[2], p[3], p[4], p[5]])))
        .collect();
    assert!(params.contains(&(setting::MAX_CONCURRENT_STREAMS, 2)), "{params:?}");
    assert!(params.contains(&(setting::ENABLE_CONNECT_PROTOCOL, 1)), "{params:?}");
    (peer, accepted, task)
}

fn get(path: &str) -> Vec<(&str, &str)> {
    vec![(":method", "GET"), (":scheme", "http"), (":authority", "t"), (":path", path)]
}

/// The RST_STREAM code of the next reset the server sends.
async fn next_reset(peer: &mut Peer) -> (u32, Reason) {
    let (head, payload) = peer.next_frame(kind::RST_STREAM).await;
    (head.stream, Reason::from(u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])))
}

async fn goaway_code(peer: &mut Peer) -> (u32, Reason) {
    let (_, payload) = peer.next_frame(kind::GOAWAY).await;
    let last = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
    (last, Reason::from(u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]])))
}

fn status_of(block: &Bytes) -> String {
    let mut status = String::new();
    hpack::Decoder::new(4096)
        .decode(block, |f| {
            if matches!(&f.name, hpack::Name::Pseudo(n) if &n[..] == b":status") {
                status = String::from_utf8_lossy(&f.value).into_owned();
            }
        })
        .unwrap();
    status
}

fn respond(send: &mut SendHalf, status: u16, end: bool) {
    let (head, ()) = http::Response::builder().status(status).body(()).unwrap().into_parts();
    send.send_headers(encode_response(&head), end).unwrap();
}

#[tokio::test]
async fn a_request_is_accepted_with_its_head_and_answered() {
    let (mut peer, mut accepted, _task) = connected().await;
    let mut fields = get("/a?b=c");
    fields.push(("x-custom", "yes"));
    peer.headers(1, &fields, true).await;
    let (request, mut send, _recv) = accepted.recv().await.unwrap();
    assert_eq!(request.method(), "GET");
    assert_eq!(request.uri(), "http://t/a?b=c");
    assert_eq!(request.version(), http::Version::HTTP_2);
    assert_eq!(request.headers()["x-custom"], "yes");
    respond(&mut send, 200, false);
    send.send_data(Bytes::from_static(b"hi"), true).unwrap();
    let (head, block) = peer.next_frame(kind::HEADERS).await;
    assert_eq!((head.stream, status_of(&block)), (1, "200".to_string()));
    let (head, data) = peer.next_frame(kind::DATA).await;
    assert_eq!((head.flags, &data[..]), (flag::END_STREAM, &b"hi"[..]));
}

#[tokio::test]
async fn malformed_requests_are_reset_and_the_connection_goes_on() {
    let (mut peer, mut accepted, _task) = connected().await;
    let cases: [&[(&str, &str)]; 5] = [
        &[(":method", "GET"), (":scheme", "http"), (":authority", "t")],
        &[(":method", "GET"), (":scheme", "http"), (":path", "/"), ("Upper", "x")],
        &[(":method", "GET"), (":scheme", "http"), (":path", "/"), ("connection", "close")],
        &[(":method", "GET"), ("x", "y"), (":scheme", "http"), (":path", "/")],
        &[(":method", "CONNECT"), (":scheme", "http"), (":path", "/"), (":authority", "t")],
    ];
    let mut id = 1;
    for fields in cases {
        peer.headers(id, fields, true).await;
        assert_eq!(next_reset(&mut peer).await, (id, Reason::PROTOCOL_ERROR), "{fields:?}");
        id += 2;
    }
    peer.headers(id, &get("/fine"), true).await;
    let (request, _, _) = accepted.recv().await.unwrap();
    assert_eq!(request.uri().path(), "/fine");
}

#[tokio::test]
async fn field_values_with_line_breaks_nul_or_edge_whitespace_are_malformed() {
    let (mut peer, mut accepted, _task) = connected().await;
    // RFC 9113 §8.2.1: an HTTP/1.1 hop would read a CR LF as a new field,
    // and trim the whitespace an HTTP/2 hop keeps.
    let mut id = 1;
    for value in ["a\r\nx-b: 1", "a\0", " a", "a\t"] {
        let mut fields = get("/");
        fields.push(("x-a", value));
        peer.headers(id, &fields, true).await;
        assert_eq!(next_reset(&mut peer).await, (id, Reason::PROTOCOL_ERROR), "{value:?}");
        id += 2;
    }
    let mut fields = get("/fine");
    fields.push(("x-a", "a b\tc"));
    peer.headers(id, &fields, true).await;
    let (request, _, _) = accepted.recv().await.unwrap();
    assert_eq!(request.headers()["x-a"], "a b\tc");
}

#[tokio::test]
async fn a_path_must_be_absolute_or_an_asterisk_on_options() {
    let (mut peer, mut accepted, _task) = connected().await;
    let mut id = 1;
    for (method, path) in [("GET", "*"), ("GET", "relative"), ("OPTIONS", "relative")] {
        let fields = [(":method", method), (":scheme", "http"), (":authority", "t"), (":path", path)];
        peer.headers(id, &fields, true).await;
        assert_eq!(next_reset(&mut peer).await, (id, Reason::PROTOCOL_ERROR), "{method} {path}");
        id += 2;
    }
    let fields = [(":method", "OPTIONS"), (":scheme", "http"), (":authority", "t"), (":path", "*")];
    peer.headers(id, &fields, true).await;
    let (request, _, _) = accepted.recv().await.unwrap();
    assert_eq!(request.method(), "OPTIONS");
}

#[tokio::test]
async fn an_extended_connect_carries_its_protocol() {
    let (mut peer, mut accepted, _task) = connected().await;
    let fields = [
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "http"),
        (":authority", "t"),
        (":path", "/ws"),
    ];
    peer.headers(1, &fields, false).await;
    let (request, _, _) = accepted.recv().await.unwrap();
    assert_eq!(request.method(), "CONNECT");
    assert_eq!(request.extensions().get::<h2::ext::Protocol>().unwrap().as_str(), "websocket");
}

#[tokio::test]
async fn streams_past_the_concurrency_limit_are_refused() {
    let (mut peer, mut accepted, _task) = connected().await;
    peer.headers(1, &get("/1"), true).await;
    peer.headers(3, &get("/2"), true).await;
    peer.headers(5, &get("/3"), true).await;
    assert_eq!(next_reset(&mut peer).await, (5, Reason::REFUSED_STREAM));
    let (_, mut send, _) = accepted.recv().await.unwrap();
    respond(&mut send, 204, true);
    drop(send);
    // The slot is free again.
    peer.headers(7, &get("/4"), true).await;
    let _second = accepted.recv().await.unwrap();
    let (request, _, _) = accepted.recv().await.unwrap();
    assert_eq!(request.uri().path(), "/4");
}

#[tokio::test]
async fn a_header_list_over_the_limit_gets_431_and_the_connection_goes_on() {
    let (mut peer, mut accepted, _task) = connected().await;
    let big = "x".repeat(2000);
    let mut fields = get("/big");
    fields.push(("x-big", &big));
    peer.headers(1, &fields, true).await;
    let (head, block) = peer.next_frame(kind::HEADERS).await;
    assert_eq!((head.stream, head.has(flag::END_STREAM), status_of(&block)), (1, true, "431".to_string()));
    peer.headers(3, &get("/small"), true).await;
    let (request, _, _) = accepted.recv().await.unwrap();
    assert_eq!(request.uri().path(), "/small");
}

#[tokio::test]
async fn a_request_body_and_trailers_arrive_in_order_and_window_is_handed_back() {
    let (mut peer, mut accepted, _task) = connected().await;
    let mut fields = get("/up");
    fields[0] = (":method", "POST");
    peer.headers(1, &fields, false).await;
    let mut out = BytesMut::new();
    frame::put_data(&mut out, 1, &[7u8; 600_000], false, 16_384);
    peer.write(&out).await;
    peer.headers(1, &[("grpc-status", "0")], true).await;
    let (_, _send, recv) = accepted.recv().await.unwrap();
    let mut body = std::pin::pin!(RecvBody::new(recv, None));
    let (mut received, mut trailers) = (0, None::<HeaderMap>);
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.unwrap();
        match frame.into_data() {
            Ok(data) => received += data.len(),
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    assert_eq!(received, 600_000);
    assert_eq!(trailers.unwrap()["grpc-status"], "0");
    // Half the connection window was taken: it is handed back.
    let (head, payload) = peer.next_frame(kind::WINDOW_UPDATE).await;
    let increment = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
    assert!(head.stream == 0 || increment >= 500_000, "{head:?} {increment}");
}

#[tokio::test]
async fn more_data_than_content_length_resets_the_stream() {
    let (mut peer, mut accepted, _task) = connected().await;
    let mut fields = get("/up");
    fields[0] = (":method", "POST");
    fields.push(("content-length", "3"));
    peer.headers(1, &fields, false).await;
    let _request = accepted.recv().await.unwrap();
    let mut out = BytesMut::new();
    frame::put_data(&mut out, 1, b"four", true, 16_384);
    peer.write(&out).await;
    assert_eq!(next_reset(&mut peer).await, (1, Reason::PROTOCOL_ERROR));
}

#[tokio::test]
async fn content_lengths_that_disagree_reset_the_stream_and_equal_ones_count_once() {
    let (mut peer, mut accepted, _task) = connected().await;
    let post = |lengths: &[&'static str]| {
        let mut fields = get("/up");
        fields[0] = (":method", "POST");
        fields.extend(lengths.iter().map(|&n| ("content-length", n)));
        fields
    };
    peer.headers(1, &post(&["3", "5"]), false).await;
    assert_eq!(next_reset(&mut peer).await, (1, Reason::PROTOCOL_ERROR));
    peer.headers(3, &post(&["3, 4"]), false).await;
    assert_eq!(next_reset(&mut peer).await, (3, Reason::PROTOCOL_ERROR));
    for (id, lengths) in [(5, &["3", "3"][..]), (7, &["3, 3"][..])] {
        peer.headers(id, &post(lengths), false).await;
        let (request, _, _) = accepted.recv().await.unwrap();
        let values: Vec<_> = request.headers().get_all("content-length").iter().collect();
        assert_eq!(values, ["3"], "{lengths:?}");
    }
}
#[tokio::test]
async fn a_response_waits_for_the_clients_window() {
    let (mut peer, mut accepted, _task) = connected().await;
    peer.settings(&[(setting::INITIAL_WINDOW_SIZE, 10)]).await;
    peer.headers(1, &get("/down"), true).await;
    let (_, mut send, _) = accepted.recv().await.unwrap();
    respond(&mut send, 200, false);
    send.send_data(Bytes::from_static(b"0123456789abcdef"), true).unwrap();
    let (_, data) = peer.next_frame(kind::DATA).await;
    assert_eq!(&data[..], b"0123456789");
    let mut out = BytesMut::new();
    frame::put_window_update(&mut out, 1, 100);
    peer.write(&out).await;
    let (head, data) = peer.next_frame(kind::DATA).await;
    assert_eq!((head.flags, &data[..]), (flag::END_STREAM, &b"abcdef"[..]));
}

#[tokio::test]
async fn a_response_larger_than_the_windows_is_sent_whole_after_its_sender_is_gone() {
    let (mut peer, mut accepted, _task) = connected().await;
    peer.headers(1, &get("/down"), true).await;
    let (_, mut send, _) = accepted.recv().await.unwrap();
    respond(&mut send, 200, false);
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    send.send_data(Bytes::from(body.clone()), true).unwrap();
    // The answer is done with the stream; what waits for window still goes.
    drop(send);
    // The default windows (65,535 for the stream and the connection) let
    // that much through; each WINDOW_UPDATE pair lets the next part go.
    let mut received = Vec::new();
    let mut acknowledged = 0;
    while received.len() < body.len() {
        let (head, data) = tokio::time::timeout(Duration::from_secs(2), peer.next_frame(kind::DATA))
            .await
            .unwrap_or_else(|_| panic!("stalled after {} bytes", received.len()));
        received.extend_from_slice(&data);
        assert!(received.len() <= acknowledged + 65_535, "sent past the window");
        if received.len() - acknowledged >= 32_768 {
            let mut out = BytesMut::new();
            let increment = (received.len() - acknowledged) as u32;
            frame::put_window_update(&mut out, 0, increment);
            frame::put_window_update(&mut out, 1, increment);
            peer.write(&out).await;
            acknowledged = received.len();
        }
        if head.has(flag::END_STREAM) {
            break;
        }
    }
    assert_eq!(received, body);
}

#[tokio::test]
async fn a_client_that_shrinks_its_hpack_table_is_told_ours_is_empty_once() {
    let (mut peer, mut accepted, _task) = connected().await;
    peer.settings(&[(setting::HEADER_TABLE_SIZE, 0)]).await;
    for (id, update_expected) in [(1, true), (3, false)] {
        peer.headers(id, &get("/"), true).await;
        let (_, mut send, _) = accepted.recv().await.unwrap();
        respond(&mut send, 200, true);
        let (_, block) = peer.next_frame(kind::HEADERS).await;
        // RFC 7541 §4.2: a size update leads the first block after the change.
        assert_eq!(block[0] == hpack::TABLE_SIZE_ZERO, update_expected, "{block:?}");
    }
}

#[tokio::test]
async fn an_early_answer_resets_the_unread_request_with_no_error() {
    let (mut peer, mut accepted, _task) = connected().await;
    let mut fields = get("/up");
    fields[0] = (":method", "POST");
    peer.headers(1, &fields, false).await;
    let (_, mut send, recv) = accepted.recv().await.unwrap();
    drop(recv);
    respond(&mut send, 413, true);
    let (_, block) = peer.next_frame(kind::HEADERS).await;
    assert_eq!(status_of(&block), "413");
    assert_eq!(next_reset(&mut peer).await, (1, Reason::NO_ERROR));
}

#[tokio::test]
async fn a_client_reset_reaches_the_stream() {
    let (mut peer, mut accepted, _task) = connected().await;
    peer.headers(1, &get("/slow"), true).await;
    let (_, mut send, _) = accepted.recv().await.unwrap();
    let mut out = BytesMut::new();
    frame::put_reset(&mut out, 1, Reason::CANCEL.into());
    peer.write(&out).await;
    let error = poll_fn(|cx| send.poll_reset(cx)).await;
    assert_eq!(error.reason(), Some(Reason::CANCEL));
}

#[tokio::test]
async fn rapid_reset_ends_the_connection_with_enhance_your_calm() {
    let (mut peer, _accepted, task) = connected().await;
    let mut out = BytesMut::new();
    for id in (1..40).step_by(2) {
        let mut block = BytesMut::new();
        for (name, value) in get("/attack") {
            hpack::encode_pseudo(&mut block, leak(name), value.as_bytes());
        }
        frame::put_headers(&mut out, id, &block, true, 16_384);
        frame::put_reset(&mut out, id, Reason::CANCEL.into());
    }
    peer.write(&out).await;
    assert_eq!(goaway_code(&mut peer).await.1, Reason::ENHANCE_YOUR_CALM);
    let ended = task.await.unwrap();
    assert!(matches!(ended, Err(Error::Protocol { reason: Reason::ENHANCE_YOUR_CALM, .. })), "{ended:?}");
}

#[tokio::test]
async fn a_flood_of_empty_data_frames_ends_the_connection_and_a_few_do_not() {
    let (mut peer, mut accepted, task) = connected().await;
    let mut fields = get("/up");
    fields[0] = (":method", "POST");
    peer.headers(1, &fields, false).await;
    let (_request, _send, recv) = accepted.recv().await.unwrap();
    let mut body = std::pin::pin!(RecvBody::new(recv, None));
    let mut out = BytesMut::new();
    // Up to the limit, then a byte of data: the connection goes on.
    for _ in 0..100 {
        frame::put_data(&mut out, 1, b"", false, 16_384);
    }
    frame::put_data(&mut out, 1, b"x", false, 16_384);
    peer.write(&out).await;
    let first = poll_fn(|cx| body.as_mut().poll_frame(cx)).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "x");
    // CVE-2019-9518: then a long run of frames carrying nothing, some of them padding alone.
    let mut out = BytesMut::new();
    for i in 0..101 {
        if i % 2 == 0 {
            frame::put_data(&mut out, 1, b"", false, 16_384);
        } else {
            // DATA, PADDED, stream 1: a pad length of 4 and four bytes of padding.
            out.extend_from_slice(&[0, 0, 5, kind::DATA, flag::PADDED, 0, 0, 0, 1, 4, 0, 0, 0, 0]);
        }
    }
    peer.write(&out).await;
    assert_eq!(goaway_code(&mut peer).await.1, Reason::ENHANCE_YOUR_CALM);
    let ended = task.await.unwrap();
    assert!(matches!(ended, Err(Error::Protocol { reason: Reason::ENHANCE_YOUR_CALM, .. })), "{ended:?}");
}

#[tokio::test]
async fn a_flood_of_malformed_streams_ends_the_connection() {
    let (mut peer, _accepted, task) = connected().await;
    for id in (1..20).step_by(2) {
        peer.headers(id, &[(":method", "GET")], true).await;
    }
    assert_eq!(goaway_code(&mut peer).await.1, Reason::ENHANCE_YOUR_CALM);
    assert!(task.await.unwrap().is_err());
}

#[tokio::test]
async fn a_bad_preface_ends_the_connection() {
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let (_accepted, task) = serve(ours);
    let mut peer = Peer::new(theirs);
    peer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let (last, code) = goaway_code(&mut peer).await;
    assert_eq!((last, code), (0, Reason::PROTOCOL_ERROR));
    assert!(task.await.unwrap().is_err());
}

#[tokio::test]
async fn graceful_shutdown_finishes_open_streams_and_ignores_new_ones() {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (tx, mut accepted) = mpsc::unbounded_channel();
    let (shut_tx, mut shut_rx) = mpsc::unbounded_channel::<()>();
    let mut server = Server::new(ours, SETTINGS);
    let task = tokio::spawn(poll_fn(move |cx| {
        if shut_rx.poll_recv(cx).is_ready() {
            server.graceful_shutdown();
        }
        server.poll_read(cx);
        while let Some(a) = server.accept() {
            let _ = tx.send(a);
        }
        server.poll_flush_or_end(cx)
    }));
    let mut peer = Peer::new(theirs);
    peer.write(frame::PREFACE).await;
    peer.settings(&[]).await;
    peer.headers(1, &get("/open"), true).await;
    let (_, mut send, recv) = accepted.recv().await.unwrap();
    shut_tx.send(()).unwrap();
    assert_eq!(goaway_code(&mut peer).await, (1, Reason::NO_ERROR));
    peer.headers(3, &get("/late"), true).await;
    respond(&mut send, 200, false);
    send.send_data(Bytes::from_static(b"done"), true).unwrap();
    drop((send, recv));
    let (head, data) = peer.next_frame(kind::DATA).await;
    assert_eq!((head.stream, &data[..]), (1, &b"done"[..]));
    assert!(task.await.unwrap().is_ok());
    assert!(accepted.try_recv().is_err(), "a stream opened after GOAWAY was started");
    let mut rest = Vec::new();
    peer.io.read_to_end(&mut rest).await.unwrap();
}

#[tokio::test]
async fn a_ping_flood_from_a_client_that_does_not_read_is_not_buffered_without_bound() {
    let (peer, mut accepted, _task) = connected_through(16 * 1024).await;
    let mut pings = BytesMut::new();
    for _ in 0..20_000 {
        frame::put_ping(&mut pings, *b"flooding", false);
    }
    // 340 KB of PINGs owe 340 KB of answers: past the output limit the
    // server stops reading, so the flood cannot all be written while the
    // client reads nothing.
    let (reading, mut writing) = tokio::io::split(peer.io);
    let flood = tokio::spawn(async move {
        writing.write_all(&pings).await.expect("write");
        writing
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!flood.is_finished(), "the server kept reading while its answers piled up");
    // Once the client reads, the server goes on: every PING is answered
    // and requests are still served.
    let mut reader = Peer::new(reading);
    let mut acks = 0;
    while acks < 20_000 {
        let (head, _) = reader.read_frame().await;
        if head.kind == kind::PING && head.has(flag::ACK) {
            acks += 1;
        }
    }
    let writing = flood.await.unwrap();
    let mut peer = Peer::new(reader.io.unsplit(writing));
    peer.headers(1, &get("/after"), true).await;
    let (request, _, _) = accepted.recv().await.unwrap();
    assert_eq!(request.uri().path(), "/after");
}

/// The pseudo-header names the encoder takes are `'static`.
fn leak(name: &str) -> &'static str {
    match name {
        ":method" => ":method",
        ":scheme" => ":scheme",
        ":authority" => ":authority",
        _ => ":path",
    }
}
