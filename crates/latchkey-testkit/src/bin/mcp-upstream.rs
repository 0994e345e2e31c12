//! Runs the testkit's fake MCP server, for the demo and for poking at latchkey by hand.
//!
//! Usage: mcp-upstream [ADDR]   (default 127.0.0.1:0, an ephemeral port)

use std::net::SocketAddr;

use latchkey_testkit::McpUpstream;
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
    // The first line is read by scripts/demo; keep its shape.
    println!("{}", upstream.mcp_url());
    println!("legacy SSE endpoint: {}", upstream.sse_url());
    tokio::signal::ctrl_c().await?;
    upstream.stop();
    Ok(())
}
