//! Mutated input, many cases of it: well-formed requests and responses,
//! damaged by a seeded random mutator (bit flips, odd bytes, cut, repeated
//! and deleted ranges, injected framing tokens), thrown at the real binary.
//!
//! `bad_input.rs` checks each malformed case we thought of. This file checks
//! the ones nobody thought of, against our own parsers on every side: the
//! HTTP/1.1 request head and chunked bodies, the HTTP/2 frame layer and HPACK
//! decoder (h2c with prior knowledge), the HTTP/1.1 upstream client's
//! response parser, our HTTP/2 client's frame layer and HPACK decoder (the
//! answers of a gRPC backend), the gRPC-Web body decoder (binary and
//! base64 text), the JSON ⇄ protobuf transcoder (`grpc_json`), the PROXY
//! protocol header reader, the WebSocket relays' frame checks, the TLS
//! listener's first bytes (ClientHellos for SNI certificate choice, and
//! plain HTTP sent to a TLS port), and the config loader (`tollgate check`
//! on mutated shipped configs). Every case must end with a well-formed answer or a clean
//! close within the configured timeouts: never a panic, never a hang, never
//! a 500, and never garbage handed on to the backend (which is hyper: it
//! answers what it cannot parse with a bare 400 that has no JSON body of ours).
//!
//! The seed is fixed, so a failure reproduces; each message prints the case.
//! `MUTATION_CASES=N` and `MUTATION_SEED=S` explore further by hand (CI runs
//! the defaults: a few hundred cases per test, about ten seconds in all).

mod common;
mod grpc_support;
mod ws_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::core_kit::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// A small deterministic generator (xorshift64*): no new dependency, and
/// the same cases on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// The case count (`MUTATION_CASES`, else `default`) and the generator for
/// test `which` (`MUTATION_SEED` moves every test's seed).
fn cases_and_rng(default: usize, which: u64) -> (usize, Rng) {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let cases = var("MUTATION_CASES").map_or(default, |n| n as usize);
    (cases, Rng(0x7011_6a7e_0000_0000 ^ (var("MUTATION_SEED").unwrap_or(0) << 8) ^ which))
}

/// Bytes that sit on parsers' decision points.
const ODD_BYTES: &[u8] = b"\0\r\n\t :;,\"\\/%?#*=\x7f\x80\xff0169AFaf-";

/// Tokens that change framing or meaning when they land in the middle of a message.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 18446744073709551616\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"Host: other\r\n",
    b"ffffffffffffffff\r\n",
    b"0\r\n\r\n",
    b"; ext=\"v\"",
    b" HTTP/1.1",
    b"HTTP/1.0",
    b"\xff\xff\xff\xff",
    b"\x00\x00\x00",
    b"\x80\x00\x00\x00",
    b"\x3f\xe1\x1f",
];

/// Applies one to four random mutations to `seed`. With `protect` the first
/// `protect` bytes are mutated only one time in ten (the HTTP/2 preface: a
/// broken one ends the connection before anything interesting).
fn mutate(rng: &mut Rng, seed: &[u8], protect: usize) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        if out.is_empty() {
            out.push(b'G');
        }
        let start = if protect > 0 && protect < out.len() && rng.below(10) != 0 { protect } else { 0 };
        let at = start + rng.below(out.len() - start);
        match rng.below(7) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => out[at] = ODD_BYTES[rng.below(ODD_BYTES.len())],
            2 => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at..end);
            }
            3 => {
                let end = (at + 1 + rng.below(32)).min(out.len());
                let copy = out[at..end].to_vec();
                let most = if rng.below(8) == 0 { 200 } else { 3 };
                let times = 1 + rng.below(most);
                for _ in 0..times {
                    out.splice(at..at, copy.iter().copied());
                }
            }
            4 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            5 => out.truncate(at.max(1)),
            _ => out[at] = rng.next() as u8,
        }
    }
    out
}

/// What one case received: everything the gateway wrote, and whether it
/// closed the connection (false: our deadline passed first, a hang).
struct Received {
    bytes: Vec<u8>,
    closed: bool,
}

/// Writes `input` and reads until the gateway closes or `deadline` passes.
/// The write side stays open: a half-close would tell the gateway the client
/// left, and every case must end by the gateway's own decision.
async fn exchange(addr: SocketAddr, input: Vec<u8>, deadline: Duration) -> Received {
    let mut stream = TcpStream::connect(addr).await.expect("connect to tollgate");
    let read = async {
        let mut bytes = Vec::new();
        // A write the gateway refused (it closed early) is part of the case, not a failure.
        let _ = stream.write_all(&input).await;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return bytes,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(bytes) => Received { bytes, closed: true },
        Err(_) => Received { bytes: Vec::new(), closed: false },
    }
}

/// Runs every case at most `parallel` at a time and returns them with what they received.
async fn run_cases(addr: SocketAddr, cases: Vec<Vec<u8>>, deadline: Duration) -> Vec<(Vec<u8>, Received)> {
    let slots = Arc::new(Semaphore::new(48));
    let mut tasks = Vec::new();
    for input in cases {
        let slots = Arc::clone(&slots);
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            let received = exchange(addr, input.clone(), deadline).await;
            (input, received)
        }));
    }
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.expect("case task"));
    }
    done
}

/// One HTTP/1.1 response read off the wire.
struct H1Response {
    status: u16,
    body: Vec<u8>,
    /// The framing was satisfied: all of a declared length, or a chunked
    /// body's last chunk (a close-delimited body always is).
    complete: bool,
    /// The head declared a length.
    declared: Option<usize>,
}

/// Splits the gateway's bytes into responses. Err says what is not
/// HTTP/1.1 in them; a last response cut short by the close is returned
/// as far as it got (the client sees the cut from the framing).
fn h1_responses(mut wire: &[u8]) -> Result<Vec<H1Response>, String> {
    let mut responses = Vec::new();
    while !wire.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 512];
        let mut parsed = httparse::Response::new(&mut headers);
        let head_len = match parsed.parse(wire) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Err("a response head cut short".into()),
            Err(e) => return Err(format!("not an HTTP/1.1 response head ({e})")),
        };
        if parsed.version != Some(1) {
            return Err("a response that is not HTTP/1.1".into());
        }
        let status = parsed.code.unwrap_or(0);
        let header = |name: &str| {
            parsed
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        // RFC 9112 §6.3: a transfer coding overrides any length; the body is
        // chunked if chunked is the last coding, else delimited by the close.
        let coding = header("transfer-encoding");
        let chunked = coding
            .as_deref()
            .is_some_and(|v| v.rsplit(',').next().unwrap_or("").trim().eq_ignore_ascii_case("chunked"));
        let length = if coding.is_some() { None } else { header("content-length") };
        wire = &wire[head_len..];
        let declared = match &length {
            Some(length) => Some(length.trim().parse::<usize>().map_err(|_| format!("content-length {length:?}"))?),
            None => None,
        };
        let (body, complete) = if (100..200).contains(&status) || status == 204 || status == 304 {
            (Vec::new(), true)
        } else if chunked {
            let (body, used, complete) = dechunk(wire)?;
            wire = &wire[used..];
            (body, complete)
        } else if let Some(length) = declared {
            let take = length.min(wire.len());
            let body = wire[..take].to_vec();
            wire = &wire[take..];
            (body, take == length)
        } else {
            // Close-delimited.
            let body = wire.to_vec();
            wire = &[];
            (body, true)
        };
        responses.push(H1Response { status, body, complete, declared });
    }
    Ok(responses)
}

