//! In-process fakes for latchkey's tests and demo.
//!
//! [`McpUpstream`] is a small but real MCP server over HTTP on a loopback port. It
//! speaks Streamable HTTP (sessions, JSON and SSE replies, a GET stream, DELETE) at
//! `/mcp` and the 2024-11-05 HTTP+SSE transport at `/sse`, and records every request
//! it receives so tests can check what latchkey forwarded. Some of its tools misbehave
//! on purpose: a reply that is not JSON, a stream closed before its response for the
//! client to resume, annotations a client must reject.
//!
//! [`AuthServer`] publishes OAuth discovery documents (protected resource metadata and
//! authorization server metadata) in every place the MCP authorization spec allows,
//! with switches for broken and hostile variants. [`moving_upstream`] is an upstream
//! that moves from one authorization server to another.

mod auth;
pub mod dpop;
mod idp;
pub mod jwt;
mod mcp;

pub use auth::{
    AuthOptions, AuthServer, Grant, MetadataAt, MovingUpstream, PrmAt, Received, RegisteredClient,
    moving_upstream, protected_upstream,
};
pub use idp::{Idp, IdpOptions};
pub use mcp::{
    DpopCheck, DpopPresented, MODERN_STATE, MODERN_VERSION, McpUpstream, PROTOCOL_VERSION,
    Protection, RecordedRequest, ScopeCheck, TokenCheck,
};
