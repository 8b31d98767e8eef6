//! Header names remembered per connection, by position.
//!
//! A peer on a keep-alive connection sends the same field names in the same
//! order message after message. Comparing the raw bytes with what was at
//! that position last time, and cloning the name parsed then, costs less
//! than parsing it again (a case-folding pass, a lookup among the standard
//! names, and an allocation for any other name). What the field means to
//! the connection (`R`, worked out by the caller once per name) is kept with
//! it, so each field costs one `match` afterwards.

use http::header::{HeaderName, InvalidHeaderName};

/// Positions remembered; fields after these are parsed each time.
const CACHED: usize = 24;

/// The names of one connection's recent messages, by position.
pub struct NameCache<R> {
    names: Vec<(Box<[u8]>, HeaderName, R)>,
}

impl<R> Default for NameCache<R> {
    fn default() -> Self {
        Self { names: Vec::new() }
    }
}

impl<R: Copy> NameCache<R> {
    /// The name `raw` at `position`, and what it means (`classify`, called
    /// only for a name not seen at this position last time).
    pub fn get(
        &mut self,
        position: usize,
        raw: &[u8],
        classify: impl FnOnce(&HeaderName) -> R,
    ) -> Result<(HeaderName, R), InvalidHeaderName> {
        if let Some((seen, name, meaning)) = self.names.get(position)
            && **seen == *raw
        {
            return Ok((name.clone(), *meaning));
        }
        let name = HeaderName::from_bytes(raw)?;
        let meaning = classify(&name);
        if position < self.names.len() {
            self.names[position] = (raw.into(), name.clone(), meaning);
        } else if position == self.names.len() && position < CACHED {
            self.names.push((raw.into(), name.clone(), meaning));
        }
        Ok((name, meaning))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_reused_only_where_the_same_bytes_were_seen() {
        let mut cache = NameCache::default();
        let classified = std::cell::Cell::new(0);
        let get = |cache: &mut NameCache<bool>, position, raw: &[u8]| {
            cache
                .get(position, raw, |name| {
                    classified.set(classified.get() + 1);
                    name == "content-length"
                })
                .unwrap()
        };
        assert_eq!(get(&mut cache, 0, b"Content-Length"), (HeaderName::from_static("content-length"), true));
        assert_eq!(get(&mut cache, 1, b"X-A"), (HeaderName::from_static("x-a"), false));
        // Same bytes at the same position: from the cache.
        assert!(get(&mut cache, 0, b"Content-Length").1);
        // Same name, other spelling, or another name at a position: parsed and classified again.
        assert!(get(&mut cache, 0, b"content-length").1);
        assert!(get(&mut cache, 1, b"Content-Length").1);
        assert!(!get(&mut cache, 1, b"X-A").1);
        assert!(cache.get(2, b"Bad Name", |_| false).is_err());
        assert_eq!(classified.get(), 5);
    }
}
