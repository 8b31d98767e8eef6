//! The body adapters against fixtures: a gRPC-Web request as a browser
//! sends it, a gRPC response as a server sends it.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tollgate_grpc_web::frame::{encode_message, encode_trailers};
use tollgate_grpc_web::*;

/// A body that yields the given frames, one per poll.
struct Frames(VecDeque<Result<Frame<Bytes>, &'static str>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = &'static str;
    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front())
    }
}

fn data(chunks: &[&[u8]]) -> Frames {
    Frames(chunks.iter().map(|c| Ok(Frame::data(Bytes::copy_from_slice(c)))).collect())
}

fn ok_trailers() -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static("0"));
    t.insert("x-trace-bin", HeaderValue::from_static("AAEC"));
    t
}

async fn frames_of<B: Body<Data = Bytes, Error = Infallible> + Unpin>(mut body: B) -> Vec<Bytes> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        out.push(frame.unwrap().into_data().unwrap());
    }
    out
}

#[test]
fn content_types_classify() {
    let kind = |ct: &'static str| {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
        GrpcKind::of(&h)
    };
    assert_eq!(kind("application/grpc"), Some(GrpcKind::Grpc));
    assert_eq!(kind("application/grpc+proto"), Some(GrpcKind::Grpc));
    assert_eq!(kind("application/grpc-web"), Some(GrpcKind::GrpcWeb(Encoding::Binary)));
    assert_eq!(kind("application/grpc-web+proto"), Some(GrpcKind::GrpcWeb(Encoding::Binary)));
    assert_eq!(kind("Application/gRPC-Web-Text; charset=utf-8"), Some(GrpcKind::GrpcWeb(Encoding::Text)));
    assert_eq!(kind("application/grpc-web-text+proto"), Some(GrpcKind::GrpcWeb(Encoding::Text)));
    assert_eq!(kind("application/grpcx"), None);
    assert_eq!(kind("application/json"), None);
}

#[test]
fn request_head_becomes_grpc_and_response_head_grpc_web() {
    let mut h = HeaderMap::new();
    h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc-web-text+proto"));
    h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("12"));
    assert_eq!(translate_request_head(&mut h), Some(Encoding::Text));
    assert_eq!(h[http::header::CONTENT_TYPE], "application/grpc+proto");
    assert_eq!(h["te"], "trailers");
    assert!(!h.contains_key(http::header::CONTENT_LENGTH));

    let mut status = StatusCode::OK;
    let mut r = HeaderMap::new();
    r.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc+proto"));
    assert!(!translate_response_head(&mut status, &mut r, Encoding::Text));
    assert_eq!(r[http::header::CONTENT_TYPE], "application/grpc-web-text+proto");

    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    let mut r = HeaderMap::new();
    assert!(translate_response_head(&mut status, &mut r, Encoding::Binary), "status synthesised in the head");
    assert_eq!((status, &r["grpc-status"]), (StatusCode::OK, &HeaderValue::from_static("14")));
}

#[tokio::test]
async fn text_request_split_mid_group_decodes_to_grpc_frames() {
    let mut grpc = encode_message(b"hello").to_vec();
    grpc.extend_from_slice(&encode_message(b"world"));
    // Two messages each base64'd on their own, cut at odd places.
    let text = format!(
        "{}{}",
        text::encode(&encode_message(b"hello")).escape_ascii(),
        text::encode(&encode_message(b"world")).escape_ascii()
    );
    let (a, b) = text.as_bytes().split_at(7);
    let slot = ErrorSlot::default();
    let body = RequestBody::new(data(&[a, b]), Encoding::Text, slot.clone());
    let decoded = body.collect().await.unwrap().to_bytes();
    assert_eq!(&decoded[..], &grpc[..]);
    assert!(slot.get().is_none());
}

#[tokio::test]
async fn malformed_requests_fail_the_stream_and_fill_the_slot() {
    for (encoding, chunks, expected) in [
        (Encoding::Text, vec![&b"!!!!"[..]], GrpcWebError::InvalidBase64),
        (Encoding::Binary, vec![&[0x42u8, 0, 0, 0, 1, 9][..]], GrpcWebError::BadFrameFlag(0x42)),
        (Encoding::Binary, vec![&[0u8, 0, 0, 0, 9, 1][..]], GrpcWebError::TruncatedFrame),
    ] {
        let slot = ErrorSlot::default();
        let body = RequestBody::new(data(&chunks), encoding, slot.clone());
        let err = body.collect().await.unwrap_err();
        assert!(matches!(err, RequestBodyError::Malformed(ref e) if *e == expected), "{err}");
        assert_eq!(slot.get(), Some(&expected));
    }
    assert_eq!(GrpcWebError::InvalidBase64.code(), Code::InvalidArgument);
    assert_eq!(GrpcWebError::TruncatedFrame.code(), Code::Internal);
}

#[tokio::test]
async fn response_messages_pass_one_by_one_then_the_trailer_frame() {
    let m1 = encode_message(b"one");
    let m2 = encode_message(b"two");
    let inner = Frames(VecDeque::from([
        Ok(Frame::data(m1.clone())),
        Ok(Frame::data(m2.clone())),
        Ok(Frame::trailers(ok_trailers())),
    ]));
    let frames = frames_of(ResponseBody::new(inner, Encoding::Binary, false, ErrorSlot::default())).await;
    assert_eq!(frames.len(), 3, "one frame out per frame in");
    assert_eq!((&frames[0], &frames[1]), (&m1, &m2));
    assert_eq!(&frames[2][..], &b"\x80\x00\x00\x00\x23grpc-status: 0\r\nx-trace-bin: AAEC\r\n"[..]);
}

#[tokio::test]
async fn text_responses_are_base64_per_chunk() {
    let inner = Frames(VecDeque::from([Ok(Frame::data(encode_message(b"a"))), Ok(Frame::trailers(ok_trailers()))]));
    let frames = frames_of(ResponseBody::new(inner, Encoding::Text, false, ErrorSlot::default())).await;
    assert_eq!(&frames[0][..], b"AAAAAAFh");
    let mut decoder = text::Base64Decoder::default();
    let all: Vec<u8> = frames.iter().flat_map(|f| decoder.decode(f).unwrap().to_vec()).collect();
    assert_eq!(&all[6..], &encode_trailers(&ok_trailers())[..]);
}

#[tokio::test]
async fn a_broken_upstream_or_request_ends_with_a_status_not_a_hang() {
    let inner = Frames(VecDeque::from([Ok(Frame::data(encode_message(b"a"))), Err("reset")]));
    let frames = frames_of(ResponseBody::new(inner, Encoding::Binary, false, ErrorSlot::default())).await;
    assert!(frames[1].starts_with(b"\x80") && frames[1].windows(15).any(|w| w == b"grpc-status: 14"));

    let slot = ErrorSlot::default();
    slot.set(GrpcWebError::InvalidBase64);
    let frames = frames_of(ResponseBody::new(data(&[]), Encoding::Binary, false, slot)).await;
    assert!(frames[0].windows(14).any(|w| w == b"grpc-status: 3"), "{:?}", frames[0]);

    // Trailers-only: the status was in the head, nothing is added.
    let frames = frames_of(ResponseBody::new(data(&[]), Encoding::Binary, true, ErrorSlot::default())).await;
    assert!(frames.is_empty());
}
