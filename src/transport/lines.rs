//! Newline-delimited JSON-RPC on a byte stream: one message per line, UTF-8,
//! no embedded newlines. TCP connections and stdio both speak it; each is one
//! session ([`super::conversation`]).

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::protocol::jsonrpc::{INVALID_REQUEST, SERVER_ERROR};
use crate::session::SessionError;

use super::conversation::{error_frame, oversized_message, Conversation, Received};

/// Room offered to each read. An idle connection holds this much while it
/// waits, so it is kept small.
const READ_CHUNK_BYTES: usize = 4 << 10;

/// One session's newline JSON on `stream`.
pub(crate) struct LineConversation<'a, S> {
    stream: &'a mut S,
    lines: Lines,
    finish_after_close: bool,
}

impl<'a, S: AsyncRead + AsyncWrite + Unpin> LineConversation<'a, S> {
    /// `finish_after_close`: whether requests in flight when the input ends
    /// still get their answers (see [`Conversation::finishes_after_close`]).
    pub(crate) fn new(stream: &'a mut S, line_bytes_max: usize, finish_after_close: bool) -> Self {
        LineConversation {
            stream,
            lines: Lines::new(line_bytes_max),
            finish_after_close,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conversation for LineConversation<'_, S> {
    async fn receive(&mut self) -> Received {
        // A read dropped before it finished left its room behind.
        self.lines.abandon_read();
        loop {
            match self.lines.next_line() {
                NextLine::Line(line) => return Received::Message(line),
                NextLine::TooLong => return Received::Oversized,
                NextLine::NeedMore => {}
            }
            match self.stream.read(self.lines.read_space()).await {
                Ok(read) if read > 0 => self.lines.filled(read),
                _ => return Received::Closed, // EOF or error
            }
        }
    }

    async fn send(&mut self, frame: Bytes) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(frame.len() + 1);
        out.extend_from_slice(&frame);
        out.push(b'\n');
        self.stream.write_all(&out).await
    }

    async fn refuse_oversized(&mut self, bytes_max: usize) -> bool {
        let message = oversized_message(bytes_max);
        let written = self
            .stream
            .write_all(&error_line(INVALID_REQUEST, &message))
            .await;
        // The error is answered and the rest of the line skipped: the
        // session goes on.
        if written.is_err() {
            return false;
        }
        self.lines.skip_line();
        true
    }

    async fn refuse_session(&mut self, error: &SessionError) {
        let line = match error {
            // Overload protection's own code and retry hint.
            SessionError::Shed(shed) => {
                let mut line = shed.http_body(None).to_vec();
                line.push(b'\n');
                line
            }
            _ => error_line(SERVER_ERROR, &format!("cannot open a session: {error}")),
        };
        let _ = self.stream.write_all(&line).await;
    }

    fn finishes_after_close(&self) -> bool {
        self.finish_after_close
    }
}

/// Splits newline-delimited messages out of what a connection has read,
/// looking at each byte once however the line arrives.
struct Lines {
    buffer: BytesMut,
    /// Bytes at the front of `buffer` already known to hold no newline.
    scanned: usize,
    /// Bytes of `buffer` that were really read (the rest is room for a read).
    committed: usize,
    line_bytes_max: usize,
    /// Dropping what is read up to the next newline (a refused line's rest).
    discarding: bool,
}

#[derive(Debug, PartialEq)]
enum NextLine {
    Line(Bytes),
    NeedMore,
    TooLong,
}

impl Lines {
    fn new(line_bytes_max: usize) -> Self {
        Lines {
            buffer: BytesMut::with_capacity(READ_CHUNK_BYTES),
            scanned: 0,
            committed: 0,
            line_bytes_max,
            discarding: false,
        }
    }

    /// The next non-empty line without its line ending.
    fn next_line(&mut self) -> NextLine {
        loop {
            let found = self.buffer[self.scanned..].iter().position(|&b| b == b'\n');
            if self.discarding {
                // Drop as we go, so a refused line costs no memory however long.
                let dropped = match found {
                    Some(offset) => {
                        self.discarding = false;
                        self.scanned + offset + 1
                    }
                    None => self.buffer.len(),
                };
                self.buffer.advance(dropped);
                self.committed -= dropped;
                self.scanned = 0;
                if self.discarding {
                    return NextLine::NeedMore;
                }
                continue;
            }
            let Some(offset) = found else {
                self.scanned = self.buffer.len();
                return if self.scanned > self.line_bytes_max {
                    NextLine::TooLong
                } else {
                    NextLine::NeedMore
                };
            };
            let end = self.scanned + offset;
            self.scanned = 0;
            if end > self.line_bytes_max {
                return NextLine::TooLong;
            }
            let mut line = self.buffer.split_to(end + 1).freeze();
            self.committed -= end + 1;
            line.truncate(trim_line_end(&line));
            if !line.is_empty() {
                return NextLine::Line(line);
            }
        }
    }

