//! gRPC echo backend over h2c (HTTP/2 prior knowledge), any method, no
//! `.proto`: the answer is the request's body (its length-prefixed messages,
//! as they came) followed by the trailer `grpc-status: 0`.
//!
//! A method whose name ends in `ServerStream` (e.g. `/bench.Echo/ServerStream`)
//! is a server stream instead: the request's body sent back `--messages` times
//! (default 1000; the request header `x-messages` overrides), each as its own
//! DATA frame, then the trailers.
//!
//! `--max-streams N` (default 100) is the SETTINGS_MAX_CONCURRENT_STREAMS it
//! advertises, as many gRPC servers do: a proxy multiplexing more calls than
//! that must open more connections (or queue).

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>;

pub async fn echo_server(port: u16, default_messages: usize, max_streams: u32) -> Result<(), Error> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(([127, 0, 0, 1], port).into())?;
    let listener = socket.listen(4096)?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("grpc-echo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, default_messages));
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(max_streams)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(req: Request<Incoming>, default_messages: usize) -> Result<Response<StreamBody<Frames>>, Infallible> {
    let messages = if req.uri().path().ends_with("ServerStream") {
        req.headers().get("x-messages").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(default_messages)
    } else {
        1
    };
    let body = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut frames = Vec::with_capacity(messages + 1);
    for _ in 0..messages {
        frames.push(Ok(Frame::data(body.clone())));
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    frames.push(Ok(Frame::trailers(trailers)));
    let mut response = Response::new(StreamBody::new(futures_util::stream::iter(frames)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(response)
}
