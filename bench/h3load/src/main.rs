//! h3load: an HTTP/3 load client for bench/h3.py (Debian's curl and h2load have no HTTP/3).
//!
//! ```text
//! h3load ADDR PATH [--authority NAME] [--conns C] [--streams M] [--seconds S | --requests N]
//!                  [--warmup W] [--expect-size BYTES] [--threads T] [--max-seconds X]
//! ```
//!
//! Opens C QUIC connections to ADDR (ALPN `h3`, SNI and `:authority` = NAME, default `localhost`;
//! the server certificate is not verified, its handshake signature is) and runs M request loops
//! per connection, each sending `GET https://NAME{PATH}` and reading the whole response body, then
//! the next. W seconds of warm-up (default 1), then the measured window: S seconds, or until N
//! responses have completed in it. The window is marked on stdout by a `start` line and an `end`
//! line (so a harness can read /proc of the server right at those moments), followed by one JSON
//! object: responses completed in the window, errors, body bytes, elapsed seconds, req/s, MiB/s,
//! latency percentiles (of the responses completed in the window), the client's own CPU time in
//! the window, and QUIC packet counts.
//!
//! A response counts as completed when its body ended; with status ≠ 200 or (with
//! `--expect-size`) another body length it counts as an error instead. T = 1 (the default) runs
//! everything on one thread (a current-thread tokio runtime).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

const USAGE: &str = "usage: h3load ADDR PATH [--authority NAME] [--conns C] [--streams M] \
                     [--seconds S | --requests N] [--warmup W] [--expect-size BYTES] [--threads T] [--max-seconds X]";

struct Args {
    addr: SocketAddr,
    path: String,
    authority: String,
    conns: usize,
    streams: usize,
    seconds: f64,
    requests: Option<u64>,
    warmup: f64,
    expect_size: Option<u64>,
    threads: usize,
    max_seconds: f64,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut a = Args {
        addr: "127.0.0.1:443".parse().unwrap(),
        path: "/".into(),
        authority: "localhost".into(),
        conns: 10,
        streams: 10,
        seconds: 5.0,
        requests: None,
        warmup: 1.0,
        expect_size: None,
        threads: 1,
        max_seconds: 600.0,
    };
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        fn num<T: std::str::FromStr>(name: &str, v: String) -> Result<T, String> {
            v.parse().map_err(|_| format!("{name}: not a number: {v}"))
        }
        match arg.as_str() {
            "--authority" => a.authority = value(&arg)?,
            "--conns" => a.conns = num(&arg, value(&arg)?)?,
            "--streams" => a.streams = num(&arg, value(&arg)?)?,
            "--seconds" => a.seconds = num(&arg, value(&arg)?)?,
            "--requests" => a.requests = Some(num(&arg, value(&arg)?)?),
            "--warmup" => a.warmup = num(&arg, value(&arg)?)?,
            "--expect-size" => a.expect_size = Some(num(&arg, value(&arg)?)?),
            "--threads" => a.threads = num(&arg, value(&arg)?)?,
            "--max-seconds" => a.max_seconds = num(&arg, value(&arg)?)?,
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with("--") => return Err(format!("unknown option {s}\n{USAGE}")),
            _ => positional.push(arg),
        }
    }
    let [addr, path] = <[String; 2]>::try_from(positional).map_err(|_| USAGE.to_string())?;
    a.addr = addr.parse().map_err(|_| format!("not an address: {addr}"))?;
    a.path = path;
    if a.conns == 0 || a.streams == 0 || a.threads == 0 {
        return Err("--conns, --streams and --threads must be at least 1".into());
    }
    Ok(a)
}

// ---------------------------------------------------------------- shared counters

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

