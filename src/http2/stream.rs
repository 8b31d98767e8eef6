//! The two handles of one stream, for either role: [`SendHalf`] sends
//! (our client's request, our server's response) and [`RecvHalf`] takes
//! what the peer sends, both through the connection's shared state.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use h2::Reason;
use http::{HeaderMap, Response};

use super::Error;
use super::state::{OUT_HIGH_WATER, Outgoing, Role, Shared};

/// Taken DATA already received is handed on in one chunk up to this size.
const COALESCE_LIMIT: usize = 16 * 1024;

/// The handles of stream `id`, just created in `shared`'s state.
pub(super) fn halves(shared: &Arc<Shared>, id: u32) -> (SendHalf, RecvHalf) {
    (SendHalf { shared: Arc::clone(shared), id }, RecvHalf { shared: Arc::clone(shared), id })
}

/// What we send on a stream: HEADERS, DATA and trailers, under flow control.
#[derive(Debug)]
pub struct SendHalf {
    shared: Arc<Shared>,
    id: u32,
}

impl SendHalf {
    /// Ready when what was sent before has gone out to the connection (so
    /// at most one chunk waits per stream for window), or an error if the
    /// stream failed.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let mut state = self.shared.lock();
        let crowded = state.out.len() >= OUT_HIGH_WATER;
        let Some(stream) = state.streams.get_mut(&self.id) else { return Poll::Ready(Err(Error::Closed)) };
        if let Some(e) = &stream.error {
            return Poll::Ready(Err(e.clone()));
        }
        if stream.pending.is_empty() && !crowded {
            return Poll::Ready(Ok(()));
        }
        stream.send_waker = Some(cx.waker().clone());
        if crowded {
            // Woken when the I/O task has written the output down.
            state.wake_io();
        }
        Poll::Pending
    }

    /// Ready once nothing of this stream waits for flow-control window any
    /// more (it has all gone to the connection's output), or the stream is
    /// gone. Unlike [`SendHalf::poll_ready`], a busy connection does not count.
    pub fn poll_drained(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else { return Poll::Ready(()) };
        if stream.error.is_some() || stream.pending.is_empty() {
            return Poll::Ready(());
        }
        stream.send_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Ready with the stream's error once it has failed (reset by the peer).
    pub fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else { return Poll::Ready(Error::Closed) };
        if let Some(e) = &stream.error {
            return Poll::Ready(e.clone());
        }
        stream.send_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Sends an encoded header block (a response head), ending the stream when `end`.
    pub fn send_headers(&mut self, block: BytesMut, end: bool) -> Result<(), Error> {
        self.send(Outgoing::Headers(block, end)).map(drop)
    }

    /// Sends `data`, ending the stream when `end`.
    pub fn send_data(&mut self, data: Bytes, end: bool) -> Result<(), Error> {
        self.send(Outgoing::Data(data, end)).map(drop)
    }

    /// Sends trailers, ending the stream.
    pub fn send_trailers(&mut self, trailers: &HeaderMap) -> Result<(), Error> {
        self.send(Outgoing::Headers(super::encode_trailers(trailers), true)).map(drop)
    }

    /// Sends the last `data`, ending the stream; true if none of the stream
    /// is left waiting for flow-control window (it has all gone to the
    /// connection's output), learnt under the same lock.
    pub fn end_with_data(&mut self, data: Bytes) -> Result<bool, Error> {
        self.send(Outgoing::Data(data, true))
    }

    /// [`SendHalf::end_with_data`] with trailers.
    pub fn end_with_trailers(&mut self, trailers: &HeaderMap) -> Result<bool, Error> {
        self.send(Outgoing::Headers(super::encode_trailers(trailers), true))
    }

    /// Queues `item`; true if nothing of the stream waits for window after it.
    fn send(&mut self, item: Outgoing) -> Result<bool, Error> {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else { return Err(Error::Closed) };
        if let Some(e) = &stream.error {
            return Err(e.clone());
        }
        if stream.send_end {
            return Ok(stream.pending.is_empty());
        }
        stream.send_end = matches!(item, Outgoing::Data(_, true) | Outgoing::Headers(_, true));
        if let Outgoing::Headers(..) = item
            && !stream.head_sent
        {
            stream.head_sent = true;
            if state.role == Role::Server {
                // An answered stream pays back one early reset (see `State::early_resets`).
                state.early_resets = state.early_resets.saturating_sub(1);
            }
        }
        state.enqueue(self.id, item);
        // A stream that has finished both ways is gone from the map: drained too.
        Ok(state.streams.get(&self.id).is_none_or(|stream| stream.pending.is_empty()))
    }

    /// Resets the stream (its body failed, or it was abandoned).
    pub fn reset(&mut self, reason: Reason) {
        self.shared.lock().reset_stream(self.id, Error::Cancelled(reason), Some(reason));
    }
}