/// Decodes a chunked body at the start of `wire`: the body, the bytes used,
/// and whether the last chunk came.
fn dechunk(wire: &[u8]) -> Result<(Vec<u8>, usize, bool), String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(line_end) = wire[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok((body, wire.len(), false));
        };
        let size_text = String::from_utf8_lossy(&wire[at..at + line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("chunk size line {size_text:?}"))?;
        at += line_end + 2;
        if size == 0 {
            // Trailers end with an empty line.
            let end = wire[at..].windows(4).position(|w| w == b"\r\n\r\n");
            return Ok(match (wire[at..].starts_with(b"\r\n"), end) {
                (true, _) => (body, at + 2, true),
                (false, Some(end)) => (body, at + end + 4, true),
                (false, None) => (body, wire.len(), false),
            });
        }
        let take = size.min(wire.len() - at);
        body.extend_from_slice(&wire[at..at + take]);
        at += take;
        if take < size {
            return Ok((body, wire.len(), false));
        }
        at = (at + 2).min(wire.len());
    }
}

/// The HTTP/1.1 responses a case got, which must have ended by the
/// gateway's close within [`CASE_DEADLINE`] and parse as HTTP/1.1.
fn answered_in_time(case: &str, received: &Received) -> Vec<H1Response> {
    assert!(received.closed, "no answer and no close within {CASE_DEADLINE:?} for {case:?}");
    h1_responses(&received.bytes)
        .unwrap_or_else(|e| panic!("{e} for {case:?}; got {:?}", String::from_utf8_lossy(&received.bytes)))
}

/// Tollgate with short timeouts, so every case ends by the gateway's own
/// decision within seconds: an idle or half-sent connection is closed after
/// `header_read_timeout`, a request waiting for a body the client never
/// sends gets its 408 at `body_timeout` (or 504 at `request_timeout`), a
/// response the client's zero window holds back is reset at `send_timeout`,
/// an idle h2c connection gets its GOAWAY.
fn gateway_for(backend: SocketAddr, upstream_keys: &str) -> Tollgate {
    start_proxy(
        backend,
        "header_read_timeout = \"1s\"\nrequest_timeout = \"2s\"\nbody_timeout = \"1s\"\nsend_timeout = \"1s\"\nidle_timeout = \"1s\"\n\
         max_header_bytes = 16384\nmax_body_bytes = 100000",
        &format!("first_byte_timeout = \"2s\"\n{upstream_keys}"),
        "",
    )
}

/// How long a case may take before it counts as a hang: the longest
/// timeout above plus its grace, with room for a busy machine.
const CASE_DEADLINE: Duration = Duration::from_secs(10);

/// After all cases: the process is alive, never panicked, and still serves
/// HTTP/1.1 and h2c.
fn assert_unharmed(tollgate: &mut Tollgate) {
    assert_alive_and_serving(tollgate, "/after-mutations");
    let (code, headers, _) = curl_full(&["--http2-prior-knowledge", &tollgate.url("/after-mutations-h2")]);
    assert_eq!(code, 200, "h2c after the mutations: {headers}");
    let log = tollgate.log();
    assert!(!log.contains("panicked"), "tollgate panicked:\n{log}");
}

/// Counts statuses for the failure message and the coverage check.
fn tally(statuses: &mut BTreeMap<u16, usize>, status: u16) {
    *statuses.entry(status).or_default() += 1;
}

fn h1_seeds() -> Vec<Vec<u8>> {
    [
        &b"GET /m/get?q=1&r=%20 HTTP/1.1\r\nHost: t\r\nUser-Agent: mutator\r\nAccept: */*\r\n\r\n"[..],
        b"POST /m/post HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
        b"POST /m/chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6;name=value\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n",
        b"PUT /m/expect HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
        b"GET /m/one HTTP/1.1\r\nHost: t\r\n\r\nGET /m/two HTTP/1.1\r\nHost: t\r\nCookie: a=b; c=d\r\n\r\n",
        b"OPTIONS http://t/m/absolute HTTP/1.1\r\nHost: t\r\nMax-Forwards: 3\r\n\r\n",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_http1_requests_get_a_well_formed_answer_or_a_clean_close_and_no_garbage_reaches_the_backend() {
    let backend = echo_backend();
    let mut tollgate = gateway_for(backend.addr, "");
    let (count, mut rng) = cases_and_rng(600, 1);
    let seeds = h1_seeds();
    let cases: Vec<Vec<u8>> = (0..count).map(|i| mutate(&mut rng, &seeds[i % seeds.len()], 0)).collect();
    let results = run_cases(tollgate.addr, cases, CASE_DEADLINE).await;

    let mut statuses = BTreeMap::new();
    for (input, received) in &results {
        let case = String::from_utf8_lossy(input);
        let responses = answered_in_time(&case, received);
        for response in responses {
            tally(&mut statuses, response.status);
            let body = String::from_utf8_lossy(&response.body);
            assert!(!matches!(response.status, 500 | 502), "{} for {case:?}: {body}", response.status);
            // Our own refusals carry a JSON error; a bare 400 is the backend refusing what we sent it.
            if response.status == 400 {
                assert!(body.contains("\"error\":"), "the backend got a request it could not parse from {case:?}");
            }
        }
    }
    eprintln!("statuses {statuses:?}");
    // The mutations reached both sides of the decision: some were still requests the
    // backend answered, others were refused by the gateway.
    assert!(statuses.get(&200).copied().unwrap_or(0) >= 50, "{statuses:?}");
    assert!(statuses.get(&400).copied().unwrap_or(0) >= 50, "{statuses:?}");
    assert_unharmed(&mut tollgate);
}

/// An HTTP/2 frame: 9-byte head and payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 1;
const END_HEADERS: u8 = 4;

/// An HPACK literal with an indexed name (with incremental indexing).
fn literal(name_index: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x40 | name_index, value.len() as u8];
    out.extend_from_slice(value);
    out
}

fn h2_seeds() -> Vec<Vec<u8>> {
    let settings = frame(SETTINGS, 0, 0, &[0, 4, 0, 1, 0, 0, 0, 3, 0, 0, 0, 100]);
    // GET: :method GET, :scheme http (static 2, 6), :path and :authority literals.
    let mut get = vec![0x82, 0x86];
    get.extend(literal(4, b"/m/h2-get"));
    get.extend(literal(1, b"t"));
    // A Huffman-coded :authority (www.example.com, RFC 7541 C.4.1) and a new name.
    let mut huffman = vec![0x20, 0x82, 0x86, 0x41, 0x8c];
    huffman.extend_from_slice(&[0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff]);
    huffman.extend(literal(4, b"/m/h2-huffman"));
    huffman.extend_from_slice(b"\x40\x0acustom-key\x0dcustom-header");
    // POST with a body in two DATA frames, the second padded.
    let mut post = vec![0x83, 0x86];
    post.extend(literal(4, b"/m/h2-post"));
    post.extend(literal(1, b"t"));
    post.extend(literal(28, b"11"));
    let mut padded = vec![3];
    padded.extend_from_slice(b"world\0\0\0");

    let mut seeds = Vec::new();
    let mut one = PREFACE.to_vec();
    one.extend(&settings);
    one.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &get));
    seeds.push(one);

    let mut two = PREFACE.to_vec();
    two.extend(&settings);
    two.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &huffman));
    two.extend(frame(PING, 0, 0, b"12345678"));
    seeds.push(two);

    let mut three = PREFACE.to_vec();
    three.extend(&settings);
    three.extend(frame(WINDOW_UPDATE, 0, 0, &1000u32.to_be_bytes()));
    three.extend(frame(HEADERS, END_HEADERS, 1, &post));
    three.extend(frame(DATA, 0, 1, b"hello "));
    three.extend(frame(DATA, END_STREAM | 0x8, 1, &padded));
    seeds.push(three);

    // Two streams, the first header block continued, a priority and a reset.
    let mut four = PREFACE.to_vec();
    four.extend(&settings);
    four.extend(frame(HEADERS, END_STREAM, 1, &get[..4]));
    four.extend(frame(CONTINUATION, END_HEADERS, 1, &get[4..]));
    four.extend(frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16]));
    four.extend(frame(HEADERS, END_HEADERS, 3, &post));
    four.extend(frame(RST_STREAM, 0, 3, &8u32.to_be_bytes()));
    four.extend(frame(SETTINGS, 1, 0, &[]));
    seeds.push(four);
    seeds
}

