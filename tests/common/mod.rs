//! Shared harness for integration tests: start the real `tollgate` binary on
//! a config written to a temp dir, real backends (hyper servers), and run
//! real clients (curl, nghttp) against it.
#![allow(dead_code)]

use std::future::Future;
use std::io::Read;
use std::net::{SocketAddr, TcpListener as StdTcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};

/// Body type for test backends.
pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A body with these bytes.
pub fn full(bytes: impl Into<Bytes>) -> TestBody {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A port free right now on 127.0.0.1 (bind to :0 and release).
///
/// Ports come from 20000–31999, below the kernel's ephemeral range, walking
/// from a per-process start: a port handed out here is never the one the
/// kernel gives a backend bound to `:0` or an outgoing connection, which is
/// how a listener could otherwise find its port taken between check and bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The real binary, running on a config of the test's making.
pub struct Tollgate {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub log_path: PathBuf,
    /// `127.0.0.1:PORT` of the first listener.
    pub addr: SocketAddr,
}

impl Tollgate {
    /// Path of the built binary under test.
    pub fn binary() -> &'static str {
        env!("CARGO_BIN_EXE_tollgate")
    }

    /// Writes `config` (which must bind its first listener to `addr`) and
    /// starts the binary, waiting until `addr` accepts connections.
    pub fn start(config: &str, addr: SocketAddr) -> Tollgate {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("tollgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("tollgate.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let child = Command::new(Self::binary())
            .arg("--config")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env_remove("RUST_LOG")
            .spawn()
            .expect("start tollgate");
        let mut tollgate = Tollgate { child, dir, log_path, addr };
        let listening = wait_for_port(addr, Duration::from_secs(10));
        // Something else answering on the port would look like success: make sure it is us.
        if !listening || tollgate.child.try_wait().unwrap().is_some() || tollgate.log().contains("cannot bind") {
            let _ = tollgate.child.kill();
            panic!("tollgate did not listen on {addr}; log:\n{}", tollgate.log());
        }
        tollgate
    }

    /// A config with one cleartext listener on a fresh port, `rest` appended.
    pub fn start_with(rest: &str) -> Tollgate {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = format!("[[listener]]\nname = \"test\"\nbind = \"{addr}\"\n\n{rest}");
        Self::start(&config, addr)
    }

    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process has logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the log contains `needle` (access lines are written when a response ends).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Current resident memory (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Sends a signal by name (`TERM`, `INT`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// What a test backend saw: method, path-and-query, headers.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub uri: String,
    pub headers: http::HeaderMap,
}

/// A real HTTP/1.1 server (hyper) on its own runtime thread, answering with
/// the test's handler and recording what it received.
pub struct Backend {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<SeenRequest>>>,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl Backend {
    /// Starts a backend whose every request is answered by `handler`.
    pub fn start<F, Fut>(handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
        transport::serve_backend(listener, handler, Arc::default())
    }

    /// A backend that answers every request with 200 and `body`.
    pub fn fixed(body: &'static str) -> Backend {
        Backend::start(move |_req| async move { Response::new(full(body)) })
    }

    /// Requests seen so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// Forgets the requests seen so far, for a test that checks in rounds.
    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

/// Runs curl with `args` (a real client we did not write); `-s` is implied.
pub fn curl(args: &[&str]) -> Output {
    Command::new("curl").arg("-s").args(args).stdin(Stdio::null()).output().expect("curl is installed")
}

/// Runs curl and returns (status code, headers text, body) using `-D -` style capture.
pub fn curl_full(args: &[&str]) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let headers_path = dir.path().join("h");
    let body_path = dir.path().join("b");
    let mut all: Vec<&str> =
        vec!["-D", headers_path.to_str().unwrap(), "-o", body_path.to_str().unwrap(), "-w", "%{http_code}"];
    all.extend_from_slice(args);
    let out = curl(&all);
    let code = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    let headers = std::fs::read_to_string(&headers_path).unwrap_or_default();
    let body = std::fs::read(&body_path).unwrap_or_default();
    (code, headers, body)
}

/// An HTTP/2 client (the `h2` crate) on a fresh h2c connection to `addr`,
/// ready to send; its connection is driven on a task of its own.
pub async fn h2c_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    client.ready().await.unwrap()
}

/// The value of header `name` (case-insensitive) in a curl `-D` dump; the last one if repeated.
pub fn header_value(headers: &str, name: &str) -> Option<String> {
    headers
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .next_back()
}

/// Writes a file in `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}

// ============================================================================
// BEGIN transport helpers (tls.rs, streaming.rs, upstreams.rs).
// Kept in their own module so names never clash with other additions here.
// ============================================================================
pub mod transport {
    use std::net::{SocketAddr, TcpListener as StdTcpListener};
    use std::path::{Path, PathBuf};
    use std::pin::Pin;
    use std::process::{Command, Output, Stdio};
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use http_body::{Frame, SizeHint};
    use http_body_util::BodyExt;
    use hyper::body::Incoming;
    use hyper::{Request, Response};

    use super::{Backend, SeenRequest, TestBody};

    /// A fresh `127.0.0.1:PORT` that nothing listens on right now.
    pub fn free_addr() -> SocketAddr {
        format!("127.0.0.1:{}", super::free_port()).parse().unwrap()
    }

    /// A self-signed certificate and its key, written as PEM files.
    pub struct TestCert {
        pub cert: PathBuf,
        pub key: PathBuf,
    }

    /// A rustls client config that trusts any server certificate (the test
    /// listeners use self-signed ones) and offers `alpn`.
    pub fn trusting_client_config(alpn: &[&[u8]]) -> rustls::ClientConfig {
        #[derive(Debug)]
        struct AnyCert;
        impl rustls::client::danger::ServerCertVerifier for AnyCert {
            fn verify_server_cert(
                &self,
                _: &rustls::pki_types::CertificateDer<'_>,
                _: &[rustls::pki_types::CertificateDer<'_>],
                _: &rustls::pki_types::ServerName<'_>,
                _: &[u8],
                _: rustls::pki_types::UnixTime,
            ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            fn verify_tls12_signature(
                &self,
                _: &[u8],
                _: &rustls::pki_types::CertificateDer<'_>,
                _: &rustls::DigitallySignedStruct,
            ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
                Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
            }
            fn verify_tls13_signature(
                &self,
                _: &[u8],
                _: &rustls::pki_types::CertificateDer<'_>,
                _: &rustls::DigitallySignedStruct,
            ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
                Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
            }
            fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
                rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert))
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// Generates (rcgen) a self-signed certificate with subject CN
    /// `common_name`, valid for `names`, into `dir/{stem}.crt|.key`.
    pub fn write_cert(dir: &Path, stem: &str, common_name: &str, names: &[&str]) -> TestCert {
        let key_pair = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        let cert = params.self_signed(&key_pair).unwrap();
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();
        TestCert { cert: cert_path, key: key_path }
    }

    /// Live counters a [`counting_backend`] keeps.
    #[derive(Debug, Default)]
    pub struct BackendCounters {
        /// TCP connections accepted so far.
        pub connections: AtomicUsize,
        /// Requests whose handler has started but not yet returned a response.
        pub in_flight: AtomicUsize,
        /// Highest `in_flight` seen.
        pub max_in_flight: AtomicUsize,
    }

    impl BackendCounters {
        pub fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }
        pub fn max_in_flight(&self) -> usize {
            self.max_in_flight.load(Ordering::SeqCst)
        }
    }

    /// Like [`Backend::start`], but counts accepted connections and
    /// concurrent handler calls.
    pub fn counting_backend<F, Fut>(handler: F) -> (Backend, Arc<BackendCounters>)
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = StdTcpListener::bind("127.0.0.1:0").unwrap();
        let counters = Arc::new(BackendCounters::default());
        let backend = serve_backend(listener, handler, Arc::clone(&counters));
        (backend, counters)
    }

    /// Like [`Backend::start`], on a given address (e.g. one a target used to refuse).
    pub fn backend_on<F, Fut>(addr: SocketAddr, handler: F) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<TestBody>> + Send + 'static,
    {
        let listener = StdTcpListener::bind(addr).unwrap();
        serve_backend(listener, handler, Arc::new(BackendCounters::default()))
    }

    /// Serves `handler` on `listener` (HTTP/1.1, hyper) from its own runtime
    /// thread, recording requests and counting connections in `counters`.
    pub fn serve_backend<F, Fut>(listener: StdTcpListener, handler: F, counters: Arc<BackendCounters>) -> Backend
    where
        F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Response<TestBody>> + Send + 'static,
    {
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<SeenRequest>>> = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handler = Arc::new(handler);
        let seen_in = Arc::clone(&seen);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { continue };
                        counters.connections.fetch_add(1, Ordering::SeqCst);
                        let handler = Arc::clone(&handler);
                        let seen = Arc::clone(&seen_in);
                        let counters = Arc::clone(&counters);
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                                seen.lock().unwrap().push(SeenRequest {
                                    method: req.method().to_string(),
                                    uri: req.uri().to_string(),
                                    headers: req.headers().clone(),
                                });
                                let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                                counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
                                let fut = handler(req);
                                let counters = Arc::clone(&counters);
                                async move {
                                    let response = fut.await;
                                    counters.in_flight.fetch_sub(1, Ordering::SeqCst);
                                    Ok::<_, std::convert::Infallible>(response)
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
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
        Backend { addr, seen, _shutdown: tx }
    }

    /// A response body fed by a channel: each `Bytes` sent is one frame, the
    /// body ends when the sender drops, and `send` fails once whoever reads
    /// the body (hyper, writing to a peer) has gone away.
    pub fn channel_body(capacity: usize) -> (tokio::sync::mpsc::Sender<Bytes>, TestBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        (tx, ChannelBody { rx }.boxed())
    }

    struct ChannelBody {
        rx: tokio::sync::mpsc::Receiver<Bytes>,
    }

    impl http_body::Body for ChannelBody {
        type Data = Bytes;
        type Error = Box<dyn std::error::Error + Send + Sync>;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.rx.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
        }
    }

    /// `total` generated bytes in `chunk`-sized frames, produced only as the
    /// reader polls (so nothing holds more than one chunk). With
    /// `exact_size` the body reports its length (Content-Length), else hyper
    /// sends it chunked.
    pub fn generated_body(total: u64, chunk: usize, exact_size: bool) -> TestBody {
        generated_body_counted(total, chunk, exact_size, Arc::new(AtomicU64::new(0)))
    }

    /// [`generated_body`] that adds every byte it hands out to `produced`.
    pub fn generated_body_counted(total: u64, chunk: usize, exact_size: bool, produced: Arc<AtomicU64>) -> TestBody {
        let pattern: Vec<u8> = (0..chunk).map(|i| (i % 251) as u8).collect();
        GeneratedBody { chunk: Bytes::from(pattern), remaining: total, exact_size, produced }.boxed()
    }

    struct GeneratedBody {
        chunk: Bytes,
        remaining: u64,
        exact_size: bool,
        produced: Arc<AtomicU64>,
    }

    impl http_body::Body for GeneratedBody {
        type Data = Bytes;
        type Error = Box<dyn std::error::Error + Send + Sync>;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.remaining == 0 {
                return Poll::Ready(None);
            }
            let n = self.remaining.min(self.chunk.len() as u64) as usize;
            self.remaining -= n as u64;
            self.produced.fetch_add(n as u64, Ordering::SeqCst);
            Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
        }

        fn is_end_stream(&self) -> bool {
            self.remaining == 0
        }

        fn size_hint(&self) -> SizeHint {
            if self.exact_size { SizeHint::with_exact(self.remaining) } else { SizeHint::default() }
        }
    }

    /// Reads a request body to its end, keeping only the byte count.
    pub async fn count_body_bytes(mut body: Incoming) -> Result<u64, hyper::Error> {
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                total += data.len() as u64;
            }
        }
        Ok(total)
    }

    /// Runs a command, killing it if it has not finished within `timeout`.
    pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> Output {
        let child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + timeout;
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_err() {
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
        });
        let output = child.wait_with_output().unwrap();
        let _ = done_tx.send(());
        let _ = watchdog.join();
        output
    }

    /// A shell pipeline (`sh -c`), killed after `timeout`.
    pub fn sh(script: &str, timeout: Duration) -> Output {
        run_with_timeout(Command::new("sh").arg("-c").arg(script), timeout)
    }

    /// GET `http://{admin}/status` as JSON. Tests poll it in loops on a
    /// loaded machine, so a request that gets no answer is tried again
    /// (three attempts) before the test fails with curl's own error.
    pub fn admin_status(admin: SocketAddr) -> serde_json::Value {
        let url = format!("http://{admin}/status");
        let mut last = None;
        for _ in 0..3 {
            let out = super::curl(&["-S", "--max-time", "5", &url]);
            match serde_json::from_slice(&out.stdout) {
                Ok(status) => return status,
                Err(e) => last = Some((e, out)),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let (e, out) = last.expect("three attempts");
        panic!(
            "admin /status is not JSON ({e}), curl {}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The `healthy` flag of target `address` in upstream `upstream`, from admin `/status`.
    pub fn target_healthy(admin: SocketAddr, upstream: &str, address: &str) -> bool {
        let status = admin_status(admin);
        let upstreams = status["upstreams"].as_array().expect("upstreams array");
        let up = upstreams.iter().find(|u| u["name"] == upstream).expect("upstream in /status");
        let target = up["targets"].as_array().unwrap().iter().find(|t| t["address"] == address).expect("target");
        target["healthy"].as_bool().expect("healthy is a bool")
    }
}
// ============================================================================
// END transport helpers
// ============================================================================

// ===========================================================================
// Core-gateway helpers (config_cli, routing, proxy_semantics, bad_input,
// logs_and_shutdown). Appended as one block; kept in their own module so
// names never clash with other test files' helpers.
// ===========================================================================
pub mod core_kit {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::pin::Pin;
    use std::process::{Command, Output};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::BodyExt;
    use hyper::Response;
    use hyper::body::Frame;

    use super::{Backend, TestBody, Tollgate, curl_full, full, wait_for_port};

    /// A downstream protocol a cleartext listener serves; scenarios loop over [`Proto::ALL`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Proto {
        Http1,
        H2c,
    }

    impl Proto {
        pub const ALL: [Proto; 2] = [Proto::Http1, Proto::H2c];

        /// The curl flag that selects this protocol.
        pub fn curl_flag(self) -> &'static str {
            match self {
                Proto::Http1 => "--http1.1",
                Proto::H2c => "--http2-prior-knowledge",
            }
        }

        /// How the status line of a curl `-D` dump starts.
        pub fn status_prefix(self) -> &'static str {
            match self {
                Proto::Http1 => "HTTP/1.1 ",
                Proto::H2c => "HTTP/2 ",
            }
        }

        /// The `Via` element tollgate adds for this protocol (RFC 9110 §7.6.3).
        pub fn via(self) -> &'static str {
            match self {
                Proto::Http1 => "1.1 tollgate",
                Proto::H2c => "2 tollgate",
            }
        }
    }

    /// curl over `proto`: (status, headers, body). Asserts the protocol really was `proto`.
    pub fn curl_proto(proto: Proto, args: &[&str]) -> (u16, String, Vec<u8>) {
        let mut all = vec![proto.curl_flag()];
        all.extend_from_slice(args);
        let (code, headers, body) = curl_full(&all);
        if code != 0 {
            let last_status = headers.lines().rfind(|l| l.starts_with("HTTP/")).unwrap_or("");
            assert!(last_status.starts_with(proto.status_prefix()), "expected {proto:?}, got {headers}");
        }
        (code, headers, body)
    }

    /// `[[upstream]]` named `name` with these targets and extra `key = value` lines.
    pub fn upstream_toml(name: &str, targets: &[SocketAddr], extra: &str) -> String {
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        format!("[[upstream]]\nname = \"{name}\"\ntargets = [{}]\n{extra}\n", targets.join(", "))
    }

    /// `[[route]]` named `name` with `match = { matcher }` to `upstream`, extra lines appended.
    pub fn route_toml(name: &str, matcher: &str, upstream: &str, extra: &str) -> String {
        format!("[[route]]\nname = \"{name}\"\nmatch = {{ {matcher} }}\nupstream = \"{upstream}\"\n{extra}\n")
    }

    /// A tollgate with one upstream `b` at `backend` and a catch-all route `all`;
    /// `listener_keys` go into the listener table, `upstream_keys` into the upstream.
    pub fn start_proxy(backend: SocketAddr, listener_keys: &str, upstream_keys: &str, route_keys: &str) -> Tollgate {
        Tollgate::start_with(&format!(
            "{listener_keys}\n{}{}",
            upstream_toml("b", &[backend], upstream_keys),
            route_toml("all", "path_prefix = \"/\"", "b", route_keys)
        ))
    }

    /// Like [`Tollgate::start`] with extra environment variables for the child.
    pub fn start_with_env(config: &str, addr: SocketAddr, env: &[(&str, &str)]) -> Tollgate {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("tollgate.toml");
        std::fs::write(&config_path, config).unwrap();
        let log_path = dir.path().join("tollgate.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(Tollgate::binary());
        command.arg("--config").arg(&config_path).stdout(log.try_clone().unwrap()).stderr(log).env_remove("RUST_LOG");
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start tollgate");
        let mut tollgate = Tollgate { child, dir, log_path, addr };
        let listening = wait_for_port(addr, Duration::from_secs(10));
        // Something else answering on the port would look like success: make sure it is us.
        if !listening || tollgate.child.try_wait().unwrap().is_some() || tollgate.log().contains("cannot bind") {
            let _ = tollgate.child.kill();
            panic!("tollgate did not listen on {addr}; log:\n{}", tollgate.log());
        }
        tollgate
    }

    /// Runs `tollgate check --config FILE` on `config` written to a temp file,
    /// with extra environment. Returns the output and the file's path as shown.
    pub fn run_check(config: &str, env: &[(&str, &str)]) -> (Output, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(Tollgate::binary());
        command.arg("check").arg("--config").arg(&path).env_remove("RUST_LOG");
        for (k, v) in env {
            command.env(k, v);
        }
        (command.output().expect("run tollgate check"), path.display().to_string())
    }

    /// Writes `request` on a fresh connection and reads until the server closes
    /// it (or 5 s pass); returns what came back.
    pub fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(request).unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A backend that reads the whole request body and answers 200 with it.
    pub fn echo_backend() -> Backend {
        Backend::start(|req| async move {
            let bytes = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            Response::new(full(bytes))
        })
    }

    /// A backend that streams the request body straight back (chunked response).
    pub fn streaming_echo_backend() -> Backend {
        Backend::start(|req| async move {
            let body: TestBody = req.into_body().map_err(|e| Box::new(e) as _).boxed();
            Response::new(body)
        })
    }

    /// `len` deterministic bytes that are not a repeating short pattern.
    pub fn pattern_bytes(len: usize) -> Vec<u8> {
        let mut state: u32 = 0x1234_5678;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 24) as u8
            })
            .collect()
    }

    /// A response body of these chunks with no declared length, so HTTP/1.1
    /// sends it chunked; each chunk is its own frame.
    pub struct ChunkedBody {
        chunks: std::collections::VecDeque<Bytes>,
    }

    impl ChunkedBody {
        /// The chunks as a boxed test body.
        pub fn boxed_from(chunks: Vec<Bytes>) -> TestBody {
            ChunkedBody { chunks: chunks.into() }.boxed()
        }
    }

    impl hyper::body::Body for ChunkedBody {
        type Data = Bytes;
        type Error = Box<dyn std::error::Error + Send + Sync>;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.chunks.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    /// Parses a JSON body, with the text in the panic message when it is not JSON.
    pub fn json(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
    }

    /// Asserts the process has not exited and still proxies a plain GET with 200.
    pub fn assert_alive_and_serving(tollgate: &mut Tollgate, path: &str) {
        assert!(tollgate.child.try_wait().unwrap().is_none(), "tollgate exited; log:\n{}", tollgate.log());
        let (code, headers, _) = curl_full(&[&tollgate.url(path)]);
        assert_eq!(code, 200, "a normal request after the bad one failed: {headers}\nlog:\n{}", tollgate.log());
    }
}

