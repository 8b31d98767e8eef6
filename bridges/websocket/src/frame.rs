//! RFC 6455 §5 framing as the byte-stream tunnel needs it: frame headers
//! parsed where they lie in the read buffer, mask keys rewritten in place,
//! UTF-8 checked across fragments and close payloads checked. Payloads are
//! never copied out of the buffer they were read into.

use crate::close::ReadFault;

/// Frame opcodes (RFC 6455 §5.2).
pub(crate) mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Largest payload of a control frame (RFC 6455 §5.5).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;

/// A parsed frame header; the bytes stay in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub fin: bool,
    /// RSV1: "compressed" under permessage-deflate (RFC 7692 §6).
    pub rsv1: bool,
    pub opcode: u8,
    /// The masking key, when the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Header bytes, mask key included (2 to 14).
    pub len: usize,
    pub payload_len: u64,
}

impl Header {
    /// True for close, ping and pong (opcodes with the high bit set, §5.5).
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// Header plus payload, if it fits in memory at all.
    pub fn frame_len(&self) -> Option<usize> {
        usize::try_from(self.payload_len).ok()?.checked_add(self.len)
    }
}

/// Parses the header at the start of `buf`: `Ok(None)` until enough bytes
/// are there. Rejects what no extension we allow can make valid: RSV2 and
/// RSV3, reserved opcodes, a 64-bit length with its top bit set (§5.2).
pub(crate) fn parse_header(buf: &[u8]) -> Result<Option<Header>, ReadFault> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b0 & 0x30 != 0 {
        return Err(ReadFault::Protocol);
    }
    let opcode = b0 & 0x0F;
    if !matches!(
        opcode,
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY | opcode::CLOSE | opcode::PING | opcode::PONG
    ) {
        return Err(ReadFault::Protocol);
    }
    let masked = b1 & 0x80 != 0;
    let (len_bytes, short) = match b1 & 0x7F {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let len = 2 + len_bytes + if masked { 4 } else { 0 };
    if buf.len() < len {
        return Ok(None);
    }
    let payload_len = match short {
        Some(n) => n,
        None if len_bytes == 2 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        None => {
            let n = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if n >> 63 != 0 {
                return Err(ReadFault::Protocol);
            }
            n
        }
    };
    let mask = masked.then(|| buf[len - 4..len].try_into().expect("4 bytes"));
    Ok(Some(Header { fin: b0 & 0x80 != 0, rsv1: b0 & 0x40 != 0, opcode, mask, len, payload_len }))
}

/// XORs `data` with a masking key (RFC 6455 §5.3), eight bytes at a time;
/// the key's phase starts at the first byte of `data`.
pub(crate) fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    if key == [0; 4] {
        return;
    }
    let word = u32::from_ne_bytes(key);
    let wide = u64::from(word) | (u64::from(word) << 32);
    let (chunks, rest) = data.as_chunks_mut::<8>();
    for chunk in chunks {
        *chunk = (u64::from_ne_bytes(*chunk) ^ wide).to_ne_bytes();
    }
    // `rest` starts at a multiple of 8, so the key's phase is 0 again.
    for (byte, k) in rest.iter_mut().zip(key.iter().cycle()) {
        *byte ^= k;
    }
}

/// A fresh masking key from a cryptographic generator: RFC 6455 §5.3 wants
/// keys the client's application cannot predict.
pub(crate) fn fresh_mask() -> [u8; 4] {
    // One 32-bit draw: `random::<[u8; 4]>()` would draw a `u32` per byte.
    rand::random::<u32>().to_ne_bytes()
}