/// What the gateway's bytes say, frame by frame. Err: not a sequence of
/// whole frames, or a frame that says the gateway itself failed.
#[derive(Default, Debug)]
struct H2Answer {
    goaway_codes: Vec<u32>,
    headers_frames: usize,
}

fn h2_frames(mut wire: &[u8]) -> Result<H2Answer, String> {
    let mut answer = H2Answer::default();
    let mut first = true;
    while !wire.is_empty() {
        if wire.len() < 9 {
            return Err(format!("{} bytes left over, not a frame", wire.len()));
        }
        let len = (wire[0] as usize) << 16 | (wire[1] as usize) << 8 | wire[2] as usize;
        let (kind, payload) = (wire[3], &wire[9..]);
        if payload.len() < len {
            return Err(format!("a frame of type {kind} cut short ({} of {len} bytes)", payload.len()));
        }
        if first && kind != SETTINGS {
            return Err(format!("the server's first frame is type {kind}, not SETTINGS"));
        }
        first = false;
        let payload = &payload[..len];
        match kind {
            GOAWAY if len >= 8 => {
                answer.goaway_codes.push(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
            }
            RST_STREAM if len == 4 => {
                let code = u32::from_be_bytes(payload.try_into().unwrap());
                if code == 2 {
                    return Err("RST_STREAM(INTERNAL_ERROR)".into());
                }
            }
            HEADERS => answer.headers_frames += 1,
            _ => {}
        }
        wire = &wire[9 + len..];
    }
    if answer.goaway_codes.contains(&2) {
        return Err("GOAWAY(INTERNAL_ERROR)".into());
    }
    Ok(answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_http2_frames_and_header_blocks_end_in_well_formed_frames_or_a_clean_close() {
    let backend = echo_backend();
    let mut tollgate = gateway_for(backend.addr, "");
    let (count, mut rng) = cases_and_rng(600, 2);
    let seeds = h2_seeds();
    let cases: Vec<Vec<u8>> = (0..count).map(|i| mutate(&mut rng, &seeds[i % seeds.len()], PREFACE.len())).collect();
    let results = run_cases(tollgate.addr, cases, CASE_DEADLINE).await;

    let (mut answered, mut refused, mut as_http1) = (0, 0, 0);
    for (input, received) in &results {
        assert!(received.closed, "no close within {CASE_DEADLINE:?} for {input:02x?}");
        if !input.starts_with(PREFACE) {
            // A broken preface: the port takes it for HTTP/1.1, or for a cut HTTP/2 preface.
            let as_h1 = h1_responses(&received.bytes);
            assert!(
                as_h1.is_ok() || h2_frames(&received.bytes).is_ok(),
                "{:?} for {input:02x?}; got {:02x?}",
                as_h1.err(),
                received.bytes
            );
            as_http1 += 1;
            continue;
        }
        let answer =
            h2_frames(&received.bytes).unwrap_or_else(|e| panic!("{e} for {input:02x?}; got {:02x?}", received.bytes));
        answered += usize::from(answer.headers_frames > 0);
        refused += usize::from(answer.goaway_codes.iter().any(|&code| code != 0));
    }
    eprintln!("answered {answered}, refused {refused}, as HTTP/1.1 {as_http1}");
    assert!(answered >= 50 && refused >= 50, "answered {answered}, refused {refused}, as HTTP/1.1 {as_http1}");
    assert_unharmed(&mut tollgate);
}

fn response_seeds() -> Vec<Vec<u8>> {
    [
        &b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nhello world\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n5\r\nhello\r\n7;e=1\r\n world\n\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nLocation: /x\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 204 No Content\r\nServer: mutated\r\n\r\n",
        b"HTTP/1.1 302 Found\r\nLocation: http://t/elsewhere\r\nSet-Cookie: a=b\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

/// Stands for the `Sec-WebSocket-Accept` value in a response case: the
/// backend puts the right one in its place when the placeholder survived
/// the mutation (28 bytes, as long as a real one).
const ACCEPT_PLACEHOLDER: &[u8; 28] = b"ACCEPT-VALUE-GOES-IN-HERE-28";

/// A raw TCP backend that answers request `/r/N` with response case N and
/// closes: the mutated responses are what a broken or hostile backend sends.
fn mutating_backend(responses: Arc<Vec<Vec<u8>>>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let responses = Arc::clone(&responses);
            std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let case = text.split_whitespace().nth(1).and_then(|p| p.strip_prefix("/r/"));
                let Some(response) = case.and_then(|n| n.parse::<usize>().ok()).and_then(|n| responses.get(n)) else {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    return;
                };
                let mut response = response.clone();
                let key = text.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.trim().eq_ignore_ascii_case("sec-websocket-key").then(|| value.trim().to_string())
                });
                if let (Some(key), Some(at)) = (key, response.windows(28).position(|w| w == ACCEPT_PLACEHOLDER)) {
                    let accept = tollgate_websocket::handshake::accept_key(key.as_bytes());
                    response.splice(at..at + 28, accept.as_bytes().iter().copied());
                }
                let _ = stream.write_all(&response);
                let _ = stream.shutdown(std::net::Shutdown::Write);
                // Let the gateway read to the close before the socket goes.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
                let _ = stream.read(&mut buf);
            });
        }
    });
    addr
}

/// `response` cut at a random point of its final response's body (whole if it has none).
fn cut_in_body(rng: &mut Rng, response: &[u8]) -> Vec<u8> {
    let status_line = response.windows(7).rposition(|w| w == b"HTTP/1.").unwrap_or(0);
    let head_end = response[status_line..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |p| status_line + p + 4);
    let body = response.len() - head_end;
    response[..head_end + rng.below(body)].to_vec()
}

