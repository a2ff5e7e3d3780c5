//! Any bytes as what a WebSocket client sends after the upgrade, read the
//! way `/ws` reads them (server role, the same settings, a 1 KiB message
//! bound instead of 4 MiB so inputs reach it): reading never panics and
//! never yields a message over the bound. Text messages then go through the
//! JSON-RPC decoder as the session would. Run with a malloc limit, any
//! allocation sized by a frame header rather than by the bound shows up.
#![no_main]

use std::io::{self, Read, Write};

use libfuzzer_sys::fuzz_target;
use shardmcp::fuzzing::tungstenite::protocol::{Role, WebSocket};
use shardmcp::fuzzing::tungstenite::Message;
use shardmcp::fuzzing::ws_config;
use shardmcp::protocol::jsonrpc::decode;

const MESSAGE_MAX: usize = 1 << 10;

/// The client's bytes in, the server's answers (pongs, closes) dropped.
struct Wire<'a> {
    input: &'a [u8],
    written: usize,
}

impl Read for Wire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Short reads as a socket gives them: frames arrive in pieces.
        let n = buf.len().min(self.input.len()).min(97);
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Wire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let wire = Wire {
        input: data,
        written: 0,
    };
    let mut ws = WebSocket::from_raw_socket(wire, Role::Server, Some(ws_config(MESSAGE_MAX)));
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                assert!(text.len() <= MESSAGE_MAX);
                let _ = decode(text.as_bytes(), MESSAGE_MAX);
            }
            Ok(Message::Binary(bytes)) => assert!(bytes.len() <= MESSAGE_MAX),
            Ok(Message::Ping(bytes) | Message::Pong(bytes)) => assert!(bytes.len() <= 125),
            Ok(Message::Close(_) | Message::Frame(_)) => {}
            Err(_) => break,
        }
    }
    // Answers (pongs, the close echo) stay in proportion to what came in.
    assert!(ws.get_ref().written <= data.len() + 256);
});
