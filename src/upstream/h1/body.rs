//! The response body: read from the backend's socket only when the client
//! side asks for more, handed on without copying (each frame is a slice of
//! the read buffer), and the connection returned to its pool the moment the
//! last byte is out.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::request::{Pump, PumpError};
use super::response::Framing;
use super::{Connection, H1Error};
use crate::http1::chunked::{Chunked, Decoded};
use crate::upstream::Target;

/// A backend's response body, streaming from its connection.
pub struct ResponseBody {
    /// `None` once the body ended (the connection went back or was closed).
    conn: Option<Box<Connection>>,
    state: State,
    /// The rest of a request body still being sent.
    pump: Option<Box<Pump>>,
    /// The connection can carry another exchange once this body ends.
    reusable: bool,
    /// Where a reusable connection goes back to.
    home: Arc<Target>,
}

/// What the next poll does, decided before acting on the connection.
enum Step {
    Data(Bytes, bool),
    Trailers(HeaderMap),
    End,
    Fail(H1Error),
    Read,
}

enum State {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
    Done,
}

impl ResponseBody {
    pub(super) fn new(
        conn: Box<Connection>,
        framing: Framing,
        pump: Option<Box<Pump>>,
        reusable: bool,
        target: &Arc<Target>,
    ) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Chunked::default()),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = Self { conn: Some(conn), state, pump, reusable, home: Arc::clone(target) };
        if matches!(body.state, State::Done) {
            // Nothing to read: settle the connection now, since an empty body is never polled.
            body.finish();
        }
        body
    }

    /// The body ended: a clean connection with the request fully sent goes back to the pool.
    fn finish(&mut self) {
        self.state = State::Done;
        let Some(conn) = self.conn.take() else { return };
        if self.reusable && self.pump.is_none() && conn.read_buf.is_empty() {
            self.home.pool.put(conn);
        }
        self.pump = None;
    }

    /// Drives the rest of the request body, if any, as far as it goes.
    fn poll_pump(&mut self, cx: &mut Context<'_>) -> Result<(), H1Error> {
        let (Some(pump), Some(conn)) = (&mut self.pump, &mut self.conn) else { return Ok(()) };
        match pump.poll(cx, &mut conn.io) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) => {
                self.pump = None;
                Ok(())
            }
            Poll::Ready(Err(PumpError::Write(_))) => {
                // The backend stopped reading; its response may still be whole.
                self.pump = None;
                self.reusable = false;
                Ok(())
            }
            Poll::Ready(Err(e)) => Err(e.into()),
        }
    }

    fn fail(&mut self, error: H1Error) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        self.state = State::Done;
        self.conn = None;
        self.pump = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        if let Err(e) = this.poll_pump(cx) {
            return this.fail(e);
        }
        loop {
            let Some(conn) = &mut this.conn else { return Poll::Ready(None) };
            let step = if conn.read_buf.is_empty() {
                Step::Read
            } else {
                match &mut this.state {
                    State::Done => Step::End,
                    State::Length(left) => {
                        let take = (*left).min(conn.read_buf.len() as u64) as usize;
                        *left -= take as u64;
                        Step::Data(conn.read_buf.split_to(take).freeze(), *left == 0)
                    }
                    State::UntilClose => Step::Data(conn.read_buf.split().freeze(), false),
                    State::Chunked(chunked) => match chunked.decode(&mut conn.read_buf) {
                        Ok(Decoded::Data(data)) => Step::Data(data, false),
                        Ok(Decoded::Trailers(trailers)) => Step::Trailers(trailers),
                        Ok(Decoded::End) => Step::End,
                        Ok(Decoded::NeedMore) => Step::Read,
                        Err(e) => Step::Fail(H1Error::Framing(e.0)),
                    },
                }
            };
            match step {
                Step::Data(data, last) => {
                    if last {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Trailers(trailers) => {
                    // The trailer section ends the message: the body is over
                    // (polled again it says so, rather than reading on).
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Step::End => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Step::Fail(e) => return this.fail(e),
                Step::Read => {}
            }
            match conn.poll_fill(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) if matches!(this.state, State::UntilClose) => {
                    this.reusable = false;
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => return this.fail(H1Error::Truncated),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return this.fail(H1Error::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
