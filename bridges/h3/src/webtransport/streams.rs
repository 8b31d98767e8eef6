//! One message per unidirectional stream, both ways (our framing: type
//! byte, payload, FIN), and the stream header that ties a stream to its
//! session (draft-02 §4.1: stream type 0x54, then the session ID).

use std::future::poll_fn;

use bytes::{Bytes, BytesMut};
use h3::quic::RecvStream as _;
use h3::stream::BufRecvStream;

use super::capsule::put_varint;
use super::{BINARY, Message, MessageError, TEXT};

/// A client's message stream, its WebTransport header already read by h3.
pub(super) type ClientStream = BufRecvStream<h3_quinn::RecvStream, Bytes>;

/// Unidirectional stream type of a WebTransport stream (draft-02 §4.1).
const WEBTRANSPORT_UNI_STREAM: u64 = 0x54;

/// The header of our streams for session `session_id`; `None` if the ID has
/// no varint encoding (it is a QUIC stream ID, so it always has one).
pub(super) fn stream_header(session_id: u64) -> Option<Bytes> {
    let mut header = Vec::with_capacity(9);
    put_varint(&mut header, WEBTRANSPORT_UNI_STREAM)?;
    put_varint(&mut header, session_id)?;
    Some(header.into())
}

/// Why a message stream yielded no message.
pub(super) enum ReadFailure {
    /// The message itself is bad (too large, untyped, not UTF-8).
    Message(MessageError),
    /// The client reset the stream or the connection failed: maybe because
    /// the session was closed, which the caller checks.
    Stream(String),
}

/// Reads one message stream to its end.
pub(super) async fn read_message(mut stream: ClientStream, limit: usize) -> Result<Message, ReadFailure> {
    let mut buf = BytesMut::new();
    loop {
        match poll_fn(|cx| stream.poll_data(cx)).await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit + 1 {
                    stream.stop_sending(0);
                    return Err(ReadFailure::Message(MessageError::TooLarge { limit }));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(ReadFailure::Stream(e.to_string())),
        }
    }
    let malformed = |what| Err(ReadFailure::Message(MessageError::Malformed(what)));
    if buf.is_empty() {
        return malformed("empty stream (no type byte)");
    }
    let kind = buf[0];
    let payload = buf.split_off(1).freeze();
    match kind {
        TEXT if std::str::from_utf8(&payload).is_err() => malformed("text message is not UTF-8"),
        TEXT => Ok(Message { text: true, payload }),
        BINARY => Ok(Message { text: false, payload }),
        _ => malformed("unknown type byte"),
    }
}

/// Sends one message on a new unidirectional stream of the session whose
/// stream header is `header`; `Err` once the connection cannot take more.
/// On success, returns a future that resolves once the client has
/// acknowledged the whole stream (or stopped it): our close waits for it,
/// so the close cannot overtake the message (draft-02 §5: a client drops a
/// closed session's streams). If this future is dropped before the message
/// is all written, the stream is reset, so the client never takes a cut
/// message for a whole one.
pub(super) async fn write_message(
    quic: &quinn::Connection,
    header: &Bytes,
    message: Message,
) -> Result<impl Future<Output = ()> + Send + 'static, ()> {
    let mut stream = Unfinished { stream: quic.open_uni().await.map_err(drop)?, finished: false };
    let kind = Bytes::from_static(if message.text { &[TEXT] } else { &[BINARY] });
    let mut chunks = [header.clone(), kind, message.payload];
    stream.stream.write_all_chunks(&mut chunks).await.map_err(drop)?;
    stream.stream.finish().map_err(drop)?;
    stream.finished = true;
    let acknowledged = stream.stream.stopped();
    Ok(async move {
        let _ = acknowledged.await;
    })
}

/// A message stream being written: reset if dropped before its FIN (quinn
/// would otherwise finish it, and the client would read a cut message).
struct Unfinished {
    stream: quinn::SendStream,
    finished: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if !self.finished {
            // Code 0: the message is abandoned, not an error of the client's.
            let _ = self.stream.reset(quinn::VarInt::from_u32(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_headers_carry_type_0x54_and_the_session_id() {
        assert_eq!(stream_header(0).as_deref(), Some(&[0x40, 0x54, 0x00][..]));
        assert_eq!(stream_header(4).as_deref(), Some(&[0x40, 0x54, 0x04][..]));
        assert_eq!(stream_header(400).as_deref(), Some(&[0x40, 0x54, 0x41, 0x90][..]));
        assert_eq!(stream_header(u64::MAX), None);
    }
}
