//! Tollgate's own HTTP/1.1 client against backends that misbehave the way
//! real ones do: a keep-alive connection closed under a new request, a body
//! cut short, a body delimited by close, trailers, broken framing, an early
//! answer to an upload. The backends are raw TCP scripts (no HTTP server
//! library will misbehave on cue); the client is curl.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

/// One request as a raw backend read it.
struct RawRequest {
    head: String,
    body: Vec<u8>,
}

/// Reads one request (Content-Length bodies only); `None` when the peer closed.
fn read_request(reader: &mut BufReader<TcpStream>) -> Option<RawRequest> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, v)| v.trim().parse().unwrap());
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(RawRequest { head, body })
}

/// Reads one request off `stream` and hands the stream back for the answer.
fn after_one_request(stream: TcpStream) -> Option<TcpStream> {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    read_request(&mut reader).map(|_| stream)
}

/// A backend that runs `serve(connection, index)` on a thread per
/// connection; returns its address and the count of connections made.
fn raw_backend<F>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(TcpStream, usize) + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connections);
    let serve = Arc::new(serve);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let index = counter.fetch_add(1, Ordering::SeqCst);
            let serve = Arc::clone(&serve);
            std::thread::spawn(move || serve(stream, index));
        }
    });
    (addr, connections)
}

fn proxy(backend: SocketAddr) -> Tollgate {
    Tollgate::start_with(&format!(
        "[[upstream]]\nname = \"b\"\ntargets = [\"{backend}\"]\n\n[[route]]\nname = \"all\"\nupstream = \"b\"\n"
    ))
}

/// curl's exit code, status and body.
fn fetch(args: &[&str]) -> (i32, u16, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("b");
    let mut all = vec!["-o", body_path.to_str().unwrap(), "-w", "%{http_code}"];
    all.extend_from_slice(args);
    let out = curl(&all);
    let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    (out.status.code().unwrap_or(-1), code, std::fs::read(&body_path).unwrap_or_default())
}

#[test]
fn a_keep_alive_connection_closed_under_the_next_request_is_replaced_without_an_error() {
    // Each connection answers its first request and closes on the second
    // without a word: the race every keep-alive timeout produces.
    let (backend, connections) = raw_backend(|stream, index| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let Some(first) = read_request(&mut reader) else { return };
        let method = first.head.split(' ').next().unwrap_or_default().to_owned();
        let body = format!("conn {index}: {method} {}", String::from_utf8_lossy(&first.body));
        let mut writer = stream;
        let _ = write!(writer, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let _ = read_request(&mut reader);
    });
    let tollgate = proxy(backend);
    let url = tollgate.url("/a");
    assert_eq!(fetch(&["--http1.1", &url]), (0, 200, b"conn 0: GET ".to_vec()));
    // A body that arrived whole is sent again too (nothing came back, so the backend did not act on it).
    let (exit, status, body) = fetch(&["--http1.1", "--data-binary", "hello", &url]);
    assert_eq!((exit, status), (0, 200));
    assert_eq!(String::from_utf8_lossy(&body), "conn 1: POST hello");
    let (exit, status, body) = fetch(&["--http2-prior-knowledge", &url]);
    assert_eq!((exit, status, body), (0, 200, b"conn 2: GET ".to_vec()));
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[test]
fn a_backend_that_dies_mid_body_fails_the_response_instead_of_ending_it_short() {
    let (backend, connections) = raw_backend(|stream, index| {
        let Some(mut writer) = after_one_request(stream) else { return };
        // Even connections promise a length, odd ones send chunks; both stop early.
        let head: &[u8] = if index % 2 == 0 {
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
        } else {
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n"
        };
        let _ = writer.write_all(head);
        let _ = writer.write_all(&[b'x'; 1000]);
        // Dropping the stream closes it: the response is cut short.
    });
    let tollgate = proxy(backend);
    for flag in ["--http1.1", "--http2-prior-knowledge"] {
        for _framing in ["length", "chunked"] {
            let (exit, status, body) = fetch(&[flag, &tollgate.url("/cut")]);
            // HTTP/1.1 may lose the head too when the failure comes before it was flushed.
            assert!(status == 200 || status == 0, "{flag}: {status}");
            assert_ne!(exit, 0, "{flag}: curl must see the response fail, got {} bytes and success", body.len());
            assert!(body.len() <= 1000, "{flag}: {} bytes", body.len());
        }
    }
    // A broken connection is never reused, so the four requests alternated length and chunked.
    assert_eq!(connections.load(Ordering::SeqCst), 4);
}

#[test]
fn a_body_delimited_by_close_arrives_whole() {
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let expected = payload.clone();
    let (backend, _) = raw_backend(move |stream, _| {
        let Some(mut writer) = after_one_request(stream) else { return };
        let _ = writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n");
        for part in payload.chunks(7000) {
            let _ = writer.write_all(part);
        }
    });
    let tollgate = proxy(backend);
    for flag in ["--http1.1", "--http2-prior-knowledge"] {
        let (exit, status, body) = fetch(&[flag, &tollgate.url("/all")]);
        assert_eq!((exit, status), (0, 200), "{flag}");
        assert!(body == expected, "{flag}: {} bytes differ from the {} sent", body.len(), expected.len());
    }
}

#[test]
fn trailers_of_a_chunked_response_reach_an_http2_client_less_fields_unfit_for_trailers() {
    let (backend, _) = raw_backend(|stream, _| {
        let Some(mut writer) = after_one_request(stream) else { return };
        let _ = writer.write_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\nSet-Cookie: late=1\r\n\
              Content-Length: 99\r\n\r\n",
        );
    });
    let tollgate = proxy(backend);
    let (status, headers, body) = curl_full(&["--http2-prior-knowledge", &tollgate.url("/t")]);
    assert_eq!(status, 200);
    assert_eq!(body, b"hello world");
    assert_eq!(header_value(&headers, "x-checksum").as_deref(), Some("abc123"), "{headers}");
    // RFC 9110 §6.5.1: a cookie or a length set after the content goes no further.
    assert_eq!(header_value(&headers, "set-cookie"), None, "{headers}");
    assert_eq!(header_value(&headers, "content-length"), None, "{headers}");
}