// ============================================================================
// BEGIN rate-limit and DDoS helpers (policy_rate_limit.rs, ddos_limits.rs,
// rate-limit rows of policy_table.rs): a real redis-server child process and
// bulk request senders. Own module so names never clash.
// ============================================================================
pub mod rate_kit {
    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use super::{free_port, wait_for_port};

    /// Debian's `redis-server`, started by the test on a free loopback port
    /// with persistence off, and killed (by its PID) on drop.
    pub struct RedisServer {
        child: Option<Child>,
        pub port: u16,
        dir: tempfile::TempDir,
    }

    impl RedisServer {
        /// Starts a fresh server and waits until it accepts connections.
        pub fn start() -> RedisServer {
            let mut server = RedisServer { child: None, port: free_port(), dir: tempfile::tempdir().unwrap() };
            server.restart();
            server
        }

        /// `redis://127.0.0.1:PORT`.
        pub fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        pub fn addr(&self) -> SocketAddr {
            format!("127.0.0.1:{}", self.port).parse().unwrap()
        }

        /// Kills the server (an outage); the port stays reserved for [`restart`](Self::restart).
        pub fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        /// Starts the server again on the same port, empty.
        pub fn restart(&mut self) {
            self.kill();
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed (scripts/test.sh installs Debian's redis-server)");
            self.child = Some(child);
            assert!(
                wait_for_port(self.addr(), Duration::from_secs(10)),
                "redis-server did not listen on {}",
                self.port
            );
        }
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// Sends one request per URL, in order, from one curl process reusing
    /// its connection, and returns the status codes. `args` go first
    /// (`--http1.1`, `-H`, `--interface`...).
    pub fn statuses(args: &[&str], urls: &[String]) -> Vec<u16> {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("urls");
        let mut text = String::new();
        for url in urls {
            text.push_str(&format!("url = \"{url}\"\noutput = \"/dev/null\"\n"));
        }
        std::fs::write(&config, text).unwrap();
        let out = Command::new("curl")
            .arg("-s")
            .args(["--max-time", "60", "-w", "%{http_code}\\n", "--config"])
            .arg(&config)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("curl is installed");
        String::from_utf8_lossy(&out.stdout).lines().map(|l| l.trim().parse().unwrap_or(0)).collect()
    }

    /// How many times `needle` occurs in `text`.
    pub fn count(text: &str, needle: &str) -> usize {
        text.matches(needle).count()
    }
}
// ============================================================================
// END rate-limit and DDoS helpers
// ============================================================================

// ============================================================================
// HTTP/3 helpers: aioquic's HTTP/3 client (tests/peers/h3_client.py)
// ============================================================================
pub mod h3_kit {
    use std::net::SocketAddr;
    use std::process::Command;
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::transport::run_with_timeout;

