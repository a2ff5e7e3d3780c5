//! Listeners: bytes in, messages to session actors, bytes out. Each shard
//! binds its own sockets (SO_REUSEPORT, so the kernel spreads connections);
//! a connection lives and dies on the shard that accepted it. Transports see
//! sessions, never tools.

pub mod event_store;
pub mod http;
pub mod sockets;
pub mod tcp;
