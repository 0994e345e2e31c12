use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use latchkey::cli::{Cli, Command, LogFormat};
use latchkey::config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    latchkey::telemetry::init(&cli.log_level, cli.log_format == LogFormat::Json);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("latchkey: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check { config } => {
            let path = config.unwrap_or_else(config::default_path);
            let config = config::load(&path)?;
            println!(
                "{}: ok, {} server{}",
                path.display(),
                config.servers.len(),
                if config.servers.len() == 1 { "" } else { "s" }
            );
            Ok(())
        }
        Command::Serve { config, listen } => {
            let path = config.unwrap_or_else(config::default_path);
            let mut config = config::load(&path)?;
            if let Some(listen) = listen {
                config::check_listen(listen, config.allow_non_loopback)
                    .map_err(anyhow::Error::msg)
                    .context("--listen")?;
                config.listen = listen;
            }
            serve(config)
        }
    }
}

fn serve(config: config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}; is another latchkey running? Pick another address with --listen or the config's `listen`",
                    config.listen
                )
            })?;
        latchkey::daemon::run(listener, config, shutdown_signal()).await?;
        Ok(())
    })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
