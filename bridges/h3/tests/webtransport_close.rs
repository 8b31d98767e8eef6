//! The client's end of a WebTransport session, every way draft-02 §5 allows
//! it, against the bridge over real QUIC: h3's own client opens the session
//! (extended CONNECT, `:protocol = webtransport`), sends a message on a
//! unidirectional stream in our framing, then ends the CONNECT stream with a
//! CLOSE_WEBTRANSPORT_SESSION capsule and FIN, with FIN alone, with a reset,
//! or with a malformed capsule. The pipe must yield the message, then the
//! matching end, at once. (Chromium's close is tested in the workspace's
//! tests/webtransport_browser.rs.)
//!
//! And ours: after `MessagePipe::close`, the client gets the messages sent
//! before it, then a CLOSE_WEBTRANSPORT_SESSION capsule with our code and
//! message in a DATA frame on the CONNECT stream, then FIN; only then does
//! the session's end signal fire.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;
use tollgate_h3::webtransport::{Message, MessageError, MessagePipe, SessionClose};
use tollgate_h3::{Connection, Resolved, Settings};

type ClientStream = h3::client::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;
type ClientDriver = h3::client::Connection<h3_quinn::Connection, Bytes>;
type ClientSender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// How the client ends its CONNECT stream.
enum End {
    Capsule(Vec<u8>),
    Fin,
    Reset,
}

/// A server endpoint and a client config trusting it.
fn endpoints() -> (quinn::Endpoint, quinn::Endpoint) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().self_signed(&key).unwrap();
    let cert: CertificateDer<'static> = cert.der().clone();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls13 = &[&rustls::version::TLS13];

    let mut server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(tls13)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], PrivatePkcs8KeyDer::from(key.serialize_der()).into())
        .unwrap();
    server.alpn_protocols = vec![tollgate_h3::ALPN.to_vec()];
    let server = quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(server).unwrap()));
    let server = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(tls13)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![tollgate_h3::ALPN.to_vec()];
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(client).unwrap())));
    (server, endpoint)
}

/// The server side: accepts the CONNECT, opens the session, hands its pipe
/// and end signal over, then keeps accepting (which files the session's streams).
async fn serve(endpoint: quinn::Endpoint, pipe: tokio::sync::oneshot::Sender<(MessagePipe, watch::Receiver<()>)>) {
    let quic = endpoint.accept().await.unwrap().await.unwrap();
    let settings = Settings { max_field_section_size: 16 << 10, webtransport: true };
    let mut conn = Connection::new(quic, &settings).await.unwrap();
    let incoming = conn.accept().await.unwrap().unwrap();
    let Resolved::WebTransport(request) = incoming.resolve().await.unwrap() else { panic!("not a session") };
    let mut session = conn.into_session(request).await.unwrap();
    let ended = session.ended_signal();
    let _ = pipe.send((session.messages(1024), ended));
    while let Ok(Some(_)) = session.accept().await {}
}

/// An HTTP/3 client connection (extended CONNECT on) to `addr`: the QUIC
/// connection, h3's driver and its request sender.
async fn h3_client(client: &quinn::Endpoint, addr: SocketAddr) -> (quinn::Connection, ClientDriver, ClientSender) {
    let quic = client.connect(addr, "localhost").unwrap().await.unwrap();
    let (driver, send_request) = h3::client::builder()
        .enable_extended_connect(true)
        .enable_datagram(true)
        .build::<_, _, Bytes>(h3_quinn::Connection::new(quic.clone()))
        .await
        .unwrap();
    (quic, driver, send_request)
}

/// The CONNECT that opens a WebTransport session on the test server.
fn webtransport_connect(addr: SocketAddr) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://localhost:{}/wt", addr.port()))
        .extension(h3::ext::Protocol::WEB_TRANSPORT)
        .body(())
        .unwrap()
}

/// Opens a session, sends one text message, ends the CONNECT stream as
/// told; returns what the pipe yielded: the message, then the end.
async fn session_ended_by(end: End) -> (Message, MessageError) {
    let (server, client) = endpoints();
    let addr: SocketAddr = server.local_addr().unwrap();
    let (pipe_tx, pipe_rx) = tokio::sync::oneshot::channel();
    let server_task = tokio::spawn(serve(server, pipe_tx));

    let (quic, mut driver, mut send_request) = h3_client(&client, addr).await;
    let driver = tokio::spawn(async move { poll_fn(|cx| driver.poll_close(cx)).await });
    let connect = webtransport_connect(addr);
    let mut stream: ClientStream = send_request.send_request(connect).await.unwrap();
    let response = stream.recv_response().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["sec-webtransport-http3-draft"], "draft02");
    let (mut pipe, _ended) = pipe_rx.await.unwrap();

    // One message: stream type 0x54, session ID (the CONNECT stream's), type byte, payload.
    let session_id = stream.id().into_inner();
    assert!(session_id < 64, "one-byte varint in the header below");
    let mut uni = quic.open_uni().await.unwrap();
    uni.write_all(&[0x40, 0x54, session_id as u8, tollgate_h3::webtransport::TEXT]).await.unwrap();
    uni.write_all(b"last words").await.unwrap();
    uni.finish().unwrap();
    let message = next_item(&mut pipe).await.expect("the message");

    match end {
        End::Capsule(bytes) => {
            stream.send_data(Bytes::from(bytes)).await.unwrap();
            stream.finish().await.unwrap();
        }
        End::Fin => stream.finish().await.unwrap(),
        End::Reset => stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED),
    }
    let ended = next_item(&mut pipe).await.expect_err("the end");
    assert!(pipe.incoming.recv().await.is_none(), "nothing after the end");
    drop(pipe);
    server_task.abort();
    driver.abort();
    (message, ended)
}

