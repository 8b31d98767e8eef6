//! The `Date` field for responses that arrive without one (RFC 9110
//! §6.6.1), rendered once per second per thread, for both of our servers.
//! Checking whether the second has turned reads the coarse clock, not the
//! precise one.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderValue;

use crate::clock::coarse_millis;

/// `Sun, 06 Nov 1994 08:49:37 GMT`.
const LENGTH: usize = 29;

struct Cached {
    rendered: [u8; LENGTH],
    /// `rendered` as a field value, made on first use in each second.
    value: Option<HeaderValue>,
    /// On the coarse clock: when the wall clock's next second begins.
    next_second_ms: u64,
}

thread_local! {
    static CACHED: RefCell<Cached> = const { RefCell::new(Cached { rendered: [0; LENGTH], value: None, next_second_ms: 0 }) };
}

impl Cached {
    /// Renders the date again once the second has turned.
    fn refresh(&mut self) {
        let now_ms = coarse_millis();
        if now_ms >= self.next_second_ms {
            let wall = SystemTime::now();
            let rendered = httpdate::fmt_http_date(wall);
            if rendered.len() == LENGTH {
                self.rendered.copy_from_slice(rendered.as_bytes());
                self.value = None;
            }
            let into_second = wall.duration_since(UNIX_EPOCH).map(|d| d.subsec_millis()).unwrap_or(0);
            self.next_second_ms = now_ms + u64::from(1000 - into_second);
        }
    }
}

/// Appends the current date, as an HTTP-date (our HTTP/1.1 server writes it).
pub(super) fn extend(out: &mut Vec<u8>) {
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        cached.refresh();
        out.extend_from_slice(&cached.rendered);
    });
}

/// The current date as a field value (our HTTP/2 server adds it): a
/// shared buffer, so each response's copy is a reference count.
pub(super) fn header_value() -> HeaderValue {
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        cached.refresh();
        let cached = &mut *cached;
        cached
            .value
            .get_or_insert_with(|| {
                HeaderValue::from_maybe_shared(Bytes::copy_from_slice(&cached.rendered))
                    .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
            })
            .clone()
    })
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

    #[test]
    fn the_field_value_is_the_same_date() {
        let mut out = Vec::new();
        extend(&mut out);
        let value = header_value();
        let parsed = httpdate::parse_http_date(value.to_str().unwrap()).unwrap();
        let skew = SystemTime::now().duration_since(parsed).unwrap_or_default();
        assert!(skew.as_secs() <= 2, "{skew:?}");
    }
}
