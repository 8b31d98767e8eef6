//! gRPC message framing (PROTOCOL-HTTP2.md, "Length-Prefixed-Message"):
//! a flag byte, a 4-byte big-endian length, the message.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::TranscodeError;

const HEADER_LEN: usize = 5;
const FLAG_COMPRESSED: u8 = 0x01;

/// `message` with its 5-byte prefix, uncompressed.
pub fn frame_message(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// Cuts a backend's response body, arriving in any pieces, into messages.
#[derive(Debug)]
pub struct MessageReader {
    buffered: BytesMut,
    max_message: usize,
}

impl MessageReader {
    /// Refuses messages over `max_message` bytes instead of buffering them.
    pub fn new(max_message: usize) -> Self {
        Self { buffered: BytesMut::new(), max_message }
    }

    /// Adds the next piece of the body.
    pub fn push(&mut self, data: &[u8]) {
        self.buffered.extend_from_slice(data);
    }

    /// The next whole message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, TranscodeError> {
        if self.buffered.len() < HEADER_LEN {
            return Ok(None);
        }
        let flag = self.buffered[0];
        let len = u32::from_be_bytes([self.buffered[1], self.buffered[2], self.buffered[3], self.buffered[4]]) as usize;
        if flag & FLAG_COMPRESSED != 0 {
            return Err(TranscodeError::BadResponse("a compressed message, though none was asked for".into()));
        }
        if len > self.max_message {
            return Err(TranscodeError::BadResponse(format!(
                "a {len}-byte message, over the {}-byte limit",
                self.max_message
            )));
        }
        if self.buffered.len() < HEADER_LEN + len {
            return Ok(None);
        }
        self.buffered.advance(HEADER_LEN);
        Ok(Some(self.buffered.split_to(len).freeze()))
    }

    /// Bytes of a message not yet whole: at the end of the body, a cut-off message.
    pub fn pending(&self) -> usize {
        self.buffered.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_split_across_pieces_come_out_whole_and_in_order() {
        let mut wire = frame_message(b"first").to_vec();
        wire.extend_from_slice(&frame_message(b""));
        wire.extend_from_slice(&frame_message(b"third one"));
        let mut reader = MessageReader::new(64);
        let mut out = Vec::new();
        for byte in wire.chunks(3) {
            reader.push(byte);
            while let Some(m) = reader.next_message().unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out, [&b"first"[..], b"", b"third one"]);
        assert_eq!(reader.pending(), 0);
    }

    #[test]
    fn compressed_oversized_and_cut_off_messages_are_told_apart() {
        let mut reader = MessageReader::new(4);
        reader.push(&frame_message(b"12345"));
        assert!(reader.next_message().unwrap_err().to_string().contains("over the 4-byte limit"));

        let mut reader = MessageReader::new(64);
        reader.push(&[1, 0, 0, 0, 1, b'x']);
        assert!(reader.next_message().unwrap_err().to_string().contains("compressed"));

        let mut reader = MessageReader::new(64);
        reader.push(&frame_message(b"abc")[..6]);
        assert_eq!(reader.next_message().unwrap(), None);
        assert_eq!(reader.pending(), 6);
    }
}
