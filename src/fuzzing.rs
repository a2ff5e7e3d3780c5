//! What the fuzz targets in `fuzz/` need and the public API does not show:
//! not part of the API, and may change with them.

pub use async_tungstenite::tungstenite;

/// The WebSocket settings the `/ws` endpoint reads with.
pub use crate::transport::ws::config as ws_config;

/// The WebSocket upgrade checks, on a parsed request head.
pub use crate::transport::ws::accept_key as ws_accept_key;
