//! Plain HTTP sent to a TLS port: the client gets a readable 400 saying so
//! (as nginx and Caddy answer), not a TLS alert it cannot parse.
//!
//! A TLS connection opens with a handshake record (content type 22); an
//! HTTP/1.x request opens with its method, an upper-case letter. The first
//! read is handed on to the TLS acceptor as a prefix, so a real TLS client
//! costs no extra system call.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The first bytes of a connection, as [`sniff`] read them.
pub enum Opening {
    /// Not plain HTTP (a TLS ClientHello, or anything else for rustls to
    /// refuse): these bytes come first in the stream handed to TLS.
    Tls(Bytes),
    /// An HTTP/1.x request line: answered with 400 and closed.
    PlainHttp,
    /// The client closed, or the read failed, before sending anything.
    Nothing,
}

/// Room for a whole ClientHello in the usual case.
const FIRST_READ: usize = 4096;

/// The body of the answer to plain HTTP on a TLS port (the JSON error shape of every refusal).
const BODY: &str =
    r#"{"error":"plain_http_on_tls","message":"this port speaks TLS: send the request over https","request_id":""}"#;

fn answer() -> String {
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    )
}

/// Reads the first bytes of `stream` and says what they open.
pub async fn sniff<S: AsyncRead + Unpin>(stream: &mut S) -> Opening {
    let mut first = BytesMut::with_capacity(FIRST_READ);
    match stream.read_buf(&mut first).await {
        Ok(0) | Err(_) => Opening::Nothing,
        Ok(_) if first[0].is_ascii_uppercase() => Opening::PlainHttp,
        Ok(_) => Opening::Tls(first.freeze()),
    }
}

/// Sends the 400 for plain HTTP and closes the connection.
pub async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S) {
    let _ = stream.write_all(answer().as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_is_framed_by_its_content_length() {
        let text = answer();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let declared: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().parse().unwrap();
        assert_eq!(declared, body.len());
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "plain_http_on_tls");
    }

    #[tokio::test]
    async fn a_request_line_is_plain_http_and_a_client_hello_is_passed_on_whole() {
        let mut http: &[u8] = b"GET / HTTP/1.1\r\n";
        assert!(matches!(sniff(&mut http).await, Opening::PlainHttp));
        let hello = [0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5];
        let mut tls: &[u8] = &hello;
        match sniff(&mut tls).await {
            Opening::Tls(prefix) => assert_eq!(&prefix[..], &hello),
            _ => panic!("a ClientHello is not plain HTTP"),
        }
        let mut nothing: &[u8] = b"";
        assert!(matches!(sniff(&mut nothing).await, Opening::Nothing));
    }
}
