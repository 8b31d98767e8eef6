//! The capsules on a session's CONNECT stream (the Capsule Protocol, RFC
//! 9297 §3.2, carried in HTTP/3 DATA frames): the client's are read for the
//! one that matters to us, CLOSE_WEBTRANSPORT_SESSION (draft-ietf-webtrans-http3-02
//! §5); ours is that same capsule when we close the session. A pure state
//! machine and an encoder: bytes in, at most one close out; no I/O.
//!
//! ```text
//! Capsule { Type (i), Length (i), Value (..) }
//! CLOSE_WEBTRANSPORT_SESSION { Type = 0x2843, Length, Application Error Code (32), Application Error Message (..) }
//! ```
//! Other capsule types (DRAIN_WEBTRANSPORT_SESSION, grease, datagrams) are
//! skipped without being buffered.

use bytes::{Buf, Bytes, BytesMut};

/// Capsule type of CLOSE_WEBTRANSPORT_SESSION (draft-02 §5, IANA).
pub const CLOSE_WEBTRANSPORT_SESSION: u64 = 0x2843;

/// Longest close message we take (bytes). Draft-02 sets no bound; later
/// drafts cap it at 1024 and Chromium sends no more, so 8 KiB is generous
/// and still bounds what one client can make us buffer.
pub const MAX_CLOSE_MESSAGE: usize = 8192;

/// Longest close message we send (bytes): later drafts cap the Application
/// Error Message at 1024 bytes, and a browser may treat a longer one as a
/// malformed capsule, so ours are cut to that (at a character boundary).
pub const MAX_SENT_CLOSE_MESSAGE: usize = 1024;

/// A session's close, either way: the application's code and message, as
/// the client's CLOSE_WEBTRANSPORT_SESSION capsule carried them
/// (`transport.close({closeCode, reason})`), or as we send them in ours
/// (`transport.closed` resolves with them in the browser).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClose {
    /// The 32-bit application error code.
    pub code: u32,
    /// The message; invalid UTF-8 is replaced (it is for logs and the
    /// backend's close frame, not worth failing a close over).
    pub reason: String,
}

impl SessionClose {
    /// This close as a CLOSE_WEBTRANSPORT_SESSION capsule (type, length,
    /// 32-bit code, message), the message cut to `MAX_SENT_CLOSE_MESSAGE` (1024)
    /// bytes so no peer has a reason to refuse it.
    pub fn to_capsule(&self) -> Bytes {
        let reason = cut_at_char_boundary(&self.reason, MAX_SENT_CLOSE_MESSAGE);
        let length = 4 + reason.len();
        let mut out = Vec::with_capacity(2 + 2 + length);
        // Both fit a varint: a constant under 2^14, and at most 4 + 1024.
        let _ = put_varint(&mut out, CLOSE_WEBTRANSPORT_SESSION);
        let _ = put_varint(&mut out, length as u64);
        out.extend_from_slice(&self.code.to_be_bytes());
        out.extend_from_slice(reason.as_bytes());
        out.into()
    }
}

/// The longest start of `text` that is at most `max` bytes and ends on a character boundary.
fn cut_at_char_boundary(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The capsule stream broke the Capsule Protocol's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapsuleError {
    /// A CLOSE_WEBTRANSPORT_SESSION capsule shorter than its 4-byte code.
    CloseTooShort,
    /// A CLOSE_WEBTRANSPORT_SESSION capsule with a message over [`MAX_CLOSE_MESSAGE`].
    CloseTooLong,
    /// The stream ended in the middle of a capsule (RFC 9297 §3.3: malformed).
    Truncated,
}

impl CapsuleError {
    /// Short description, for the session's end reason.
    pub fn as_str(self) -> &'static str {
        match self {
            CapsuleError::CloseTooShort => "CLOSE_WEBTRANSPORT_SESSION capsule without an error code",
            CapsuleError::CloseTooLong => "CLOSE_WEBTRANSPORT_SESSION message too long",
            CapsuleError::Truncated => "CONNECT stream ended inside a capsule",
        }
    }
}

impl std::fmt::Display for CapsuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for CapsuleError {}

/// Reads capsules from the CONNECT stream's data, chunk by chunk.
#[derive(Debug, Default)]
pub struct CapsuleReader {
    /// Bytes of a capsule not complete yet (at most a header and a close capsule).
    buf: BytesMut,
    /// Bytes of a capsule we skip that are still to come.
    skipping: u64,
}

