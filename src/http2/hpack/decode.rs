//! The HPACK decoder (RFC 7541 §6): header blocks to fields, keeping the
//! dynamic table in step with the peer's encoder.

use bytes::{Bytes, BytesMut};
use http::HeaderName;

use super::table::{DynamicTable, static_field};
use super::{Field, Name, huffman};

/// A header block that cannot be decoded: a connection error
/// (COMPRESSION_ERROR, RFC 9113 §4.3), since the table is now out of step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The block ended inside a field.
    Truncated,
    /// An integer too large for any sane field (over 2^28).
    IntegerOverflow,
    /// An index that names no entry (0, or past the dynamic table's end).
    BadIndex(usize),
    /// A Huffman-coded string that is malformed.
    Huffman,
    /// A table size update above the size we announced, or after the first field.
    BadSizeUpdate,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("HPACK block ends inside a field"),
            DecodeError::IntegerOverflow => f.write_str("HPACK integer too large"),
            DecodeError::BadIndex(i) => write!(f, "HPACK index {i} names no table entry"),
            DecodeError::Huffman => f.write_str("malformed Huffman-coded HPACK string"),
            DecodeError::BadSizeUpdate => f.write_str("invalid HPACK dynamic table size update"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// See the module doc. One per connection, fed every header block in order.
#[derive(Debug)]
pub struct Decoder {
    table: DynamicTable,
    /// The SETTINGS_HEADER_TABLE_SIZE we announced: the most a size update may ask for.
    limit: usize,
}

impl Decoder {
    /// A decoder for a connection on which we announced `limit` (4,096 by default).
    pub fn new(limit: usize) -> Self {
        Self { table: DynamicTable::new(limit), limit }
    }

    /// Decodes one complete header block (HEADERS plus CONTINUATIONs),
    /// handing each field to `each` in order.
    pub fn decode(&mut self, block: &Bytes, mut each: impl FnMut(Field)) -> Result<(), DecodeError> {
        let mut cursor = Cursor { block, pos: 0 };
        let mut first = true;
        while let Some(&byte) = block.get(cursor.pos) {
            if byte & 0x80 != 0 {
                let index = cursor.integer(7)?;
                each(self.indexed(index)?);
            } else if byte & 0xc0 == 0x40 {
                let field = self.literal(&mut cursor, 6)?;
                self.table.insert(field.clone());
                each(field);
            } else if byte & 0xe0 == 0x20 {
                // §4.2: only at the start of a block.
                let size = cursor.integer(5)?;
                if !first || size > self.limit {
                    return Err(DecodeError::BadSizeUpdate);
                }
                self.table.resize(size);
                continue;
            } else {
                // Without indexing (0000) or never indexed (0001): same layout.
                each(self.literal(&mut cursor, 4)?);
            }
            first = false;
        }
        Ok(())
    }

    fn indexed(&self, index: usize) -> Result<Field, DecodeError> {
        if let Some((name, value)) = static_field(index) {
            return Ok(Field { name: static_name(name), value });
        }
        self.table.get(index).cloned().ok_or(DecodeError::BadIndex(index))
    }

    /// A literal field whose name index has a `prefix`-bit prefix.
    fn literal(&self, cursor: &mut Cursor<'_>, prefix: u8) -> Result<Field, DecodeError> {
        let index = cursor.integer(prefix)?;
        let name = if index == 0 { parse_name(cursor.string()?) } else { self.indexed(index)?.name };
        let value = cursor.string()?;
        Ok(Field { name, value })
    }
}

/// A static table name as a [`Name`] (all are valid lowercase names).
fn static_name(name: &'static str) -> Name {
    if name.starts_with(':') {
        Name::Pseudo(Bytes::from_static(name.as_bytes()))
    } else {
        Name::Header(HeaderName::from_static(name))
    }
}

/// A literal name: pseudo-header, valid lowercase field name, or malformed.
fn parse_name(raw: Bytes) -> Name {
    if raw.first() == Some(&b':') {
        return Name::Pseudo(raw);
    }
    // `HeaderName` would quietly lowercase; HTTP/2 forbids uppercase (RFC 9113 §8.2.1).
    if raw.iter().any(u8::is_ascii_uppercase) {
        return Name::Malformed(raw);
    }
    match HeaderName::from_bytes(&raw) {
        Ok(name) => Name::Header(name),
        Err(_) => Name::Malformed(raw),
    }
}

struct Cursor<'a> {
    block: &'a Bytes,
    pos: usize,
}

