//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, versions 1 and 2): an
//! L4 balancer in front of Tollgate prefixes each connection with the client's
//! address, so the peer we see is the client and not the balancer.
//!
//! A listener with `proxy_protocol = true` requires the header on every
//! connection, before TLS: a connection without a valid one, or that does not
//! finish sending it within the listener's `header_read_timeout`, is closed.
//! The header is believed only because the listener's config says so; such a
//! listener must be reachable by the balancer alone (a client that can reach
//! it directly can claim any address).
//!
//! [`parse`] is pure (bytes in, header out); [`read_header`] drives it on a
//! socket, and [`Rewind`] hands bytes read past the header (the TLS
//! ClientHello or the HTTP request, often in the same segment) to TLS/HTTP.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The 12-byte v2 signature (spec §2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes, CRLF included (spec §2.1).
const V1_MAX_LEN: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";

/// What the header said about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// The balancer relayed a TCP connection from `source` to `destination`.
    Proxied { source: SocketAddr, destination: SocketAddr },
    /// No client address: v1 `UNKNOWN`, v2 `LOCAL` (the balancer's own health
    /// checks), or a v2 family other than IPv4/IPv6. The socket's own
    /// addresses stand, as the spec asks.
    Unknown,
}

/// How far [`parse`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header, `len` bytes long; what follows belongs to TLS/HTTP.
    Complete { header: ProxyHeader, len: usize },
    /// Valid so far; more bytes are needed.
    Incomplete,
}

/// Why a connection's PROXY header was refused (the connection is closed).
#[derive(Debug)]
pub enum ProxyHeaderError {
    /// The first bytes are neither `PROXY ` nor the v2 signature.
    Missing,
    /// A v1 line that breaks the grammar of spec §2.1.
    V1(&'static str),
    /// A v2 header that breaks spec §2.2.
    V2(&'static str),
    /// The peer closed the connection before the header ended.
    Truncated,
    /// The header did not arrive within the listener's header read timeout.
    Timeout,
    /// The socket failed while the header was read.
    Io(io::Error),
}

impl std::fmt::Display for ProxyHeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProxyHeaderError::Missing => f.write_str("no PROXY protocol header"),
            ProxyHeaderError::V1(why) => write!(f, "bad PROXY v1 header: {why}"),
            ProxyHeaderError::V2(why) => write!(f, "bad PROXY v2 header: {why}"),
            ProxyHeaderError::Truncated => f.write_str("connection closed inside the PROXY header"),
            ProxyHeaderError::Timeout => f.write_str("PROXY header not received in time"),
            ProxyHeaderError::Io(e) => write!(f, "reading the PROXY header: {e}"),
        }
    }
}

impl std::error::Error for ProxyHeaderError {}

/// Parses a PROXY header (v1 or v2) at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    match buf.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf),
        Some(_) => Err(ProxyHeaderError::Missing),
    }
}

/// `PROXY TCP4 192.0.2.1 192.0.2.2 56324 443\r\n`, `PROXY TCP6 ...`, `PROXY UNKNOWN ...\r\n`.
fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    use ProxyHeaderError::V1;
    let n = buf.len().min(V1_PREFIX.len());
    if buf[..n] != V1_PREFIX[..n] {
        return Err(ProxyHeaderError::Missing);
    }
    let window = &buf[..buf.len().min(V1_MAX_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX_LEN { Err(V1("longer than 107 bytes")) } else { Ok(Parsed::Incomplete) };
    };
    if lf < V1_PREFIX.len() || buf[lf - 1] != b'\r' {
        return Err(V1("line does not end with CRLF"));
    }
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..lf - 1]).map_err(|_| V1("not ASCII"))?;
    let len = lf + 1;
    let mut fields = line.split(' ');
    let header = match fields.next() {
        // The rest of an UNKNOWN line is ignored (spec §2.1).
        Some("UNKNOWN") => ProxyHeader::Unknown,
        Some(family @ ("TCP4" | "TCP6")) => {
            let (Some(src), Some(dst), Some(sport), Some(dport), None) =
                (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(V1("expected `TCPx SRC DST SPORT DPORT`"));
            };
            let ip = |text: &str| -> Result<IpAddr, ProxyHeaderError> {
                if family == "TCP4" {
                    text.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| V1("bad IPv4 address"))
                } else {
                    text.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| V1("bad IPv6 address"))
                }
            };
            ProxyHeader::Proxied {
                source: SocketAddr::new(ip(src)?, port(sport)?),
                destination: SocketAddr::new(ip(dst)?, port(dport)?),
            }
        }
        _ => return Err(V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    Ok(Parsed::Complete { header, len })
}

/// A decimal port, 0-65535, without sign or leading zeros.
fn port(text: &str) -> Result<u16, ProxyHeaderError> {
    let ok = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    ok.then(|| text.parse().ok()).flatten().ok_or(ProxyHeaderError::V1("bad port"))
}

