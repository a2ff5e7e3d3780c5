//! One client connection on a glommio executor: bytes out, framed answers
//! in. HTTP exchanges (JSON or SSE answers) and newline-delimited JSON-RPC
//! exchanges. Timeouts are the caller's: a connection whose exchange timed
//! out is dropped, since its next bytes may still belong to the old answer.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use super::http::{
    parse_head, ChunkedDecoder, Framing, RequestHead, ResponseHead, SseParser,
    RESPONSE_BODY_BYTES_MAX,
};
use super::reply::{classify, Frame, Outcome};
use super::stats::ErrorKind;
use crate::transport::sweep::{SweptSocket, SweptSockets};

/// Room offered to each read; the buffer starts at this size.
const READ_CHUNK_BYTES: usize = 8 << 10;
/// Largest buffered input: one whole answer (a TCP line or an HTTP head and
/// chunk) must fit.
const READ_BUFFER_BYTES_MAX: usize = RESPONSE_BODY_BYTES_MAX + (64 << 10);
/// After our response arrived on an SSE stream, how long we wait for the
/// stream's end before giving up on the connection (the answer still counts).
const SSE_END_GRACE: Duration = Duration::from_millis(200);

/// An HTTP answer, as the session logic needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub session: Option<String>,
    /// The JSON-RPC response to our id, when the body carried one.
    pub outcome: Option<Outcome>,
    /// Set when a body was there but could not be understood.
    pub bad_body: bool,
    pub notifications: u64,
    pub server_requests: u64,
    /// Whether the connection can carry another request.
    pub reusable: bool,
}

pub struct Conn {
    /// Declared before `stream`: it must leave the watchdog before the
    /// socket closes.
    watch: Option<SweptSocket>,
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    out: Vec<u8>,
    body: Vec<u8>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Set once the connection was upgraded: messages travel as WebSocket
    /// frames instead of lines.
    websocket: Option<Masks>,
}

/// Client frames must be masked (RFC 6455 5.3); the key only has to stop a
/// proxy from reading our frames as something else, so a cheap generator
/// seeded per connection does.
struct Masks(u32);

impl Masks {
    fn next(&mut self) -> [u8; 4] {
        // xorshift32: never zero, different on every frame.
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x.to_be_bytes()
    }
}

/// Largest frame header a server frame may have (2 + 8 bytes of length).
const WS_HEAD_BYTES_MAX: usize = 10;

/// One server frame at the start of `input`: (fin, opcode, header length,
/// payload length), or None when more bytes are needed. Server frames are
/// never masked; a masked one is refused.
fn ws_frame_head(input: &[u8]) -> Result<Option<(bool, u8, usize, usize)>, ErrorKind> {
    if input.len() < 2 {
        return Ok(None);
    }
    if input[1] & 0x80 != 0 {
        return Err(ErrorKind::BadResponse);
    }
    let (head, len) = match input[1] & 0x7f {
        126 if input.len() < 4 => return Ok(None),
        126 => (4, usize::from(u16::from_be_bytes([input[2], input[3]]))),
        127 if input.len() < WS_HEAD_BYTES_MAX => return Ok(None),
        127 => {
            let mut bytes = [0; 8];
            bytes.copy_from_slice(&input[2..10]);
            let len = u64::from_be_bytes(bytes);
            (
                10,
                usize::try_from(len).map_err(|_| ErrorKind::BadResponse)?,
            )
        }
        short => (2, usize::from(short)),
    };
    if len > RESPONSE_BODY_BYTES_MAX {
        return Err(ErrorKind::BadResponse);
    }
    Ok(Some((input[0] & 0x80 != 0, input[0] & 0x0f, head, len)))
}

/// Appends one masked client frame.
fn ws_push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    match payload.len() {
        len if len < 126 => out.push(0x80 | len as u8),
        len if len <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
}

