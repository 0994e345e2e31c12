//! latchkey: a local reverse proxy that serves remote MCP servers on
//! `http://127.0.0.1:PORT/<server>` and adds the upstream credentials.
//!
//! The binary (`main.rs`) parses the command line and calls into this library:
//! [`config::load`] reads the config, and [`daemon::run`] serves it on a listener
//! until a shutdown future completes.

pub mod callback;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod daemon;
mod error;
mod guard;
pub mod login;
pub mod notify;
pub mod peer;
mod proxy;
pub mod report;
pub mod service;
mod status;
pub mod stdio;
pub mod telemetry;

pub use status::redacted;
