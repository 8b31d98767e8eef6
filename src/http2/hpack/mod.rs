//! HPACK (RFC 7541), as our HTTP/2 client needs it: a full decoder
//! (dynamic table, Huffman) for what backends send, and a stateless encoder
//! for what we send.
//!
//! The encoder never adds to the peer's dynamic table (HAProxy's choice
//! too): each field is a literal "without indexing" with the static table's
//! name index where there is one, so encoding is a copy with no table
//! search, and the peer's table state never depends on ours.

mod decode;
mod encode;
mod huffman;
mod table;

use bytes::Bytes;
use http::HeaderName;

pub use decode::{DecodeError, Decoder};
pub use encode::{encode_field, encode_pseudo};

/// A dynamic table size update to 0 (§6.3): how our encoder, which never
/// indexes, answers a peer that shrinks its table.
pub const TABLE_SIZE_ZERO: u8 = 0x20;

/// A decoded header field's name: a pseudo-header kept as its text, or a
/// regular (lowercase, valid) field name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Name {
    Pseudo(Bytes),
    Header(HeaderName),
    /// Not a valid lowercase field name: the field makes its message
    /// malformed (RFC 9113 §8.2.1), but it still counts in the table.
    Malformed(Bytes),
}

impl Name {
    fn len(&self) -> usize {
        match self {
            Name::Pseudo(p) | Name::Malformed(p) => p.len(),
            Name::Header(h) => h.as_str().len(),
        }
    }
}

/// One decoded header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: Name,
    pub value: Bytes,
}

impl Field {
    /// Its size as HPACK counts it (§4.1), also the header-list size unit (RFC 9113 §6.5.2).
    pub fn size(&self) -> usize {
        self.name.len() + self.value.len() + table::ENTRY_OVERHEAD
    }
}
