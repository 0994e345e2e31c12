//! Runs the testkit's fake MCP servers, for the demo and for poking at latchkey by hand.
//!
//! Usage: mcp-upstream [ADDR]   (default 127.0.0.1:0, an ephemeral port)
//!
//! Serves an open MCP server on ADDR (Streamable HTTP at /mcp, HTTP+SSE at /sse) and,
//! on the next port, one that requires OAuth tokens from the testkit's authorization
//! server (which approves every login at once).

use std::net::SocketAddr;

use latchkey_testkit::{AuthOptions, McpUpstream, protected_upstream};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{arg:?}: {e}"))
        })?,
        None => SocketAddr::from(([127, 0, 0, 1], 0)),
    };
    let upstream = McpUpstream::start_on(addr, CancellationToken::new()).await?;
    let protected_addr = match addr.port() {
        0 => addr,
        port => SocketAddr::new(addr.ip(), port + 2),
    };
    let (protected, server) = protected_upstream(protected_addr, AuthOptions::default()).await?;
    // The first line is read by scripts/demo; keep its shape.
    println!("{}", upstream.mcp_url());
    println!("legacy SSE endpoint: {}", upstream.sse_url());
    println!(
        "OAuth-protected: {} (authorization server {})",
        protected.mcp_url(),
        server.issuer()
    );
    tokio::signal::ctrl_c().await?;
    upstream.stop();
    protected.stop();
    server.stop();
    Ok(())
}
