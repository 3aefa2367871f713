//! HTTP/1.1 on the gateway's one port: request parsing (pure), routing, the `/api/*`
//! bodies, metrics exposition and response writing.
//!
//! The request line decides what a connection becomes: `GET /ws` with an upgrade turns
//! into a WebSocket (see `ws::handshake`); anything else is answered here with keep-alive.

pub mod admin;
pub mod api;
pub mod health;
pub mod metrics;
pub mod origin;
pub mod request;
pub mod response;
pub mod routes;
