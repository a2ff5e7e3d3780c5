//! WebSocket at `/ws` on the HTTP listener: one MCP session per connection.
//!
//! The upgrade is a `GET` with `Upgrade: websocket`, `Connection: Upgrade`,
//! `Sec-WebSocket-Version: 13` and a key; the client must offer the
//! subprotocol `mcp` (`Sec-WebSocket-Protocol`), which the answer echoes. A
//! request that offers no subprotocol, or only others, is refused with 400:
//! a client that cannot say it speaks MCP over this socket gets a clear
//! answer rather than a socket that speaks something it did not ask for.
//! Host and Origin are checked by the HTTP side before this sees the request.
//!
//! Each text message is one JSON-RPC message or batch; answers,
//! notifications and requests to the client go out as text messages.
//! Binary messages are refused (close 1003), a message past
//! `limits.message_bytes_max` gets the -32600 error and close 1009. The
//! server pings a client that has been quiet for `limits.ws_ping_interval_ms`;
//! one that then stays silent for `limits.ws_pong_timeout_ms` is told so
//! (close 1008) and its session ends, as does one that accepts no bytes of a
//! write for that long. A drain closes with 1001 once in-flight work is done.
//! Framing, masking and the accept key are tungstenite's.

use std::time::Duration;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::frame::Utf8Bytes;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use async_tungstenite::tungstenite::{Error as WsError, Message};
use async_tungstenite::WebSocketStream;
use bytes::Bytes;
use futures_lite::{future, AsyncWriteExt, StreamExt};
use glommio::net::TcpStream;

use crate::protocol::jsonrpc::{INVALID_REQUEST, SERVER_ERROR};
use crate::session::SessionError;
use crate::time::SharedClock;

use super::conversation::{self, error_frame, oversized_message, Conversation, Ending, Received};
use super::http::Headers;
use super::tcp::TcpService;

/// The subprotocol a client must offer.
pub const SUBPROTOCOL: &str = "mcp";
/// tungstenite's read buffer, allocated up front for every connection: an
/// idle session holds this much, so it is kept small (messages larger than
/// it are read in pieces).
const READ_BUFFER_BYTES: usize = 4 << 10;
/// How long the close handshake may take at the end of a connection.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Why an upgrade request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    #[error("a WebSocket upgrade must be a GET")]
    NotGet,
    #[error("not a WebSocket upgrade: send Upgrade: websocket and Connection: Upgrade")]
    NotUpgrade,
    #[error("unsupported Sec-WebSocket-Version; this server speaks 13")]
    Version,
    #[error("missing or malformed Sec-WebSocket-Key")]
    Key,
    #[error("the WebSocket subprotocol `mcp` must be offered (Sec-WebSocket-Protocol: mcp)")]
    Subprotocol,
}

impl UpgradeError {
    fn status(&self) -> &'static str {
        match self {
            UpgradeError::NotGet => "405 Method Not Allowed",
            UpgradeError::NotUpgrade | UpgradeError::Version => "426 Upgrade Required",
            UpgradeError::Key | UpgradeError::Subprotocol => "400 Bad Request",
        }
    }

    fn headers(&self) -> &'static str {
        match self {
            UpgradeError::NotGet => "Allow: GET\r\n",
            UpgradeError::NotUpgrade => "Upgrade: websocket\r\nConnection: Upgrade, close\r\n",
            UpgradeError::Version => "Sec-WebSocket-Version: 13\r\n",
            UpgradeError::Key | UpgradeError::Subprotocol => "",
        }
    }
}

/// Checks an upgrade request; the `Sec-WebSocket-Accept` value on success.
pub fn accept_key(method: &str, headers: &Headers) -> Result<String, UpgradeError> {
    // Every value of a header that may repeat, split into its comma-separated tokens.
    let tokens = |name: &'static str| {
        headers
            .iter()
            .filter(move |(key, _)| key.eq_ignore_ascii_case(name))
            .flat_map(|(_, value)| value.split(','))
            .map(str::trim)
    };
    let single = |name: &str| headers.get(name).map(str::trim);
    if method != "GET" {
        return Err(UpgradeError::NotGet);
    }
    if !tokens("upgrade").any(|token| token.eq_ignore_ascii_case("websocket"))
        || !tokens("connection").any(|token| token.eq_ignore_ascii_case("upgrade"))
    {
        return Err(UpgradeError::NotUpgrade);
    }
    if single("sec-websocket-version") != Some("13") {
        return Err(UpgradeError::Version);
    }
    // The key is 16 random bytes in base64: 22 characters and "==".
    let key = single("sec-websocket-key").ok_or(UpgradeError::Key)?;
    let base64 = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    if key.len() != 24 || !key.ends_with("==") || !key.bytes().take(22).all(base64) {
        return Err(UpgradeError::Key);
    }
    if !tokens("sec-websocket-protocol").any(|token| token == SUBPROTOCOL) {
        return Err(UpgradeError::Subprotocol);
    }
    Ok(derive_accept_key(key.as_bytes()))
}

