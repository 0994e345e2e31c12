//! latchkey's integration tests: one binary, one module per area.

mod attacks;
mod authservers;
mod binary;
mod binding;
mod callback;
mod cli;
mod config;
mod conformance;
mod dpop;
mod grants;
mod guidance;
mod hardening;
mod harness;
mod interop;
mod leaks;
mod login;
mod oauth;
mod onboard;
mod proxy;
mod realclients;
mod service;
mod statuspage;
mod stdio;
mod thirdparty;
mod translate;
