//! Raw-frame tests of both roles over in-memory pipes: the protocol's edge
//! cases that well-behaved peers never produce (real peers are in the
//! integration tests).

mod client;
mod server;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::frame::{self, Head};

/// The other end of the connection, speaking raw frames (over a whole pipe,
/// or over its read half where a test writes from elsewhere).
pub(super) struct Peer<T = DuplexStream> {
    pub io: T,
}

impl<T: AsyncRead + Unpin> Peer<T> {
    pub fn new(io: T) -> Self {
        Peer { io }
    }

    pub async fn read_frame(&mut self) -> (Head, Bytes) {
        let mut head = [0u8; 9];
        self.io.read_exact(&mut head).await.expect("frame head");
        let head = Head::parse(&head);
        let mut payload = vec![0u8; head.len];
        self.io.read_exact(&mut payload).await.expect("frame payload");
        (head, payload.into())
    }

    /// The next frame that is not SETTINGS/WINDOW_UPDATE/PING housekeeping.
    pub async fn next_frame(&mut self, kind_wanted: u8) -> (Head, Bytes) {
        loop {
            let (head, payload) = self.read_frame().await;
            if head.kind == kind_wanted {
                return (head, payload);
            }
        }
    }
}

impl Peer {
    pub async fn write(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
    }

    pub async fn settings(&mut self, params: &[(u16, u32)]) {
        let mut out = BytesMut::new();
        frame::put_settings(&mut out, params, false);
        self.write(&out).await;
    }

    pub async fn headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) {
        let mut block = BytesMut::new();
        for (name, value) in fields {
            // A literal without indexing, new name: raw bytes, uppercase allowed through.
            block.extend_from_slice(&[0x00]);
            put_string(&mut block, name.as_bytes());
            put_string(&mut block, value.as_bytes());
        }
        let mut out = BytesMut::new();
        frame::put_headers(&mut out, stream, &block, end_stream, 16_384);
        self.write(&out).await;
    }
}

/// An HPACK string literal, not Huffman-coded (RFC 7541 §5.1, §5.2).
fn put_string(block: &mut BytesMut, s: &[u8]) {
    let mut len = s.len();
    if len < 0x7f {
        block.extend_from_slice(&[len as u8]);
    } else {
        block.extend_from_slice(&[0x7f]);
        len -= 0x7f;
        while len >= 0x80 {
            block.extend_from_slice(&[0x80 | (len & 0x7f) as u8]);
            len >>= 7;
        }
        block.extend_from_slice(&[len as u8]);
    }
    block.extend_from_slice(s);
}

#[test]
fn only_a_peers_stream_level_reset_carries_over_to_the_other_side() {
    use super::{Error, relayed_reason};
    use h2::Reason;
    let carried = |e: Error| relayed_reason(&e);
    assert_eq!(carried(Error::Reset(Reason::CANCEL)), Some(Reason::CANCEL));
    assert_eq!(carried(Error::Refused), Some(Reason::REFUSED_STREAM));
    assert_eq!(carried(Error::Reset(Reason::ENHANCE_YOUR_CALM)), Some(Reason::ENHANCE_YOUR_CALM));
    // The peer's own faults, or its complaints about ours, are not the other side's.
    assert_eq!(carried(Error::Reset(Reason::PROTOCOL_ERROR)), None);
    assert_eq!(carried(Error::Protocol { reason: Reason::COMPRESSION_ERROR, what: "bad HPACK" }), None);
    assert_eq!(carried(Error::GoAway(Reason::FRAME_SIZE_ERROR)), None);
    assert_eq!(carried(Error::Closed), None);
}
