//! The `-text` encodings: base64 (RFC 4648 §4, standard alphabet, padded).
//!
//! gRPC-Web protocol doc (PROTOCOL-WEB.md, "Text-encoded (response) streams"):
//! a text stream may be several padded base64 chunks back to back, so each
//! 4-character group is decoded on its own; a group that ends in `=` ends a run.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Bytes, BytesMut};

use crate::GrpcWebError;

/// Decodes a base64 stream that arrives in arbitrary pieces.
#[derive(Debug, Default)]
pub struct Base64Decoder {
    /// Up to 3 characters of an incomplete group from the previous piece.
    pending: Vec<u8>,
}

impl Base64Decoder {
    /// Decodes every complete 4-character group seen so far (whitespace is
    /// skipped); keeps an incomplete group for the next piece.
    pub fn decode(&mut self, input: &[u8]) -> Result<Bytes, GrpcWebError> {
        let mut text = std::mem::take(&mut self.pending);
        text.extend(input.iter().copied().filter(|b| !b.is_ascii_whitespace()));
        let whole = text.len() / 4 * 4;
        self.pending = text[whole..].to_vec();
        let text = &text[..whole];
        let mut out = BytesMut::with_capacity(whole / 4 * 3);
        let mut run_start = 0;
        for group in (0..whole).step_by(4) {
            let end = group + 4;
            // A padded group closes a run: decode the run, start a new one.
            if text[end - 1] == b'=' || end == whole {
                decode_run(&text[run_start..end], &mut out)?;
                run_start = end;
            }
        }
        Ok(out.freeze())
    }

    /// Checks that the stream did not end mid-group.
    pub fn finish(&self) -> Result<(), GrpcWebError> {
        if self.pending.is_empty() { Ok(()) } else { Err(GrpcWebError::TruncatedBase64) }
    }
}

fn decode_run(run: &[u8], out: &mut BytesMut) -> Result<(), GrpcWebError> {
    let start = out.len();
    out.resize(start + run.len() / 4 * 3, 0);
    match STANDARD.decode_slice(run, &mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(_) => Err(GrpcWebError::InvalidBase64),
    }
}

/// Encodes one response chunk as padded base64, so that it can be decoded
/// without the chunks around it.
pub fn encode(chunk: &[u8]) -> Bytes {
    Bytes::from(STANDARD.encode(chunk))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_and_split_input_decode_alike() {
        let mut d = Base64Decoder::default();
        assert_eq!(&d.decode(b"aGVsbG8=").unwrap()[..], b"hello");
        let mut d = Base64Decoder::default();
        let mut all = Vec::new();
        for piece in [&b"aG"[..], b"VsbG", b"8", b"="] {
            all.extend_from_slice(&d.decode(piece).unwrap());
        }
        assert_eq!(all, b"hello");
        assert!(d.finish().is_ok());
    }

    #[test]
    fn concatenated_padded_chunks_decode_group_by_group() {
        // "hello" + "!" each encoded on its own, back to back.
        let mut d = Base64Decoder::default();
        assert_eq!(&d.decode(b"aGVsbG8=IQ==").unwrap()[..], b"hello!");
    }

    #[test]
    fn bad_characters_and_a_cut_group_are_errors() {
        assert_eq!(Base64Decoder::default().decode(b"!!!!"), Err(GrpcWebError::InvalidBase64));
        let mut d = Base64Decoder::default();
        d.decode(b"aGVsb").unwrap();
        assert_eq!(d.finish(), Err(GrpcWebError::TruncatedBase64));
    }

    #[test]
    fn encode_pads_each_chunk() {
        assert_eq!(&encode(b"!")[..], b"IQ==");
    }
}