/// The pipe's next item, which must come within two seconds (the idle
/// timeouts that used to end such sessions are far longer).
async fn next_item(pipe: &mut MessagePipe) -> Result<Message, MessageError> {
    let next = tokio::time::timeout(Duration::from_secs(2), pipe.incoming.recv()).await;
    next.expect("in time").expect("an item, not the end of the channel")
}

fn close_capsule(code: u32, reason: &str) -> Vec<u8> {
    let mut value = code.to_be_bytes().to_vec();
    value.extend_from_slice(reason.as_bytes());
    // Type 0x2843 (a 2-byte varint), length (a 1- or 2-byte varint).
    let mut capsule = vec![0x68, 0x43];
    match value.len() {
        len @ 0..64 => capsule.push(len as u8),
        len @ 64..16384 => capsule.extend_from_slice(&(len as u16 | 0x4000).to_be_bytes()),
        len => panic!("{len}-byte close message"),
    }
    capsule.extend(value);
    capsule
}

fn text(s: &str) -> Message {
    Message { text: true, payload: Bytes::copy_from_slice(s.as_bytes()) }
}

#[tokio::test]
async fn a_close_capsule_ends_the_session_with_its_code_and_reason() {
    let (message, end) = session_ended_by(End::Capsule(close_capsule(4000, "bye"))).await;
    assert_eq!(message, text("last words"));
    match end {
        MessageError::ClosedByClient(Some(close)) => {
            assert_eq!(close, SessionClose { code: 4000, reason: "bye".to_string() })
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn other_capsules_before_the_close_are_skipped() {
    // A DRAIN_WEBTRANSPORT_SESSION capsule (0x78ae, empty), then the close.
    let mut bytes = vec![0x80, 0x00, 0x78, 0xae, 0x00];
    bytes.extend(close_capsule(0, ""));
    let (_, end) = session_ended_by(End::Capsule(bytes)).await;
    assert!(matches!(end, MessageError::ClosedByClient(Some(SessionClose { code: 0, .. }))), "{end:?}");
}

#[tokio::test]
async fn a_fin_without_a_capsule_ends_the_session_without_a_code() {
    let (message, end) = session_ended_by(End::Fin).await;
    assert_eq!(message, text("last words"));
    assert!(matches!(end, MessageError::ClosedByClient(None)), "{end:?}");
}

#[tokio::test]
async fn a_reset_connect_stream_ends_the_session_without_a_code() {
    let (_, end) = session_ended_by(End::Reset).await;
    assert!(matches!(end, MessageError::ClosedByClient(None)), "{end:?}");
}

#[tokio::test]
async fn a_malformed_close_capsule_is_a_protocol_error() {
    // A close capsule two bytes long: no room for its 32-bit code.
    let (_, end) = session_ended_by(End::Capsule(vec![0x68, 0x43, 0x02, 0x00, 0x01])).await;
    assert!(matches!(end, MessageError::Malformed(_)), "{end:?}");
}

/// A session whose client side is driven by hand: h3's client driver is
/// polled only until the CONNECT is answered, so the session's streams
/// from the server are accepted by the test (h3's client would stop them).
struct HandDriven {
    quic: quinn::Connection,
    connect: ClientStream,
    pipe: MessagePipe,
    ended: watch::Receiver<()>,
    /// Kept, not polled: dropping them would close the connection.
    _h3: (h3::client::Connection<h3_quinn::Connection, Bytes>, h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>),
    _server: tokio::task::JoinHandle<()>,
}

async fn open_hand_driven() -> HandDriven {
    let (server, client) = endpoints();
    let addr: SocketAddr = server.local_addr().unwrap();
    let (pipe_tx, pipe_rx) = tokio::sync::oneshot::channel();
    let server_task = tokio::spawn(serve(server, pipe_tx));
    let (quic, mut driver, mut send_request) = h3_client(&client, addr).await;
    let connect = webtransport_connect(addr);
    let exchange = async {
        let mut stream: ClientStream = send_request.send_request(connect).await.unwrap();
        let response = stream.recv_response().await.unwrap();
        assert_eq!(response.status(), 200);
        stream
    };
    let connect = tokio::select! {
        stream = exchange => stream,
        e = poll_fn(|cx| driver.poll_close(cx)) => panic!("connection closed during the CONNECT: {e}"),
    };
    let (pipe, ended) = pipe_rx.await.unwrap();
    HandDriven { quic, connect, pipe, ended, _h3: (driver, send_request), _server: server_task }
}

/// The session's messages as the client reads them from the server's
/// unidirectional streams (others, such as h3's grease, are skipped).
async fn read_messages(quic: &quinn::Connection, session_id: u64, count: usize) -> Vec<Message> {
    let mut messages = Vec::new();
    while messages.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(2), quic.accept_uni()).await;
        let mut uni = next.expect("a stream in time").expect("a stream");
        // h3's own streams (control, QPACK, grease) never end, and may be a
        // single byte: only their header is read, byte by byte.
        let mut ours = true;
        for expected in [0x40, 0x54, session_id as u8] {
            let mut byte = [0];
            let read = tokio::time::timeout(Duration::from_millis(500), uni.read_exact(&mut byte)).await;
            if !matches!(read, Ok(Ok(()))) || byte[0] != expected {
                ours = false;
                break;
            }
        }
        if !ours {
            continue;
        }
        let bytes = uni.read_to_end(4096).await.expect("a whole stream");
        let (kind, payload) = bytes.split_first().expect("a type byte");
        messages
            .push(Message { text: *kind == tollgate_h3::webtransport::TEXT, payload: Bytes::copy_from_slice(payload) });
    }
    messages
}

/// All the data of the client's half of the CONNECT stream, to its FIN.
async fn read_connect_to_fin(connect: &mut ClientStream) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(2), connect.recv_data()).await;
        match next.expect("data or FIN in time").expect("no stream error") {
            Some(mut chunk) => {
                use bytes::Buf;
                while chunk.has_remaining() {
                    let piece = chunk.chunk().to_vec();
                    chunk.advance(piece.len());
                    data.extend(piece);
                }
            }
            None => return data,
        }
    }
}