/// Local addresses this thread binds its connections to: its own slice of
/// the ephemeral port range, on each source address in turn (`--source-ips`;
/// the unspecified address otherwise). The kernel's own choice at connect()
/// walks the ports already connected to the same server, which costs
/// O(connections) per connect: 15,000 connections took seconds of kernel
/// time that way. Each source address adds a port range's worth of
/// connections to one server address.
#[derive(Debug)]
pub struct SourcePorts {
    low: u16,
    count: u16,
    next: std::cell::Cell<u16>,
    /// Empty: the unspecified address of the target's family.
    ips: Vec<std::net::IpAddr>,
    ip_index: std::cell::Cell<usize>,
}

/// Ports tried for one connection before falling back to the kernel's choice.
const BIND_ATTEMPTS_MAX: u16 = 1_024;

impl SourcePorts {
    /// Slice `index` of `slices` of the range `low..=high`; None when a
    /// slice would be empty.
    pub fn slice(low: u16, high: u16, index: usize, slices: usize) -> Option<SourcePorts> {
        let total = usize::from(high.checked_sub(low)?) + 1;
        let per = total / slices.max(1);
        if per == 0 || index >= slices {
            return None;
        }
        Some(SourcePorts {
            low: low + (index * per) as u16,
            count: per as u16,
            next: std::cell::Cell::new(0),
            ips: Vec::new(),
            ip_index: std::cell::Cell::new(0),
        })
    }

    /// Binds to these addresses, one after another, each for a whole slice.
    pub fn with_ips(mut self, ips: Vec<std::net::IpAddr>) -> SourcePorts {
        self.ips = ips;
        self
    }

    /// Local addresses available: ports in the slice × source addresses.
    fn capacity(&self) -> usize {
        usize::from(self.count) * self.ips.len().max(1)
    }

    fn take(&self, target: SocketAddr) -> SocketAddr {
        let offset = self.next.get();
        let ip = match self.ips.len() {
            0 if target.is_ipv4() => std::net::Ipv4Addr::UNSPECIFIED.into(),
            0 => std::net::Ipv6Addr::UNSPECIFIED.into(),
            n => self.ips[self.ip_index.get() % n],
        };
        let next = (offset + 1) % self.count;
        if next == 0 {
            self.ip_index.set(self.ip_index.get().wrapping_add(1));
        }
        self.next.set(next);
        SocketAddr::new(ip, self.low + offset)
    }
}

/// Binds a non-blocking socket to `local` and starts connecting; Ok(None)
/// when the address is taken (try another).
fn bind_and_connect(
    addr: SocketAddr,
    local: SocketAddr,
) -> Result<Option<socket2::Socket>, ErrorKind> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|_| ErrorKind::Connect)?;
    socket
        .set_nonblocking(true)
        .map_err(|_| ErrorKind::Connect)?;
    // Ports left in TIME_WAIT by an earlier run to another address stay usable.
    socket
        .set_reuse_address(true)
        .map_err(|_| ErrorKind::Connect)?;
    let taken = |error: &std::io::Error| {
        matches!(
            error.raw_os_error(),
            Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL)
        )
    };
    match socket.bind(&local.into()) {
        Ok(()) => {}
        Err(error) if taken(&error) => return Ok(None),
        Err(_) => return Err(ErrorKind::Connect),
    }
    match socket.connect(&addr.into()) {
        Ok(()) => Ok(Some(socket)),
        Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => Ok(Some(socket)),
        Err(error) if taken(&error) => Ok(None),
        Err(_) => Err(ErrorKind::Connect),
    }
}

