//! Benchmark peers for `bench/ws.py` and `bench/grpc.py`, one binary, one
//! single-threaded tokio runtime per process (they share the load core):
//!
//! ```text
//! loadgen ws-echo PORT                          WebSocket echo backend
//! loadgen ws-load echo URL [--conns 50] [--seconds 5] [--warmup 1] [--size 64] [--binary]
//!     each connection does sequential echo round-trips; prints `start` and `end` lines around the
//!     measured window (so the caller can read the proxy's CPU there), then one JSON line
//! loadgen ws-load idle URL [--conns 8000] [--concurrency 100] [--size 64]
//!     opens the connections (one echo round-trip each), prints `open N failed F`, then holds them
//!     idle until standard input closes
//! loadgen grpc-echo PORT [--messages 1000] [--max-streams 100]
//!     gRPC echo backend (h2c), see grpc.rs
//! ```

mod grpc;
mod ws;

use std::collections::HashMap;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = match args.first().map(String::as_str) {
        Some("ws-echo") => runtime.block_on(ws::echo_server(port(&args))),
        Some("ws-load") => {
            let opts = options(&args[3.min(args.len())..]);
            let url = args.get(2).cloned().unwrap_or_else(|| usage());
            match args.get(1).map(String::as_str) {
                Some("echo") => runtime.block_on(ws::echo_load(&url, &opts)),
                Some("idle") => runtime.block_on(ws::idle_load(&url, &opts)),
                _ => usage(),
            }
        }
        Some("grpc-echo") => {
            let opts = options(&args[2.min(args.len())..]);
            runtime.block_on(grpc::echo_server(
                port(&args),
                opt(&opts, "messages", 1000),
                opt(&opts, "max-streams", 100),
            ))
        }
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: loadgen ws-echo PORT | ws-load echo|idle URL [--conns N] [--seconds S] [--warmup S] [--size B] \
         [--concurrency N] [--binary] | grpc-echo PORT [--messages N] [--max-streams N]"
    );
    std::process::exit(2)
}

fn port(args: &[String]) -> u16 {
    args.get(1).and_then(|p| p.parse().ok()).unwrap_or_else(|| usage())
}

/// `--key value` pairs (a flag without a value gets "1").
fn options(args: &[String]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut it = args.iter().peekable();
    while let Some(a) = it.next() {
        let Some(key) = a.strip_prefix("--") else { usage() };
        let value = match it.peek() {
            Some(v) if !v.starts_with("--") => it.next().unwrap().clone(),
            _ => "1".to_string(),
        };
        out.insert(key.to_string(), value);
    }
    out
}

pub(crate) fn opt<T: std::str::FromStr>(opts: &HashMap<String, String>, key: &str, default: T) -> T {
    opts.get(key).map(|v| v.parse().unwrap_or_else(|_| usage())).unwrap_or(default)
}
