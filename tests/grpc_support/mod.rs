//! Shared by the gRPC and gRPC-Web tests: the Python `grpcio` peers
//! (tests/peers/*.py, installed into `.venv` by scripts/test.sh), a Rust
//! HTTP/2 backend that stalls on purpose, and gRPC framing helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// The venv interpreter with grpcio (scripts/test.sh creates it).
pub fn python() -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(path.exists(), "{} is missing: run scripts/test.sh once (it installs grpcio into .venv)", path.display());
    path
}

fn peer(script: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/peers").join(script)
}

/// `fixtures/grpc/catalog.proto`'s descriptor set.
pub fn catalog_descriptors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/grpc/catalog.pb")
}

/// A `grpcio` server (tests/peers/grpc_backend.py) on a free port.
pub struct GrpcBackend {
    child: Child,
    pub addr: SocketAddr,
    output: Arc<Mutex<String>>,
}

impl GrpcBackend {
    /// Starts a backend that answers `test.Echo/WhoAmI` with `name`.
    pub fn start(name: &str) -> GrpcBackend {
        Self::start_with(name, &[])
    }

    /// Like `start`, serving TLS with this certificate and key (PEM files).
    pub fn start_tls(name: &str, cert: &std::path::Path, key: &std::path::Path) -> GrpcBackend {
        Self::start_with(name, &[cert, key])
    }

    /// Like `start`, on a given port (a backend restarted where the old one was).
    pub fn start_on(name: &str, port: u16) -> GrpcBackend {
        Self::start_script_with("grpc_backend.py", &[std::ffi::OsStr::new(name)], &[("GRPC_BACKEND_PORT", port)])
    }

    /// Like `start`, ending each connection with GOAWAY after `max_age_ms`.
    pub fn start_aging(name: &str, max_age_ms: u16) -> GrpcBackend {
        let env = [("GRPC_BACKEND_MAX_AGE_MS", max_age_ms)];
        Self::start_script_with("grpc_backend.py", &[std::ffi::OsStr::new(name)], &env)
    }

    fn start_with(name: &str, extra: &[&std::path::Path]) -> GrpcBackend {
        let mut args = vec![std::ffi::OsStr::new(name)];
        args.extend(extra.iter().map(|p| p.as_os_str()));
        Self::start_script("grpc_backend.py", &args)
    }

    /// `shop.v1.Catalog` (tests/peers/catalog_backend.py) on a free port:
    /// the protobuf backend of the HTTP/JSON transcoding tests.
    pub fn start_catalog() -> GrpcBackend {
        Self::start_script("catalog_backend.py", &[catalog_descriptors().as_os_str()])
    }

    /// The hyper-h2 echo backend (tests/peers/h2_backend.py) with these
    /// options: frames grpcio never sends, for our HTTP/2 client.
    pub fn start_h2_echo(options: &serde_json::Value) -> GrpcBackend {
        Self::start_script("h2_backend.py", &[std::ffi::OsStr::new(&options.to_string())])
    }

    fn start_script(script: &str, args: &[&std::ffi::OsStr]) -> GrpcBackend {
        Self::start_script_with(script, args, &[])
    }

    fn start_script_with(script: &str, args: &[&std::ffi::OsStr], env: &[(&str, u16)]) -> GrpcBackend {
        let mut command = Command::new(python());
        for (key, value) in env {
            command.env(key, value.to_string());
        }
        let mut child = command
            .arg("-u")
            .arg(peer(script))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the grpcio backend");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let sink = Arc::clone(&output);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.strip_prefix("PORT ") {
                    let _ = tx.send(port.trim().parse::<u16>().unwrap());
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(20)).expect("grpc backend printed its port");
        GrpcBackend { child, addr: format!("127.0.0.1:{port}").parse().unwrap(), output }
    }

    /// How many times the backend has printed each of `needles`, all counted
    /// at one moment (not by lines: its threads' prints may share one).
    pub fn counts<const N: usize>(&self, needles: [&str; N]) -> [usize; N] {
        let output = self.output.lock().unwrap();
        needles.map(|needle| output.matches(needle).count())
    }

    /// Waits until the backend has printed `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.output.lock().unwrap().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one scenario of tests/peers/grpc_client.py against `addr`.