impl Conn {
    /// Opens a connection, from one of `ports` when given. A connection
    /// from a chosen port completes in the background: the first write
    /// waits for it, and a refusal then surfaces as `Connect`.
    pub async fn connect(
        addr: SocketAddr,
        ports: Option<&SourcePorts>,
        timeout: Duration,
    ) -> Result<Conn, ErrorKind> {
        let mut bound = None;
        if let Some(ports) = ports {
            for _ in 0..usize::from(BIND_ATTEMPTS_MAX).min(ports.capacity()) {
                if let Some(socket) = bind_and_connect(addr, ports.take(addr))? {
                    bound = Some(socket);
                    break;
                }
            }
        }
        let stream = match bound {
            Some(socket) => {
                use std::os::fd::{FromRawFd, IntoRawFd};
                // SAFETY: the fd comes from a socket we own and give up here.
                unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) }
            }
            None => TcpStream::connect_timeout(addr, timeout)
                .await
                .map_err(|_| ErrorKind::Connect)?,
        };
        // Nagle plus delayed ACKs would add 40 ms to every request.
        stream.set_nodelay(true).map_err(|_| ErrorKind::Connect)?;
        Ok(Conn {
            watch: None,
            stream,
            buf: vec![0; READ_CHUNK_BYTES],
            start: 0,
            end: 0,
            out: Vec::with_capacity(1 << 10),
            body: Vec::new(),
            bytes_sent: 0,
            bytes_received: 0,
            websocket: None,
        })
    }

    /// Reads a response head and takes it out of the buffer; what follows
    /// it (body, frames, events) stays.
    async fn read_response_head(&mut self) -> Result<ResponseHead, ErrorKind> {
        let head = loop {
            match parse_head(self.pending()) {
                Ok(Some(head)) => break head,
                Ok(None) => self.fill().await?,
                Err(_) => return Err(ErrorKind::BadResponse),
            }
        };
        self.consume(head.len);
        Ok(head)
    }

    /// Upgrades the connection to a WebSocket carrying MCP (subprotocol
    /// `mcp`); afterwards `line_exchange` sends and reads frames.
    pub async fn upgrade_websocket(&mut self, host: &str, path: &str) -> Result<(), ErrorKind> {
        let seed = (self.stream.local_addr().map_or(1, |addr| addr.port()) as u32) | 1 << 16;
        self.out.clear();
        self.out.extend_from_slice(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: c2hhcmRtY3AgbG9hZGdlbg==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mcp\r\n\r\n"
            )
            .as_bytes(),
        );
        self.send().await?;
        let head = self.read_response_head().await?;
        if head.status != 101 {
            return Err(ErrorKind::HttpStatus(head.status));
        }
        self.websocket = Some(Masks(seed));
        Ok(())
    }

    /// Reads one whole WebSocket message (continuations joined) into
    /// `self.body`; answers pings on the way. A close frame is `Closed`.
    async fn read_ws_message(&mut self) -> Result<(), ErrorKind> {
        self.body.clear();
        loop {
            let Some((fin, opcode, head, len)) = ws_frame_head(self.pending())? else {
                self.fill().await?;
                continue;
            };
            if self.pending().len() < head + len {
                self.fill().await?;
                continue;
            }
            let payload = head..head + len;
            match opcode {
                0x0..=0x2 => {
                    if self.body.len() + len > RESPONSE_BODY_BYTES_MAX {
                        return Err(ErrorKind::BadResponse);
                    }
                    let start = self.start;
                    self.body
                        .extend_from_slice(&self.buf[start + payload.start..start + payload.end]);
                    self.consume(head + len);
                    if fin {
                        return Ok(());
                    }
                }
                0x9 => {
                    let ping = self.pending()[payload].to_vec();
                    self.consume(head + len);
                    let mask = self.masks().next();
                    self.out.clear();
                    ws_push_frame(&mut self.out, 0xA, &ping, mask);
                    self.send().await?;
                }
                0xA => self.consume(head + len),
                0x8 => return Err(ErrorKind::Closed),
                _ => return Err(ErrorKind::BadResponse),
            }
        }
    }

    fn masks(&mut self) -> &mut Masks {
        self.websocket.get_or_insert(Masks(1))
    }

    /// `line_exchange` over a WebSocket: one text frame per message.
    async fn ws_exchange(
        &mut self,
        message: &[u8],
        id: Option<u64>,
    ) -> Result<(Option<Outcome>, u64, u64), ErrorKind> {
        let mask = self.masks().next();
        self.out.clear();
        ws_push_frame(&mut self.out, 0x1, message, mask);
        self.send().await?;
        let Some(id) = id else {
            return Ok((None, 0, 0));
        };
        let (mut notifications, mut server_requests) = (0, 0);
        loop {
            self.read_ws_message().await?;
            match classify(&self.body, id)? {
                Frame::Response(outcome) => {
                    return Ok((Some(outcome), notifications, server_requests))
                }
                Frame::Notification => notifications += 1,
                Frame::ServerRequest => server_requests += 1,
                Frame::OtherResponse => {}
            }
        }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more bytes; EOF is `Closed`.
    async fn fill(&mut self) -> Result<(), ErrorKind> {
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() >= READ_BUFFER_BYTES_MAX {
                return Err(ErrorKind::BadResponse);
            } else {
                let grown = (self.buf.len() * 2).min(READ_BUFFER_BYTES_MAX);
                self.buf.resize(grown, 0);
            }
        }
        match self.stream.read(&mut self.buf[self.end..]).await {
            Ok(0) => Err(ErrorKind::Closed),
            Ok(read) => {
                self.end += read;
                self.bytes_received += read as u64;
                Ok(())
            }
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {
                Err(ErrorKind::Closed)
            }
            Err(_) => Err(ErrorKind::Io),
        }
    }

    async fn send(&mut self) -> Result<(), ErrorKind> {
        let result = self.stream.write_all(&self.out).await;
        let fresh = self.bytes_sent == 0;
        self.bytes_sent += self.out.len() as u64;
        result.map_err(|error| match error.kind() {
            // The first write is where a background connect fails.
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::HostUnreachable
            | std::io::ErrorKind::NetworkUnreachable
                if fresh =>
            {
                ErrorKind::Connect
            }
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset => {
                ErrorKind::Closed
            }
            _ => ErrorKind::Io,
        })
    }

    /// One newline-delimited JSON-RPC message out; when `id` is Some, reads
    /// lines until the response to it. Returns it with the notifications and
    /// server requests seen on the way.
    ///
    /// Under the watchdog when [`watch_by`](Self::watch_by) was called: an
    /// exchange it ends is `Timeout`.
    pub async fn line_exchange(
        &mut self,
        message: &[u8],
        id: Option<u64>,
    ) -> Result<(Option<Outcome>, u64, u64), ErrorKind> {
        self.watch_start();
        let result = self.line_exchange_unwatched(message, id).await;
        self.watch_settle(result)
    }

    async fn line_exchange_unwatched(
        &mut self,
        message: &[u8],
        id: Option<u64>,
    ) -> Result<(Option<Outcome>, u64, u64), ErrorKind> {
        if self.websocket.is_some() {
            return self.ws_exchange(message, id).await;
        }
        self.out.clear();
        self.out.extend_from_slice(message);
        self.out.push(b'\n');
        self.send().await?;
        let Some(id) = id else {
            return Ok((None, 0, 0));
        };
        let (mut notifications, mut server_requests) = (0, 0);
        let mut scanned = 0;
        loop {
            let pending = self.pending();
            match pending[scanned..].iter().position(|&b| b == b'\n') {
                Some(at) => {
                    let line_len = scanned + at;
                    let frame = classify(&pending[..line_len], id);
                    self.consume(line_len + 1);
                    scanned = 0;
                    match frame? {
                        Frame::Response(outcome) => {
                            return Ok((Some(outcome), notifications, server_requests))
                        }
                        Frame::Notification => notifications += 1,
                        Frame::ServerRequest => server_requests += 1,
                        Frame::OtherResponse => {}
                    }
                }
                None => {
                    scanned = pending.len();
                    self.fill().await?;
                }
            }
        }
    }

    /// One HTTP request; reads the whole answer. With `id`, the body's
    /// JSON-RPC response to it (JSON or on an SSE stream) is the outcome.
    ///
    /// Under the watchdog when [`watch_by`](Self::watch_by) was called: an
    /// exchange it ends is `Timeout`.
    pub async fn http_exchange(
        &mut self,
        head: &RequestHead<'_>,
        body: &[u8],
        id: Option<u64>,
    ) -> Result<HttpAnswer, ErrorKind> {
        self.watch_start();
        let result = self.http_exchange_unwatched(head, body, id).await;
        self.watch_settle(result)
    }

    /// Puts this connection's exchanges under `dog`: one that runs past the
    /// watchdog's limit is shut down and ends as `Timeout`. An exchange
    /// dropped half-way leaves the connection marked busy, so a caller that
    /// gives up on one (an outer timeout) must drop the connection too, as
    /// every caller here does.
    pub fn watch_by(&mut self, watchdog: &Rc<SweptSockets>) {
        self.watch = Some(watchdog.register(self.stream.as_raw_fd()));
    }

    fn watch_start(&self) {
        if let Some(watch) = &self.watch {
            watch.start();
        }
    }

    fn watch_settle<T>(&self, result: Result<T, ErrorKind>) -> Result<T, ErrorKind> {
        match &self.watch {
            Some(watch) if watch.stop() => Err(ErrorKind::Timeout),
            _ => result,
        }
    }

    async fn http_exchange_unwatched(
        &mut self,
        head: &RequestHead<'_>,
        body: &[u8],
        id: Option<u64>,
    ) -> Result<HttpAnswer, ErrorKind> {
        self.out.clear();
        head.write(body, &mut self.out);
        self.send().await?;
        let mut response = self.read_response_head().await?;
        let mut answer = HttpAnswer {
            status: response.status,
            session: response.session.take(),
            outcome: None,
            bad_body: false,
            notifications: 0,
            server_requests: 0,
            reusable: response.keep_alive,
        };
        if response.event_stream {
            self.read_event_stream(&response, id, &mut answer).await?;
        } else {
            self.read_body(&response).await?;
            if let (Some(id), false) = (id, self.body.is_empty()) {
                match classify(&self.body, id) {
                    Ok(Frame::Response(outcome)) => answer.outcome = Some(outcome),
                    // Non-JSON bodies of error statuses are fine (e.g. "unknown session").
                    _ => answer.bad_body = response.status == 200,
                }
            }
        }
        Ok(answer)
    }

    /// Reads a whole non-streamed body into `self.body`.
    async fn read_body(&mut self, response: &ResponseHead) -> Result<(), ErrorKind> {
        self.body.clear();
        match response.framing {
            Framing::Empty => Ok(()),
            Framing::Length(length) => {
                while self.pending().len() < length {
                    self.fill().await?;
                }
                self.body
                    .extend_from_slice(&self.buf[self.start..self.start + length]);
                self.consume(length);
                Ok(())
            }
            Framing::Chunked => {
                let mut decoder = ChunkedDecoder::default();
                loop {
                    let used = decoder
                        .decode(&self.buf[self.start..self.end], &mut self.body)
                        .map_err(|_| ErrorKind::BadResponse)?;
                    self.consume(used);
                    if decoder.is_done() {
                        return Ok(());
                    }
                    self.fill().await?;
                }
            }
            Framing::UntilClose => loop {
                let pending = self.end - self.start;
                if self.body.len() + pending > RESPONSE_BODY_BYTES_MAX {
                    return Err(ErrorKind::BadResponse);
                }
                self.body.extend_from_slice(&self.buf[self.start..self.end]);
                self.consume(pending);
                match self.fill().await {
                    Ok(()) => {}
                    Err(ErrorKind::Closed) => return Ok(()),
                    Err(other) => return Err(other),
                }
            },
        }
    }

    /// Reads an SSE body event by event; after our response, waits a little
    /// for the stream's end and otherwise gives the connection up.
    async fn read_event_stream(
        &mut self,
        response: &ResponseHead,
        id: Option<u64>,
        answer: &mut HttpAnswer,
    ) -> Result<(), ErrorKind> {
        self.body.clear();
        let mut decoder = ChunkedDecoder::default();
        let mut parser = SseParser::default();
        let mut length_left = match response.framing {
            Framing::Length(length) => length,
            _ => 0,
        };
        loop {
            // Move what is buffered into the decoded body.
            let done = match response.framing {
                Framing::Chunked => {
                    let used = decoder
                        .decode(&self.buf[self.start..self.end], &mut self.body)
                        .map_err(|_| ErrorKind::BadResponse)?;
                    self.consume(used);
                    decoder.is_done()
                }
                Framing::Length(_) => {
                    let take = length_left.min(self.end - self.start);
                    self.body
                        .extend_from_slice(&self.buf[self.start..self.start + take]);
                    self.consume(take);
                    length_left -= take;
                    length_left == 0
                }
                Framing::Empty => true,
                Framing::UntilClose => {
                    let pending = self.end - self.start;
                    if self.body.len() + pending > RESPONSE_BODY_BYTES_MAX {
                        return Err(ErrorKind::BadResponse);
                    }
                    self.body.extend_from_slice(&self.buf[self.start..self.end]);
                    self.consume(pending);
                    false
                }
            };
            let mut bad = false;
            let body = std::mem::take(&mut self.body);
            parser.feed(&body, |data| match id.map(|id| classify(data, id)) {
                // A priming event (an id for resumption, no message).
                _ if data.iter().all(u8::is_ascii_whitespace) => {}
                Some(Ok(Frame::Response(outcome))) => answer.outcome = Some(outcome),
                Some(Ok(Frame::Notification)) => answer.notifications += 1,
                Some(Ok(Frame::ServerRequest)) => answer.server_requests += 1,
                Some(Ok(Frame::OtherResponse)) | None => {}
                Some(Err(_)) => bad = true,
            });
            self.body = body;
            answer.bad_body |= bad;
            if done {
                return Ok(());
            }
            let read = if answer.outcome.is_some() {
                // Ours is in: the end of the stream should follow at once.
                let grace = glommio::timer::sleep(SSE_END_GRACE);
                futures_lite::future::or(async { Some(self.fill().await) }, async {
                    grace.await;
                    None
                })
                .await
            } else {
                Some(self.fill().await)
            };
            match read {
                Some(Ok(())) => {}
                Some(Err(ErrorKind::Closed)) if response.framing == Framing::UntilClose => {
                    return Ok(())
                }
                Some(Err(error)) if answer.outcome.is_none() => return Err(error),
                Some(Err(_)) | None => {
                    answer.reusable = false;
                    return Ok(());
                }
            }
        }
    }

    /// Closes at the end of a run with a reset (SO_LINGER 0), so the
    /// generator's ports are not left in TIME_WAIT for the next run.
    pub fn reset(self) {
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on our own open socket with a correctly sized
        // struct; the fd is closed when `self` drops just after.
        unsafe {
            libc::setsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                std::ptr::addr_of!(linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
}

/// A long-lived SSE stream (legacy HTTP+SSE's `GET /sse`), event by event.
pub struct EventStream {
    conn: Conn,
    framing: Framing,
    /// Body bytes left with Content-Length framing.
    length_left: usize,
    decoder: ChunkedDecoder,
    parser: SseParser,
    body: Vec<u8>,
    /// Parsed events not handed out yet: (type, data).
    events: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
}

impl Conn {
    /// Sends `head` (a GET) and takes its answer as an event stream.
    pub async fn open_event_stream(
        mut self,
        head: &RequestHead<'_>,
    ) -> Result<EventStream, ErrorKind> {
        self.out.clear();
        head.write(b"", &mut self.out);
        self.send().await?;
        let response = self.read_response_head().await?;
        if response.status != 200 {
            return Err(ErrorKind::HttpStatus(response.status));
        }
        if !response.event_stream {
            return Err(ErrorKind::BadResponse);
        }
        Ok(EventStream {
            conn: self,
            framing: response.framing,
            length_left: match response.framing {
                Framing::Length(length) => length,
                _ => 0,
            },
            decoder: ChunkedDecoder::default(),
            parser: SseParser::default(),
            body: Vec::new(),
            events: std::collections::VecDeque::new(),
        })
    }
}

impl EventStream {
    /// The next event, (type, data); `Closed` when the stream ends.
    pub async fn next_event(&mut self) -> Result<(Vec<u8>, Vec<u8>), ErrorKind> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Ok(event);
            }
            let conn = &mut self.conn;
            let done = match self.framing {
                Framing::Chunked => {
                    let used = self
                        .decoder
                        .decode(&conn.buf[conn.start..conn.end], &mut self.body)
                        .map_err(|_| ErrorKind::BadResponse)?;
                    conn.consume(used);
                    self.decoder.is_done()
                }
                Framing::Length(_) => {
                    let take = self.length_left.min(conn.end - conn.start);
                    self.body
                        .extend_from_slice(&conn.buf[conn.start..conn.start + take]);
                    conn.consume(take);
                    self.length_left -= take;
                    self.length_left == 0
                }
                Framing::Empty => true,
                Framing::UntilClose => {
                    let pending = conn.end - conn.start;
                    self.body.extend_from_slice(&conn.buf[conn.start..conn.end]);
                    conn.consume(pending);
                    false
                }
            };
            let events = &mut self.events;
            self.parser.feed_typed(&self.body, |kind, data| {
                events.push_back((kind.to_vec(), data.to_vec()))
            });
            self.parser.compact(&mut self.body);
            if self.body.len() > RESPONSE_BODY_BYTES_MAX {
                return Err(ErrorKind::BadResponse);
            }
            if !self.events.is_empty() {
                continue;
            }
            if done {
                return Err(ErrorKind::Closed);
            }
            self.conn.fill().await?;
        }
    }

    /// Bytes received on the stream so far.
    pub fn bytes_received(&self) -> u64 {
        self.conn.bytes_received
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn websocket_frames_round_trip_through_the_header_forms() {
        for len in [0usize, 5, 125, 126, 300, 65_535, 65_536, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            let mut masks = Masks(0x1234_5678);
            let mask = masks.next();
            ws_push_frame(&mut out, 0x1, &payload, mask);
            // A server frame is the same without the mask bit and key.
            let head_len = match len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            let mut server = out[..head_len].to_vec();
            server[1] &= 0x7f;
            let unmasked: Vec<u8> = out[head_len + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            assert_eq!(unmasked, payload, "masking at {len}");
            server.extend_from_slice(&unmasked);
            assert_eq!(
                ws_frame_head(&server),
                Ok(Some((true, 0x1, head_len, len))),
                "{len}"
            );
            // Cut short, it waits for more.
            assert_eq!(ws_frame_head(&server[..head_len.min(3) - 1]), Ok(None));
        }
        // A masked server frame, or one past the body bound, is refused.
        assert_eq!(ws_frame_head(&[0x81, 0x85]), Err(ErrorKind::BadResponse));
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(ws_frame_head(&huge), Err(ErrorKind::BadResponse));
        // Masks differ frame to frame.
        let mut masks = Masks(1);
        assert_ne!(masks.next(), masks.next());
    }
    use super::*;

    #[test]
    fn threads_get_disjoint_port_slices_and_cycle_through_them() {
        let a = SourcePorts::slice(32_768, 60_999, 0, 2).unwrap();
        let b = SourcePorts::slice(32_768, 60_999, 1, 2).unwrap();
        assert_eq!((a.low, a.count), (32_768, 14_116));
        assert_eq!((b.low, b.count), (46_884, 14_116));
        let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let c = SourcePorts::slice(100, 102, 0, 1).unwrap();
        let taken: Vec<_> = (0..5).map(|_| c.take(target).to_string()).collect();
        assert_eq!(
            taken,
            [
                "0.0.0.0:100",
                "0.0.0.0:101",
                "0.0.0.0:102",
                "0.0.0.0:100",
                "0.0.0.0:101"
            ]
        );
        // With source addresses, each gets the whole slice before the next.
        let ips = vec!["127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap()];
        let d = SourcePorts::slice(100, 101, 0, 1).unwrap().with_ips(ips);
        assert_eq!(d.capacity(), 4);
        let taken: Vec<_> = (0..5).map(|_| d.take(target).to_string()).collect();
        assert_eq!(
            taken,
            [
                "127.0.0.1:100",
                "127.0.0.1:101",
                "127.0.0.2:100",
                "127.0.0.2:101",
                "127.0.0.1:100"
            ]
        );
        assert!(SourcePorts::slice(100, 102, 0, 4).is_none());
        assert!(SourcePorts::slice(100, 102, 3, 2).is_none());
        assert!(SourcePorts::slice(102, 100, 0, 1).is_none());
    }

    #[test]
    fn a_bound_connect_reaches_a_listener_and_skips_taken_ports() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // The listener's own port is taken: it is skipped, not an error.
        let any = |port| SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), port);
        assert!(bind_and_connect(addr, any(addr.port())).unwrap().is_none());
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let socket = bind_and_connect(addr, any(port)).unwrap().expect("bound");
        let (accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer.port(), port);
        drop((socket, accepted));
    }
}
