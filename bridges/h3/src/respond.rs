//! Sending a response on a request stream: HEADERS, DATA as the body
//! yields it (each write waits for QUIC flow control), trailing HEADERS, FIN.

use bytes::Bytes;
use h3::server::RequestStream;
use http::Response;
use http_body_util::BodyExt;

use crate::error::SendError;

/// The send half of one request stream.
pub struct Responder {
    stream: RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
}

impl Responder {
    pub(crate) fn new(stream: RequestStream<h3_quinn::SendStream<Bytes>, Bytes>) -> Self {
        Self { stream }
    }

    /// Sends an interim (1xx) head ahead of the final response (RFC 9114
    /// §4.1: HEADERS frames before the final ones).
    pub async fn send_interim(&mut self, status: http::StatusCode, headers: http::HeaderMap) -> Result<(), SendError> {
        let mut head = Response::new(());
        *head.status_mut() = status;
        *head.headers_mut() = headers;
        self.stream.send_response(head).await.map_err(SendError::Stream)
    }

    /// Streams `response` to the client. A body error resets the stream
    /// (H3_INTERNAL_ERROR) rather than finishing it, so a cut-off body never
    /// looks complete; a client that stopped the stream ends the send at the
    /// next write, dropping the body (and with it the backend request).
    pub async fn send<B>(mut self, response: Response<B>) -> Result<(), SendError>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = response.into_parts();
        let head = Response::from_parts(parts, ());
        self.stream.send_response(head).await.map_err(SendError::Stream)?;
        let mut body = std::pin::pin!(body);
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => {
                    self.stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                    return Err(SendError::Body(e.into()));
                }
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => self.stream.send_data(data).await.map_err(SendError::Stream)?,
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.stream.send_trailers(trailers).await.map_err(SendError::Stream)?;
                    }
                }
            }
        }
        self.stream.finish().await.map_err(SendError::Stream)
    }
}
