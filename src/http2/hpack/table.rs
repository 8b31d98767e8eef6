//! HPACK's static table (RFC 7541 Appendix A) and the decoder's dynamic
//! table (§2.3.2, §4): entries are evicted oldest first to stay within the
//! size the decoder announced.

use std::collections::VecDeque;

use bytes::Bytes;

use super::Field;

/// Index 1 to 61: name and value, from RFC 7541 Appendix A.
pub const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Per-entry overhead counted in a table's size (§4.1).
pub const ENTRY_OVERHEAD: usize = 32;

/// The decoder's dynamic table; index 62 is the newest entry.
#[derive(Debug)]
pub struct DynamicTable {
    entries: VecDeque<Field>,
    size: usize,
    max_size: usize,
}

impl DynamicTable {
    /// An empty table holding at most `max_size` (HPACK-counted) bytes.
    pub fn new(max_size: usize) -> Self {
        Self { entries: VecDeque::new(), size: 0, max_size }
    }

    /// The entry at HPACK index `index` (62 and up), if there is one.
    pub fn get(&self, index: usize) -> Option<&Field> {
        self.entries.get(index.checked_sub(STATIC.len() + 1)?)
    }

    /// Adds an entry, evicting as needed; one larger than the table empties it (§4.4).
    pub fn insert(&mut self, field: Field) {
        let size = field.size();
        self.evict_to(self.max_size.saturating_sub(size));
        if size <= self.max_size {
            self.size += size;
            self.entries.push_front(field);
        }
    }

    /// A dynamic table size update (§6.3); the caller checks it against the limit.
    pub fn resize(&mut self, max_size: usize) {
        self.max_size = max_size;
        self.evict_to(max_size);
    }

    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            match self.entries.pop_back() {
                Some(old) => self.size -= old.size(),
                None => break,
            }
        }
    }

    #[cfg(test)]
    pub fn size(&self) -> usize {
        self.size
    }
}

/// `Field` with the value of `Bytes` from a static entry.
pub fn static_field(index: usize) -> Option<(&'static str, Bytes)> {
    let (name, value) = STATIC.get(index.checked_sub(1)?)?;
    Some((name, Bytes::from_static(value.as_bytes())))
}