/// What the backend's bytes promise, read as strictly as `h1_responses`
/// reads ours: the final response's body, when its head declared a length
/// the backend then did not send in full (it closed early).
fn backend_cut_short(response: &[u8]) -> bool {
    let Ok(responses) = h1_responses(response) else { return false };
    responses.iter().find(|r| r.status >= 200).is_some_and(|r| !r.complete)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_backend_responses_become_a_relayed_response_or_a_502_and_a_cut_body_is_never_passed_off_as_whole() {
    let (count, mut rng) = cases_and_rng(400, 3);
    let seeds = response_seeds();
    // One in four is whole but cut inside its body, the backend dying mid-response.
    let responses: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let seed = &seeds[i % seeds.len()];
            if i % 4 == 0 { cut_in_body(&mut rng, seed) } else { mutate(&mut rng, seed, 0) }
        })
        .collect();
    let cut: Vec<bool> = responses.iter().map(|r| backend_cut_short(r)).collect();
    let backend = mutating_backend(Arc::new(responses.clone()));
    let mut tollgate = gateway_for(backend, "");
    let requests: Vec<Vec<u8>> = (0..count)
        .map(|n| format!("GET /r/{n} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes())
        .collect();
    let results = run_cases(tollgate.addr, requests, CASE_DEADLINE).await;

    let mut statuses = BTreeMap::new();
    let mut cuts_seen = 0;
    for (n, (_, received)) in results.iter().enumerate() {
        let case = String::from_utf8_lossy(&responses[n]);
        assert!(received.closed, "no answer and no close within {CASE_DEADLINE:?} for backend response {case:?}");
        let answer = String::from_utf8_lossy(&received.bytes);
        let ours = h1_responses(&received.bytes)
            .unwrap_or_else(|e| panic!("{e} for backend response {case:?}; got {answer:?}"));
        let finals: Vec<&H1Response> = ours.iter().filter(|r| r.status >= 200).collect();
        assert_eq!(finals.len(), 1, "one final response for backend response {case:?}: {answer:?}");
        let last = finals[0];
        tally(&mut statuses, last.status);
        // Any status may be the backend's own; one of ours names a gateway failure.
        if String::from_utf8_lossy(&last.body).contains("\"request_id\":") {
            assert!(matches!(last.status, 502 | 504), "{} of ours for backend response {case:?}", last.status);
        }
        if last.status == 502 {
            assert!(String::from_utf8_lossy(&last.body).contains("\"error\":"), "for {case:?}: {answer:?}");
        } else if cut[n] && last.status != 504 {
            // The head was relayed before the body ran out: the client must see the cut
            // in the framing (a length not reached, no last chunk), not a shorter "whole" body.
            cuts_seen += 1;
            assert!(!last.complete, "a cut body passed off as whole for backend response {case:?}: {answer:?}");
            if let Some(declared) = last.declared {
                assert!(last.body.len() < declared, "for {case:?}: {answer:?}");
            }
        }
    }
    eprintln!("final statuses {statuses:?}, relayed cut short {cuts_seen}");
    assert!(statuses.get(&502).copied().unwrap_or(0) >= 30, "{statuses:?}");
    let relayed: usize = statuses.iter().filter(|(s, _)| **s != 502 && **s != 504).map(|(_, n)| n).sum();
    assert!(relayed >= 50, "{statuses:?}");
    assert!(cuts_seen >= 10, "only {cuts_seen} relayed responses were cut short by the backend; {statuses:?}");
    assert_unharmed(&mut tollgate);
}

fn websocket_seeds() -> Vec<Vec<u8>> {
    use ws_support::frame as ws;
    let mut seeds = Vec::new();
    let mut one = ws(true, 0x1, b"hello", true);
    one.extend(ws(true, 0x8, b"\x03\xe8bye", true));
    seeds.push(one);
    seeds.push(ws(true, 0x2, &(0..300).map(|i| i as u8).collect::<Vec<u8>>(), true));
    let mut fragmented = ws(false, 0x1, b"hel", true);
    fragmented.extend(ws(true, 0x9, b"p", true));
    fragmented.extend(ws(true, 0x0, b"lo", true));
    seeds.push(fragmented);
    let mut unicode = ws(true, 0x1, "h\u{e9}llo \u{1f600}".as_bytes(), true);
    unicode.extend(ws(true, 0xa, b"unasked", true));
    seeds.push(unicode);
    seeds
}

/// Close codes that may be on the wire (RFC 6455 §7.4, and 1012–1014 from
/// IANA's registry): a tunnel relays its peers' codes, so any of these may
/// come back, but never 1005, 1006 or 1015, which stand for "no code" only
/// locally, nor an unassigned one.
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// The frames the gateway sent a client, checked: unmasked, whole, a close
/// with a sendable code and nothing after it. Ok(data frames, close code).
fn server_frames(mut wire: &[u8]) -> Result<(usize, Option<u16>), String> {
    let (mut data, mut close) = (0, None);
    while !wire.is_empty() {
        if close.is_some() {
            return Err("frames after the close".into());
        }
        if wire.len() < 2 {
            return Err("a frame head cut short".into());
        }
        if wire[1] & 0x80 != 0 {
            return Err("a masked frame from the server".into());
        }
        let (len, head) = match wire[1] & 0x7f {
            126 if wire.len() >= 4 => (u16::from_be_bytes([wire[2], wire[3]]) as usize, 4),
            127 if wire.len() >= 10 => (u64::from_be_bytes(wire[2..10].try_into().unwrap()) as usize, 10),
            126 | 127 => return Err("a frame length cut short".into()),
            n => (n as usize, 2),
        };
        if wire.len() < head + len {
            return Err(format!("a frame cut short ({} of {len} bytes)", wire.len() - head));
        }
        let payload = &wire[head..head + len];
        match wire[0] & 0x0f {
            0x8 => {
                let code = if len >= 2 { u16::from_be_bytes([payload[0], payload[1]]) } else { 1005 };
                if len >= 2 && !sendable_close_code(code) {
                    return Err(format!("close code {code}"));
                }
                close = Some(code);
            }
            0x0..=0x2 => data += 1,
            0x9 | 0xa => {}
            other => return Err(format!("opcode {other:#x}")),
        }
        wire = &wire[head + len..];
    }
    Ok((data, close))
}

/// Opens `count` WebSocket sessions on `addr` (an HTTP/1.1 upgrade, or
/// with `over_h2` an RFC 8441 extended CONNECT over h2c), writes a mutated
/// frame sequence on each, and reads what comes back until the gateway
/// ends the session. The close codes it sent (None: no close frame) and
/// how many cases got data back.
async fn mutated_websocket_sessions(
    addr: SocketAddr,
    count: usize,
    mut rng: Rng,
    over_h2: bool,
) -> (BTreeMap<Option<u16>, usize>, usize) {
    let seeds = websocket_seeds();
    let slots = Arc::new(Semaphore::new(48));
    let mut tasks = Vec::new();
    for i in 0..count {
        let input = mutate(&mut rng, &seeds[i % seeds.len()], 0);
        let slots = Arc::clone(&slots);
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            let mut session: Box<dyn AsyncStream> = if over_h2 {
                Box::new(ws_support::connect_h2c_raw(addr, "/m").await.expect("the extended CONNECT got its 200"))
            } else {
                let (head, tcp) = ws_support::upgrade_raw(addr, "/m", &[]).await;
                assert_eq!(ws_support::status_of(&head), 101, "{head}");
                Box::new(tcp)
            };
            let _ = session.write_all(&input).await;
            let _ = session.flush().await;
            let mut bytes = Vec::new();
            let mut buf = vec![0u8; 16 * 1024];
            let read = async {
                loop {
                    match session.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => bytes.extend_from_slice(&buf[..n]),
                    }
                }
            };
            let closed = tokio::time::timeout(CASE_DEADLINE, read).await.is_ok();
            (input, Received { bytes, closed })
        }));
    }
    let mut by_code: BTreeMap<Option<u16>, usize> = BTreeMap::new();
    let mut answered = 0;
    for task in tasks {
        let (input, received) = task.await.expect("case task");
        assert!(received.closed, "no close within {CASE_DEADLINE:?} for {input:02x?}");
        let (data, close) = server_frames(&received.bytes)
            .unwrap_or_else(|e| panic!("{e} for {input:02x?}; got {:02x?}", received.bytes));
        answered += usize::from(data > 0);
        *by_code.entry(close).or_default() += 1;
    }
    eprintln!("close codes {by_code:?}, cases with data back {answered}");
    (by_code, answered)
}