    /// Runs the requests in `specs` concurrently on one HTTP/3 connection to
    /// `addr` and returns the client's report (`alpn`, `results[]`; see the
    /// script's docstring for the spec and result fields).
    pub fn h3_exchange(addr: SocketAddr, specs: &Value) -> Value {
        h3_exchange_with(addr, specs, &json!({}))
    }

    /// Like [`h3_exchange`] with client options (`{"zero_rtt": true}`).
    pub fn h3_exchange_with(addr: SocketAddr, specs: &Value, options: &Value) -> Value {
        let out = run_with_timeout(
            Command::new(".venv/bin/python").args([
                "tests/peers/h3_client.py",
                &addr.ip().to_string(),
                &addr.port().to_string(),
                &specs.to_string(),
                &options.to_string(),
            ]),
            Duration::from_secs(90),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!("h3 client gave no report ({e}): stdout {stdout} stderr {}", String::from_utf8_lossy(&out.stderr))
        })
    }

    /// One request; its result (`status`, `headers`, `body_text`, ...).
    pub fn h3_request(addr: SocketAddr, spec: Value) -> Value {
        let report = h3_exchange(addr, &json!([spec]));
        assert_eq!(report["alpn"], "h3", "{report}");
        report["results"][0].clone()
    }

    /// A result's response headers as a curl-style dump (`HTTP/3 200` then
    /// `name: value` lines), so curl-based checks read it unchanged.
    pub fn as_header_dump(result: &Value) -> String {
        let mut dump = format!("HTTP/3 {}\r\n", result["status"]);
        for pair in result["headers"].as_array().into_iter().flatten() {
            dump.push_str(&format!("{}: {}\r\n", pair[0].as_str().unwrap_or(""), pair[1].as_str().unwrap_or("")));
        }
        dump
    }

