//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B), decoding only: we
//! send string literals raw, and read whatever a backend sends.
//!
//! The code is canonical (within one length, codes run in symbol order), so
//! the table of code lengths alone defines it: decoding keeps, per length,
//! the first code and where that length's symbols start in symbol order.

use bytes::{BufMut, BytesMut};

/// Code length in bits of each symbol, 0–255 and EOS (256), from RFC 7541 Appendix B.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28,
    28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12,
    10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6,
    5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22,
    22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22, 21, 20,
    22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28,
    27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28,
    27, 27, 27, 27, 27, 26, 30,
];

const EOS: u16 = 256;
const MAX_LEN: usize = 30;

/// Per code length: the first code, the number of codes, and the index in
/// [`Tables::symbols`] of the first symbol with that length.
struct Tables {
    first_code: [u32; MAX_LEN + 1],
    count: [u32; MAX_LEN + 1],
    first_index: [u32; MAX_LEN + 1],
    /// Symbols sorted by (code length, symbol).
    symbols: [u16; 257],
}

const TABLES: Tables = build();

const fn build() -> Tables {
    let mut count = [0u32; MAX_LEN + 1];
    let mut i = 0;
    while i < 257 {
        count[CODE_LENGTHS[i] as usize] += 1;
        i += 1;
    }
    let mut first_code = [0u32; MAX_LEN + 1];
    let mut first_index = [0u32; MAX_LEN + 1];
    let mut code = 0u32;
    let mut index = 0u32;
    let mut len = 1;
    while len <= MAX_LEN {
        first_code[len] = code;
        first_index[len] = index;
        code = (code + count[len]) << 1;
        index += count[len];
        len += 1;
    }
    let mut symbols = [0u16; 257];
    let mut filled = [0u32; MAX_LEN + 1];
    let mut symbol = 0;
    while symbol < 257 {
        let len = CODE_LENGTHS[symbol] as usize;
        symbols[(first_index[len] + filled[len]) as usize] = symbol as u16;
        filled[len] += 1;
        symbol += 1;
    }
    Tables { first_code, count, first_index, symbols }
}

/// The Huffman-coded string was malformed (RFC 7541 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HuffmanError;

/// Appends the decoding of `input` to `out`.
pub fn decode(input: &[u8], out: &mut BytesMut) -> Result<(), HuffmanError> {
    let t = &TABLES;
    out.reserve(input.len() * 8 / 5);
    let mut code = 0u32;
    let mut len = 0usize;
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            let offset = code.wrapping_sub(t.first_code[len]);
            if offset < t.count[len] {
                let symbol = t.symbols[(t.first_index[len] + offset) as usize];
                if symbol == EOS {
                    return Err(HuffmanError);
                }
                out.put_u8(symbol as u8);
                code = 0;
                len = 0;
            } else if len == MAX_LEN {
                return Err(HuffmanError);
            }
        }
    }
    // Padding: the most significant bits of EOS (all ones), shorter than a byte.
    if len > 7 || code != (1 << len) - 1 {
        return Err(HuffmanError);
    }
    Ok(())
}

/// The canonical code of `symbol` (tests encode with it).
#[cfg(test)]
pub fn code_of(symbol: usize) -> (u32, u8) {
    let t = &TABLES;
    let len = CODE_LENGTHS[symbol] as usize;
    let rank = (0..symbol).filter(|&s| CODE_LENGTHS[s] as usize == len).count() as u32;
    (t.first_code[len] + rank, len as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(input: &[u8]) -> Vec<u8> {
        let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
        for &b in input {
            let (code, len) = code_of(b as usize);
            acc = (acc << len) | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
        }
        out
    }

    #[test]
    fn the_rfc_examples_decode() {
        // RFC 7541 C.4.1: "www.example.com"
        let coded = [0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff];
        let mut out = BytesMut::new();
        decode(&coded, &mut out).unwrap();
        assert_eq!(&out[..], b"www.example.com");
        // RFC 7541 C.6.1: "Mon, 21 Oct 2013 20:13:21 GMT"
        let coded = [
            0xd0, 0x7a, 0xbe, 0x94, 0x10, 0x54, 0xd4, 0x44, 0xa8, 0x20, 0x05, 0x95, 0x04, 0x0b, 0x81, 0x66, 0xe0, 0x82,
            0xa6, 0x2d, 0x1b, 0xff,
        ];
        let mut out = BytesMut::new();
        decode(&coded, &mut out).unwrap();
        assert_eq!(&out[..], b"Mon, 21 Oct 2013 20:13:21 GMT");
    }

    #[test]
    fn every_byte_value_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        let mut out = BytesMut::new();
        decode(&encode(&all), &mut out).unwrap();
        assert_eq!(&out[..], &all[..]);
    }

    #[test]
    fn bad_padding_and_eos_are_errors() {
        // "0" is 00000 (5 bits); padding with zeros instead of ones.
        assert_eq!(decode(&[0b0000_0000], &mut BytesMut::new()), Err(HuffmanError));
        // A whole byte of padding (8 ones) is too long.
        let mut coded = encode(b"a");
        coded.push(0xff);
        assert_eq!(decode(&coded, &mut BytesMut::new()), Err(HuffmanError));
        // EOS itself (30 ones) is never valid in a string.
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff], &mut BytesMut::new()), Err(HuffmanError));
    }
}
