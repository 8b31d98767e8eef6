//! Length-prefixed message framing, shared by gRPC and gRPC-Web.
//!
//! gRPC over HTTP/2 (PROTOCOL-HTTP2.md, "Length-Prefixed-Message"): one flag
//! byte (bit 0 = compressed), a 4-byte big-endian length, the message.
//! gRPC-Web (PROTOCOL-WEB.md, "Protocol differences vs gRPC over HTTP2") sets
//! bit 7 of the flag for the trailer frame, whose payload is the trailers as
//! an HTTP/1 header block.

use bytes::{BufMut, Bytes, BytesMut};
use http::HeaderMap;

use crate::GrpcWebError;

/// Flag of a data frame carrying an uncompressed message.
pub const FLAG_DATA: u8 = 0x00;
/// Flag bit of a compressed message (`grpc-encoding`).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Flag of the gRPC-Web trailer frame.
pub const FLAG_TRAILERS: u8 = 0x80;
/// Flag byte + 4-byte length.
pub const HEADER_LEN: usize = 5;

/// Follows the frame boundaries of a request body as it streams past,
/// without copying it, to refuse a malformed body instead of forwarding it.
#[derive(Debug, Default)]
pub struct FrameChecker {
    /// Bytes of the current frame header seen so far.
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Message bytes still to come in the current frame.
    remaining: u64,
}

impl FrameChecker {
    /// Checks the next piece of the body.
    pub fn check(&mut self, mut data: &[u8]) -> Result<(), GrpcWebError> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = (self.remaining as usize).min(data.len());
                self.remaining -= skip as u64;
                data = &data[skip..];
                continue;
            }
            let take = (HEADER_LEN - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data = &data[take..];
            if self.header_len == HEADER_LEN {
                match self.header[0] {
                    FLAG_DATA | FLAG_COMPRESSED => {}
                    FLAG_TRAILERS => return Err(GrpcWebError::TrailersInRequest),
                    other => return Err(GrpcWebError::BadFrameFlag(other)),
                }
                self.remaining =
                    u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]) as u64;
                self.header_len = 0;
            }
        }
        Ok(())
    }

    /// Checks that the body did not end inside a frame.
    pub fn finish(&self) -> Result<(), GrpcWebError> {
        if self.header_len == 0 && self.remaining == 0 { Ok(()) } else { Err(GrpcWebError::TruncatedFrame) }
    }
}

/// The gRPC-Web trailer frame for `trailers`: flag 0x80, length, then
/// `name: value\r\n` per field with lower-case names (PROTOCOL-WEB.md).
pub fn encode_trailers(trailers: &HeaderMap) -> Bytes {
    let block_len: usize = trailers.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    let mut out = BytesMut::with_capacity(HEADER_LEN + block_len);
    out.put_u8(FLAG_TRAILERS);
    out.put_u32(block_len as u32);
    for (name, value) in trailers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.freeze()
}

/// One message frame with flag 0x00 (for tests and synthetic bodies).
pub fn encode_message(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + message.len());
    out.put_u8(FLAG_DATA);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_anywhere_are_followed() {
        let mut body = encode_message(b"hello").to_vec();
        body.extend_from_slice(&encode_message(b""));
        body.extend_from_slice(&encode_message(b"world"));
        for cut in 0..body.len() {
            let mut checker = FrameChecker::default();
            checker.check(&body[..cut]).unwrap();
            checker.check(&body[cut..]).unwrap();
            checker.finish().unwrap();
        }
    }

    #[test]
    fn bad_flags_trailers_and_cut_frames_are_refused() {
        let mut c = FrameChecker::default();
        assert_eq!(c.check(&[0x42, 0, 0, 0, 0]), Err(GrpcWebError::BadFrameFlag(0x42)));
        let mut c = FrameChecker::default();
        assert_eq!(c.check(&[0x80, 0, 0, 0, 0]), Err(GrpcWebError::TrailersInRequest));
        let mut c = FrameChecker::default();
        c.check(&[0, 0, 0, 0, 9, 1, 2]).unwrap();
        assert_eq!(c.finish(), Err(GrpcWebError::TruncatedFrame));
    }

    #[test]
    fn trailer_frame_matches_the_fixture() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "0".parse().unwrap());
        t.insert("grpc-message", "ok".parse().unwrap());
        let frame = encode_trailers(&t);
        let block = b"grpc-status: 0\r\ngrpc-message: ok\r\n";
        assert_eq!(frame[0], 0x80);
        assert_eq!(u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize, block.len());
        assert_eq!(&frame[5..], &block[..]);
    }
}