struct Shared {
    phase: AtomicU8,
    /// Requests started in the measured window (only limited in `--requests` mode).
    issued: AtomicU64,
    /// `--requests N`, or u64::MAX.
    limit: u64,
    completed: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
    warmup_completed: AtomicU64,
    warmup_errors: AtomicU64,
    /// Signalled when `limit` responses have completed in the window.
    reached: tokio::sync::Notify,
    first_error: Mutex<Option<String>>,
    first_response: Mutex<Option<String>>,
    /// One latency list (µs) per request loop, of responses completed in the window.
    latencies: Vec<Mutex<Vec<u32>>>,
}

impl Shared {
    fn error(&self, msg: String) {
        if self.phase.load(Relaxed) == MEASURE {
            self.errors.fetch_add(1, Relaxed);
        } else {
            self.warmup_errors.fetch_add(1, Relaxed);
        }
        let mut first = self.first_error.lock().unwrap();
        if first.is_none() {
            *first = Some(msg);
        }
    }
}

enum Failure {
    /// The connection can't open streams any more: this request loop ends.
    Connection(String),
    Stream(String),
}

/// One GET and its whole body: (status, body bytes, a summary of the response head).
async fn one_request(send: &mut SendRequest, uri: &http::Uri, describe: bool) -> Result<(u16, u64, Option<String>), Failure> {
    let req = http::Request::get(uri.clone()).body(()).expect("a valid request");
    let mut stream = send.send_request(req).await.map_err(|e| Failure::Connection(format!("send_request: {e}")))?;
    stream.finish().await.map_err(|e| Failure::Stream(format!("finish: {e}")))?;
    let resp = stream.recv_response().await.map_err(|e| Failure::Stream(format!("recv_response: {e}")))?;
    let mut n = 0u64;
    while let Some(chunk) = stream.recv_data().await.map_err(|e| Failure::Stream(format!("recv_data: {e}")))? {
        n += chunk.remaining() as u64;
    }
    let head = describe.then(|| {
        let h = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        format!("{:?} {} server={:?} via={:?} content-length={:?}", resp.version(), resp.status().as_u16(), h("server"), h("via"), h("content-length"))
    });
    Ok((resp.status().as_u16(), n, head))
}

/// One request loop on one connection, until the phase is STOP (or the request budget is spent).
async fn request_loop(mut send: SendRequest, shared: Arc<Shared>, uri: http::Uri, expect: Option<u64>, slot: usize) {
    loop {
        let phase = shared.phase.load(Relaxed);
        if phase == STOP {
            return;
        }
        if phase == MEASURE && shared.limit != u64::MAX && shared.issued.fetch_add(1, Relaxed) >= shared.limit {
            return;
        }
        let describe = shared.first_response.lock().unwrap().is_none();
        let t0 = Instant::now();
        match one_request(&mut send, &uri, describe).await {
            Ok((status, n, head)) => {
                if let Some(head) = head {
                    shared.first_response.lock().unwrap().get_or_insert(head);
                }
                if status != 200 {
                    shared.error(format!("status {status}"));
                    continue;
                }
                if expect.is_some_and(|e| e != n) {
                    shared.error(format!("body of {n} bytes, expected {}", expect.unwrap()));
                    continue;
                }
                match shared.phase.load(Relaxed) {
                    MEASURE => {
                        let us = t0.elapsed().as_micros().min(u32::MAX as u128) as u32;
                        shared.latencies[slot].lock().unwrap().push(us);
                        shared.bytes.fetch_add(n, Relaxed);
                        if shared.completed.fetch_add(1, Relaxed) + 1 == shared.limit {
                            shared.reached.notify_one();
                        }
                    }
                    WARMUP => {
                        shared.warmup_completed.fetch_add(1, Relaxed);
                    }
                    _ => return,
                }
            }
            Err(Failure::Stream(msg)) => shared.error(msg),
            Err(Failure::Connection(msg)) => {
                shared.error(msg);
                return;
            }
        }
    }
}

// ---------------------------------------------------------------- TLS without certificate verification