impl CapsuleReader {
    /// A reader at the start of the stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next chunk of the stream; returns the client's close once
    /// a whole CLOSE_WEBTRANSPORT_SESSION capsule has arrived (what follows
    /// it does not matter: the session is over).
    pub fn push(&mut self, mut chunk: impl Buf) -> Result<Option<SessionClose>, CapsuleError> {
        while chunk.has_remaining() {
            if self.skipping > 0 {
                let n = usize::try_from(self.skipping).unwrap_or(usize::MAX).min(chunk.remaining());
                chunk.advance(n);
                self.skipping -= n as u64;
                continue;
            }
            let piece = chunk.chunk();
            let n = piece.len();
            self.buf.extend_from_slice(piece);
            chunk.advance(n);
            if let Some(close) = self.parse()? {
                return Ok(Some(close));
            }
        }
        Ok(None)
    }

    /// The stream ended (FIN): fine between capsules, malformed inside one.
    pub fn finish(&self) -> Result<(), CapsuleError> {
        if self.buf.is_empty() && self.skipping == 0 { Ok(()) } else { Err(CapsuleError::Truncated) }
    }

    /// Consumes the complete capsules in `buf` (starting to skip an
    /// uninteresting one as soon as its header is there).
    fn parse(&mut self) -> Result<Option<SessionClose>, CapsuleError> {
        loop {
            let Some((kind, kind_len)) = varint(&self.buf) else { return Ok(None) };
            let Some((length, length_len)) = varint(&self.buf[kind_len..]) else { return Ok(None) };
            let header = kind_len + length_len;
            if kind != CLOSE_WEBTRANSPORT_SESSION {
                let buffered = (self.buf.len() - header) as u64;
                if length > buffered {
                    self.skipping = length - buffered;
                    self.buf.clear();
                    return Ok(None);
                }
                // Within `buf`, so it fits in a usize.
                self.buf.advance(header + length as usize);
                continue;
            }
            if length < 4 {
                return Err(CapsuleError::CloseTooShort);
            }
            if length > (4 + MAX_CLOSE_MESSAGE) as u64 {
                return Err(CapsuleError::CloseTooLong);
            }
            let length = length as usize; // bounded just above
            if self.buf.len() < header + length {
                return Ok(None);
            }
            let value = &self.buf[header..header + length];
            let code = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
            let reason = String::from_utf8_lossy(&value[4..]).into_owned();
            self.buf.clear();
            return Ok(Some(SessionClose { code, reason }));
        }
    }
}

/// A QUIC variable-length integer (RFC 9000 §16) at the start of `bytes`:
/// its value and its length, or `None` if it is not all there yet.
pub fn varint(bytes: &[u8]) -> Option<(u64, usize)> {
    let first = *bytes.first()?;
    let len = 1usize << (first >> 6);
    let raw = bytes.get(..len)?;
    let value = raw[1..].iter().fold(u64::from(first & 0x3f), |v, b| (v << 8) | u64::from(*b));
    Some((value, len))
}