impl Drop for SendHalf {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else { return };
        stream.halves -= 1;
        stream.send_waker = None;
        let unfinished = !stream.send_end && stream.error.is_none();
        if unfinished {
            // Dropped mid-body without a reset (the task was cancelled): never let
            // the peer take a cut-short message as complete.
            state.reset_stream(self.id, Error::Cancelled(Reason::CANCEL), Some(Reason::CANCEL));
        } else {
            state.settle(self.id);
        }
    }
}

/// What the peer sends on a stream: (client role) the response head, DATA, trailers.
#[derive(Debug)]
pub struct RecvHalf {
    shared: Arc<Shared>,
    id: u32,
}

impl RecvHalf {
    /// The response head (informational 1xx responses are skipped).
    pub fn poll_response(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<()>, Error>> {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else { return Poll::Ready(Err(Error::Closed)) };
        if let Some(response) = stream.response.take() {
            return Poll::Ready(Ok(response));
        }
        if let Some(e) = &stream.error {
            return Poll::Ready(Err(e.clone()));
        }
        stream.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The next DATA (what has arrived, joined up to 16 KiB), `None` at the
    /// end of the data. Taking data hands its window back to the peer.
    pub fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else { return Poll::Ready(Some(Err(Error::Closed))) };
        if let Some(first) = stream.data.pop_front() {
            let data = if stream.data.is_empty() || first.len() >= COALESCE_LIMIT / 4 {
                first
            } else {
                let mut joined = BytesMut::with_capacity(COALESCE_LIMIT);
                joined.extend_from_slice(&first);
                while let Some(next) = stream.data.front() {
                    if joined.len() + next.len() > COALESCE_LIMIT {
                        break;
                    }
                    joined.extend_from_slice(next);
                    stream.data.pop_front();
                }
                joined.freeze()
            };
            state.release(self.id, data.len() as u32);
            return Poll::Ready(Some(Ok(data)));
        }
        if let Some(e) = &stream.error {
            return Poll::Ready(Some(Err(e.clone())));
        }
        if stream.recv_end {
            return Poll::Ready(None);
        }
        stream.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The trailers, once the data has been taken; `None` if the response ended without.
    pub fn poll_trailers(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<HeaderMap>, Error>> {
        let mut state = self.shared.lock();
        let Some(stream) = state.streams.get_mut(&self.id) else { return Poll::Ready(Err(Error::Closed)) };
        if let Some(trailers) = stream.trailers.take() {
            return Poll::Ready(Ok(Some(trailers)));
        }
        if let Some(e) = &stream.error {
            return Poll::Ready(Err(e.clone()));
        }
        if stream.recv_end {
            return Poll::Ready(Ok(None));
        }
        stream.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// True when the response has ended and everything in it was taken.
    pub fn is_end_stream(&self) -> bool {
        let state = self.shared.lock();
        state.streams.get(&self.id).is_none_or(|s| {
            s.error.is_none() && s.recv_end && s.data.is_empty() && s.trailers.is_none() && s.response.is_none()
        })
    }
}

impl Drop for RecvHalf {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        let role = state.role;
        let Some(stream) = state.streams.get_mut(&self.id) else { return };
        stream.halves -= 1;
        stream.recv_waker = None;
        stream.recv_dropped = true;
        let abandoned = !stream.recv_end && stream.error.is_none();
        if abandoned && role == Role::Client {
            // The call was abandoned (client gone, deadline): cancel it at the backend.
            state.reset_stream(self.id, Error::Cancelled(Reason::CANCEL), Some(Reason::CANCEL));
            return;
        }
        if abandoned {
            // Our server answers without reading the whole request (an early
            // 413, say): what came and what comes is dropped, its window
            // handed back. The stream is reset with NO_ERROR once the
            // response is out (`State::settle`).
            let unread = stream.data.discard();
            state.release_connection(unread as u32);
        }
        state.settle(self.id);
    }
}
