//! Tunnel mode when the client's side is a channel of messages (a
//! WebTransport session; see [`crate::tunnel`] for WebSocket clients):
//! messages relayed between it and the backend's WebSocket, the backend's
//! side parsed and re-framed (so every frame is checked: masking, opcodes,
//! UTF-8, sizes), one message at a time. The shared types of both tunnels
//! ([`RelaySettings`], [`Report`], [`End`]) live here.
//!
//! Backpressure: each direction reads one message, then waits until the
//! other side has taken it (`send` flushes; the write buffer is bounded by
//! `Limits`) before reading the next. Nothing queues without bound; a slow
//! reader slows its writer through TCP flow control. The two directions run
//! concurrently so a peer that writes while we write to it cannot deadlock us.
//!
//! Closing (RFC 6455 §7): a close frame from either side is passed on with
//! its code and reason; the other side's answer ends the tunnel. Failures
//! become close frames: a broken client gets 1002/1007/1009 and the backend
//! a clean 1001; a broken or vanished backend gives the client 1011 (1014
//! when it sent something invalid).

use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tungstenite::Message;
use tungstenite::error::Error as WsError;

use crate::WebSocketStream;
use crate::close::{self, BAD_GATEWAY, CloseCode, CloseFrame, ReadFault};

/// Payload of the pings the gateway itself sends, so the client's pongs to
/// them are not relayed to the backend (which never pinged).
pub(crate) const GATEWAY_PING: &[u8] = b"tollgate";

/// Timing of a tunnel.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// No frame either way for this long closes both sides with 1001.
    /// Silence is checked on a timer ticking every `ping_interval` (at most
    /// half this), so the close comes up to one tick late.
    pub idle_timeout: Duration,
    /// Ping the client after this much silence, so dead clients are noticed
    /// and middleboxes keep the connection; `None` sends no pings.
    pub ping_interval: Option<Duration>,
    /// How long to wait for the other side's close frame once one side has closed.
    pub close_timeout: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(300),
            ping_interval: Some(Duration::from_secs(30)),
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// Data messages and payload bytes that went one way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub messages: u64,
    pub bytes: u64,
}

impl Traffic {
    pub(crate) fn count(&mut self, message: &Message) {
        if let Message::Text(_) | Message::Binary(_) = message {
            self.messages += 1;
            self.bytes += message.len() as u64;
        }
    }
}

/// How a tunnel (or a message-mode connection) ended, for the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// The client sent a close frame with this code (1005 when it had none).
    ClientClosed(u16),
    /// The backend sent a close frame with this code.
    BackendClosed(u16),
    /// The client broke the protocol and was closed with the fault's code.
    ClientFault(ReadFault),
    /// The backend broke the protocol; the client got 1014.
    BackendFault(ReadFault),
    /// The backend vanished or failed; the client got 1011.
    BackendGone,
    /// The client vanished without a close handshake; the backend got 1001.
    ClientGone,
    /// Nothing moved for `idle_timeout`; both sides got 1001.
    Idle,
    /// The gateway is shutting down; both sides got 1001 (RFC 6455 §7.4.1: going away).
    Shutdown,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::ClientClosed(code) => write!(f, "client_close_{code}"),
            End::BackendClosed(code) => write!(f, "backend_close_{code}"),
            End::ClientFault(fault) => write!(f, "client_{}", fault.as_str()),
            End::BackendFault(fault) => write!(f, "backend_{}", fault.as_str()),
            End::BackendGone => f.write_str("backend_gone"),
            End::ClientGone => f.write_str("client_gone"),
            End::Idle => f.write_str("idle_timeout"),
            End::Shutdown => f.write_str("shutdown"),
        }
    }
}

/// What a finished connection reports to the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Client → backend.
    pub upstream: Traffic,
    /// Backend → client.
    pub downstream: Traffic,
    pub end: End,
}

/// Why one direction stopped.
enum Stop {
    /// A close frame came (and was passed on).
    Closed(Option<CloseFrame>),
    /// Reading failed.
    Read(ReadFault),
    /// The other side would not take a message: it is gone.
    WriteFailed,
    /// Silence for `idle_timeout`.
    Idle,
    /// The `shutdown` future resolved.
    Shutdown,
}

