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

/// 32 hex digits: a random per-process prefix and a counter, unique without
/// a syscall per request.
pub fn generate() -> HeaderValue {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| fastrand::u64(..));
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = [0u8; 32];
    hex(prefix, &mut out[..16]);
    hex(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ prefix.rotate_left(17), &mut out[16..]);
    HeaderValue::from_bytes(&out).expect("hex digits are a valid header value")
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
    fn generated_ids_are_unique() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 1000);
    }
}