    /// After `TooLong`: drops the refused line through its newline, however
    /// much of it is still to come, and goes on with the next.
    fn skip_line(&mut self) {
        self.discarding = true;
        self.scanned = 0;
    }

    /// Room for the next read; follow with `filled` (what the read returned)
    /// or `abandon_read` (the read was dropped before it finished).
    fn read_space(&mut self) -> &mut [u8] {
        self.buffer.truncate(self.committed);
        self.buffer.resize(self.committed + READ_CHUNK_BYTES, 0);
        &mut self.buffer[self.committed..]
    }

    fn filled(&mut self, read: usize) {
        self.committed += read.min(READ_CHUNK_BYTES);
        self.buffer.truncate(self.committed);
    }

    /// Forgets the room offered to a read that never completed.
    fn abandon_read(&mut self) {
        self.buffer.truncate(self.committed);
    }
}

fn trim_line_end(line: &[u8]) -> usize {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    end
}

fn error_line(code: i64, message: &str) -> Vec<u8> {
    let mut line = error_frame(code, message);
    line.push(b'\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &mut Lines, bytes: &[u8]) {
        let space = lines.read_space();
        space[..bytes.len()].copy_from_slice(bytes);
        lines.filled(bytes.len());
    }

    #[test]
    fn splits_lines_across_reads_and_drops_line_endings_and_blank_lines() {
        let mut lines = Lines::new(1_024);
        assert_eq!(lines.next_line(), NextLine::NeedMore);
        feed(&mut lines, b"{\"a\":1}\r\n\n{\"b\"");
        assert_eq!(
            lines.next_line(),
            NextLine::Line(Bytes::from_static(b"{\"a\":1}"))
        );
        assert_eq!(lines.next_line(), NextLine::NeedMore);
        feed(&mut lines, b":2}\n");
        assert_eq!(
            lines.next_line(),
            NextLine::Line(Bytes::from_static(b"{\"b\":2}"))
        );
        assert_eq!(lines.next_line(), NextLine::NeedMore);
    }

    #[test]
    fn an_abandoned_read_leaves_no_trace() {
        let mut lines = Lines::new(1_024);
        feed(&mut lines, b"{\"a\"");
        assert_eq!(lines.next_line(), NextLine::NeedMore);
        let _ = lines.read_space(); // offered to a read that is then dropped
        lines.abandon_read();
        feed(&mut lines, b":1}\n");
        assert_eq!(
            lines.next_line(),
            NextLine::Line(Bytes::from_static(b"{\"a\":1}"))
        );
    }

    #[test]
    fn refuses_a_line_past_the_bound_whether_complete_or_still_arriving() {
        let mut lines = Lines::new(8);
        feed(&mut lines, b"0123456789\n");
        assert_eq!(lines.next_line(), NextLine::TooLong);

        let mut lines = Lines::new(8);
        feed(&mut lines, b"01234");
        assert_eq!(lines.next_line(), NextLine::NeedMore);
        feed(&mut lines, b"56789");
        assert_eq!(lines.next_line(), NextLine::TooLong);

        let mut lines = Lines::new(8);
        feed(&mut lines, b"01234567\n");
        assert_eq!(
            lines.next_line(),
            NextLine::Line(Bytes::from_static(b"01234567"))
        );
    }

    #[test]
    fn a_skipped_complete_line_gives_way_to_the_next() {
        let mut lines = Lines::new(8);
        feed(&mut lines, b"0123456789\n{\"a\":1}\n");
        assert_eq!(lines.next_line(), NextLine::TooLong);
        lines.skip_line();
        assert_eq!(
            lines.next_line(),
            NextLine::Line(Bytes::from_static(b"{\"a\":1}"))
        );
        assert_eq!(lines.next_line(), NextLine::NeedMore);
    }

    #[test]
    fn a_skipped_line_still_arriving_is_dropped_as_it_comes_without_growing() {
        let mut lines = Lines::new(8);
        feed(&mut lines, b"0123456789");
        assert_eq!(lines.next_line(), NextLine::TooLong);
        lines.skip_line();
        for _ in 0..100 {
            assert_eq!(lines.next_line(), NextLine::NeedMore);
            assert_eq!(lines.committed, 0, "nothing of the refused line is kept");
            feed(&mut lines, &[b'x'; 1_000]);
        }
        feed(&mut lines, b"tail\n{}\r\n");
        assert_eq!(lines.next_line(), NextLine::Line(Bytes::from_static(b"{}")));
        // A later long line is refused again, not skipped silently.
        feed(&mut lines, b"0123456789\n");
        assert_eq!(lines.next_line(), NextLine::TooLong);
    }
}
