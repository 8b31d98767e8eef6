//! The `Date` field for responses that arrive without one (RFC 9110
//! §6.6.1), rendered once per second per thread. Checking whether the
//! second has turned reads the coarse clock, not the precise one.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::clock::coarse_millis;

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
const LENGTH: usize = 29;

struct Cached {
    rendered: [u8; LENGTH],
    /// On the coarse clock: when the wall clock's next second begins.
    next_second_ms: u64,
}

thread_local! {
    static CACHED: RefCell<Cached> = const { RefCell::new(Cached { rendered: [0; LENGTH], next_second_ms: 0 }) };
}

/// Appends the current date, as an HTTP-date.
pub(super) fn extend(out: &mut Vec<u8>) {
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        let now_ms = coarse_millis();
        if now_ms >= cached.next_second_ms {
            let wall = SystemTime::now();
            let rendered = httpdate::fmt_http_date(wall);
            if rendered.len() == LENGTH {
                cached.rendered.copy_from_slice(rendered.as_bytes());
            }
            let into_second = wall.duration_since(UNIX_EPOCH).map(|d| d.subsec_millis()).unwrap_or(0);
            cached.next_second_ms = now_ms + u64::from(1000 - into_second);
        }
        out.extend_from_slice(&cached.rendered);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_date_is_an_http_date_close_to_now() {
        let mut out = Vec::new();
        extend(&mut out);
        let parsed = httpdate::parse_http_date(std::str::from_utf8(&out).unwrap()).unwrap();
        let skew = SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(skew.as_secs() <= 2, "{skew:?}");
    }
}
