//! The HTTP/1.1 client side, as pure codecs: requests written by hand
//! (keep-alive, Content-Length), response heads parsed with `httparse`,
//! bodies framed by Content-Length, chunked encoding or the connection's
//! end, and `text/event-stream` bodies split into events. No I/O here; the
//! connection loop (`conn.rs`) feeds bytes in.

use std::io::Write;

/// Largest response head (status line and headers).
pub const RESPONSE_HEAD_BYTES_MAX: usize = 16 << 10;
/// Headers one response may carry.
pub const RESPONSE_HEADERS_MAX: usize = 64;
/// Largest response body (decoded), JSON or a whole SSE stream.
pub const RESPONSE_BODY_BYTES_MAX: usize = 16 << 20;
/// Longest chunk-size or trailer line in a chunked body.
const CHUNK_LINE_BYTES_MAX: usize = 1_024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("response head longer than {RESPONSE_HEAD_BYTES_MAX} bytes")]
    HeadTooLong,
    #[error("bad response head: {0}")]
    BadHead(String),
    #[error("bad Content-Length")]
    BadLength,
    #[error("bad chunked encoding: {0}")]
    BadChunk(&'static str),
    #[error("response body longer than {RESPONSE_BODY_BYTES_MAX} bytes")]
    BodyTooLong,
}

/// Writes one POST (or DELETE when `body` is None) into `out`.
pub struct RequestHead<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    pub session: Option<&'a str>,
    pub protocol_version: Option<&'a str>,
}

impl RequestHead<'_> {
    pub fn write(&self, body: &[u8], out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "{} {} HTTP/1.1\r\nHost: {}\r\nAccept: application/json, text/event-stream\r\n",
            self.method, self.path, self.host
        );
        if !body.is_empty() {
            out.extend_from_slice(b"Content-Type: application/json\r\n");
        }
        if let Some(session) = self.session {
            let _ = write!(out, "Mcp-Session-Id: {session}\r\n");
        }
        if let Some(version) = self.protocol_version {
            let _ = write!(out, "MCP-Protocol-Version: {version}\r\n");
        }
        let _ = write!(out, "Content-Length: {}\r\n\r\n", body.len());
        out.extend_from_slice(body);
    }
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// What matters in a response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Bytes the head took in the buffer.
    pub len: usize,
    pub framing: Framing,
    pub event_stream: bool,
    pub session: Option<String>,
    /// False when the server said `Connection: close` (or spoke HTTP/1.0
    /// without keep-alive).
    pub keep_alive: bool,
}

/// Parses a response head from the start of `buffer`; Ok(None) when more
/// bytes are needed.
pub fn parse_head(buffer: &[u8]) -> Result<Option<ResponseHead>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buffer) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buffer.len() > RESPONSE_HEAD_BYTES_MAX => {
            return Err(HttpError::HeadTooLong)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(error) => return Err(HttpError::BadHead(error.to_string())),
    };
    let status = response.code.unwrap_or(0);
    let mut length = None;
    let mut chunked = false;
    let mut event_stream = false;
    let mut session = None;
    let mut keep_alive = response.version == Some(1);
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| HttpError::BadLength)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = contains_ignore_case(value, "chunked");
        } else if name.eq_ignore_ascii_case("content-type") {
            event_stream = value
                .get(..TEXT_EVENT_STREAM.len())
                .is_some_and(|start| start.eq_ignore_ascii_case(TEXT_EVENT_STREAM));
        } else if name.eq_ignore_ascii_case("mcp-session-id") {
            session = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("connection") {
            if contains_ignore_case(value, "close") {
                keep_alive = false;
            } else if contains_ignore_case(value, "keep-alive") {
                keep_alive = true;
            }
        }
    }
    let framing = if chunked {
        Framing::Chunked
    } else if let Some(length) = length {
        if length > RESPONSE_BODY_BYTES_MAX {
            return Err(HttpError::BodyTooLong);
        }
        if length == 0 {
            Framing::Empty
        } else {
            Framing::Length(length)
        }
    } else if matches!(status, 100..=199 | 204 | 304) {
        Framing::Empty
    } else {
        Framing::UntilClose
    };
    if framing == Framing::UntilClose {
        keep_alive = false;
    }
    Ok(Some(ResponseHead {
        status,
        len,
        framing,
        event_stream,
        session,
        keep_alive,
    }))
}

const TEXT_EVENT_STREAM: &str = "text/event-stream";

