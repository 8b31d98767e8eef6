//! Interim (1xx) responses from a backend, passed on to the client while the
//! final response is still coming: RFC 9110 §15.2 has a proxy forward the
//! 1xx responses it did not ask for itself (103 Early Hints lets a browser
//! start loading a page's assets while the backend still renders it).
//!
//! The listener's task polls each request's future, and the upstream client
//! reads the backend's 1xx heads inside that poll. Rather than a channel per
//! request (an allocation per request for a rare event), the listener lends
//! a collector for the length of each poll ([`collect`]) and the client puts
//! what it reads there ([`forward`]).

use std::cell::RefCell;

use http::{HeaderMap, StatusCode};

/// One interim response head.
#[derive(Debug, Clone)]
pub struct Interim {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

thread_local! {
    /// Heads forwarded during the poll in progress; `None` outside [`collect`].
    static COLLECTED: RefCell<Option<Vec<Interim>>> = const { RefCell::new(None) };
}

/// Runs `poll`, returning its result and the interim heads forwarded during it.
pub fn collect<R>(poll: impl FnOnce() -> R) -> (R, Vec<Interim>) {
    /// Puts back what was there before, also when `poll` panics.
    struct Restore(Option<Option<Vec<Interim>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            if let Some(previous) = self.0.take() {
                COLLECTED.with(|c| *c.borrow_mut() = previous);
            }
        }
    }
    let previous = COLLECTED.with(|c| c.borrow_mut().replace(Vec::new()));
    let mut restore = Restore(Some(previous));
    let result = poll();
    let previous = restore.0.take().expect("restored only here");
    let collected = COLLECTED.with(|c| std::mem::replace(&mut *c.borrow_mut(), previous));
    (result, collected.unwrap_or_default())
}

/// Hands an interim head to the listener polling this request. False when
/// none is collecting (a gRPC call on its own task, a test), so the caller
/// can drop it, as before.
pub fn forward(interim: Interim) -> bool {
    COLLECTED.with(|c| match c.borrow_mut().as_mut() {
        Some(collected) => {
            collected.push(interim);
            true
        }
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hints() -> Interim {
        Interim { status: StatusCode::from_u16(103).unwrap(), headers: HeaderMap::new() }
    }

    #[test]
    fn heads_forwarded_inside_a_poll_are_collected_and_outside_one_are_refused() {
        assert!(!forward(hints()));
        let (value, collected) = collect(|| {
            assert!(forward(hints()));
            // A nested collector (a request polled inside another) keeps its own.
            let ((), inner) = collect(|| assert!(forward(hints())));
            assert_eq!(inner.len(), 1);
            7
        });
        assert_eq!((value, collected.len()), (7, 1));
        assert!(!forward(hints()), "the collector is gone after the poll");
    }
}
