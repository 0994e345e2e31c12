//! Credentials for latchkey.
//!
//! This crate is the only place that holds upstream credentials, and it has no HTTP
//! server in it. Today it has the [`Secret`] type, which every credential-bearing value (static header values from the
//! config, and later OAuth tokens, codes, verifiers and client secrets) is wrapped in so
//! that it cannot reach a log, an error message or `Debug` output by accident, and the
//! `WWW-Authenticate` parser that OAuth discovery starts from.

pub mod assertion;
pub mod authorize;
mod body;
pub mod challenge;
pub mod device;
pub mod discovery;
pub mod registration;
mod secret;
pub mod session;
pub mod store;
pub mod target;
pub mod token;

pub use challenge::BearerChallenge;
pub use secret::Secret;
