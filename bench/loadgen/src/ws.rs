//! WebSocket echo backend and load client (tokio-tungstenite).

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::opt;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Echoes every text and binary message back on the same connection.
pub async fn echo_server(port: u16) -> Result<(), Error> {
    let listener = bind(port)?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: keep serving the connections we have.
                eprintln!("ws-echo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break; // tungstenite answers the close on the next flush
                }
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
            let _ = ws.close(None).await;
        });
    }
}

fn bind(port: u16) -> Result<TcpListener, Error> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(([127, 0, 0, 1], port).into())?;
    Ok(socket.listen(4096)?)
}

async fn connect(url: &str) -> Result<WebSocketStream<TcpStream>, Error> {
    let rest = url.strip_prefix("ws://").ok_or("only ws:// URLs")?;
    let host = rest.split('/').next().unwrap_or(rest);
    let stream = TcpStream::connect(host).await?;
    stream.set_nodelay(true)?;
    let (ws, response) = tokio_tungstenite::client_async(url, stream).await?;
    if response.status() != 101 {
        return Err(format!("status {}", response.status()).into());
    }
    Ok(ws)
}

fn payload(opts: &HashMap<String, String>) -> Message {
    let size: usize = opt(opts, "size", 64);
    let text: String = "0123456789abcdef".chars().cycle().take(size).collect();
    if opt(opts, "binary", 0u8) == 1 { Message::Binary(Bytes::from(text)) } else { Message::Text(text.into()) }
}

async fn round_trip(ws: &mut WebSocketStream<TcpStream>, msg: &Message) -> Result<(), Error> {
    ws.send(msg.clone()).await?;
    loop {
        match ws.next().await {
            Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => {
                if m.len() != msg.len() {
                    return Err("echo of the wrong length".into());
                }
                return Ok(());
            }
            Some(Ok(Message::Close(f))) => return Err(format!("closed by peer: {f:?}").into()),
            Some(Ok(_)) => continue, // ping/pong
            Some(Err(e)) => return Err(e.into()),
            None => return Err("connection ended".into()),
        }
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// `--conns` connections, each doing sequential echo round-trips: `--warmup` seconds unmeasured,
/// then `--seconds` measured (between the `start` and `end` lines it prints).
pub async fn echo_load(url: &str, opts: &HashMap<String, String>) -> Result<(), Error> {
    let conns: usize = opt(opts, "conns", 50);
    let seconds: f64 = opt(opts, "seconds", 5.0);
    let warmup: f64 = opt(opts, "warmup", 1.0);
    let msg = payload(opts);
    let mut sockets = Vec::with_capacity(conns);
    for _ in 0..conns {
        sockets.push(connect(url).await?);
    }
    println!("ready {conns}");
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let mut tasks = Vec::new();
    for mut ws in sockets {
        let phase = Arc::clone(&phase);
        let msg = msg.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u32> = Vec::with_capacity(1 << 14);
            let mut error = None;
            loop {
                let p = phase.load(Ordering::Relaxed);
                if p == STOP {
                    break;
                }
                let t0 = Instant::now();
                if let Err(e) = round_trip(&mut ws, &msg).await {
                    error = Some(e.to_string());
                    break;
                }
                if p == MEASURE && phase.load(Ordering::Relaxed) == MEASURE {
                    latencies_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
            let _ = ws.close(None).await;
            (latencies_us, error)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    phase.store(MEASURE, Ordering::Relaxed);
    let t0 = Instant::now();
    say("start");
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    phase.store(STOP, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    say("end");
    let mut all = Vec::new();
    let mut errors = 0;
    let mut first_error = String::new();
    for t in tasks {
        let (lat, err) = t.await?;
        all.extend(lat);
        if let Some(e) = err {
            errors += 1;
            if first_error.is_empty() {
                first_error = e;
            }
        }
    }
    all.sort_unstable();
    let pct = |p: f64| -> f64 {
        if all.is_empty() {
            return f64::NAN;
        }
        let k = ((p / 100.0 * all.len() as f64).ceil() as usize).clamp(1, all.len()) - 1;
        all[k] as f64 / 1000.0
    };
    println!(
        "{{\"round_trips\": {}, \"seconds\": {:.4}, \"rps\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \
         \"errors\": {}, \"first_error\": {:?}, \"conns\": {}, \"size\": {}}}",
        all.len(),
        elapsed,
        all.len() as f64 / elapsed,
        pct(50.0),
        pct(99.0),
        errors,
        first_error,
        conns,
        msg.len()
    );
    Ok(())
}

/// Opens `--conns` connections (`--concurrency` handshakes at a time), one echo round-trip on
/// each, prints `open N failed F`, and keeps them idle until standard input closes.
pub async fn idle_load(url: &str, opts: &HashMap<String, String>) -> Result<(), Error> {
    let conns: usize = opt(opts, "conns", 8000);
    let concurrency: usize = opt(opts, "concurrency", 100);
    let msg = payload(opts);
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let gate = Arc::clone(&gate);
        let url = url.to_string();
        let msg = msg.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore");
            let mut ws = connect(&url).await?;
            round_trip(&mut ws, &msg).await?;
            Ok::<_, Error>(ws)
        }));
    }
    let mut open = Vec::with_capacity(conns);
    let mut failed = 0;
    let mut first_error = String::new();
    for t in tasks {
        match t.await? {
            Ok(ws) => open.push(ws),
            Err(e) => {
                failed += 1;
                if first_error.is_empty() {
                    first_error = e.to_string();
                }
            }
        }
    }
    say(&format!("open {} failed {} {:?}", open.len(), failed, first_error));
    // Idle: nothing polls the sockets until standard input closes.
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
    drop(open);
    Ok(())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