/// A WebSocket session's byte stream: a TCP socket or an HTTP/2 stream.
trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for T {}

/// The route keys the WebSocket tests share, after the mode.
const WEBSOCKET_LIMITS: &str =
    "websocket_max_message_bytes = 4096\nwebsocket_max_frame_bytes = 4096\nwebsocket_idle_timeout = \"1s\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_websocket_frames_through_a_tunnel_end_in_well_formed_frames_and_a_close_the_gateway_sends() {
    let backend = ws_support::EchoBackend::start().await;
    let mut tollgate = start_proxy(backend.addr, "", "", &format!("websocket = \"tunnel\"\n{WEBSOCKET_LIMITS}"));
    let (count, rng) = cases_and_rng(400, 4);
    let (by_code, echoed) = mutated_websocket_sessions(tollgate.addr, count, rng, false).await;
    // Both sides of the decision were reached: frames relayed and echoed,
    // and frames refused with a protocol error (1002) or bad UTF-8 (1007).
    assert!(echoed >= 50, "{echoed} echoed; {by_code:?}");
    assert!(by_code.get(&Some(1002)).copied().unwrap_or(0) >= 50, "{by_code:?}");
    assert_unharmed_status(&mut tollgate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_websocket_frames_over_http2_extended_connect_end_in_well_formed_frames_and_a_close() {
    // RFC 8441 sessions run as tokio tasks, not on the tunnel threads: the other relay.
    let backend = ws_support::EchoBackend::start().await;
    let mut tollgate = start_proxy(backend.addr, "", "", &format!("websocket = \"tunnel\"\n{WEBSOCKET_LIMITS}"));
    let (count, rng) = cases_and_rng(300, 10);
    let (by_code, echoed) = mutated_websocket_sessions(tollgate.addr, count, rng, true).await;
    assert!(echoed >= 30, "{echoed} echoed; {by_code:?}");
    assert!(by_code.get(&Some(1002)).copied().unwrap_or(0) >= 30, "{by_code:?}");
    assert_unharmed_status(&mut tollgate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_websocket_frames_in_message_mode_end_in_well_formed_frames_and_a_close_the_gateway_sends() {
    // Each message becomes a POST to a plain backend that echoes the body.
    let backend = echo_backend();
    let mut tollgate = start_proxy(backend.addr, "", "", &format!("websocket = \"http\"\n{WEBSOCKET_LIMITS}"));
    let (count, rng) = cases_and_rng(400, 9);
    let (by_code, replied) = mutated_websocket_sessions(tollgate.addr, count, rng, false).await;
    assert!(replied >= 50, "{replied} replied; {by_code:?}");
    assert!(by_code.get(&Some(1002)).copied().unwrap_or(0) >= 50, "{by_code:?}");
    // Every request the backend got is a message of a session, posted to its path.
    assert!(backend.requests().iter().all(|r| r.uri == "/m"), "{:?}", backend.requests());
    assert_unharmed_status(&mut tollgate);
}

/// HPACK for the mutated gRPC answers: `:status: 200` (static 8) and
/// `content-type: application/grpc` (a literal with static name 31), and
/// trailers `grpc-status: 0`, `grpc-message: ok` (literals with new names).
fn grpc_answer_seeds() -> Vec<Vec<u8>> {
    let mut head = vec![0x88, 0x0f, 0x10, 16];
    head.extend_from_slice(b"application/grpc");
    let mut trailers = vec![0x00, 11];
    trailers.extend_from_slice(b"grpc-status");
    trailers.extend_from_slice(&[1, b'0', 0x00, 12]);
    trailers.extend_from_slice(b"grpc-message");
    trailers.extend_from_slice(&[2, b'o', b'k']);
    let message = [0u8, 0, 0, 0, 3, 0x0a, 0x01, b'x'];
    let settings = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100, 0, 4, 0, 0, 0xff, 0xff]);
    let ack = frame(SETTINGS, 1, 0, &[]);

    let mut whole = settings.clone();
    whole.extend(&ack);
    whole.extend(frame(HEADERS, END_HEADERS, 1, &head));
    whole.extend(frame(DATA, 0, 1, &message));
    whole.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &trailers));

    // The head continued in a CONTINUATION frame, the message split and padded.
    let mut split = settings.clone();
    split.extend(&ack);
    split.extend(frame(WINDOW_UPDATE, 0, 0, &65535u32.to_be_bytes()));
    split.extend(frame(HEADERS, 0, 1, &head[..3]));
    split.extend(frame(CONTINUATION, END_HEADERS, 1, &head[3..]));
    split.extend(frame(DATA, 0, 1, &message[..3]));
    let mut padded = vec![2];
    padded.extend_from_slice(&message[3..]);
    padded.extend_from_slice(&[0, 0]);
    split.extend(frame(DATA, 0x8, 1, &padded));
    split.extend(frame(PING, 0, 0, b"pingpong"));
    split.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &trailers));

    // Trailers-only: the status in the one header block.
    let mut only = settings;
    only.extend(&ack);
    let mut both = head.clone();
    both.extend(&trailers);
    only.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &both));
    vec![whole, split, only]
}