impl Cursor<'_> {
    /// An integer with an N-bit prefix (§5.1).
    fn integer(&mut self, prefix: u8) -> Result<usize, DecodeError> {
        let mask = (1u8 << prefix) - 1;
        let first = *self.block.get(self.pos).ok_or(DecodeError::Truncated)? & mask;
        self.pos += 1;
        if first < mask {
            return Ok(usize::from(first));
        }
        let mut value = usize::from(mask);
        let mut shift = 0;
        loop {
            let byte = *self.block.get(self.pos).ok_or(DecodeError::Truncated)?;
            self.pos += 1;
            value += usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
            shift += 7;
            if shift > 21 {
                return Err(DecodeError::IntegerOverflow);
            }
        }
    }

    /// A string literal (§5.2): raw bytes are a slice of the block, no copy.
    fn string(&mut self) -> Result<Bytes, DecodeError> {
        let huffman = *self.block.get(self.pos).ok_or(DecodeError::Truncated)? & 0x80 != 0;
        let len = self.integer(7)?;
        let end = self.pos.checked_add(len).filter(|&end| end <= self.block.len()).ok_or(DecodeError::Truncated)?;
        let raw = self.block.slice(self.pos..end);
        self.pos = end;
        if !huffman {
            return Ok(raw);
        }
        let mut out = BytesMut::new();
        huffman::decode(&raw, &mut out).map_err(|_| DecodeError::Huffman)?;
        Ok(out.freeze())
    }
}

/// The static table's length, for tests that index past it.
#[cfg(test)]
pub const STATIC_LEN: usize = super::table::STATIC.len();

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(decoder: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, DecodeError> {
        let mut out = Vec::new();
        decoder.decode(&Bytes::copy_from_slice(block), |f| {
            let name = match f.name {
                Name::Pseudo(p) | Name::Malformed(p) => String::from_utf8(p.to_vec()).unwrap(),
                Name::Header(h) => h.as_str().to_owned(),
            };
            out.push((name, String::from_utf8(f.value.to_vec()).unwrap()));
        })?;
        Ok(out)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn rfc_7541_c3_requests_without_huffman_share_a_table() {
        let mut d = Decoder::new(4096);
        let first = [
            0x82, 0x86, 0x84, 0x41, 0x0f, b'w', b'w', b'w', b'.', b'e', b'x', b'a', b'm', b'p', b'l', b'e', b'.', b'c',
            b'o', b'm',
        ];
        assert_eq!(
            fields(&mut d, &first).unwrap(),
            pairs(&[(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")])
        );
        assert_eq!(d.table.size(), 57);
        let second = [0x82, 0x86, 0x84, 0xbe, 0x58, 0x08, b'n', b'o', b'-', b'c', b'a', b'c', b'h', b'e'];
        assert_eq!(
            fields(&mut d, &second).unwrap(),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ])
        );
        assert_eq!(d.table.size(), 110);
    }

    #[test]
    fn rfc_7541_c6_responses_with_huffman_evict_the_oldest() {
        let mut d = Decoder::new(256);
        let first = [
            0x48, 0x82, 0x64, 0x02, 0x58, 0x85, 0xae, 0xc3, 0x77, 0x1a, 0x4b, 0x61, 0x96, 0xd0, 0x7a, 0xbe, 0x94, 0x10,
            0x54, 0xd4, 0x44, 0xa8, 0x20, 0x05, 0x95, 0x04, 0x0b, 0x81, 0x66, 0xe0, 0x82, 0xa6, 0x2d, 0x1b, 0xff, 0x6e,
            0x91, 0x9d, 0x29, 0xad, 0x17, 0x18, 0x63, 0xc7, 0x8f, 0x0b, 0x97, 0xc8, 0xe9, 0xae, 0x82, 0xae, 0x43, 0xd3,
        ];
        assert_eq!(
            fields(&mut d, &first).unwrap(),
            pairs(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com")
            ])
        );
        assert_eq!(d.table.size(), 222);
        let second = [0x48, 0x83, 0x64, 0x0e, 0xff, 0xc1, 0xc0, 0xbf];
        assert_eq!(
            fields(&mut d, &second).unwrap(),
            pairs(&[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com")
            ])
        );
        assert_eq!(d.table.size(), 222);
    }

    #[test]
    fn bad_blocks_are_errors_not_panics() {
        let mut d = Decoder::new(4096);
        assert_eq!(fields(&mut d, &[0x80]), Err(DecodeError::BadIndex(0)));
        assert_eq!(fields(&mut d, &[0xbe]), Err(DecodeError::BadIndex(STATIC_LEN + 1)));
        assert_eq!(fields(&mut d, &[0x41, 0x05, b'a']), Err(DecodeError::Truncated));
        assert_eq!(fields(&mut d, &[0x3f, 0xe2, 0x1f]), Err(DecodeError::BadSizeUpdate));
        assert_eq!(fields(&mut d, &[0x82, 0x20]), Err(DecodeError::BadSizeUpdate));
        assert_eq!(fields(&mut d, &[0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]), Err(DecodeError::IntegerOverflow));
        assert_eq!(fields(&mut d, &[0x40, 0x81, 0x00, 0x00]), Err(DecodeError::Huffman));
    }

    #[test]
    fn uppercase_names_are_malformed_but_still_indexed() {
        let mut d = Decoder::new(4096);
        let mut names = Vec::new();
        d.decode(&Bytes::from_static(&[0x40, 0x01, b'X', 0x01, b'y', 0xbe]), |f| names.push(f.name)).unwrap();
        assert!(matches!(&names[0], Name::Malformed(n) if n == "X"));
        assert!(matches!(&names[1], Name::Malformed(n) if n == "X"));
    }
}