/// Relays messages between `client` and `backend` until either side closes
/// or fails, or `shutdown` resolves, then finishes the close handshake on
/// both (bounded by `close_timeout`). Never panics; every task it needs
/// lives in this future.
///
/// The client side is any channel of WebSocket messages: a WebSocket
/// connection, or a WebTransport session carried as messages by the core.
pub async fn relay<C, B>(
    client: C,
    backend: WebSocketStream<B>,
    settings: &RelaySettings,
    shutdown: impl std::future::Future<Output = ()>,
) -> Report
where
    C: crate::MessageChannel,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_tx, mut client_rx) = client.split();
    let (mut backend_tx, mut backend_rx) = backend.split();
    let mut up = Traffic::default();
    let mut down = Traffic::default();
    let last_seen = crate::activity::Activity::new();

    let first = {
        let up_pump = pump(&mut client_rx, &mut backend_tx, &mut up, &last_seen, None, true);
        let down_pump = pump(&mut backend_rx, &mut client_tx, &mut down, &last_seen, Some(settings), false);
        tokio::select! {
            stop = up_pump => (true, stop),
            stop = down_pump => (false, stop),
            () = shutdown => (false, Stop::Shutdown),
        }
    };
    let wait = settings.close_timeout;
    let end = match first {
        (true, Stop::Closed(frame)) => {
            // tungstenite queued the echo of the client's close; send it, then wait for the backend's.
            let _ = client_tx.flush().await;
            drain(&mut backend_rx, wait).await;
            End::ClientClosed(close::code_of(frame.as_ref()))
        }
        (true, Stop::Read(fault)) => {
            if let Some(code) = fault.code() {
                let _ = client_tx.send(Message::Close(Some(close::frame(code, fault.as_str())))).await;
            }
            close_and_drain(&mut backend_tx, &mut backend_rx, CloseCode::Away, "client went away", wait).await;
            if fault == ReadFault::Gone { End::ClientGone } else { End::ClientFault(fault) }
        }
        (true, Stop::WriteFailed) => {
            close_and_drain(&mut client_tx, &mut client_rx, CloseCode::Error, "backend connection failed", wait).await;
            End::BackendGone
        }
        (false, Stop::Closed(frame)) => {
            let _ = backend_tx.flush().await;
            drain(&mut client_rx, wait).await;
            End::BackendClosed(close::code_of(frame.as_ref()))
        }
        (false, Stop::Read(ReadFault::Gone)) => {
            close_and_drain(&mut client_tx, &mut client_rx, CloseCode::Error, "backend connection lost", wait).await;
            End::BackendGone
        }
        (false, Stop::Read(fault)) => {
            if let Some(code) = fault.code() {
                let _ = backend_tx.send(Message::Close(Some(close::frame(code, fault.as_str())))).await;
            }
            let reason = "bad gateway: invalid frames from the backend";
            close_and_drain(&mut client_tx, &mut client_rx, BAD_GATEWAY, reason, wait).await;
            End::BackendFault(fault)
        }
        (false, Stop::WriteFailed) => {
            close_and_drain(&mut backend_tx, &mut backend_rx, CloseCode::Away, "client went away", wait).await;
            End::ClientGone
        }
        (_, Stop::Idle) => {
            let bye = || Message::Close(Some(close::frame(CloseCode::Away, "idle timeout")));
            let _ = client_tx.send(bye()).await;
            close_and_drain(&mut backend_tx, &mut backend_rx, CloseCode::Away, "idle timeout", wait).await;
            End::Idle
        }
        (_, Stop::Shutdown) => {
            let bye = || Message::Close(Some(close::frame(CloseCode::Away, "gateway shutting down")));
            let _ = client_tx.send(bye()).await;
            close_and_drain(&mut backend_tx, &mut backend_rx, CloseCode::Away, "gateway shutting down", wait).await;
            drain(&mut client_rx, wait).await;
            End::Shutdown
        }
    };
    Report { upstream: up, downstream: down, end }
}