/// A raw HTTP/2 backend: one request per connection, answered on stream 1
/// with the next mutated answer (after a whole server preface), then closed. The gateway's pool opens a new
/// connection for the next call (a call that lands on a closing one fails,
/// which is as good a case as any).
fn mutated_grpc_backend(answers: Vec<Vec<u8>>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut answers = answers.into_iter().cycle();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
            // Our client waits for the server's preface before it sends a call: that
            // one SETTINGS goes out whole, the rest of the answer is the mutated part.
            let _ = stream.write_all(&frame(SETTINGS, 0, 0, &[]));
            // The client's preface, then frames until one ends a stream: the call is in.
            let mut wire = Vec::new();
            let mut buf = [0u8; 16 * 1024];
            let request_in = |wire: &[u8]| {
                let mut at = PREFACE.len();
                while wire.len() >= at + 9 {
                    let len = (wire[at] as usize) << 16 | (wire[at + 1] as usize) << 8 | wire[at + 2] as usize;
                    if matches!(wire[at + 3], DATA | HEADERS) && wire[at + 4] & END_STREAM != 0 {
                        return true;
                    }
                    at += 9 + len;
                }
                false
            };
            while !request_in(&wire) {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => wire.extend_from_slice(&buf[..n]),
                }
            }
            let answer = answers.next().unwrap();
            let _ = stream.write_all(&answer);
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_http2_answers_of_a_grpc_backend_become_a_grpc_status_for_the_client_within_the_deadline() {
    let (count, mut rng) = cases_and_rng(300, 5);
    let seeds = grpc_answer_seeds();
    let answers: Vec<Vec<u8>> = (0..count).map(|i| mutate(&mut rng, &seeds[i % seeds.len()], 0)).collect();
    let backend = mutated_grpc_backend(answers);
    let mut tollgate = Tollgate::start_with(&format!(
        "request_timeout = \"3s\"\n\n[[upstream]]\nname = \"g\"\nprotocol = \"grpc\"\ntargets = [\"{backend}\"]\n\
         connect_timeout = \"1s\"\nfirst_byte_timeout = \"2s\"\n\n\
         [[route]]\nname = \"grpc\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"g\"\n"
    ));
    let mut client = h2c_client(tollgate.addr).await;
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for case in 0..count {
        let request = http::Request::post("/test.Echo/Unary")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        // A broken answer ends the call one of two ways: before its head, as a
        // trailers-only grpc-status from the gateway; after it was relayed, as
        // trailers with a grpc-status or a reset stream (RST_STREAM, which gRPC
        // clients read as INTERNAL or CANCELLED: PROTOCOL-HTTP2.md "Errors").
        let call = async {
            let (response, mut body) = client.send_request(request, false).expect("send the call");
            body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 3, 0x0a, 0x01, b'y']), true).unwrap();
            let response = response.await.map_err(|e| format!("the gateway reset the call before its head: {e}"))?;
            let (head, mut body) = response.into_parts();
            // Our own failures are 200 with a grpc-status; another status is the
            // backend's own, relayed as it came (the client's library maps it).
            let relayed_status =
                (head.status != 200).then(|| format!("backend's HTTP {} relayed", head.status.as_u16()));
            let reset = |e: h2::Error| e.reason().map(|r| format!("reset {r:?}")).ok_or(format!("{e}"));
            while let Some(chunk) = body.data().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(e) => return reset(e),
                };
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            let trailers = match body.trailers().await {
                Ok(trailers) => trailers,
                Err(e) => return reset(e),
            };
            let status = trailers.as_ref().and_then(|t| t.get("grpc-status")).or(head.headers.get("grpc-status"));
            // A backend whose trailers lost their grpc-status is relayed as it is: the
            // client's library reports the missing status itself.
            Ok(relayed_status.unwrap_or_else(|| {
                status.map_or("relayed without grpc-status".into(), |s| {
                    format!("grpc-status {}", s.to_str().unwrap_or("?"))
                })
            }))
        };
        let outcome = tokio::time::timeout(CASE_DEADLINE, call)
            .await
            .unwrap_or_else(|_| panic!("no answer within {CASE_DEADLINE:?} for case {case}"))
            .unwrap_or_else(|e| panic!("{e} for case {case}"));
        *codes.entry(outcome).or_default() += 1;
        client = client.ready().await.expect("the client's connection to the gateway is still up");
    }
    eprintln!("outcomes {codes:?}");
    assert!(codes.get("grpc-status 0").copied().unwrap_or(0) >= 10, "{codes:?}");
    let failed: usize = codes.iter().filter(|(c, _)| *c != "grpc-status 0").map(|(_, n)| n).sum();
    assert!(failed >= 50, "{codes:?}");
    assert_unharmed_status(&mut tollgate);
}

/// Alive and never panicked, where no plain request applies (a route that
/// takes every path to a gRPC or WebSocket backend, a PROXY-protocol listener).
fn assert_unharmed_status(tollgate: &mut Tollgate) {
    assert!(tollgate.child.try_wait().unwrap().is_none(), "tollgate exited; log:\n{}", tollgate.log());
    let log = tollgate.log();
    assert!(!log.contains("panicked"), "tollgate panicked:\n{log}");
}