/// Whether `needle` (lower case) is in `haystack`, in any case, without
/// allocating: heads are parsed once per answer.
fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Decodes a chunked body incrementally.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailer,
    Done,
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes what it can from `input` into `out`; returns the bytes of
    /// `input` consumed. Stops at the end of the body.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, HttpError> {
        let mut at = 0;
        loop {
            match self.state {
                ChunkState::Done => return Ok(at),
                ChunkState::Size => {
                    let Some(line) = line_at(&input[at..])? else {
                        return Ok(at);
                    };
                    let text = std::str::from_utf8(&input[at..at + line])
                        .map_err(|_| HttpError::BadChunk("size is not text"))?;
                    let hex = text.split(';').next().unwrap_or("").trim();
                    let size = usize::from_str_radix(hex, 16)
                        .map_err(|_| HttpError::BadChunk("size is not hex"))?;
                    if out.len().saturating_add(size) > RESPONSE_BODY_BYTES_MAX {
                        return Err(HttpError::BodyTooLong);
                    }
                    at += line + 2;
                    self.state = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let take = left.min(input.len() - at);
                    if take == 0 {
                        return Ok(at);
                    }
                    out.extend_from_slice(&input[at..at + take]);
                    at += take;
                    self.state = if take == left {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left - take)
                    };
                }
                ChunkState::DataEnd => {
                    if input.len() - at < 2 {
                        return Ok(at);
                    }
                    if &input[at..at + 2] != b"\r\n" {
                        return Err(HttpError::BadChunk("chunk not followed by CRLF"));
                    }
                    at += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(line) = line_at(&input[at..])? else {
                        return Ok(at);
                    };
                    at += line + 2;
                    if line == 0 {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// Length of the CRLF-terminated line at the start of `input`, if complete.
fn line_at(input: &[u8]) -> Result<Option<usize>, HttpError> {
    match input.windows(2).position(|pair| pair == b"\r\n") {
        Some(len) if len > CHUNK_LINE_BYTES_MAX => Err(HttpError::BadChunk("line too long")),
        Some(len) => Ok(Some(len)),
        None if input.len() > CHUNK_LINE_BYTES_MAX => Err(HttpError::BadChunk("line too long")),
        None => Ok(None),
    }
}

/// Splits an event stream into the `data` of each event, incrementally.
/// Lines end in LF, CRLF or CR; `data` lines of one event are joined with LF;
/// the `event` field names its type (`message` when absent); comments and
/// other fields are skipped.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the body already looked at.
    consumed: usize,
    data: Vec<u8>,
    has_data: bool,
    kind: Vec<u8>,
}

impl SseParser {
    /// Takes every complete event in `body[consumed..]`, calling `event`
    /// with its data.
    pub fn feed(&mut self, body: &[u8], mut event: impl FnMut(&[u8])) {
        self.feed_typed(body, |_, data| event(data));
    }

    /// Drops the bytes of `body` already parsed (for endless streams).
    pub fn compact(&mut self, body: &mut Vec<u8>) {
        body.drain(..self.consumed.min(body.len()));
        self.consumed = 0;
    }

    /// Like `feed`, with each event's type.
    pub fn feed_typed(&mut self, body: &[u8], mut event: impl FnMut(&[u8], &[u8])) {
        loop {
            let rest = &body[self.consumed..];
            let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                return;
            };
            // A CR at the very end may be the first half of CRLF: wait.
            let terminator = match (rest[end], rest.get(end + 1)) {
                (b'\r', Some(b'\n')) => 2,
                (b'\r', None) => return,
                _ => 1,
            };
            let line = &rest[..end];
            self.consumed += end + terminator;
            if line.is_empty() {
                if self.has_data {
                    let kind: &[u8] = if self.kind.is_empty() {
                        b"message"
                    } else {
                        &self.kind
                    };
                    event(kind, &self.data);
                }
                self.data.clear();
                self.kind.clear();
                self.has_data = false;
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(colon) => {
                    let value = &line[colon + 1..];
                    (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
                }
                None => (line, &b""[..]),
            };
            if field == b"data" {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            } else if field == b"event" {
                self.kind.clear();
                self.kind.extend_from_slice(value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_mcp_headers_and_a_length() {
        let mut out = Vec::new();
        RequestHead {
            method: "POST",
            path: "/mcp",
            host: "127.0.0.1:8080",
            session: Some("abc"),
            protocol_version: Some("2025-11-25"),
        }
        .write(br#"{"x":1}"#, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        for header in [
            "Accept: application/json, text/event-stream\r\n",
            "Content-Type: application/json\r\n",
            "Mcp-Session-Id: abc\r\n",
            "MCP-Protocol-Version: 2025-11-25\r\n",
            "Content-Length: 7\r\n\r\n{\"x\":1}",
        ] {
            assert!(text.contains(header), "{header:?} in {text:?}");
        }
        let mut out = Vec::new();
        RequestHead {
            method: "DELETE",
            path: "/mcp",
            host: "h",
            session: Some("abc"),
            protocol_version: None,
        }
        .write(b"", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("Content-Type"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn heads_give_status_framing_type_session_and_keep_alive() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: 00ab\r\nContent-Length: 12\r\n\r\n{\"result\":1}";
        let parsed = parse_head(head).unwrap().unwrap();
        assert_eq!(parsed.status, 200);
        assert_eq!(parsed.framing, Framing::Length(12));
        assert!(!parsed.event_stream && parsed.keep_alive);
        assert_eq!(parsed.session.as_deref(), Some("00ab"));
        assert_eq!(&head[parsed.len..], b"{\"result\":1}");

        let sse = parse_head(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n").unwrap().unwrap();
        assert_eq!(sse.framing, Framing::Chunked);
        assert!(sse.event_stream && sse.keep_alive);

        let closing = parse_head(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(closing.framing, Framing::UntilClose);
        assert!(!closing.keep_alive);

        // Values in any case; HTTP/1.0 keeps alive only when it says so.
        let shouting = parse_head(b"HTTP/1.0 200 OK\r\ncontent-type: Text/Event-Stream; charset=utf-8\r\nTRANSFER-ENCODING: gzip, CHUNKED\r\nConnection: Keep-Alive\r\n\r\n").unwrap().unwrap();
        assert_eq!(shouting.framing, Framing::Chunked);
        assert!(shouting.event_stream && shouting.keep_alive);
        let plain = parse_head(
            b"HTTP/1.0 200 OK\r\nContent-Type: text/eventstream\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        assert!(!plain.event_stream && !plain.keep_alive);

        let accepted = parse_head(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(accepted.framing, Framing::Empty);

        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(HttpError::BadLength)
        ));
        assert!(matches!(
            parse_head(b"SMTP 220 hi\r\n\r\n"),
            Err(HttpError::BadHead(_))
        ));
        let endless = vec![b'a'; RESPONSE_HEAD_BYTES_MAX + 1];
        let mut long = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        long.extend_from_slice(&endless);
        assert_eq!(parse_head(&long), Err(HttpError::HeadTooLong));
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for split in 0..wire.len() {
            let mut decoder = ChunkedDecoder::default();
            let mut out = Vec::new();
            let mut consumed = decoder.decode(&wire[..split], &mut out).unwrap();
            // The caller keeps unconsumed bytes and appends the rest.
            let mut rest = wire[consumed..split].to_vec();
            rest.extend_from_slice(&wire[split..]);
            consumed = decoder.decode(&rest, &mut out).unwrap();
            assert!(decoder.is_done(), "split at {split}");
            assert_eq!(out, b"hello, world");
            assert_eq!(&rest[consumed..], b"NEXT", "split at {split}");
        }
    }

    #[test]
    fn bad_chunks_are_errors() {
        let mut out = Vec::new();
        assert!(ChunkedDecoder::default()
            .decode(b"zz\r\n", &mut out)
            .is_err());
        assert!(ChunkedDecoder::default()
            .decode(b"2\r\nabXY", &mut out)
            .is_err());
        assert!(ChunkedDecoder::default()
            .decode(&vec![b'1'; 2_000], &mut out)
            .is_err());
        assert_eq!(
            ChunkedDecoder::default().decode(b"ffffffff\r\n", &mut out),
            Err(HttpError::BodyTooLong)
        );
    }

    #[test]
    fn sse_events_carry_their_type_and_endless_streams_compact() {
        let mut parser = SseParser::default();
        let mut body = b"event: endpoint\ndata: /messages?sessionId=1\n\ndata: {}\n\nda".to_vec();
        let mut events = Vec::new();
        parser.feed_typed(&body, |kind, data| {
            events.push((kind.to_vec(), data.to_vec()))
        });
        assert_eq!(
            events,
            [
                (b"endpoint".to_vec(), b"/messages?sessionId=1".to_vec()),
                (b"message".to_vec(), b"{}".to_vec())
            ]
        );
        parser.compact(&mut body);
        assert_eq!(body, b"da");
        body.extend_from_slice(b"ta: x\n\n");
        events.clear();
        parser.feed_typed(&body, |kind, data| {
            events.push((kind.to_vec(), data.to_vec()))
        });
        assert_eq!(events, [(b"message".to_vec(), b"x".to_vec())]);
    }

    #[test]
    fn sse_events_are_split_across_reads_with_any_line_ending() {
        let stream = b": comment\nevent: message\ndata: {\"a\":1}\n\nid: 7\r\ndata: {\"b\":\r\ndata: 2}\r\n\r\ndata:x\r\rretry: 5\n\n";
        for split in 0..stream.len() {
            let mut parser = SseParser::default();
            let mut events = Vec::new();
            parser.feed(&stream[..split], |data| events.push(data.to_vec()));
            parser.feed(stream, |data| events.push(data.to_vec()));
            assert_eq!(
                events,
                [
                    b"{\"a\":1}".to_vec(),
                    b"{\"b\":\n2}".to_vec(),
                    b"x".to_vec()
                ],
                "split at {split}"
            );
        }
    }
}