/// Moves messages from `from` to `to` until something stops it. With
/// `ticker`, also pings `to` after silence and enforces the idle timeout.
/// `drop_gateway_pongs`: swallow pongs answering the gateway's own pings.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    traffic: &mut Traffic,
    last_seen: &crate::activity::Activity,
    ticker: Option<&RelaySettings>,
    drop_gateway_pongs: bool,
) -> Stop
where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
    W: Sink<Message, Error = WsError> + Unpin,
{
    let period = ticker.map(|s| s.ping_interval.unwrap_or(s.idle_timeout).min(s.idle_timeout / 2));
    let mut tick = tokio::time::interval(period.unwrap_or(Duration::from_secs(3600)).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let next = match ticker {
            None => from.next().await,
            Some(settings) => tokio::select! {
                next = from.next() => next,
                _ = tick.tick() => {
                    let quiet = last_seen.quiet();
                    if quiet >= settings.idle_timeout {
                        return Stop::Idle;
                    }
                    if settings.ping_interval.is_some_and(|p| quiet >= p)
                        && to.send(Message::Ping(Bytes::from_static(GATEWAY_PING))).await.is_err()
                    {
                        return Stop::WriteFailed;
                    }
                    continue;
                }
            },
        };
        let message = match next {
            None => return Stop::Read(ReadFault::Gone),
            Some(Err(e)) => return Stop::Read(ReadFault::of(&e)),
            Some(Ok(m)) => m,
        };
        last_seen.touch();
        match message {
            Message::Pong(ref payload) if drop_gateway_pongs && payload.as_ref() == GATEWAY_PING => continue,
            Message::Close(frame) => {
                // Pass the code and reason on (RFC 6455 §7.1.2); if the other side is gone, so be it.
                let _ = to.send(Message::Close(frame.clone())).await;
                return Stop::Closed(frame);
            }
            Message::Frame(_) => continue,
            message => {
                traffic.count(&message);
                // Pings are passed on, not only answered: tungstenite answers them on
                // this hop too, and an unsolicited pong is allowed (RFC 6455 §5.5.3).
                if to.send(message).await.is_err() {
                    return Stop::WriteFailed;
                }
            }
        }
    }
}

/// Sends a close frame and waits (bounded) for the peer's answer.
async fn close_and_drain<W, R>(tx: &mut W, rx: &mut R, code: impl Into<CloseCode>, reason: &'static str, wait: Duration)
where
    W: Sink<Message, Error = WsError> + Unpin,
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    if tx.send(Message::Close(Some(close::frame(code, reason)))).await.is_ok() {
        drain(rx, wait).await;
    }
}