    /// The first value of response header `name` in a result.
    pub fn header<'a>(result: &'a Value, name: &str) -> Option<&'a str> {
        result["headers"].as_array()?.iter().find(|p| p[0] == name).and_then(|p| p[1].as_str())
    }

    /// A TLS listener table with HTTP/3 on, for `start`-style configs.
    pub fn h3_listener(
        name: &str,
        addr: SocketAddr,
        cert: &std::path::Path,
        key: &std::path::Path,
        extra: &str,
    ) -> String {
        format!(
            "[[listener]]\nname = \"{name}\"\nbind = \"{addr}\"\ntls = {{ cert = \"{}\", key = \"{}\" }}\nhttp3 = true\n{extra}\n",
            cert.display(),
            key.display()
        )
    }
}
// ============================================================================
// END HTTP/3 helpers
// ============================================================================

// ============================================================================
// Headless Chromium helpers: the Node drivers in tests/peers/node
// ============================================================================
pub mod browser_kit {
    use std::ffi::OsStr;
    use std::path::Path;
    use std::process::Command;
    use std::time::Duration;

    use super::transport::run_with_timeout;

    /// Debian's Chromium, which the drivers launch through playwright-core.
    pub const CHROMIUM: &str = "/usr/bin/chromium";

    /// Runs the Node driver `script` (in tests/peers/node) with `args`; it
    /// prints one JSON report, returned here. Killed after 120 s.
    pub fn run_driver(script: &str, args: &[&OsStr]) -> serde_json::Value {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/node");
        assert!(
            dir.join("node_modules/playwright-core").exists() && dir.join("node_modules/esbuild").exists(),
            "run scripts/test.sh once (it npm-installs the Node peers)"
        );
        assert!(
            Path::new(CHROMIUM).exists(),
            "{CHROMIUM} is missing: run scripts/test.sh once (it apt-installs chromium)"
        );
        let mut command = Command::new("node");
        command.arg(dir.join(script)).args(args);
        let out = run_with_timeout(&mut command, Duration::from_secs(120));
        let stdout = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
            panic!(
                "browser driver printed no JSON ({}): {stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }
}
// ============================================================================
// END headless Chromium helpers
// ============================================================================