/// 12-byte signature, version/command, family/transport, 2-byte length, addresses, TLVs.
fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    use ProxyHeaderError::V2;
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err(ProxyHeaderError::Missing);
    }
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(V2("version is not 2"));
    }
    let (family, transport) = (buf[13] >> 4, buf[13] & 0x0f);
    let body_len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let len = 16 + body_len;
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[16..len];
    let header = match command {
        // LOCAL: the balancer speaking for itself; addresses are ignored.
        0 => ProxyHeader::Unknown,
        1 => match family {
            // UNSPEC and AF_UNIX carry no IP address to use.
            0 | 3 => ProxyHeader::Unknown,
            1 | 2 if transport != 1 => return Err(V2("transport is not STREAM")),
            1 => {
                let a = body.get(..12).ok_or(V2("address block shorter than IPv4 needs"))?;
                let src = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                let dst = Ipv4Addr::new(a[4], a[5], a[6], a[7]);
                ProxyHeader::Proxied {
                    source: SocketAddr::new(src.into(), u16::from_be_bytes([a[8], a[9]])),
                    destination: SocketAddr::new(dst.into(), u16::from_be_bytes([a[10], a[11]])),
                }
            }
            2 => {
                let a = body.get(..36).ok_or(V2("address block shorter than IPv6 needs"))?;
                let src: [u8; 16] = a[..16].try_into().expect("16 bytes");
                let dst: [u8; 16] = a[16..32].try_into().expect("16 bytes");
                ProxyHeader::Proxied {
                    source: SocketAddr::new(Ipv6Addr::from(src).into(), u16::from_be_bytes([a[32], a[33]])),
                    destination: SocketAddr::new(Ipv6Addr::from(dst).into(), u16::from_be_bytes([a[34], a[35]])),
                }
            }
            _ => return Err(V2("unknown address family")),
        },
        _ => return Err(V2("command is neither LOCAL nor PROXY")),
    };
    // TLVs after the addresses (ALPN, SNI, unique id, ...) are skipped.
    Ok(Parsed::Complete { header, len })
}

/// Reads a PROXY header from `stream` within `timeout`. Returns the header
/// and whatever was read past it, which the caller must replay ([`Rewind`]).
pub async fn read_header<S>(stream: &mut S, timeout: Duration) -> Result<(ProxyHeader, Bytes), ProxyHeaderError>
where
    S: AsyncRead + Unpin,
{
    let read = async {
        let mut buf = BytesMut::with_capacity(512);
        loop {
            if let Parsed::Complete { header, len } = parse(&buf)? {
                let rest = buf.split_off(len).freeze();
                return Ok((header, rest));
            }
            // A v2 header can be up to 16 + 65535 bytes; parse() bounds v1.
            if buf.capacity() - buf.len() < 256 {
                buf.reserve(4096);
            }
            if stream.read_buf(&mut buf).await.map_err(ProxyHeaderError::Io)? == 0 {
                return Err(ProxyHeaderError::Truncated);
            }
        }
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| ProxyHeaderError::Timeout)?
}