#[test]
fn broken_response_framing_is_a_502_not_a_guess() {
    let (backend, _) = raw_backend(|stream, index| {
        let Some(mut writer) = after_one_request(stream) else { return };
        let huge_head = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n", "a".repeat(70_000));
        let interim = "HTTP/1.1 100 Continue\r\n\r\n".repeat(100) + "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let response: &[u8] = match index {
            0 => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            1 => b"HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n",
            // A coding we would strip with the hop-by-hop field, handing the client gzip it cannot know of.
            2 => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\n\x1f\x8b\x08\r\n0\r\n\r\n",
            3 => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            // Over the 64 KiB head limit, though it arrives in one piece.
            4 => huge_head.as_bytes(),
            // Interim responses without end, to hold the request open.
            5 => interim.as_bytes(),
            _ => b"I am not HTTP\r\n\r\n",
        };
        let _ = writer.write_all(response);
    });
    let tollgate = proxy(backend);
    // Each message says what was wrong with the answer (the log has it too).
    let cases = [
        ("conflicting lengths", "malformed response body: conflicting Content-Length values"),
        ("bad length", "malformed response body: invalid Content-Length"),
        ("gzip coding", "malformed response body: a transfer coding other than chunked"),
        ("chunked twice", "malformed response body: a transfer coding other than chunked"),
        ("huge head", "the response head is over 65536 bytes or 128 fields"),
        ("endless 100s", "malformed response head: too many interim responses"),
        ("not HTTP", "malformed response head: not HTTP/1.x"),
    ];
    for (case, said) in cases {
        let (status, _, body) = curl_full(&["--http1.1", &tollgate.url("/f")]);
        assert_eq!(status, 502, "{case}");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("a JSON error body");
        assert_eq!(json["error"], "upstream_error", "{case}: {json}");
        let message = json["message"].as_str().unwrap();
        assert_eq!(message, format!("upstream `b` failed to answer: {said}"), "{case}");
    }
}