/// Checks a close frame's payload (§5.5.1, §7.4): empty, or a code we may
/// receive and a UTF-8 reason. Returns the code.
pub(crate) fn check_close(payload: &[u8]) -> Result<Option<u16>, ReadFault> {
    match payload {
        [] => Ok(None),
        [_] => Err(ReadFault::Protocol),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_close_code(code) {
                return Err(ReadFault::Protocol);
            }
            std::str::from_utf8(reason).map_err(|_| ReadFault::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

/// Codes that may appear on the wire (RFC 6455 §7.4.1–2 and the IANA
/// registry's 1012–1014); 1004–1006 and 1015 are reserved, under 1000 and
/// 1016–2999 unassigned.
fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Encodes a control frame the gateway itself sends (ping or close),
/// masked when it goes to the backend (we are its client, §5.1).
pub(crate) fn control_frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    debug_assert!(payload.len() <= MAX_CONTROL_PAYLOAD);
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.push(0x80 | opcode);
    let len = payload.len() as u8;
    if masked {
        let key = fresh_mask();
        frame.push(0x80 | len);
        frame.extend_from_slice(&key);
        let start = frame.len();
        frame.extend_from_slice(payload);
        apply_mask(&mut frame[start..], key);
    } else {
        frame.push(len);
        frame.extend_from_slice(payload);
    }
    frame
}

/// A close frame's payload: the code and one of the gateway's own reasons
/// (static ASCII, at most 123 bytes, RFC 6455 §5.5.1; as in [`crate::close::frame`]).
pub(crate) fn close_payload(code: u16, reason: &'static str) -> Vec<u8> {
    debug_assert!(reason.len() <= MAX_CONTROL_PAYLOAD - 2);
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason.as_bytes());
    payload
}

/// UTF-8 validity of a text message fed fragment by fragment: a character
/// may be split between fragments (§5.6), so up to three bytes carry over.
#[derive(Debug, Default)]
pub(crate) struct Utf8Check {
    carry: [u8; 4],
    carried: u8,
}

impl Utf8Check {
    /// Feeds the next fragment's payload; `last` when it ends the message.
    /// False as soon as the text cannot be valid UTF-8.
    pub fn feed(&mut self, mut data: &[u8], last: bool) -> bool {
        // Most text is ASCII: a word-at-a-time scan, several times cheaper
        // than `from_utf8` on a short payload, settles it.
        if self.carried == 0 && data.is_ascii() {
            return true;
        }
        if self.carried > 0 {
            let have = usize::from(self.carried);
            let want = sequence_len(self.carry[0]).max(have + 1);
            let take = (want - have).min(data.len());
            self.carry[have..have + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            let filled = have + take;
            match std::str::from_utf8(&self.carry[..filled]) {
                Ok(_) => self.carried = 0,
                // Still a valid beginning: wait for the next fragment.
                Err(e) if e.error_len().is_none() && filled < want => {
                    self.carried = filled as u8;
                    return !last;
                }
                Err(_) => return false,
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => true,
            Err(e) if e.error_len().is_none() && !last => {
                let tail = &data[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carried = tail.len() as u8;
                true
            }
            Err(_) => false,
        }
    }
}

/// Length of the UTF-8 sequence a leading byte starts (1 for anything
/// invalid, which then fails the check).
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_of_every_length_form_parse_and_wait_for_their_bytes() {
        assert_eq!(parse_header(&[0x81]), Ok(None));
        let short = parse_header(&[0x81, 0x85, 1, 2, 3, 4]).unwrap().unwrap();
        assert_eq!((short.fin, short.opcode, short.len, short.payload_len), (true, 1, 6, 5));
        assert_eq!(short.mask, Some([1, 2, 3, 4]));
        assert_eq!(parse_header(&[0x02, 0x7E, 0x01]), Ok(None));
        let medium = parse_header(&[0x02, 0x7E, 0x01, 0x00]).unwrap().unwrap();
        assert_eq!((medium.fin, medium.len, medium.payload_len, medium.mask), (false, 4, 256, None));
        let mut long = vec![0x82, 0x7F];
        long.extend_from_slice(&(1u64 << 20).to_be_bytes());
        assert_eq!(parse_header(&long).unwrap().unwrap().payload_len, 1 << 20);
        long[2] = 0x80;
        assert_eq!(parse_header(&long), Err(ReadFault::Protocol), "top bit of a 64-bit length");
    }

    #[test]
    fn reserved_bits_and_opcodes_are_protocol_errors() {
        assert_eq!(parse_header(&[0xA1, 0x00]), Err(ReadFault::Protocol), "RSV2");
        assert_eq!(parse_header(&[0x91, 0x00]), Err(ReadFault::Protocol), "RSV3");
        assert_eq!(parse_header(&[0x83, 0x00]), Err(ReadFault::Protocol), "opcode 3");
        assert_eq!(parse_header(&[0x8B, 0x00]), Err(ReadFault::Protocol), "opcode 0xB");
        assert!(parse_header(&[0xC1, 0x00]).unwrap().unwrap().rsv1, "RSV1 is left to the extension check");
    }

    #[test]
    fn masking_twice_restores_the_payload_at_every_length() {
        for len in 0..40 {
            let original: Vec<u8> = (0..len as u8).collect();
            let mut data = original.clone();
            apply_mask(&mut data, [0xA5, 0x01, 0xFF, 0x3C]);
            for (i, (m, o)) in data.iter().zip(&original).enumerate() {
                assert_eq!(m ^ o, [0xA5, 0x01, 0xFF, 0x3C][i % 4], "byte {i} of {len}");
            }
            apply_mask(&mut data, [0xA5, 0x01, 0xFF, 0x3C]);
            assert_eq!(data, original);
        }
    }

    #[test]
    fn close_payloads_are_checked_for_code_and_utf8() {
        assert_eq!(check_close(&[]), Ok(None));
        assert_eq!(check_close(&[0x03]), Err(ReadFault::Protocol));
        assert_eq!(check_close(&1000u16.to_be_bytes()), Ok(Some(1000)));
        assert_eq!(check_close(&4999u16.to_be_bytes()), Ok(Some(4999)));
        for reserved in [999u16, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            assert_eq!(check_close(&reserved.to_be_bytes()), Err(ReadFault::Protocol), "{reserved}");
        }
        assert_eq!(check_close(&[0x03, 0xE8, 0xFF]), Err(ReadFault::InvalidUtf8));
    }

    #[test]
    fn utf8_is_checked_across_fragment_boundaries() {
        let euro = "€".as_bytes(); // E2 82 AC
        let mut check = Utf8Check::default();
        assert!(check.feed(&[b'a', euro[0]], false));
        assert!(check.feed(&euro[1..2], false));
        assert!(check.feed(&[euro[2], b'b'], true));

        let mut truncated = Utf8Check::default();
        assert!(truncated.feed(&[b'a', euro[0], euro[1]], false));
        assert!(!truncated.feed(b"a", true), "a sequence cut short and never finished");

        let mut ends_open = Utf8Check::default();
        assert!(!ends_open.feed(&[b'a', euro[0]], true), "the message ends inside a character");

        assert!(!Utf8Check::default().feed(&[0x66, 0xFF], false), "an invalid byte fails at once");
        let mut bad_continuation = Utf8Check::default();
        assert!(bad_continuation.feed(&[euro[0]], false));
        assert!(!bad_continuation.feed(b"x", false), "a lead byte followed by ASCII");
    }

    #[test]
    fn gateway_control_frames_are_masked_only_toward_the_backend() {
        let plain = control_frame(opcode::PING, b"hi", false);
        assert_eq!(plain, vec![0x89, 0x02, b'h', b'i']);
        let mut masked = control_frame(opcode::CLOSE, &close_payload(1001, "bye"), true);
        let header = parse_header(&masked).unwrap().unwrap();
        assert_eq!((header.opcode, header.payload_len), (opcode::CLOSE, 5));
        let key = header.mask.unwrap();
        apply_mask(&mut masked[header.len..], key);
        assert_eq!(check_close(&masked[header.len..]), Ok(Some(1001)));
    }
}