/// A stream that first yields `prefix` (bytes read past the PROXY header),
/// then reads from `inner`; writes go straight to `inner`.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    /// Wraps `inner`, replaying `prefix` before anything read from it.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, len }) => (header, len),
            other => panic!("expected a complete header, got {other:?}"),
        }
    }

    fn proxied(src: &str, dst: &str) -> ProxyHeader {
        ProxyHeader::Proxied { source: src.parse().unwrap(), destination: dst.parse().unwrap() }
    }

    /// A v2 header: command, family/transport byte, address block, TLVs.
    fn v2(command: u8, fam: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(fam);
        out.extend_from_slice(&((addresses.len() + tlvs.len()) as u16).to_be_bytes());
        out.extend_from_slice(addresses);
        out.extend_from_slice(tlvs);
        out
    }

    fn v4_block() -> Vec<u8> {
        let mut a = vec![203, 0, 113, 9, 127, 0, 0, 1];
        a.extend_from_slice(&50000u16.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        a
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let line = b"PROXY TCP4 203.0.113.9 127.0.0.1 50000 443\r\nGET / HTTP/1.1\r\n";
        let (header, len) = complete(line);
        assert_eq!(header, proxied("203.0.113.9:50000", "127.0.0.1:443"));
        assert_eq!(&line[len..], b"GET / HTTP/1.1\r\n");

        let (header, _) = complete(b"PROXY TCP6 2001:db8::7 ::1 65535 0\r\n");
        assert_eq!(header, proxied("[2001:db8::7]:65535", "[::1]:0"));

        assert_eq!(complete(b"PROXY UNKNOWN\r\n"), (ProxyHeader::Unknown, 15));
        assert_eq!(complete(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").0, ProxyHeader::Unknown);
    }

    #[test]
    fn v1_partial_input_asks_for_more() {
        let line = b"PROXY TCP4 203.0.113.9 127.0.0.1 50000 443\r\n";
        for cut in 0..line.len() {
            assert_eq!(parse(&line[..cut]).unwrap(), Parsed::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn v1_malformed_lines_are_refused() {
        for bad in [
            &b"PROXY TCP4 203.0.113.9 127.0.0.1 50000\r\n"[..],
            b"PROXY TCP4 203.0.113.9 127.0.0.1 50000 443 7\r\n",
            b"PROXY TCP4 ::1 127.0.0.1 50000 443\r\n",
            b"PROXY TCP6 203.0.113.9 ::1 50000 443\r\n",
            b"PROXY TCP4 203.0.113.9 127.0.0.1 65536 443\r\n",
            b"PROXY TCP4 203.0.113.9 127.0.0.1 0443 443\r\n",
            b"PROXY TCP4 203.0.113.9 127.0.0.1 +443 443\r\n",
            b"PROXY TCP4  203.0.113.9 127.0.0.1 1 2\r\n",
            b"PROXY TCP4 203.0.113.9 127.0.0.1 1 2\n",
            b"PROXY UDP4 203.0.113.9 127.0.0.1 1 2\r\n",
            b"PROXY \r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 120]].concat();
        assert!(matches!(parse(&long), Err(ProxyHeaderError::V1(_))));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Err(ProxyHeaderError::Missing)));
        assert!(matches!(parse(b"PRI * HTTP/2.0"), Err(ProxyHeaderError::Missing)));
        assert!(matches!(parse(&[0x16, 0x03, 0x01]), Err(ProxyHeaderError::Missing)));
    }

    #[test]
    fn v2_proxy_ipv4_and_ipv6_with_tlvs_skipped() {
        let mut bytes = v2(1, 0x11, &v4_block(), &[0x01, 0x00, 0x02, b'h', b'2']);
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (header, len) = complete(&bytes);
        assert_eq!(header, proxied("203.0.113.9:50000", "127.0.0.1:443"));
        assert_eq!(&bytes[len..], b"\x16\x03\x01");

        let mut a = "2001:db8::7".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        a.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        a.extend_from_slice(&[0x1f, 0x90, 0x01, 0xbb]);
        let (header, len) = complete(&v2(1, 0x21, &a, &[]));
        assert_eq!(header, proxied("[2001:db8::7]:8080", "[::1]:443"));
        assert_eq!(len, 16 + 36);
    }

    #[test]
    fn v2_local_and_unspec_keep_the_socket_addresses() {
        assert_eq!(complete(&v2(0, 0x00, &[], &[])), (ProxyHeader::Unknown, 16));
        // LOCAL may still carry addresses; they are ignored.
        assert_eq!(complete(&v2(0, 0x11, &v4_block(), &[])).0, ProxyHeader::Unknown);
        assert_eq!(complete(&v2(1, 0x00, &[], &[])).0, ProxyHeader::Unknown);
        assert_eq!(complete(&v2(1, 0x31, &[0; 216], &[])).0, ProxyHeader::Unknown);
    }

    #[test]
    fn v2_truncated_input_asks_for_more_and_malformed_is_refused() {
        let bytes = v2(1, 0x11, &v4_block(), &[]);
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]).unwrap(), Parsed::Incomplete, "cut at {cut}");
        }
        let mut bad_version = bytes.clone();
        bad_version[12] = 0x11;
        assert!(matches!(parse(&bad_version), Err(ProxyHeaderError::V2(_))));
        let mut bad_command = bytes.clone();
        bad_command[12] = 0x22;
        assert!(matches!(parse(&bad_command), Err(ProxyHeaderError::V2(_))));
        assert!(matches!(parse(&v2(1, 0x11, &[1, 2, 3, 4], &[])), Err(ProxyHeaderError::V2(_))));
        assert!(matches!(parse(&v2(1, 0x21, &v4_block(), &[])), Err(ProxyHeaderError::V2(_))));
        assert!(matches!(parse(&v2(1, 0x12, &v4_block(), &[])), Err(ProxyHeaderError::V2(_))));
        assert!(matches!(parse(&v2(1, 0x41, &v4_block(), &[])), Err(ProxyHeaderError::V2(_))));
        let mut bad_signature = bytes;
        bad_signature[5] = b'x';
        assert!(matches!(parse(&bad_signature), Err(ProxyHeaderError::Missing)));
    }

    #[tokio::test]
    async fn reader_returns_the_bytes_after_the_header_for_replay() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            // Split mid-header, the rest arriving with the request behind it.
            client.write_all(b"PROXY TCP4 203.0.113.9 127.0.0.1 5").await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b"0000 443\r\nGET / HTTP/1.1\r\n\r\n").await.unwrap();
            client
        });
        let (header, rest) = read_header(&mut server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(header, proxied("203.0.113.9:50000", "127.0.0.1:443"));
        let _client = writer.await.unwrap();
        let mut replay = Rewind::new(rest, server);
        let mut buf = [0u8; 18];
        replay.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test]
    async fn reader_gives_up_on_silence_truncation_and_garbage() {
        let (_client, mut server) = tokio::io::duplex(64);
        let err = read_header(&mut server, Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(err, ProxyHeaderError::Timeout), "{err}");

        let mut truncated: &[u8] = b"PROXY TCP4 203.0.113.9";
        let err = read_header(&mut truncated, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, ProxyHeaderError::Truncated), "{err}");

        let mut plain: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        let err = read_header(&mut plain, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, ProxyHeaderError::Missing), "{err}");
    }
}
