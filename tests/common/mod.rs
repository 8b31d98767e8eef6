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
pub fn free_port() -> u16 {
    StdTcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
        if !wait_for_port(addr, Duration::from_secs(10)) {
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
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handler = Arc::new(handler);
        let seen_in = Arc::clone(&seen);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else { continue };
                        let handler = Arc::clone(&handler);
                        let seen = Arc::clone(&seen_in);
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                                seen.lock().unwrap().push(SeenRequest {
                                    method: req.method().to_string(),
                                    uri: req.uri().to_string(),
                                    headers: req.headers().clone(),
                                });
                                let fut = handler(req);
                                async move { Ok::<_, std::convert::Infallible>(fut.await) }
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

    /// A backend that answers every request with 200 and `body`.
    pub fn fixed(body: &'static str) -> Backend {
        Backend::start(move |_req| async move { Response::new(full(body)) })
    }

    /// Requests seen so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
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

/// The value of header `name` (case-insensitive) in a curl `-D` dump; the last one if repeated.
pub fn header_value(headers: &str, name: &str) -> Option<String> {
    headers
        .lines()
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .last()
}

/// Writes a file in `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p
}
