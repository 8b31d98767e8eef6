//! The client against a scripted backend speaking raw frames over an
//! in-memory pipe: the protocol's edge cases that a well-behaved gRPC
//! server never produces (real backends are in `tests/grpc.rs`).

use std::future::poll_fn;
use std::task::{Context, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::Reason;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tokio::io::AsyncReadExt;

use super::Peer;
use crate::http2::client::*;
use crate::http2::frame::{flag, kind, setting};
use crate::http2::{encode_trailers, frame, hpack};

const SETTINGS: Settings = Settings {
    stream_window: 100,
    connection_window: 1 << 20,
    max_header_list_size: 1024,
    max_concurrent_streams: u32::MAX,
    max_early_resets: usize::MAX,
    max_peer_faults: usize::MAX,
    keep_alive_interval: Duration::from_secs(30),
    keep_alive_timeout: Duration::from_secs(20),
};

/// A connected client whose backend has sent `params` as its SETTINGS.
async fn connected(params: &[(u16, u32)]) -> (Client, Peer) {
    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (client, connection) = handshake(ours, SETTINGS);
    tokio::spawn(connection);
    let mut peer = Peer::new(theirs);
    let mut preface = [0u8; 24];
    peer.io.read_exact(&mut preface).await.unwrap();
    assert_eq!(&preface, frame::PREFACE);
    let (head, _) = peer.read_frame().await;
    assert_eq!(head.kind, kind::SETTINGS);
    peer.settings(params).await;
    poll_fn(|cx| client.poll_ready(cx)).await.expect("handshake");
    (client, peer)
}

fn noop_cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

fn request_block() -> BytesMut {
    let (parts, ()) = Request::post("http://backend/pkg.Svc/Call")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("connection", "close")
        .body(())
        .unwrap()
        .into_parts();
    encode_request(&parts)
}

async fn open(client: &Client, end_stream: bool) -> (SendHalf, RecvHalf) {
    client.open(&request_block(), end_stream).expect("open")
}

#[tokio::test]
async fn a_call_goes_out_as_headers_data_and_comes_back_with_trailers() {
    let (client, mut peer) = connected(&[]).await;
    let (mut send, mut recv) = open(&client, false).await;
    send.send_data(Bytes::from_static(b"hello"), true).unwrap();
    let (head, block) = peer.next_frame(kind::HEADERS).await;
    assert_eq!((head.stream, head.flags), (1, flag::END_HEADERS));
    let mut names = Vec::new();
    hpack::Decoder::new(4096).decode(&block, |f| names.push(format!("{:?}", f.name))).unwrap();
    assert!(names.iter().all(|n| !n.contains("connection")), "connection-specific field sent: {names:?}");
    let (head, data) = peer.next_frame(kind::DATA).await;
    assert_eq!((head.flags, &data[..]), (flag::END_STREAM, &b"hello"[..]));

    peer.headers(1, &[(":status", "200"), ("content-type", "application/grpc")], false).await;
    let mut out = BytesMut::new();
    frame::put_data(&mut out, 1, b"world", false, 16_384);
    peer.write(&out).await;
    peer.headers(1, &[("grpc-status", "0")], true).await;

    let response = poll_fn(|cx| recv.poll_response(cx)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(poll_fn(|cx| recv.poll_data(cx)).await.unwrap().unwrap(), "world");
    assert!(poll_fn(|cx| recv.poll_data(cx)).await.is_none());
    let trailers = poll_fn(|cx| recv.poll_trailers(cx)).await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
}

#[tokio::test]
async fn streams_past_the_backends_limit_open_in_order_as_slots_free() {
    let (client, mut peer) = connected(&[(setting::MAX_CONCURRENT_STREAMS, 1)]).await;
    let (_send, mut first) = open(&client, true).await;
    let (_send, mut second) = open(&client, true).await;
    peer.headers(1, &[(":status", "200")], true).await;
    // Stream 3's HEADERS go out only once stream 1 has closed.
    let (head, _) = peer.next_frame(kind::HEADERS).await;
    assert_eq!(head.stream, 1);
    poll_fn(|cx| first.poll_response(cx)).await.unwrap();
    let (head, _) = peer.next_frame(kind::HEADERS).await;
    assert_eq!(head.stream, 3);
    peer.headers(3, &[(":status", "200")], true).await;
    assert_eq!(poll_fn(|cx| second.poll_response(cx)).await.unwrap().status(), 200);
}

#[tokio::test]
async fn request_data_waits_for_window_and_goes_on_after_window_update() {
    let (client, mut peer) = connected(&[(setting::INITIAL_WINDOW_SIZE, 10)]).await;
    let (mut send, _recv) = open(&client, false).await;
    send.send_data(Bytes::from(vec![7u8; 25]), true).unwrap();
    let (head, data) = peer.next_frame(kind::DATA).await;
    assert_eq!((head.flags, data.len()), (0, 10));
    assert!(send.poll_ready(&mut noop_cx()).is_pending(), "the rest waits for window");
    let mut out = BytesMut::new();
    frame::put_window_update(&mut out, 1, 100);
    peer.write(&out).await;
    let (head, data) = peer.next_frame(kind::DATA).await;
    assert_eq!((head.flags, data.len()), (flag::END_STREAM, 15));
    poll_fn(|cx| send.poll_ready(cx)).await.unwrap();
}

#[tokio::test]
async fn taking_response_data_hands_its_window_back() {
    let (client, mut peer) = connected(&[]).await;
    let (_send, mut recv) = open(&client, true).await;
    peer.headers(1, &[(":status", "200")], false).await;
    let mut out = BytesMut::new();
    frame::put_data(&mut out, 1, &[1u8; 60], false, 16_384);
    peer.write(&out).await;
    poll_fn(|cx| recv.poll_response(cx)).await.unwrap();
    assert_eq!(poll_fn(|cx| recv.poll_data(cx)).await.unwrap().unwrap().len(), 60);
    // The first is the connection's, sent with the preface.
    let (head, _) = peer.next_frame(kind::WINDOW_UPDATE).await;
    assert_eq!(head.stream, 0);
    let (head, increment) = peer.next_frame(kind::WINDOW_UPDATE).await;
    assert_eq!((head.stream, &increment[..]), (1, &60u32.to_be_bytes()[..]));
}

#[tokio::test]
async fn more_data_than_the_window_resets_the_stream() {
    let (client, mut peer) = connected(&[]).await;
    let (_send, mut recv) = open(&client, true).await;
    peer.headers(1, &[(":status", "200")], false).await;
    let mut out = BytesMut::new();
    frame::put_data(&mut out, 1, &[1u8; 101], false, 16_384);
    peer.write(&out).await;
    let (head, code) = peer.next_frame(kind::RST_STREAM).await;
    assert_eq!((head.stream, &code[..]), (1, &u32::from(Reason::FLOW_CONTROL_ERROR).to_be_bytes()[..]));
    poll_fn(|cx| recv.poll_response(cx)).await.unwrap();
    let error = poll_fn(|cx| recv.poll_data(cx)).await.unwrap().unwrap_err();
    assert_eq!(error.reason(), Some(Reason::FLOW_CONTROL_ERROR));
}

#[tokio::test]
async fn a_malformed_response_head_resets_only_its_stream() {
    let (client, mut peer) = connected(&[]).await;
    let (_s1, mut bad) = open(&client, true).await;
    let (_s3, mut good) = open(&client, true).await;
    peer.headers(1, &[(":status", "200"), ("X-Upper", "1")], false).await;
    peer.headers(3, &[(":status", "200")], true).await;
    let (head, _) = peer.next_frame(kind::RST_STREAM).await;
    assert_eq!(head.stream, 1);
    assert!(matches!(poll_fn(|cx| bad.poll_response(cx)).await, Err(Error::Protocol { .. })));
    assert_eq!(poll_fn(|cx| good.poll_response(cx)).await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_header_list_over_the_limit_resets_its_stream_however_small_the_block() {
    let (client, mut peer) = connected(&[]).await;
    let (_send, mut recv) = open(&client, true).await;
    // One 600-byte field put in the table, then named again and again by
    // one-byte references (index 62): a tiny block, a 1,024-byte limit.
    let mut block = vec![0x88, 0x40, 0x01, b'x', 0x7f, 0xd9, 0x03];
    block.extend_from_slice(&[b'v'; 600]);
    block.extend_from_slice(&[0xbe; 20]);
    let mut out = BytesMut::new();
    frame::put_headers(&mut out, 1, &block, false, 16_384);
    peer.write(&out).await;
    let (head, _) = peer.next_frame(kind::RST_STREAM).await;
    assert_eq!(head.stream, 1);
    assert!(matches!(poll_fn(|cx| recv.poll_response(cx)).await, Err(Error::Protocol { .. })));
}

#[tokio::test]
async fn a_goaway_refuses_the_streams_above_its_last_and_every_new_call() {
    let (client, mut peer) = connected(&[]).await;
    let (_s1, mut kept) = open(&client, true).await;
    let (_s3, mut refused) = open(&client, true).await;
    let mut out = BytesMut::new();
    frame::put_goaway(&mut out, 1, 0);
    peer.write(&out).await;
    assert!(matches!(poll_fn(|cx| refused.poll_response(cx)).await, Err(Error::Refused)));
    assert!(client.is_closed());
    assert!(matches!(client.open(&request_block(), true), Err(Error::Refused)));
    peer.headers(1, &[(":status", "200")], true).await;
    assert_eq!(poll_fn(|cx| kept.poll_response(cx)).await.unwrap().status(), 200);
}

#[tokio::test]
async fn an_endless_header_block_is_a_connection_error() {
    let (client, mut peer) = connected(&[]).await;
    let (_send, mut recv) = open(&client, true).await;
    let mut out = BytesMut::new();
    frame::put_head(&mut out, 3, kind::HEADERS, 0, 1);
    out.extend_from_slice(&[0x00, 0x01, b'a']);
    for _ in 0..40 {
        frame::put_head(&mut out, 1000, kind::CONTINUATION, 0, 1);
        out.extend_from_slice(&[b'a'; 1000]);
    }
    peer.write(&out).await;
    let (_, payload) = peer.next_frame(kind::GOAWAY).await;
    assert_eq!(&payload[4..8], &u32::from(Reason::ENHANCE_YOUR_CALM).to_be_bytes()[..]);
    assert!(poll_fn(|cx| recv.poll_response(cx)).await.is_err());
    assert!(client.is_closed());
}

#[tokio::test]
async fn abandoning_a_call_resets_its_stream_and_frees_its_slot() {
    let (client, mut peer) = connected(&[(setting::MAX_CONCURRENT_STREAMS, 1)]).await;
    let (send, recv) = open(&client, false).await;
    drop(recv);
    drop(send);
    let (head, code) = peer.next_frame(kind::RST_STREAM).await;
    assert_eq!((head.stream, &code[..]), (1, &u32::from(Reason::CANCEL).to_be_bytes()[..]));
    let (_send, _recv) = open(&client, true).await;
}

#[tokio::test]
async fn a_backend_reset_fails_the_call_with_its_code() {
    let (client, mut peer) = connected(&[]).await;
    let (mut send, mut recv) = open(&client, false).await;
    let mut out = BytesMut::new();
    frame::put_reset(&mut out, 1, Reason::INTERNAL_ERROR.into());
    peer.write(&out).await;
    let error = poll_fn(|cx| recv.poll_response(cx)).await.unwrap_err();
    assert_eq!(error.reason(), Some(Reason::INTERNAL_ERROR));
    assert!(send.send_data(Bytes::from_static(b"late"), true).is_err());
}

#[tokio::test]
async fn a_reset_after_a_complete_response_loses_none_of_it() {
    let (client, mut peer) = connected(&[]).await;
    let (_send, mut recv) = open(&client, false).await;
    peer.headers(1, &[(":status", "200"), ("content-type", "application/grpc")], false).await;
    let mut out = BytesMut::new();
    frame::put_data(&mut out, 1, b"whole", false, 16_384);
    peer.write(&out).await;
    peer.headers(1, &[("grpc-status", "0")], true).await;
    // The backend is done with the call and wants no more of the request,
    // but says so with a code other than NO_ERROR.
    let mut out = BytesMut::new();
    frame::put_reset(&mut out, 1, Reason::CANCEL.into());
    frame::put_ping(&mut out, *b"afterrst", false);
    peer.write(&out).await;
    peer.next_frame(kind::PING).await; // the reset has been read

    assert_eq!(poll_fn(|cx| recv.poll_response(cx)).await.unwrap().status(), 200);
    assert_eq!(poll_fn(|cx| recv.poll_data(cx)).await.unwrap().unwrap(), "whole");
    assert!(poll_fn(|cx| recv.poll_data(cx)).await.is_none());
    let trailers = poll_fn(|cx| recv.poll_trailers(cx)).await.unwrap().unwrap();
    assert_eq!(trailers["grpc-status"], "0");
}

#[tokio::test]
async fn the_backend_closing_fails_unfinished_calls() {
    let (client, peer) = connected(&[]).await;
    let (_send, mut recv) = open(&client, true).await;
    drop(peer);
    assert!(matches!(poll_fn(|cx| recv.poll_response(cx)).await, Err(Error::Closed | Error::Io(_))));
    assert!(client.is_closed());
}

#[tokio::test]
async fn padded_headers_and_data_arrive_without_their_padding() {
    let (client, mut peer) = connected(&[]).await;
    let (_send, mut recv) = open(&client, true).await;
    // HEADERS, PADDED with 3 bytes: `:status: 200` as static index 8.
    let mut out = BytesMut::new();
    frame::put_head(&mut out, 1 + 1 + 3, kind::HEADERS, flag::PADDED | flag::END_HEADERS, 1);
    out.extend_from_slice(&[3, 0x88, 0, 0, 0]);
    // DATA "abc", PADDED with 4 bytes, ending the stream.
    frame::put_head(&mut out, 1 + 3 + 4, kind::DATA, flag::PADDED | flag::END_STREAM, 1);
    out.extend_from_slice(&[4, b'a', b'b', b'c', 0, 0, 0, 0]);
    peer.write(&out).await;
    assert_eq!(poll_fn(|cx| recv.poll_response(cx)).await.unwrap().status(), 200);
    assert_eq!(poll_fn(|cx| recv.poll_data(cx)).await.unwrap().unwrap(), "abc");
    assert!(poll_fn(|cx| recv.poll_data(cx)).await.is_none());
}

#[tokio::test]
async fn padding_longer_than_its_frame_is_a_connection_error() {
    let (client, mut peer) = connected(&[]).await;
    let (_send, mut recv) = open(&client, true).await;
    let mut out = BytesMut::new();
    frame::put_head(&mut out, 2, kind::HEADERS, flag::PADDED | flag::END_HEADERS, 1);
    out.extend_from_slice(&[9, 0x88]);
    peer.write(&out).await;
    let (_, payload) = peer.next_frame(kind::GOAWAY).await;
    assert_eq!(&payload[4..8], &u32::from(Reason::PROTOCOL_ERROR).to_be_bytes()[..]);
    assert!(poll_fn(|cx| recv.poll_response(cx)).await.is_err());
}

#[tokio::test]
async fn pings_are_answered() {
    let (_client, mut peer) = connected(&[]).await;
    let mut out = BytesMut::new();
    frame::put_ping(&mut out, *b"12345678", false);
    peer.write(&out).await;
    let (head, payload) = peer.next_frame(kind::PING).await;
    assert_eq!((head.flags, &payload[..]), (flag::ACK, &b"12345678"[..]));
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_stops_answering_pings_is_dropped() {
    let (client, mut peer) = connected(&[]).await;
    let (_send, mut recv) = open(&client, true).await;
    let (head, _) = peer.next_frame(kind::PING).await;
    assert_eq!(head.flags, 0);
    assert!(matches!(poll_fn(|cx| recv.poll_response(cx)).await, Err(Error::KeepAliveTimedOut)));
}

#[test]
fn trailers_and_requests_leave_out_connection_specific_fields() {
    let mut trailers = HeaderMap::new();
    trailers.insert(HeaderName::from_static("grpc-status"), HeaderValue::from_static("0"));
    trailers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    let mut fields = Vec::new();
    hpack::Decoder::new(4096).decode(&encode_trailers(&trailers).freeze(), |f| fields.push(f.name)).unwrap();
    assert_eq!(fields, vec![hpack::Name::Header(HeaderName::from_static("grpc-status"))]);
}
