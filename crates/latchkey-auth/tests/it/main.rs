//! latchkey-auth's integration tests: one binary, real HTTP on loopback against the
//! testkit's authorization server.

mod discovery;
mod flow;
mod store;