pub fn grpc_client(addr: SocketAddr, scenario: &str) -> serde_json::Value {
    let out = Command::new(python())
        .arg(peer("grpc_client.py"))
        .arg(addr.to_string())
        .arg(scenario)
        .stdin(Stdio::null())
        .output()
        .expect("run the grpcio client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!("client `{scenario}` printed no JSON: {stdout}\n{}", String::from_utf8_lossy(&out.stderr))
    })
}

/// curl as a raw gRPC client over h2c, sending `message` in one frame to
/// `path`; asserts HTTP 200 and returns (headers incl. trailers, body).
pub fn raw_grpc(tollgate: &super::common::Tollgate, message: &[u8], path: &str, extra: &[&str]) -> (String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let body = super::common::write_file(dir.path(), "req", &frame(message));
    let data = format!("@{}", body.display());
    let url = tollgate.url(path);
    let mut args = vec![
        "--http2-prior-knowledge",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--data-binary",
        &data,
        "--max-time",
        "10",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let (code, headers, body) = super::common::curl_full(&args);
    assert_eq!(code, 200, "{headers}");
    (headers, body)
}

/// A gRPC upstream `g` with `targets`, routed for `/test.Echo/` and `/stall.Svc/`.
pub fn grpc_config(targets: &[SocketAddr], route_extra: &str, rest: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "[[upstream]]\nname = \"g\"\nprotocol = \"grpc\"\ntargets = [{}]\nconnect_timeout = \"1s\"\n\n\
         [[route]]\nname = \"grpc\"\nmatch = {{ path_prefix = \"/test.Echo/\" }}\nupstream = \"g\"\n{route_extra}\n\n\
         [[route]]\nname = \"stall\"\nmatch = {{ path_prefix = \"/stall.Svc/\" }}\nupstream = \"g\"\n{route_extra}\n\n{rest}\n",
        targets.join(", ")
    )
}

/// One gRPC message frame (flag 0, big-endian length).
pub fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Splits a gRPC(-Web) body into (flag, payload) frames; panics on bad framing.
pub fn frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "cut frame header: {body:?}");
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert!(body.len() >= 5 + len, "cut frame: {body:?}");
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    out
}

/// Decodes a `-text` body: padded base64 chunks back to back, each group on its own.
pub fn decode_text(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut run = Vec::new();
    for group in text.chunks(4) {
        run.extend_from_slice(group);
        if group.ends_with(b"=") {
            out.extend(base64::engine::general_purpose::STANDARD.decode(&run).unwrap());
            run.clear();
        }
    }
    out.extend(base64::engine::general_purpose::STANDARD.decode(&run).unwrap());
    out
}

/// The trailer block of a gRPC-Web trailer frame as `name: value` lines.
pub fn trailer_lines(payload: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(payload).split("\r\n").filter(|l| !l.is_empty()).map(str::to_string).collect()
}

/// A Rust h2c backend (hyper) that misbehaves on purpose (and `/stall.Svc/Echo`
/// streams each request frame back as it comes): `/stall.Svc/Head`
/// never answers; `/stall.Svc/Body` sends a head and one message, then
/// stalls; `/stall.Svc/Hold` answers OK after 300 ms. `dropped` counts calls
/// whose handler or body was dropped (stream reset) before finishing;
/// `connections` counts accepted TCP connections.
pub struct StallingBackend {
    pub addr: SocketAddr,
    pub dropped: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

struct CountOnDrop(Arc<AtomicUsize>, bool);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        if !self.1 {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A response body: one message, then nothing ever again; counts its drop.
struct StalledBody {
    first: Option<bytes::Bytes>,
    _guard: CountOnDrop,
}

impl http_body::Body for StalledBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        match self.first.take() {
            Some(b) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(b)))),
            None => std::task::Poll::Pending,
        }
    }
}

type StallBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, std::convert::Infallible>;

/// Messages `/stall.Svc/Flood` streams: 64-byte messages, one DATA frame
/// each, as fast as the connection takes them, then `grpc-status: 0`.
pub const FLOOD_MESSAGES: usize = 20_000;

