//! HTTP/2 frame layout (RFC 9113 §4.1, §6): the 9-byte frame header, the
//! frame types and flags our client uses, and writers for the frames it
//! sends. Payloads are parsed where they are handled (`client::conn`).

use bytes::{BufMut, BytesMut};

/// Length of the frame header.
pub const HEAD_LEN: usize = 9;
/// The client connection preface (§3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// SETTINGS_MAX_FRAME_SIZE's initial value and floor (§6.5.2).
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16_384;
/// The flow-control window every stream and the connection start with (§6.9.2).
pub const DEFAULT_WINDOW: u32 = 65_535;
/// A peer's HPACK table size until its SETTINGS say otherwise (§6.5.2).
pub const DEFAULT_HEADER_TABLE_SIZE: u32 = 4096;
/// Largest flow-control window (§6.9.1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Frame types (§6).
pub mod kind {
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const PRIORITY: u8 = 0x2;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PUSH_PROMISE: u8 = 0x5;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const WINDOW_UPDATE: u8 = 0x8;
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (§6).
pub mod flag {
    pub const END_STREAM: u8 = 0x1;
    pub const ACK: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    pub const PADDED: u8 = 0x8;
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS identifiers (§6.5.2).
pub mod setting {
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    pub const ENABLE_PUSH: u16 = 0x2;
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
    /// RFC 8441 §3: extended CONNECT (WebSocket over HTTP/2).
    pub const ENABLE_CONNECT_PROTOCOL: u16 = 0x8;
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
}

impl Head {
    /// Parses the first [`HEAD_LEN`] bytes of `buf` (which must hold them).
    pub fn parse(buf: &[u8]) -> Head {
        Head {
            len: (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]),
            kind: buf[3],
            flags: buf[4],
            // The reserved bit is ignored on receipt (§4.1).
            stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & MAX_WINDOW,
        }
    }

    /// Whether `flag` is set on this frame.
    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

/// Writes a frame header.
pub fn put_head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len < 1 << 24);
    out.put_u8((len >> 16) as u8);
    out.put_u16(len as u16);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// A header block as HEADERS plus as many CONTINUATIONs as `max_frame` needs (§6.2, §6.10).
pub fn put_headers(out: &mut BytesMut, stream: u32, block: &[u8], end_stream: bool, max_frame: usize) {
    let end = if end_stream { flag::END_STREAM } else { 0 };
    let mut chunks = block.chunks(max_frame).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let last = chunks.peek().is_none();
    put_head(out, first.len(), kind::HEADERS, end | if last { flag::END_HEADERS } else { 0 }, stream);
    out.extend_from_slice(first);
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        put_head(out, chunk.len(), kind::CONTINUATION, if last { flag::END_HEADERS } else { 0 }, stream);
        out.extend_from_slice(chunk);
    }
}

/// DATA frames for `data`, split at `max_frame`; END_STREAM on the last when `end`.
pub fn put_data(out: &mut BytesMut, stream: u32, data: &[u8], end: bool, max_frame: usize) {
    if data.is_empty() {
        put_head(out, 0, kind::DATA, if end { flag::END_STREAM } else { 0 }, stream);
        return;
    }
    let mut chunks = data.chunks(max_frame).peekable();
    while let Some(chunk) = chunks.next() {
        let flags = if end && chunks.peek().is_none() { flag::END_STREAM } else { 0 };
        put_head(out, chunk.len(), kind::DATA, flags, stream);
        out.extend_from_slice(chunk);
    }
}

/// RST_STREAM (§6.4).
pub fn put_reset(out: &mut BytesMut, stream: u32, code: u32) {
    put_head(out, 4, kind::RST_STREAM, 0, stream);
    out.put_u32(code);
}

/// WINDOW_UPDATE (§6.9); stream 0 is the connection.
pub fn put_window_update(out: &mut BytesMut, stream: u32, increment: u32) {
    put_head(out, 4, kind::WINDOW_UPDATE, 0, stream);
    out.put_u32(increment);
}

/// PING (§6.7), or its acknowledgement.
pub fn put_ping(out: &mut BytesMut, payload: [u8; 8], ack: bool) {
    put_head(out, 8, kind::PING, if ack { flag::ACK } else { 0 }, 0);
    out.extend_from_slice(&payload);
}

/// GOAWAY (§6.8) with no debug data.
pub fn put_goaway(out: &mut BytesMut, last_stream: u32, code: u32) {
    put_head(out, 8, kind::GOAWAY, 0, 0);
    out.put_u32(last_stream);
    out.put_u32(code);
}

/// SETTINGS (§6.5) with the given parameters; none and `ack` is the acknowledgement.
pub fn put_settings(out: &mut BytesMut, params: &[(u16, u32)], ack: bool) {
    put_head(out, params.len() * 6, kind::SETTINGS, if ack { flag::ACK } else { 0 }, 0);
    for &(id, value) in params {
        out.put_u16(id);
        out.put_u32(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips() {
        let mut out = BytesMut::new();
        put_head(&mut out, 70_000, kind::HEADERS, flag::END_HEADERS | flag::END_STREAM, 7);
        assert_eq!(
            Head::parse(&out),
            Head { len: 70_000, kind: kind::HEADERS, flags: flag::END_HEADERS | flag::END_STREAM, stream: 7 }
        );
    }

    #[test]
    fn a_large_header_block_continues_and_only_the_last_frame_ends_headers() {
        let mut out = BytesMut::new();
        put_headers(&mut out, 3, &[1u8; 40_000], true, 16_384);
        let first = Head::parse(&out);
        assert_eq!((first.len, first.kind, first.flags), (16_384, kind::HEADERS, flag::END_STREAM));
        let second = Head::parse(&out[9 + 16_384..]);
        assert_eq!((second.len, second.kind, second.flags), (16_384, kind::CONTINUATION, 0));
        let third = Head::parse(&out[2 * (9 + 16_384)..]);
        assert_eq!((third.len, third.kind, third.flags), (40_000 - 32_768, kind::CONTINUATION, flag::END_HEADERS));
        assert_eq!(out.len(), 3 * 9 + 40_000);
    }

    #[test]
    fn data_splits_at_the_frame_size_and_ends_on_the_last() {
        let mut out = BytesMut::new();
        put_data(&mut out, 1, &[0u8; 20_000], true, 16_384);
        assert_eq!(Head::parse(&out).flags, 0);
        let last = Head::parse(&out[9 + 16_384..]);
        assert_eq!((last.len, last.flags), (20_000 - 16_384, flag::END_STREAM));
    }
}
