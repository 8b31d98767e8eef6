//! An incremental server-sent-events parser (WHATWG HTML, "Interpreting an
//! event stream"), enough to turn each event's data into one WebSocket
//! message. Only `data` matters here; `event`, `id` and `retry` fields and
//! comments are skipped. Buffers at most one event, bounded by `max_bytes`.

use bytes::{Bytes, BytesMut};

/// An event grew past the limit before its blank line came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTooLarge;

impl std::fmt::Display for EventTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("server-sent event over the message size limit")
    }
}

impl std::error::Error for EventTooLarge {}

/// Feeds body chunks in, gets whole events' data out.
#[derive(Debug)]
pub struct Parser {
    /// Bytes of the current, unfinished line.
    line: BytesMut,
    /// `data` lines of the current event, joined with `\n`.
    data: BytesMut,
    has_data: bool,
    /// A `\r` ended the last chunk: a `\n` starting the next one belongs to it.
    after_cr: bool,
    max_bytes: usize,
}

impl Parser {
    /// A parser whose events may hold at most `max_bytes` of data.
    pub fn new(max_bytes: usize) -> Self {
        Self { line: BytesMut::new(), data: BytesMut::new(), has_data: false, after_cr: false, max_bytes }
    }

    /// Consumes a chunk; returns the data of every event it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, EventTooLarge> {
        let mut events = Vec::new();
        for &b in chunk {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    if let Some(event) = self.end_line() {
                        events.push(event);
                    }
                }
                _ => {
                    if self.line.len() + self.data.len() >= self.max_bytes {
                        return Err(EventTooLarge);
                    }
                    self.line.extend_from_slice(&[b]);
                }
            }
        }
        Ok(events)
    }

    /// Handles one finished line; a blank line dispatches the event.
    fn end_line(&mut self) -> Option<Bytes> {
        let line = self.line.split().freeze();
        if line.is_empty() {
            if !self.has_data {
                return None;
            }
            self.has_data = false;
            return Some(self.data.split().freeze());
        }
        if line[0] == b':' {
            return None;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &b""[..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.extend_from_slice(b"\n");
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_across_any_chunking_and_line_ending() {
        let stream =
            b": comment\nevent: tick\ndata: one\n\ndata:two\r\ndata: lines\r\n\r\nid: 3\nretry: 10\n\ndata: last\r\r";
        for split in 1..stream.len() {
            let mut p = Parser::new(1024);
            let mut got = p.feed(&stream[..split]).unwrap();
            got.extend(p.feed(&stream[split..]).unwrap());
            assert_eq!(got, vec![Bytes::from("one"), Bytes::from("two\nlines"), Bytes::from("last")], "split {split}");
        }
    }

    #[test]
    fn an_event_past_the_limit_is_an_error() {
        let mut p = Parser::new(8);
        assert_eq!(p.feed(b"data: 0123456789\n"), Err(EventTooLarge));
    }
}