#[test]
fn an_early_answer_to_an_upload_the_backend_will_not_read_reaches_the_client() {
    let (backend, connections) = raw_backend(|stream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
            line.clear();
        }
        let mut writer = stream.try_clone().unwrap();
        let _ =
            writer.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!");
        let _ = stream.shutdown(std::net::Shutdown::Write);
        // Drain politely so the close does not reset the connection under the answer.
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut sink = [0u8; 65536];
        while reader.read(&mut sink).is_ok_and(|n| n > 0) {}
    });
    let tollgate = proxy(backend);
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(dir.path(), "big.bin", &vec![7u8; 8 * 1024 * 1024]);
    let data = format!("@{}", file.display());
    let (_, status, body) = fetch(&["--http1.1", "-H", "Expect:", "--data-binary", &data, &tollgate.url("/up")]);
    assert_eq!((status, body), (413, b"big!".to_vec()));
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

#[test]
fn trailers_from_a_chunked_backend_reach_an_http1_client_and_end_the_response() {
    // hyper sends trailers it declared in `Trailer`, to a client that said
    // `TE: trailers`; Tollgate says that again upstream.
    let (backend, counters) = common::transport::counting_backend(|_req| async move {
        let frames: Vec<Result<http_body::Frame<bytes::Bytes>, Box<dyn std::error::Error + Send + Sync>>> = vec![
            Ok(http_body::Frame::data(bytes::Bytes::from_static(b"abc"))),
            Ok(http_body::Frame::trailers(http::HeaderMap::from_iter([(
                http::HeaderName::from_static("x-checksum"),
                http::HeaderValue::from_static("900150983cd24fb0"),
            )]))),
        ];
        let body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(frames)));
        hyper::Response::builder().header("trailer", "x-checksum").body(body).unwrap()
    });
    let tollgate = common::core_kit::start_proxy(backend.addr, "", "", "");
    for _ in 0..2 {
        let out = curl(&["--raw", "-H", "TE: trailers", "--max-time", "10", &tollgate.url("/t")]);
        assert!(out.status.success(), "{out:?}");
        let wire = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(wire.starts_with("3\r\nabc\r\n0\r\n"), "{wire:?}");
        assert!(wire.contains("x-checksum: 900150983cd24fb0\r\n"), "{wire:?}");
    }
    // The trailers ended each response: one backend connection carried both.
    assert_eq!(counters.connections(), 1);
}

#[test]
fn equal_content_lengths_reach_the_client_as_one_field_and_a_204_without_one() {
    // One keep-alive connection answering by path; the 204 comes with a
    // length and five stray bytes, which must not be read as the next answer.
    let (backend, connections) = raw_backend(|stream, _| {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut writer = stream;
        while let Some(request) = read_request(&mut reader) {
            let path = request.head.split(' ').nth(1).unwrap_or_default().to_owned();
            let answer: &[u8] = match path.as_str() {
                "/listed" => b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\n\r\nabc",
                "/repeated" => b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
                "/no-content" => b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            };
            if writer.write_all(answer).is_err() {
                return;
            }
        }
    });
    let tollgate = proxy(backend);
    for protocol in ["--http1.1", "--http2-prior-knowledge"] {
        for path in ["/listed", "/repeated"] {
            let (status, headers, body) = curl_full(&[protocol, &tollgate.url(path)]);
            assert_eq!((status, &body[..]), (200, &b"abc"[..]), "{protocol} {path}");
            let lengths: Vec<_> =
                headers.lines().filter(|l| l.to_ascii_lowercase().starts_with("content-length:")).collect();
            assert_eq!(lengths.len(), 1, "{protocol} {path}: {headers}");
            assert_eq!(lengths[0].split_once(':').unwrap().1.trim(), "3", "{protocol} {path}");
        }
        let (status, headers, body) = curl_full(&[protocol, &tollgate.url("/no-content")]);
        assert_eq!((status, body.len()), (204, 0), "{protocol}");
        assert!(!headers.to_ascii_lowercase().contains("content-length"), "{protocol}: {headers}");
        let (status, _, body) = curl_full(&[protocol, &tollgate.url("/next")]);
        assert_eq!((status, &body[..]), (200, &b"ok"[..]), "{protocol}: the stray bytes were not taken as an answer");
    }
    assert!(connections.load(Ordering::SeqCst) >= 2, "the connection with stray bytes was not reused");
}
