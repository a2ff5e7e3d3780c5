//! The Model Context Protocol on the wire: the JSON-RPC 2.0 codec, protocol
//! versions and eras. No I/O and no knowledge of shards: transports hand
//! bytes in, sessions act on decoded messages.

pub mod jsonrpc;
pub mod logging;
pub mod param_headers;
pub mod request_state;
pub mod stateless;
pub mod version;
