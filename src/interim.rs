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

use std::cell::{Cell, RefCell};

use http::{HeaderMap, StatusCode};

/// One interim response head.
#[derive(Debug, Clone)]
pub struct Interim {
    pub status: StatusCode,
    pub headers: HeaderMap,
}

thread_local! {
    /// A [`collect`] is in progress on this thread.
    static COLLECTING: Cell<bool> = const { Cell::new(false) };
    /// Heads forwarded during it.
    static COLLECTED: RefCell<Vec<Interim>> = const { RefCell::new(Vec::new()) };
}

/// Runs `poll`, returning its result and the interim heads forwarded during
/// it. Not nested: a request future never polls another listener's request.
/// Per poll this is a few thread-local loads and stores; the heads' vector
/// is only allocated when a head comes.
pub fn collect<R>(poll: impl FnOnce() -> R) -> (R, Vec<Interim>) {
    /// Ends the collection, also when `poll` panics (so that a head
    /// forwarded later is never taken for another request's).
    struct End;
    impl Drop for End {
        fn drop(&mut self) {
            COLLECTING.set(false);
            if std::thread::panicking() {
                COLLECTED.with_borrow_mut(Vec::clear);
            }
        }
    }
    COLLECTING.set(true);
    let end = End;
    let result = poll();
    drop(end);
    let collected = COLLECTED.with_borrow_mut(std::mem::take);
    (result, collected)
}

/// Hands an interim head to the listener polling this request. False when
/// none is collecting (a gRPC call on its own task, a test), so the caller
/// can drop it, as before.
pub fn forward(interim: Interim) -> bool {
    if !COLLECTING.get() {
        return false;
    }
    COLLECTED.with_borrow_mut(|collected| collected.push(interim));
    true
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
            assert!(forward(hints()));
            7
        });
        assert_eq!((value, collected.len()), (7, 2));
        assert!(!forward(hints()), "the collector is gone after the poll");
        let ((), none) = collect(|| ());
        assert!(none.is_empty(), "the next poll starts empty");
    }

    #[test]
    fn a_poll_that_panics_ends_the_collection() {
        let panicked = std::panic::catch_unwind(|| {
            collect(|| {
                forward(hints());
                panic!("request task failed")
            })
        });
        assert!(panicked.is_err());
        assert!(!forward(hints()), "no later head is taken for another request's");
        let ((), next) = collect(|| ());
        assert!(next.is_empty(), "nor one from before the panic");
    }
}