/// Appends `value` as a QUIC variable-length integer (RFC 9000 §16);
/// `None` for values over 2^62 - 1, which have no encoding.
pub fn put_varint(out: &mut Vec<u8>, value: u64) -> Option<()> {
    match value {
        0..=0x3f => out.push(value as u8),
        0x40..=0x3fff => out.extend_from_slice(&(value as u16 | 0x4000).to_be_bytes()),
        0x4000..=0x3fff_ffff => out.extend_from_slice(&(value as u32 | 0x8000_0000).to_be_bytes()),
        0x4000_0000..=0x3fff_ffff_ffff_ffff => out.extend_from_slice(&(value | 0xc000_0000_0000_0000).to_be_bytes()),
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capsule(kind: u64, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, kind).unwrap();
        put_varint(&mut out, value.len() as u64).unwrap();
        out.extend_from_slice(value);
        out
    }

    fn close(code: u32, reason: &str) -> Vec<u8> {
        let mut value = code.to_be_bytes().to_vec();
        value.extend_from_slice(reason.as_bytes());
        capsule(CLOSE_WEBTRANSPORT_SESSION, &value)
    }

    #[test]
    fn varints_round_trip_at_every_length() {
        for value in [0, 37, 63, 64, 15_293, 16_383, 16_384, 494_878_333, (1 << 30) - 1, 1 << 30, (1 << 62) - 1] {
            let mut out = Vec::new();
            put_varint(&mut out, value).unwrap();
            assert_eq!(varint(&out), Some((value, out.len())), "{value}");
            assert_eq!(varint(&out[..out.len() - 1]), None, "{value}: a cut varint is incomplete");
        }
        assert_eq!(put_varint(&mut Vec::new(), 1 << 62), None);
        // RFC 9000 §A.1 examples.
        assert_eq!(varint(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]), Some((151_288_809_941_952_652, 8)));
        assert_eq!(varint(&[0x9d, 0x7f, 0x3e, 0x7d]), Some((494_878_333, 4)));
        assert_eq!(varint(&[0x7b, 0xbd]), Some((15_293, 2)));
    }

    #[test]
    fn a_close_capsule_gives_code_and_reason_even_byte_by_byte() {
        let bytes = close(4000, "bye");
        assert_eq!(CapsuleReader::new().push(&bytes[..]), Ok(Some(SessionClose { code: 4000, reason: "bye".into() })));
        let mut reader = CapsuleReader::new();
        let mut got = None;
        for b in &bytes {
            assert!(got.is_none(), "close reported before its last byte");
            got = reader.push(&[*b][..]).unwrap();
        }
        assert_eq!(got, Some(SessionClose { code: 4000, reason: "bye".into() }));
    }

    #[test]
    fn other_capsules_are_skipped_whatever_their_size() {
        let mut reader = CapsuleReader::new();
        // A grease capsule announced as 1 MiB, arriving in pieces, then a drain capsule.
        let mut bytes = Vec::new();
        put_varint(&mut bytes, 0x29 * 7 + 0x17).unwrap();
        put_varint(&mut bytes, 1 << 20).unwrap();
        assert_eq!(reader.push(&bytes[..]), Ok(None));
        for _ in 0..16 {
            assert_eq!(reader.push(&vec![0x2f; 1 << 16][..]), Ok(None));
        }
        assert!(reader.buf.is_empty() && reader.skipping == 0);
        assert_eq!(reader.push(&capsule(0x78ae, &[])[..]), Ok(None));
        assert_eq!(reader.finish(), Ok(()));
        let mut tail = capsule(0x1234, b"abc");
        tail.extend(close(0, ""));
        assert_eq!(reader.push(&tail[..]), Ok(Some(SessionClose { code: 0, reason: String::new() })));
    }

    #[test]
    fn our_close_capsule_is_what_the_reader_reads() {
        let sent = SessionClose { code: 4002, reason: "backend done".into() };
        let bytes = sent.to_capsule();
        assert_eq!(&bytes[..3], &[0x68, 0x43, 16], "type 0x2843 as a 2-byte varint, then the length");
        assert_eq!(bytes[..], close(4002, "backend done")[..]);
        assert_eq!(CapsuleReader::new().push(&bytes[..]), Ok(Some(sent)));
        let empty = SessionClose { code: 0, reason: String::new() }.to_capsule();
        assert_eq!(&empty[..], &[0x68, 0x43, 4, 0, 0, 0, 0]);
        let max = SessionClose { code: u32::MAX, reason: String::new() }.to_capsule();
        assert_eq!(&max[3..], &[0xff; 4]);
    }

    #[test]
    fn our_close_message_is_cut_to_1024_bytes_at_a_character_boundary() {
        let long = SessionClose { code: 1011, reason: "é".repeat(600) }; // 1200 bytes
        let bytes = long.to_capsule();
        let got = CapsuleReader::new().push(&bytes[..]).unwrap().unwrap();
        assert_eq!(got.code, 1011);
        assert_eq!(got.reason.len(), 1024);
        assert!(long.reason.starts_with(&got.reason));
        let odd = SessionClose { code: 1, reason: format!("x{}", "é".repeat(600)) };
        let got = CapsuleReader::new().push(&odd.to_capsule()[..]).unwrap().unwrap();
        assert_eq!(got.reason.len(), 1023, "a 2-byte character is not split");
        let short = SessionClose { code: 1, reason: "x".repeat(1024) };
        assert_eq!(CapsuleReader::new().push(&short.to_capsule()[..]).unwrap().unwrap(), short);
    }

    #[test]
    fn bad_close_capsules_and_truncation_are_errors_not_panics() {
        assert_eq!(
            CapsuleReader::new().push(&capsule(CLOSE_WEBTRANSPORT_SESSION, &[0, 0])[..]),
            Err(CapsuleError::CloseTooShort)
        );
        let long = vec![b'x'; MAX_CLOSE_MESSAGE + 1];
        let mut value = 7u32.to_be_bytes().to_vec();
        value.extend_from_slice(&long);
        let bytes = capsule(CLOSE_WEBTRANSPORT_SESSION, &value);
        // Refused from its header, before the message is buffered.
        assert_eq!(CapsuleReader::new().push(&bytes[..8]), Err(CapsuleError::CloseTooLong));
        let mut reader = CapsuleReader::new();
        assert_eq!(reader.push(&close(1, "cut")[..5]), Ok(None));
        assert_eq!(reader.finish(), Err(CapsuleError::Truncated));
        let mut reader = CapsuleReader::new();
        assert_eq!(reader.push(&[0x40][..]), Ok(None), "half a varint");
        assert_eq!(reader.finish(), Err(CapsuleError::Truncated));
        // Not UTF-8: replaced, still a close.
        let mut value = 9u32.to_be_bytes().to_vec();
        value.extend_from_slice(&[0xff, b'o', b'k']);
        let got = CapsuleReader::new().push(&capsule(CLOSE_WEBTRANSPORT_SESSION, &value)[..]).unwrap().unwrap();
        assert_eq!((got.code, got.reason.as_str()), (9, "\u{fffd}ok"));
    }
}