/// tungstenite's settings for a server socket: a small read buffer, and
/// frames and messages bounded by `message_bytes_max`.
pub fn config(message_bytes_max: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(message_bytes_max))
        .max_frame_size(Some(message_bytes_max))
}

/// Serves a request for `/ws`: refuses it, or upgrades the connection and
/// serves one session on it until either side ends it. The connection is
/// spent either way; the caller closes it.
/// `early`: bytes the client sent behind the upgrade request, already read
/// by the HTTP loop (the start of its first frames).
pub(super) async fn serve(
    stream: &mut TcpStream,
    early: Vec<u8>,
    method: &str,
    headers: &Headers,
    service: &TcpService,
) {
    let accept = match accept_key(method, headers) {
        Ok(accept) => accept,
        Err(refusal) => {
            let reason = refusal.to_string();
            let head = format!(
                "HTTP/1.1 {}\r\n{}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reason}",
                refusal.status(),
                refusal.headers(),
                reason.len(),
            );
            let _ = stream.write_all(head.as_bytes()).await;
            return;
        }
    };
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let limits = &service.limits;
    let pong_timeout = Duration::from_millis(limits.ws_pong_timeout_ms);
    // A client that takes no bytes of a write for this long is as dead as
    // one that answers no ping.
    let _ = stream.set_write_timeout(Some(pong_timeout));
    // Every send is flushed before the next frame is taken from the outbox,
    // so the write buffer holds one message (and control frames) at most.
    let ws = WebSocketStream::from_partially_read(
        stream,
        early,
        Role::Server,
        Some(config(limits.message_bytes_max)),
    )
    .await;
    let clock = service.clock.clone();
    let mut socket = WsConversation {
        ws,
        heard_at: clock.now(),
        clock,
        ping_interval: Duration::from_millis(limits.ws_ping_interval_ms),
        pong_timeout,
        pinged: false,
        peer_closed: false,
        close: None,
    };
    let ending = conversation::converse(&mut socket, &service.site()).await;
    socket.finish(&ending).await;
}

/// One session's messages on a WebSocket.
struct WsConversation<S> {
    ws: WebSocketStream<S>,
    clock: SharedClock,
    /// When the client last sent a frame (any frame, pongs too).
    heard_at: Duration,
    ping_interval: Duration,
    pong_timeout: Duration,
    /// A ping went out and nothing has been heard since.
    pinged: bool,
    /// The client closed (or the connection ended): no close to send, only
    /// tungstenite's reply to flush.
    peer_closed: bool,
    /// The close frame to end with, when something specific is to be said.
    close: Option<CloseFrame>,
}

fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }
}

impl<S> Conversation for WsConversation<S>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    async fn receive(&mut self) -> Received {
        loop {
            let quiet_max = if self.pinged {
                self.ping_interval + self.pong_timeout
            } else {
                self.ping_interval
            };
            let wait = (self.heard_at + quiet_max).saturating_sub(self.clock.now());
            let timer = self.clock.sleep(wait);
            // Dropping `next` mid-message loses nothing: tungstenite keeps
            // what it has read of a frame in the stream.
            let next = future::or(async { Some(self.ws.next().await) }, async {
                timer.await;
                None
            })
            .await;
            let Some(next) = next else {
                if self.pinged {
                    tracing::debug!("websocket client answered no ping; taking it for dead");
                    // Said in case it only stalled; the close wait is bounded.
                    self.close = Some(close_frame(CloseCode::Policy, "no answer to ping"));
                    return Received::Closed;
                }
                self.pinged = true;
                if self.ws.send(Message::Ping(Bytes::new())).await.is_err() {
                    self.peer_closed = true;
                    return Received::Closed;
                }
                return Received::Nothing;
            };
            self.heard_at = self.clock.now();
            self.pinged = false;
            match next {
                Some(Ok(Message::Text(text))) => return Received::Message(Bytes::from(text)),
                Some(Ok(Message::Binary(_))) => {
                    self.close = Some(close_frame(
                        CloseCode::Unsupported,
                        "binary messages are not accepted: send JSON-RPC as text",
                    ));
                    return Received::Closed;
                }
                // tungstenite answers pings itself, on the next read or write.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Close(_))) | None => {
                    self.peer_closed = true;
                    return Received::Closed;
                }
                Some(Err(WsError::Capacity(_))) => return Received::Oversized,
                Some(Err(WsError::Utf8(_))) => {
                    self.close = Some(close_frame(CloseCode::Invalid, "text is not UTF-8"));
                    return Received::Closed;
                }
                Some(Err(WsError::Protocol(error))) => {
                    tracing::debug!(%error, "websocket protocol error");
                    self.close = Some(close_frame(CloseCode::Protocol, "protocol error"));
                    return Received::Closed;
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "websocket read failed");
                    self.peer_closed = true;
                    return Received::Closed;
                }
            }
        }
    }

    async fn send(&mut self, frame: Bytes) -> std::io::Result<()> {
        let text = Utf8Bytes::try_from(frame)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8"))?;
        self.ws
            .send(Message::Text(text))
            .await
            .map_err(std::io::Error::other)
    }

    async fn refuse_oversized(&mut self, bytes_max: usize) -> bool {
        let error = error_frame(INVALID_REQUEST, &oversized_message(bytes_max));
        let _ = self.send(Bytes::from(error)).await;
        // The rest of the message is still on the wire: nothing more can be read.
        self.close = Some(close_frame(
            CloseCode::Size,
            "message exceeds limits.message_bytes_max",
        ));
        false
    }

    async fn refuse_session(&mut self, error: &SessionError) {
        let frame = match error {
            // Overload protection's own code and retry hint.
            SessionError::Shed(shed) => shed.http_body(None),
            _ => Bytes::from(error_frame(
                SERVER_ERROR,
                &format!("cannot open a session: {error}"),
            )),
        };
        let _ = self.send(frame).await;
        self.close = Some(close_frame(CloseCode::Again, "cannot open a session"));
    }
}