fn proxy_protocol_seeds() -> Vec<Vec<u8>> {
    let request = b"GET /m/proxied HTTP/1.1\r\nHost: t\r\n\r\n";
    let v2 = |command: u8, family: u8, addresses: &[u8]| {
        let mut out = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        out.extend_from_slice(&[0x20 | command, family]);
        out.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
        out.extend_from_slice(addresses);
        out.extend_from_slice(request);
        out
    };
    let v1 = |line: &str| {
        let mut out = line.as_bytes().to_vec();
        out.extend_from_slice(request);
        out
    };
    // TCP over IPv4: source, destination, ports; then a TLV (type 0x04, NOOP) of two bytes.
    let tcp4 = [192, 0, 2, 1, 192, 0, 2, 2, 0x13, 0x88, 0, 80, 0x04, 0, 2, 0, 0];
    let mut tcp6 = vec![0x20, 0x01, 0x0d, 0xb8];
    tcp6.extend_from_slice(&[0; 12]);
    tcp6.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    tcp6.extend_from_slice(&[0; 11]);
    tcp6.extend_from_slice(&[1, 0x13, 0x88, 0, 80]);
    vec![
        v1("PROXY TCP4 192.0.2.1 192.0.2.2 5000 80\r\n"),
        v1("PROXY TCP6 2001:db8::1 2001:db8::2 5000 80\r\n"),
        v1("PROXY UNKNOWN\r\n"),
        v2(0x1, 0x11, &tcp4),
        v2(0x1, 0x21, &tcp6),
        v2(0x0, 0x00, &[]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_proxy_protocol_headers_are_served_or_closed_within_the_header_timeout() {
    let backend = echo_backend();
    let mut tollgate =
        start_proxy(backend.addr, "proxy_protocol = true\nheader_read_timeout = \"1s\"\nbody_timeout = \"1s\"", "", "");
    let (count, mut rng) = cases_and_rng(400, 6);
    let seeds = proxy_protocol_seeds();
    let cases: Vec<Vec<u8>> = (0..count).map(|i| mutate(&mut rng, &seeds[i % seeds.len()], 0)).collect();
    let results = run_cases(tollgate.addr, cases, CASE_DEADLINE).await;
    let (mut served, mut closed_silently) = (0, 0);
    for (input, received) in &results {
        let case = String::from_utf8_lossy(input);
        let responses = answered_in_time(&case, received);
        served += usize::from(responses.iter().any(|r| r.status == 200));
        closed_silently += usize::from(responses.is_empty());
    }
    eprintln!("served {served}, closed without a response {closed_silently}");
    // A broken header closes the connection (nothing to answer: the client may not speak HTTP).
    assert!(served >= 10 && closed_silently >= 100, "served {served}, closed {closed_silently}");
    // Only connections whose header named a source reached the backend.
    assert!(backend.requests().len() >= served, "{} requests seen", backend.requests().len());
    assert_unharmed_status(&mut tollgate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_grpc_web_bodies_get_a_grpc_status_from_the_gateway_or_the_grpcio_backend() {
    use base64::Engine as _;
    let backend = grpc_support::GrpcBackend::start("mutations");
    let mut tollgate = Tollgate::start_with(&format!(
        "header_read_timeout = \"1s\"\nrequest_timeout = \"3s\"\n\n{}",
        grpc_support::grpc_config(&[backend.addr], "", "")
    ));
    let message = grpc_support::frame(b"\x0a\x05hello");
    let text = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes).into_bytes();
    let mut split_text = text(&message[..4]);
    split_text.extend(text(&message[4..]));
    let mut two = message.clone();
    two.extend(grpc_support::frame(b""));
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("application/grpc-web+proto", message.clone()),
        ("application/grpc-web", two),
        ("application/grpc-web-text", text(&message)),
        ("application/grpc-web-text+proto", split_text),
    ];
    let (count, mut rng) = cases_and_rng(300, 7);
    let mut kinds = Vec::new();
    let cases: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let (content_type, body) = &seeds[i % seeds.len()];
            let body = mutate(&mut rng, body, 0);
            kinds.push(content_type.contains("text"));
            let mut request = format!(
                "POST /test.Echo/Unary HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nX-Grpc-Web: 1\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .into_bytes();
            request.extend(body);
            request
        })
        .collect();
    let results = run_cases(tollgate.addr, cases, CASE_DEADLINE).await;
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    for ((input, received), is_text) in results.iter().zip(kinds) {
        let case = String::from_utf8_lossy(input);
        let responses = answered_in_time(&case, received);
        assert_eq!(responses.len(), 1, "for {case:?}");
        let answer = &responses[0];
        assert_eq!(answer.status, 200, "for {case:?}: {:?}", String::from_utf8_lossy(&received.bytes));
        assert!(answer.complete, "an answer cut short for {case:?}");
        // The status: in a trailer frame at the end of the body, else in the head (trailers-only).
        let body = if is_text { grpc_support::decode_text(&answer.body) } else { answer.body.clone() };
        let frames = grpc_support::frames(&body);
        let head = String::from_utf8_lossy(
            &received.bytes[..received.bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap()],
        )
        .into_owned();
        let status = match frames.iter().find(|(flag, _)| flag & 0x80 != 0) {
            Some((_, block)) => grpc_support::trailer_lines(block)
                .iter()
                .find_map(|l| l.strip_prefix("grpc-status: ").map(str::to_string)),
            None => header_value(&head, "grpc-status"),
        };
        let status = status.unwrap_or_else(|| panic!("no grpc-status for {case:?}: {head}"));
        *codes.entry(status).or_default() += 1;
    }
    eprintln!("grpc-status counts {codes:?}");
    assert!(codes.get("0").copied().unwrap_or(0) >= 10, "{codes:?}");
    assert!(codes.iter().filter(|(c, _)| *c != "0").map(|(_, n)| n).sum::<usize>() >= 50, "{codes:?}");
    assert_unharmed_status(&mut tollgate);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_json_requests_to_a_transcoding_route_get_a_json_answer_from_the_gateway_or_the_grpcio_backend() {
    let backend = grpc_support::GrpcBackend::start_catalog();
    let mut tollgate = Tollgate::start_with(&format!(
        "header_read_timeout = \"1s\"\nrequest_timeout = \"3s\"\nbody_timeout = \"1s\"\n\n\
         [[upstream]]\nname = \"catalog\"\nprotocol = \"grpc\"\ntargets = [\"{}\"]\nconnect_timeout = \"1s\"\n\n\
         [[route]]\nname = \"rest\"\nmatch = {{ path_prefix = \"/\" }}\nupstream = \"catalog\"\n\
         grpc_json = {{ descriptors = \"{}\", services = [\"shop.v1.Catalog\"] }}\n",
        backend.addr,
        grpc_support::catalog_descriptors().display()
    ));
    let post = |path: &str, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let seeds = [
        post("/v1/shelves/tools/items", r#"{"name": "hammer", "kind": "TOOL"}"#),
        post(
            "/v1/shelves/tools/items",
            r#"{"name": "caf\u00e9 \"set\"", "price": {"currency": "EUR", "cents": "1250"}, "tags": ["a", "b"], "kind": 2}"#,
        ),
        b"PUT /v1/shelves/s1/items/i2 HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\nConnection: close\r\n\r\n{\"tags\": [\"x\", \"y\"]}"
            .to_vec(),
        b"GET /v1/shelves/garden/items?limit=2&tags=green&tags=wet HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            .to_vec(),
        b"GET /v1/items/7?with_tags=true HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec(),
    ];
    let (count, mut rng) = cases_and_rng(300, 8);
    let cases: Vec<Vec<u8>> = (0..count).map(|i| mutate(&mut rng, &seeds[i % seeds.len()], 0)).collect();
    let results = run_cases(tollgate.addr, cases, CASE_DEADLINE).await;
    let mut statuses = BTreeMap::new();
    for (input, received) in &results {
        let case = String::from_utf8_lossy(input);
        let responses = answered_in_time(&case, received);
        for response in responses.iter().filter(|r| r.status >= 200) {
            tally(&mut statuses, response.status);
            assert!(response.complete, "an answer cut short for {case:?}");
            // Every answer, success or failure, is JSON a client can parse.
            if !response.body.is_empty() {
                let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&response.body);
                assert!(parsed.is_ok(), "not JSON for {case:?}: {:?}", String::from_utf8_lossy(&response.body));
            }
            assert_ne!(response.status, 500, "for {case:?}: {:?}", String::from_utf8_lossy(&response.body));
        }
    }
    eprintln!("statuses {statuses:?}");
    assert!(statuses.get(&200).copied().unwrap_or(0) >= 10, "{statuses:?}");
    assert!(statuses.get(&400).copied().unwrap_or(0) >= 50, "{statuses:?}");
    assert_unharmed_status(&mut tollgate);
}

/// Tokens that matter to TOML and to our config's values.
const CONFIG_TOKENS: &[&str] = &[
    "=",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    ",",
    "\"",
    "'",
    "\n",
    "#",
    ".",
    "-1",
    "0",
    "1e9",
    "99999999999999999999",
    "\"10x\"",
    "\"0s\"",
    "\"1h\"",
    "true",
    "\"\"",
    "\"127.0.0.1:99999\"",
    "\"[::1]:80\"",
    "name = \"dup\"\n",
    "[[route]]\n",
    "[[listener]]\n",
    "[[upstream]]\n",
    "[policy.p]\n",
    "kind = \"jwt\"\n",
    "\u{0}",
    "\u{e9}",
];

#[test]
fn mutated_shipped_configs_are_accepted_or_refused_with_file_line_and_key_never_a_panic() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut seeds = vec![std::fs::read_to_string(root.join("config/tollgate.toml")).unwrap()];
    let mut examples: Vec<_> = std::fs::read_dir(root.join("config/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    seeds.extend(examples.iter().map(|p| std::fs::read_to_string(p).unwrap()));
    let (count, mut rng) = cases_and_rng(300, 11);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..count {
        let mut config = mutate(&mut rng, seeds[i % seeds.len()].as_bytes(), 0);
        for _ in 0..rng.below(3) {
            let at = rng.below(config.len());
            config.splice(at..at, CONFIG_TOKENS[rng.below(CONFIG_TOKENS.len())].bytes());
        }
        std::fs::write(&path, &config).unwrap();
        // Paths in the shipped configs are relative to the repository root.
        let mut command = std::process::Command::new(Tollgate::binary());
        command.current_dir(root).arg("check").arg("--config").arg(&path).env_remove("RUST_LOG");
        let out = common::transport::run_with_timeout(&mut command, Duration::from_secs(10));
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let case = String::from_utf8_lossy(&config);
        assert!(!stderr.contains("panicked"), "tollgate check panicked on:\n{case}\n{stderr}");
        match out.status.code() {
            Some(0) => {
                assert!(stdout.contains(": ok ("), "{stdout}");
                accepted += 1;
            }
            Some(1) => {
                // `error: FILE:LINE: KEY: what` (or `FILE: KEY: what` when no line holds the fault).
                let first = stderr.lines().next().unwrap_or_default();
                let rest = first.strip_prefix(&format!("error: {}:", path.display()));
                assert!(rest.is_some_and(|r| r.trim_start().len() > 3 && r.contains(": ")), "for:\n{case}\n{stderr}");
                refused += 1;
            }
            other => panic!("tollgate check ended with {other:?} (killed after 10 s?) on:\n{case}\n{stderr}"),
        }
    }
    eprintln!("accepted {accepted}, refused {refused}");
    assert!(accepted >= 10 && refused >= 100, "accepted {accepted}, refused {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_websocket_handshake_answers_of_a_backend_become_a_502_or_a_working_tunnel() {
    // A 101 that switches, then a text frame and a close from the backend.
    let switch = |extra: &str| {
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n{extra}\r\n",
            String::from_utf8_lossy(ACCEPT_PLACEHOLDER)
        )
        .into_bytes();
        out.extend(ws_support::frame(true, 0x1, b"hi", false));
        out.extend(ws_support::frame(true, 0x8, b"\x03\xe8done", false));
        out
    };
    let seeds = [
        switch(""),
        switch("Sec-WebSocket-Protocol: chat\r\n"),
        switch("Sec-WebSocket-Extensions: permessage-deflate\r\n"),
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope".to_vec(),
    ];
    let (count, mut rng) = cases_and_rng(300, 12);
    let responses: Vec<Vec<u8>> = (0..count).map(|i| mutate(&mut rng, &seeds[i % seeds.len()], 0)).collect();
    let backend = mutating_backend(Arc::new(responses.clone()));
    // A refused upgrade leaves an HTTP/1.1 keep-alive connection: closed when idle for 1 s.
    let mut tollgate = start_proxy(
        backend,
        "header_read_timeout = \"1s\"",
        "",
        &format!("websocket = \"tunnel\"\n{WEBSOCKET_LIMITS}"),
    );
    let addr = tollgate.addr;
    let slots = Arc::new(Semaphore::new(48));
    let mut tasks = Vec::new();
    for n in 0..count {
        let slots = Arc::clone(&slots);
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            // The client offers `chat`, so a backend choosing it is in order.
            let (head, mut tcp) =
                ws_support::upgrade_raw(addr, &format!("/r/{n}"), &[("Sec-WebSocket-Protocol", "chat")]).await;
            let mut rest = Vec::new();
            let read = tokio::time::timeout(CASE_DEADLINE, tcp.read_to_end(&mut rest)).await;
            (head, rest, read.is_ok())
        }));
    }
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut named_faults = 0;
    for (n, task) in tasks.into_iter().enumerate() {
        let (head, rest, closed) = task.await.expect("case task");
        let case = String::from_utf8_lossy(&responses[n]);
        assert!(closed, "no close within {CASE_DEADLINE:?} for backend answer {case:?}; got {head:?} {rest:02x?}");
        let status = ws_support::status_of(&head);
        let outcome = match status {
            101 => {
                let (data, close) =
                    server_frames(&rest).unwrap_or_else(|e| panic!("{e} for backend answer {case:?}; got {rest:02x?}"));
                format!("101, {data} data frames, close {close:?}")
            }
            // Refused: the backend's own answer relayed, or ours with a JSON reason.
            _ => {
                let body = String::from_utf8_lossy(&rest);
                if body.contains("\"error\":") {
                    assert!(matches!(status, 502 | 504), "{status} of ours for {case:?}: {body}");
                }
                // A malformed head is named in the message (hyper's words for the upgrade).
                if body.contains("failed to answer: ") {
                    named_faults += 1;
                }
                format!("{status}")
            }
        };
        *outcomes.entry(outcome).or_default() += 1;
    }
    eprintln!("outcomes {outcomes:?}");
    let switched: usize = outcomes.iter().filter(|(o, _)| o.starts_with("101")).map(|(_, n)| n).sum();
    assert!(switched >= 10, "{outcomes:?}");
    assert!(named_faults >= 10, "{named_faults} 502s said what was wrong; {outcomes:?}");
    assert!(outcomes.get("502").copied().unwrap_or(0) >= 50, "{outcomes:?}");
    assert_unharmed_status(&mut tollgate);
}

/// The first flight of a real TLS client (rustls): a ClientHello with
/// `server_name` as SNI (none for an IP address) and ALPN `alpn`.
fn client_hello(server_name: &str, alpn: &[&[u8]]) -> Vec<u8> {
    let config = common::transport::trusting_client_config(alpn);
    let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    hello
}

/// What a TLS port may answer: whole TLS records (an alert, a handshake),
/// or the readable 400 for plain HTTP. Err says what else came.
fn tls_answer(wire: &[u8]) -> Result<&'static str, String> {
    if wire.starts_with(b"HTTP/1.1 400") {
        return if String::from_utf8_lossy(wire).contains("plain_http_on_tls") {
            Ok("400 plain HTTP on a TLS port")
        } else {
            Err("a 400 other than plain_http_on_tls".into())
        };
    }
    let mut rest = wire;
    let mut kind = "closed";
    while !rest.is_empty() {
        if rest.len() < 5 {
            return Err("a TLS record head cut short".into());
        }
        let (content, version, len) =
            (rest[0], u16::from_be_bytes([rest[1], rest[2]]), u16::from_be_bytes([rest[3], rest[4]]));
        if !(20..=23).contains(&content) || !(0x0301..=0x0304).contains(&version) || len > 16384 + 2048 {
            return Err(format!("not a TLS record: type {content}, version {version:#06x}, length {len}"));
        }
        if rest.len() < 5 + len as usize {
            return Err("a TLS record cut short".into());
        }
        kind = match (kind, content) {
            ("closed", 21) => "alert",
            (_, 22) => "handshake",
            (k, _) => k,
        };
        rest = &rest[5 + len as usize..];
    }
    Ok(kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_client_hellos_and_plain_http_on_a_tls_port_get_tls_records_a_readable_400_or_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let main = common::transport::write_cert(dir.path(), "main", "localhost", &["localhost"]);
    let api = common::transport::write_cert(dir.path(), "api", "api.localhost", &["api.localhost", "*.api.localhost"]);
    let backend = echo_backend();
    let mut tollgate = start_proxy(
        backend.addr,
        &format!(
            "header_read_timeout = \"1s\"\ntls = {{ certs = [{{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }}] }}",
            main.cert.display(),
            main.key.display(),
            api.cert.display(),
            api.key.display()
        ),
        "",
        "",
    );
    let seeds = [
        client_hello("api.localhost", &[b"h2", b"http/1.1"]),
        client_hello("x.api.localhost", &[b"http/1.1"]),
        client_hello("localhost", &[]),
        client_hello("127.0.0.1", &[b"h2"]),
        client_hello("unknown.example", &[b"h2"]),
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
    ];
    let (count, mut rng) = cases_and_rng(300, 13);
    let cases: Vec<Vec<u8>> = (0..count).map(|i| mutate(&mut rng, &seeds[i % seeds.len()], 0)).collect();
    let results = run_cases(tollgate.addr, cases, CASE_DEADLINE).await;
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for (input, received) in &results {
        assert!(received.closed, "no close within {CASE_DEADLINE:?} for {input:02x?}");
        let outcome =
            tls_answer(&received.bytes).unwrap_or_else(|e| panic!("{e} for {input:02x?}; got {:02x?}", received.bytes));
        *outcomes.entry(outcome).or_default() += 1;
    }
    eprintln!("outcomes {outcomes:?}");
    // Some hellos still led to a handshake (answered, then cut at the timeout), most were refused.
    assert!(outcomes.get("handshake").copied().unwrap_or(0) >= 10, "{outcomes:?}");
    assert!(outcomes.get("alert").copied().unwrap_or(0) >= 50, "{outcomes:?}");
    assert!(outcomes.get("400 plain HTTP on a TLS port").copied().unwrap_or(0) >= 10, "{outcomes:?}");
    assert_unharmed_status(&mut tollgate);
}
