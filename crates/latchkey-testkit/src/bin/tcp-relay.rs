//! A minimal TCP byte relay for `scripts/bench`: the reference row that shows what one
//! extra loopback hop costs on the machine (kernel, scheduler, two more sockets), the
//! floor under any proxy. It does nothing with the bytes: each accepted connection gets
//! its own connection to the target, with `TCP_NODELAY` on both, and
//! `copy_bidirectional` between them, on a current-thread runtime.
//!
//! Usage: tcp-relay TARGET_ADDR [LISTEN_ADDR]   (listen default 127.0.0.1:0)
//!
//! The first line printed is the address it listens on.

use std::io::Write as _;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

fn usage(msg: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{msg}\nusage: tcp-relay TARGET_ADDR [LISTEN_ADDR]"),
    )
}

fn parse_addr(arg: Option<String>, what: &str) -> std::io::Result<Option<SocketAddr>> {
    arg.map(|a| a.parse().map_err(|e| usage(&format!("{what} {a:?}: {e}"))))
        .transpose()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let target = parse_addr(args.next(), "target")?.ok_or_else(|| usage("no target"))?;
    let listen =
        parse_addr(args.next(), "listen")?.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = TcpListener::bind(listen).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{}", listener.local_addr()?)?;
    stdout.flush()?;
    loop {
        let (mut client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(mut upstream) = TcpStream::connect(target).await else {
                return;
            };
            if client.set_nodelay(true).is_err() || upstream.set_nodelay(true).is_err() {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
}
