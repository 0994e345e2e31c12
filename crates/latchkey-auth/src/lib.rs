//! Credentials for latchkey.
//!
//! This crate is the only place that holds upstream credentials. Today that is the
//! [`Secret`] type, which every credential-bearing value (static header values from the
//! config, and later OAuth tokens, codes, verifiers and client secrets) is wrapped in so
//! that it cannot reach a log, an error message or `Debug` output by accident.

mod secret;

pub use secret::Secret;
