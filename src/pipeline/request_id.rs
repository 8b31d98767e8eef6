//! `X-Request-Id`: kept when the client sent a sane one, generated otherwise.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};

/// The header that carries the request id both ways.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client-supplied id we keep; longer ones are replaced.
const MAX_LEN: usize = 128;

/// The client's id if it is short visible ASCII, else a fresh one.
///
/// Marked sensitive: a value unique to every request would only churn an
/// HTTP/2 connection's HPACK table, so it is sent as a never-indexed literal
/// (RFC 7541 §6.2.3) instead of being inserted (and evicting) each time.
pub fn take_or_generate(headers: &HeaderMap) -> HeaderValue {
    let mut id = match headers.get(&X_REQUEST_ID) {
        Some(v)
            if !v.as_bytes().is_empty()
                && v.as_bytes().len() <= MAX_LEN
                && v.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
        {
            v.clone()
        }
        _ => generate(),
    };
    id.set_sensitive(true);
    id
}

/// Ids made at once into one buffer, handed out as slices of it.
const IDS_PER_BLOCK: usize = 64;
/// Hex digits per id.
const ID_LEN: usize = 32;

thread_local! {
    /// This thread's current block of ids and the next one to hand out.
    static BLOCK: std::cell::RefCell<(bytes::Bytes, usize)> =
        const { std::cell::RefCell::new((bytes::Bytes::new(), IDS_PER_BLOCK)) };
}

/// 32 hex digits: a random per-process prefix and a counter, unique without
/// a syscall per request.
///
/// Ids are made 64 at a time into one shared buffer, so that a request's id
/// costs neither an allocation of its own nor a second one when it is first
/// cloned (for the request, the response and the log): each is a slice of
/// the block, and the block is freed when its last id is dropped.
pub fn generate() -> HeaderValue {
    BLOCK.with(|block| {
        let mut block = block.borrow_mut();
        if block.1 == IDS_PER_BLOCK {
            *block = (fill_block(), 0);
        }
        let at = block.1 * ID_LEN;
        block.1 += 1;
        HeaderValue::from_maybe_shared(block.0.slice(at..at + ID_LEN)).expect("hex digits are a valid header value")
    })
}

/// The next [`IDS_PER_BLOCK`] ids, taken from the process-wide counter at once.
fn fill_block() -> bytes::Bytes {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| fastrand::u64(..));
    let first = COUNTER.fetch_add(IDS_PER_BLOCK as u64, Ordering::Relaxed);
    let mut out = vec![0u8; IDS_PER_BLOCK * ID_LEN];
    for (n, id) in (first..).zip(out.chunks_exact_mut(ID_LEN)) {
        hex(prefix, &mut id[..16]);
        hex(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ prefix.rotate_left(17), &mut id[16..]);
    }
    bytes::Bytes::from(out)
}

fn hex(mut v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sane_client_id_is_kept() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(take_or_generate(&h), "abc-123");
    }

    #[test]
    fn an_overlong_or_empty_id_is_replaced() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_str(&"a".repeat(200)).unwrap());
        assert_eq!(take_or_generate(&h).len(), 32);
        h.insert(&X_REQUEST_ID, HeaderValue::from_static(""));
        assert_eq!(take_or_generate(&h).len(), 32);
    }

    #[test]
    fn ids_are_kept_out_of_hpack_tables() {
        let mut h = HeaderMap::new();
        assert!(take_or_generate(&h).is_sensitive());
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert!(take_or_generate(&h).is_sensitive());
    }

    #[test]
    fn generated_ids_are_unique_across_blocks_and_threads() {
        let mine: Vec<_> = (0..1000).map(|_| generate()).collect();
        let theirs = std::thread::spawn(|| (0..1000).map(|_| generate()).collect::<Vec<_>>()).join().unwrap();
        let ids: std::collections::HashSet<_> = mine.iter().chain(&theirs).collect();
        assert_eq!(ids.len(), 2000);
        assert!(ids.iter().all(|id| id.len() == 32 && id.as_bytes().iter().all(u8::is_ascii_hexdigit)));
    }
}