/// Reads (and drops) until the peer's close frame, the end of the stream or
/// `wait`, whichever comes first: the closing half of the handshake.
async fn drain<R>(rx: &mut R, wait: Duration)
where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    let _ = tokio::time::timeout(wait, async {
        while let Some(Ok(message)) = rx.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Limits, client_stream, server_stream};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    /// Default timings, but peers that never answer a close cost 200 ms, not 5 s.
    fn quick() -> RelaySettings {
        RelaySettings { close_timeout: Duration::from_millis(200), ..Default::default() }
    }

    /// Client peer ⇄ (server side) relay (client side) ⇄ backend peer, all in memory.
    async fn rig(
        settings: RelaySettings,
    ) -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>, tokio::task::JoinHandle<Report>) {
        let limits = Limits { max_message_bytes: 1024, max_frame_bytes: 1024 };
        let (client_peer, gw_down) = duplex(4096);
        let (gw_up, backend_peer) = duplex(4096);
        let client = client_stream(client_peer, &limits).await;
        let backend = server_stream(backend_peer, &limits).await;
        let task = tokio::spawn(async move {
            let down = server_stream(gw_down, &limits).await;
            let up = client_stream(gw_up, &limits).await;
            relay(down, up, &settings, std::future::pending()).await
        });
        (client, backend, task)
    }

    #[tokio::test]
    async fn messages_pings_and_close_codes_cross_both_ways() {
        let (mut client, mut backend, task) = rig(quick()).await;
        client.send(Message::text("hello")).await.unwrap();
        assert_eq!(backend.next().await.unwrap().unwrap(), Message::text("hello"));
        backend.send(Message::binary(vec![1, 2, 3])).await.unwrap();
        assert_eq!(client.next().await.unwrap().unwrap(), Message::binary(vec![1, 2, 3]));
        client.send(Message::Ping(Bytes::from_static(b"p1"))).await.unwrap();
        assert_eq!(backend.next().await.unwrap().unwrap(), Message::Ping(Bytes::from_static(b"p1")));
        // Backend closes with an application code; the client sees it verbatim.
        backend.send(Message::Close(Some(close::frame(4001u16, "done here")))).await.unwrap();
        let mut got = None;
        while let Some(Ok(m)) = client.next().await {
            if let Message::Close(f) = m {
                got = f;
                break;
            }
        }
        let got = got.unwrap();
        assert_eq!(u16::from(got.code), 4001);
        assert_eq!(got.reason.as_str(), "done here");
        drop(client);
        let report = task.await.unwrap();
        assert_eq!(report.end, End::BackendClosed(4001));
        assert_eq!(report.upstream, Traffic { messages: 1, bytes: 5 });
        assert_eq!(report.downstream, Traffic { messages: 1, bytes: 3 });
    }

    #[tokio::test]
    async fn a_vanished_backend_gives_the_client_1011() {
        let (mut client, backend, task) = rig(quick()).await;
        drop(backend);
        let frame = loop {
            match client.next().await.unwrap().unwrap() {
                Message::Close(f) => break f.unwrap(),
                _ => continue,
            }
        };
        assert_eq!(u16::from(frame.code), 1011);
        assert_eq!(task.await.unwrap().end, End::BackendGone);
    }

    #[tokio::test]
    async fn the_client_leaving_gives_the_backend_a_clean_1001() {
        let (client, mut backend, task) = rig(quick()).await;
        drop(client);
        let frame = match backend.next().await.unwrap().unwrap() {
            Message::Close(f) => f.unwrap(),
            other => panic!("expected close, got {other:?}"),
        };
        assert_eq!(frame.code, CloseCode::Away);
        assert_eq!(task.await.unwrap().end, End::ClientGone);
    }

    #[tokio::test]
    async fn an_unmasked_client_frame_is_closed_with_1002() {
        let limits = Limits::default();
        let (mut raw_client, gw_down) = duplex(4096);
        let (gw_up, backend_peer) = duplex(4096);
        let mut backend = server_stream(backend_peer, &limits).await;
        let task = tokio::spawn(async move {
            let down = server_stream(gw_down, &limits).await;
            let up = client_stream(gw_up, &limits).await;
            relay(down, up, &quick(), std::future::pending()).await
        });
        // FIN + text, unmasked, "hi": a server must fail this (RFC 6455 §5.1).
        raw_client.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
        let mut buf = [0u8; 64];
        let n = raw_client.read(&mut buf).await.unwrap();
        assert_eq!(buf[0], 0x88, "a close frame");
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), 1002, "{:?}", &buf[..n]);
        match backend.next().await.unwrap().unwrap() {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
            other => panic!("{other:?}"),
        }
        assert_eq!(task.await.unwrap().end, End::ClientFault(ReadFault::Protocol));
    }

    #[tokio::test]
    async fn oversize_messages_are_closed_with_1009() {
        let (mut client, _backend, task) = rig(quick()).await;
        client.send(Message::binary(vec![0u8; 2000])).await.unwrap_or(());
        let frame = loop {
            match client.next().await {
                Some(Ok(Message::Close(f))) => break f.unwrap(),
                Some(Ok(_)) => continue,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(u16::from(frame.code), 1009);
        assert_eq!(task.await.unwrap().end, End::ClientFault(ReadFault::TooBig));
    }

    #[tokio::test]
    async fn a_backend_that_stops_reading_stalls_the_client_instead_of_queueing() {
        let (mut client, backend, task) = rig(quick()).await;
        // The backend never reads: once the pipes and tungstenite's read buffer
        // are full, the client's send must block (TCP-style backpressure).
        let mut sent = 0usize;
        loop {
            let send = client.send(Message::binary(vec![0u8; 1000]));
            match tokio::time::timeout(Duration::from_millis(200), send).await {
                Ok(Ok(())) => sent += 1,
                Ok(Err(e)) => panic!("{e}"),
                Err(_) => break,
            }
            assert!(sent < 1000, "1 MB accepted with nobody reading: something queues without bound");
        }
        assert!(sent > 0);
        drop(backend);
        drop(client);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_pinged_and_an_unanswering_one_closed_as_idle() {
        let settings = RelaySettings {
            idle_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(2)),
            close_timeout: Duration::from_secs(1),
        };
        let (client, mut backend, task) = rig(settings).await;
        // The client never reads, so never answers pings: idle after 10 s.
        let report = task.await.unwrap();
        assert_eq!(report.end, End::Idle);
        match backend.next().await.unwrap().unwrap() {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away),
            other => panic!("{other:?}"),
        }
        drop(client);
    }
}