#[tokio::test]
async fn our_close_sends_the_messages_then_the_capsule_then_fin() {
    let mut session = open_hand_driven().await;
    assert!(session.connect.id().into_inner() < 64, "one-byte varint in the stream header");
    session.pipe.outgoing.send(text("first")).await.unwrap();
    session.pipe.outgoing.send(Message { text: false, payload: Bytes::from_static(&[0, 1, 255]) }).await.unwrap();
    session.pipe.close(SessionClose { code: 4002, reason: "backend done".to_string() });
    // As message mode does: the pipe goes at once; the close is finished all the same.
    drop(session.pipe);

    let capsule = read_connect_to_fin(&mut session.connect).await;
    assert_eq!(capsule, close_capsule(4002, "backend done"), "one CLOSE_WEBTRANSPORT_SESSION capsule, then FIN");
    let messages = read_messages(&session.quic, session.connect.id().into_inner(), 2).await;
    assert_eq!(messages, [text("first"), Message { text: false, payload: Bytes::from_static(&[0, 1, 255]) }]);
    // The owner is told the session is over once the capsule is out.
    let ended = tokio::time::timeout(Duration::from_secs(2), session.ended.changed()).await;
    assert!(ended.expect("the end signal in time").is_err(), "the signal's sender is gone");
    // Nothing else came: no stream after the two messages.
    let more = tokio::time::timeout(Duration::from_millis(200), session.quic.accept_uni()).await;
    assert!(more.is_err(), "no third stream: {more:?}");
    assert!(session.quic.close_reason().is_none(), "the connection itself is left to its owner");
}

#[tokio::test]
async fn a_close_while_the_pipe_lives_on_still_reads_the_clients_answer() {
    // Tunnel mode: the relay keeps the pipe after its close, waiting for the client's answer.
    let mut session = open_hand_driven().await;
    session.pipe.close(SessionClose { code: 1011, reason: "é".repeat(40) });
    let capsule = read_connect_to_fin(&mut session.connect).await;
    assert_eq!(capsule, close_capsule(1011, &"é".repeat(40)));
    // The client answers with a FIN of its own (as Chromium does).
    session.connect.finish().await.unwrap();
    let end = next_item(&mut session.pipe).await.expect_err("the client's end");
    assert!(matches!(end, MessageError::ClosedByClient(None)), "{end:?}");
    let ended = tokio::time::timeout(Duration::from_secs(2), session.ended.changed()).await;
    assert!(ended.expect("the end signal in time").is_err());
}

#[tokio::test]
async fn dropping_the_pipe_without_a_close_sends_no_capsule() {
    let mut session = open_hand_driven().await;
    drop(session.pipe);
    let ended = tokio::time::timeout(Duration::from_secs(2), session.ended.changed()).await;
    assert!(ended.expect("the end signal in time").is_err());
    // The CONNECT stream stays open: the owner closes the connection instead.
    let data = tokio::time::timeout(Duration::from_millis(300), session.connect.recv_data()).await;
    assert!(data.is_err(), "no capsule, no FIN");
}