impl<S> WsConversation<S>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    /// The close handshake, bounded by [`CLOSE_WAIT`]: our close frame (or
    /// the reply to the client's), then the client's answer.
    async fn finish(&mut self, ending: &Ending) {
        let frame = self.close.take().or_else(|| match ending {
            Ending::Drained => Some(close_frame(CloseCode::Away, "server draining")),
            Ending::SessionEnded => Some(close_frame(CloseCode::Error, "session ended")),
            Ending::ClientClosed | Ending::Oversized | Ending::Refused(_) => {
                Some(close_frame(CloseCode::Normal, ""))
            }
            Ending::SendFailed(_) => None,
        });
        let Some(frame) = frame.filter(|_| !self.peer_closed) else {
            // A read flushes tungstenite's queued reply to the client's close.
            let timer = self.clock.sleep(CLOSE_WAIT);
            let flush = async {
                let _ = self.ws.next().await;
            };
            future::or(flush, timer).await;
            return;
        };
        let timer = self.clock.sleep(CLOSE_WAIT);
        let handshake = async {
            if self.ws.close(Some(frame)).await.is_ok() {
                // Reading on until the client's close (or the end) completes it.
                while let Some(Ok(_)) = self.ws.next().await {}
            }
        };
        future::or(handshake, timer).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().copied().collect()
    }

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade(extra: &[(&str, &str)]) -> Headers {
        let mut all = vec![
            ("Host", "127.0.0.1"),
            ("Upgrade", "websocket"),
            ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", KEY),
        ];
        all.extend_from_slice(extra);
        headers(&all)
    }

    #[test]
    fn a_well_formed_upgrade_offering_mcp_gets_the_rfc_accept_key() {
        let offered = upgrade(&[("Sec-WebSocket-Protocol", "json, mcp")]);
        // The worked example of RFC 6455 section 1.3.
        assert_eq!(
            accept_key("GET", &offered).as_deref(),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        let repeated = upgrade(&[
            ("Sec-WebSocket-Protocol", "json"),
            ("sec-websocket-protocol", "mcp"),
        ]);
        assert!(accept_key("GET", &repeated).is_ok());
    }

    #[test]
    fn without_mcp_among_the_subprotocols_the_upgrade_is_refused_with_400() {
        for offered in [
            upgrade(&[]),
            upgrade(&[("Sec-WebSocket-Protocol", "graphql-ws, MCP2")]),
        ] {
            let refusal = accept_key("GET", &offered).unwrap_err();
            assert_eq!(refusal, UpgradeError::Subprotocol);
            assert_eq!(refusal.status(), "400 Bad Request");
            assert!(refusal.to_string().contains("Sec-WebSocket-Protocol: mcp"));
        }
    }

    #[test]
    fn malformed_upgrades_are_refused_by_what_is_wrong() {
        let mcp = ("Sec-WebSocket-Protocol", "mcp");
        assert_eq!(
            accept_key("POST", &upgrade(&[mcp])),
            Err(UpgradeError::NotGet)
        );
        let plain = headers(&[("Host", "127.0.0.1"), mcp]);
        assert_eq!(accept_key("GET", &plain), Err(UpgradeError::NotUpgrade));
        let with = |name: &str, value: Option<&str>| -> Headers {
            let all = upgrade(&[mcp]);
            let mut changed: Headers = all.iter().filter(|(k, _)| *k != name).collect();
            if let Some(value) = value {
                changed.push(name, value);
            }
            changed
        };
        let old = with("Sec-WebSocket-Version", Some("8"));
        assert_eq!(accept_key("GET", &old), Err(UpgradeError::Version));
        for bad_key in [
            "",
            "short==",
            "!!!!!!!!!!!!!!!!!!!!!!==",
            "dGhlIHNhbXBsZSBub25jZQ",
        ] {
            let keyed = with("Sec-WebSocket-Key", Some(bad_key));
            assert_eq!(
                accept_key("GET", &keyed),
                Err(UpgradeError::Key),
                "{bad_key}"
            );
        }
        let keyless = with("Sec-WebSocket-Key", None);
        assert_eq!(accept_key("GET", &keyless), Err(UpgradeError::Key));
    }
}
