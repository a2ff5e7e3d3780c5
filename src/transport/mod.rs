//! Listeners: bytes in, messages to session actors, bytes out. Each shard
//! binds its own sockets (SO_REUSEPORT, so the kernel spreads connections);
//! a connection lives and dies on the shard that accepted it. Transports see
//! sessions, never tools. The session-per-connection transports (TCP, stdio,
//! WebSocket) share one loop, [`conversation`], and differ only in framing.

mod conversation;
pub mod event_store;
pub mod http;
mod lines;
pub mod sockets;
pub mod stdio;
pub mod sweep;
pub mod tcp;
pub(crate) mod ws;