/// Accepts any server certificate (the benchmark's self-signed one) but still checks the
/// handshake signature, so the client does the same work as with a real certificate minus the
/// chain validation.
#[derive(Debug)]
struct AnyCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

fn endpoint(addr: SocketAddr) -> Result<quinn::Endpoint, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let algorithms = provider.signature_verification_algorithms;
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider) as Arc<CryptoProvider>)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(algorithms)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| e.to_string())?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    // Large windows so that the client never limits a 100 MiB download (quinn's default stream
    // window is ~1.25 MB, sized for 100 Mbit/s at 100 ms).
    transport
        .stream_receive_window(quinn::VarInt::from_u32(16 << 20))
        .receive_window(quinn::VarInt::from_u32(64 << 20))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(60_000))));
    client.transport_config(Arc::new(transport));
    let bind: SocketAddr = if addr.is_ipv6() { "[::1]:0" } else { "127.0.0.1:0" }.parse().unwrap();
    let mut endpoint = quinn::Endpoint::client(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// A QUIC connection with HTTP/3 set up; the connection driver runs in a task of its own.
async fn connect(endpoint: &quinn::Endpoint, addr: SocketAddr, authority: &str) -> Result<(quinn::Connection, SendRequest), String> {
    let quic = endpoint
        .connect(addr, authority)
        .map_err(|e| format!("connect: {e}"))?
        .await
        .map_err(|e| format!("QUIC handshake with {addr}: {e}"))?;
    let (mut driver, send) = h3::client::builder()
        .build::<_, _, Bytes>(h3_quinn::Connection::new(quic.clone()))
        .await
        .map_err(|e| format!("HTTP/3 setup: {e}"))?;
    tokio::spawn(async move {
        let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    });
    Ok((quic, send))
}

/// utime + stime of this process, in seconds (all threads).
fn own_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let ticks = |i: usize| rest.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15. Linux reports them in
    // USER_HZ, 100 on every Linux ABI we run on.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[u32], pct: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((pct / 100.0 * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[k] as f64 / 1000.0
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(v: f64) -> String {
    if v.is_finite() { format!("{v:.6}") } else { "null".into() }
}

async fn run(args: Args) -> Result<(), String> {
    let endpoint = endpoint(args.addr)?;
    let uri: http::Uri =
        format!("https://{}{}", args.authority, args.path).parse().map_err(|e| format!("bad URL path: {e}"))?;
    let mut conns = Vec::with_capacity(args.conns);
    let mut pending = tokio::task::JoinSet::new();
    for _ in 0..args.conns {
        let (endpoint, addr, authority) = (endpoint.clone(), args.addr, args.authority.clone());
        pending.spawn(async move { connect(&endpoint, addr, &authority).await });
    }
    while let Some(r) = pending.join_next().await {
        conns.push(r.map_err(|e| e.to_string())??);
    }
    let alpn = conns[0]
        .0
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|h| h.protocol)
        .map(|p| String::from_utf8_lossy(&p).into_owned())
        .unwrap_or_default();

    let loops = args.conns * args.streams;
    let shared = Arc::new(Shared {
        phase: AtomicU8::new(if args.warmup > 0.0 { WARMUP } else { MEASURE }),
        issued: AtomicU64::new(0),
        limit: args.requests.unwrap_or(u64::MAX),
        completed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        warmup_completed: AtomicU64::new(0),
        warmup_errors: AtomicU64::new(0),
        reached: tokio::sync::Notify::new(),
        first_error: Mutex::new(None),
        first_response: Mutex::new(None),
        latencies: (0..loops).map(|_| Mutex::new(Vec::with_capacity(1 << 14))).collect(),
    });
    let stats0: Vec<quinn::ConnectionStats> = conns.iter().map(|(c, _)| c.stats()).collect();
    let mut window_start = (Instant::now(), own_cpu_seconds(), stats0.clone());
    if args.warmup <= 0.0 {
        println!("start");
    }
    for (i, (_, send)) in conns.iter().enumerate() {
        for j in 0..args.streams {
            tokio::spawn(request_loop(send.clone(), Arc::clone(&shared), uri.clone(), args.expect_size, i * args.streams + j));
        }
    }
    if args.warmup > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
        println!("start");
        window_start = (Instant::now(), own_cpu_seconds(), conns.iter().map(|(c, _)| c.stats()).collect());
        shared.phase.store(MEASURE, Relaxed);
    }
    let (t0, cpu0, stats0) = window_start;
    let timed_out = match args.requests {
        Some(_) => tokio::time::timeout(Duration::from_secs_f64(args.max_seconds), shared.reached.notified()).await.is_err(),
        None => {
            tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
            false
        }
    };
    shared.phase.store(STOP, Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = own_cpu_seconds() - cpu0;
    println!("end");
    let stats1: Vec<quinn::ConnectionStats> = conns.iter().map(|(c, _)| c.stats()).collect();

    let mut lat: Vec<u32> = Vec::new();
    for l in &shared.latencies {
        lat.extend_from_slice(&l.lock().unwrap());
    }
    lat.sort_unstable();
    let completed = shared.completed.load(Relaxed);
    let bytes = shared.bytes.load(Relaxed);
    let delta = |f: fn(&quinn::ConnectionStats) -> u64| -> u64 {
        stats1.iter().zip(&stats0).map(|(b, a)| f(b).saturating_sub(f(a))).sum()
    };
    let closed = conns.iter().filter(|(c, _)| c.close_reason().is_some()).count();
    let fields = [
        ("completed", completed.to_string()),
        ("errors", shared.errors.load(Relaxed).to_string()),
        ("bytes", bytes.to_string()),
        ("elapsed_s", json_num(elapsed)),
        ("rps", json_num(completed as f64 / elapsed)),
        ("mib_per_s", json_num(bytes as f64 / elapsed / 1048576.0)),
        ("p50_ms", json_num(percentile(&lat, 50.0))),
        ("p99_ms", json_num(percentile(&lat, 99.0))),
        ("max_ms", json_num(percentile(&lat, 100.0))),
        ("client_cpu_s", json_num(cpu)),
        ("client_cpu_pct", json_num(cpu / elapsed * 100.0)),
        ("warmup_completed", shared.warmup_completed.load(Relaxed).to_string()),
        ("warmup_errors", shared.warmup_errors.load(Relaxed).to_string()),
        ("timed_out", timed_out.to_string()),
        ("conns", args.conns.to_string()),
        ("streams", args.streams.to_string()),
        ("conns_closed", closed.to_string()),
        ("alpn", json_str(&alpn)),
        ("udp_rx_datagrams", delta(|s| s.udp_rx.datagrams).to_string()),
        ("udp_tx_datagrams", delta(|s| s.udp_tx.datagrams).to_string()),
        ("udp_rx_bytes", delta(|s| s.udp_rx.bytes).to_string()),
        ("lost_packets", delta(|s| s.path.lost_packets).to_string()),
        ("first_response", json_str(shared.first_response.lock().unwrap().as_deref().unwrap_or(""))),
        ("first_error", json_str(shared.first_error.lock().unwrap().as_deref().unwrap_or(""))),
    ];
    let body: Vec<String> = fields.iter().map(|(k, v)| format!("{}: {v}", json_str(k))).collect();
    println!("{{{}}}", body.join(", "));
    // Leave at once: request loops still in flight are abandoned, the server sees the connections
    // close when the process exits (or time out idle).
    endpoint.close(quinn::VarInt::from_u32(0x100), b"done");
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    };
    let rt = builder.enable_all().build().expect("tokio runtime");
    let result = rt.block_on(run(args));
    // Don't wait for request loops still in flight.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("h3load: {e}");
            ExitCode::FAILURE
        }
    }
}