/// The body of `/stall.Svc/Flood`.
struct FloodBody {
    left: usize,
    trailers_sent: bool,
}

impl http_body::Body for FloodBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.left > 0 {
            self.left -= 1;
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(frame(&[b'm'; 64]).into()))));
        }
        if self.trailers_sent {
            return std::task::Poll::Ready(None);
        }
        self.trailers_sent = true;
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        std::task::Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }
}

/// The body of `/stall.Svc/Echo` (whose `x-meta` request header comes back
/// as `echo-x-meta`): each request DATA frame back as it
/// arrives, then `grpc-status: 0` with the request's `x-t` trailer (if
/// any) returned as `echo-x-t`.
struct EchoBody {
    request: hyper::body::Incoming,
    /// Counts the call as dropped unless the body reached its end.
    guard: CountOnDrop,
}

impl http_body::Body for EchoBody {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.guard.1 {
            return std::task::Poll::Ready(None);
        }
        let mut trailers = http::HeaderMap::new();
        match std::task::ready!(std::pin::Pin::new(&mut self.request).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(data)))),
                Err(frame) => {
                    if let Some(t) = frame.trailers_ref().and_then(|t| t.get("x-t")) {
                        trailers.insert("echo-x-t", t.clone());
                    }
                }
            },
            // The call was reset: the response ends too.
            Some(Err(_)) => return std::task::Poll::Ready(None),
            None => {}
        }
        self.guard.1 = true;
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        std::task::Poll::Ready(Some(Ok(http_body::Frame::trailers(trailers))))
    }
}

impl StallingBackend {
    pub fn start() -> StallingBackend {
        use http_body_util::BodyExt;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let dropped = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (d, c) = (Arc::clone(&dropped), Arc::clone(&connections));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { continue };
                        c.fetch_add(1, Ordering::SeqCst);
                        let d = Arc::clone(&d);
                        tokio::spawn(async move {
                            let service =
                                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                                    let d = Arc::clone(&d);
                                    async move {
                                        let mut guard = CountOnDrop(d.clone(), false);
                                        let grpc = |body: StallBody| {
                                            hyper::Response::builder()
                                                .header("content-type", "application/grpc")
                                                .body(body)
                                                .unwrap()
                                        };
                                        let response = match req.uri().path() {
                                            "/stall.Svc/Echo" => {
                                                guard.1 = true;
                                                let meta = req.headers().get("x-meta").cloned();
                                                let body =
                                                    EchoBody { request: req.into_body(), guard: CountOnDrop(d, false) };
                                                let mut response = grpc(body.boxed_unsync());
                                                // Request metadata comes back as `echo-x-meta`.
                                                if let Some(meta) = meta {
                                                    response.headers_mut().insert("echo-x-meta", meta);
                                                }
                                                response
                                            }
                                            "/stall.Svc/Head" => {
                                                tokio::time::sleep(Duration::from_secs(30)).await;
                                                grpc(http_body_util::Empty::new().boxed_unsync())
                                            }
                                            "/stall.Svc/Flood" => {
                                                guard.1 = true;
                                                let body = FloodBody { left: FLOOD_MESSAGES, trailers_sent: false };
                                                grpc(body.boxed_unsync())
                                            }
                                            "/stall.Svc/Body" => {
                                                guard.1 = true;
                                                let body = StalledBody {
                                                    first: Some(frame(b"first").into()),
                                                    _guard: CountOnDrop(d, false),
                                                };
                                                grpc(body.boxed_unsync())
                                            }
                                            _ => {
                                                tokio::time::sleep(Duration::from_millis(300)).await;
                                                let mut r = grpc(http_body_util::Empty::new().boxed_unsync());
                                                r.headers_mut().insert("grpc-status", "0".parse().unwrap());
                                                r
                                            }
                                        };
                                        guard.1 = true;
                                        Ok::<_, std::convert::Infallible>(response)
                                    }
                                });
                            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {},
                    _ = rx => {},
                }
            });
        });
        StallingBackend { addr, dropped, connections, _shutdown: tx }
    }
}
