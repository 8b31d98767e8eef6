//! One request stream of an HTTP/2 connection, from the gateway's answer
//! to the last byte of its response: the head goes out as HEADERS (with
//! END_STREAM when there is no body), the body under flow control, trailers
//! last. A client that resets the stream drops the answer in progress,
//! which cancels whatever it was waiting on (a backend request included).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use h2::Reason;
use http::{Response, header};
use http_body::Body as _;
use tokio::sync::oneshot;

use super::upgrade::StreamIo;
use crate::body::Body;
use crate::http2::server::{encode_interim, encode_response};
use crate::http2::{BodySender, RecvHalf, SendEnd, SendHalf, relayed_reason};
use crate::listen::date;
use crate::pipeline::forwarded::remove_connection_specific;

/// A CONNECT's stream, kept back from the request until the answer says
/// whether it becomes a tunnel.
pub(super) struct Connect {
    pub recv: RecvHalf,
    pub fulfil: oneshot::Sender<StreamIo>,
}

/// See the module doc; polled by the connection's task.
pub(super) enum StreamTask<F> {
    Answering { answer: F, send: Option<SendHalf>, connect: Option<Connect>, send_timeout: Duration },
    Sending(BodySender),
    Done,
}

impl<F> StreamTask<F> {
    pub fn new(answer: F, send: SendHalf, connect: Option<Connect>, send_timeout: Duration) -> Self {
        StreamTask::Answering { answer, send: Some(send), connect, send_timeout }
    }
}

impl<F> Future for StreamTask<F>
where
    F: Future<Output = Response<Body>> + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            match this {
                StreamTask::Answering { answer, send, connect, send_timeout } => {
                    let Some(stream) = send.as_mut() else { return Poll::Ready(()) };
                    let (polled, interim) = crate::interim::collect(|| Pin::new(&mut *answer).poll(cx));
                    for head in &interim {
                        // HEADERS without END_STREAM before the final ones (RFC 9113 §8.1).
                        let _ = stream.send_headers(encode_interim(head), false);
                    }
                    let response = match polled {
                        Poll::Ready(response) => response,
                        Poll::Pending => {
                            // Not answered yet: a client reset abandons the request.
                            if let Poll::Ready(error) = stream.poll_reset(cx) {
                                tracing::debug!(%error, "client reset the stream before the response");
                                *this = StreamTask::Done;
                                return Poll::Ready(());
                            }
                            return Poll::Pending;
                        }
                    };
                    let stream = send.take().expect("checked above");
                    let next = respond_with(response, stream, connect.take(), *send_timeout);
                    *this = next;
                }
                StreamTask::Sending(sender) => {
                    match ready!(sender.poll_send(cx)) {
                        SendEnd::Done | SendEnd::Gone => {}
                        SendEnd::Stalled(limit) => {
                            // A client that takes nothing must not hold the answer and its backend.
                            tracing::debug!(
                                ?limit,
                                "client took none of the response for send_timeout; resetting the stream"
                            );
                            sender.reset(Reason::CANCEL);
                        }
                        SendEnd::BodyFailed(e) => {
                            // The client sees the stream reset, never a body cut short as if complete.
                            tracing::debug!(error = %e, "response body failed; resetting the stream");
                            sender.reset(relayed_reason(&*e).unwrap_or(Reason::INTERNAL_ERROR));
                        }
                    }
                    *this = StreamTask::Done;
                    return Poll::Ready(());
                }
                StreamTask::Done => return Poll::Ready(()),
            }
        }
    }
}

/// Sends the answer's head and says what is left to do.
fn respond_with<F>(
    response: Response<Body>,
    mut send: SendHalf,
    connect: Option<Connect>,
    send_timeout: Duration,
) -> StreamTask<F> {
    let (mut head, body) = response.into_parts();
    remove_connection_specific(&mut head.headers);
    if let header::Entry::Vacant(date) = head.headers.entry(header::DATE) {
        date.insert(date::header_value());
    }
    if let Some(connect) = connect
        && head.status.is_success()
    {
        // RFC 8441 §5 / RFC 9113 §8.5: a 2xx turns the stream into the tunnel.
        head.headers.remove(header::CONTENT_LENGTH);
        match send.send_headers(encode_response(&head), false) {
            Ok(()) => {
                let _ = connect.fulfil.send(StreamIo::new(send, connect.recv));
            }
            Err(e) => tracing::debug!(error = %e, "could not answer the CONNECT"),
        }
        return StreamTask::Done;
    }
    let end = body.is_end_stream();
    if !end && let Some(len) = body.size_hint().exact() {
        head.headers.entry(header::CONTENT_LENGTH).or_insert_with(|| len.into());
    }
    match send.send_headers(encode_response(&head), end) {
        Ok(()) if end => StreamTask::Done,
        Ok(()) => StreamTask::Sending(BodySender::new(body, send, None).stalling_after(send_timeout)),
        Err(e) => {
            tracing::debug!(error = %e, "could not send the response head");
            StreamTask::Done
        }
    }
}
