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
        Command::Login {
            server,
            config,
            no_browser,
        } => {
            let path = config.unwrap_or_else(config::default_path);
            let config = config::load(&path)?;
            login(&config, &server, !no_browser)
        }
        Command::Logout { server, config } => {
            let config = config::load(&config.unwrap_or_else(config::default_path))?;
            let problems = runtime()?.block_on(latchkey::login::logout(&config, &server))?;
            for problem in &problems {
                eprintln!("latchkey: warning: {problem}");
            }
            println!("{server}: logged out; the stored credentials are deleted");
            Ok(())
        }
        Command::Status { config, json } => {
            let config = config::load(&config.unwrap_or_else(config::default_path))?;
            let status = runtime()?.block_on(latchkey::report::status(&config))?;
            if json {
                println!("{status:#}");
            } else {
                println!("{}", latchkey::report::table(&status));
            }
            Ok(())
        }
        Command::Doctor { config } => {
            let path = config.unwrap_or_else(config::default_path);
            let config = config::load(&path)?;
            let findings = runtime()?.block_on(latchkey::report::doctor(
                &config,
                &path.display().to_string(),
            ));
            let mut problems = 0;
            for finding in &findings {
                let mark = if finding.ok { "ok " } else { "ERR" };
                println!("[{mark}] {}: {}", finding.check, finding.detail);
                if let Some(fix) = &finding.fix {
                    problems += 1;
                    println!("      fix: {fix}");
                }
            }
            if problems > 0 {
                anyhow::bail!("{problems} problem(s) found");
            }
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn login(config: &config::Config, server: &str, open: bool) -> anyhow::Result<()> {
    use latchkey::login::Outcome;
    let runtime = runtime()?;
    let browser = std::sync::Arc::new(latchkey::callback::TerminalBrowser { open });
    let outcome = runtime.block_on(latchkey::login::login(config, server, browser));
    // A read of stdin (for a pasted redirect) may still be blocked: don't wait for it.
    runtime.shutdown_background();
    match outcome? {
        Outcome::NotNeeded => {
            println!("{server}: the server answered without authorization; nothing to store");
        }
        Outcome::LoggedIn {
            scopes,
            expires_at,
            store,
        } => {
            let scopes = if scopes.is_empty() {
                "none".to_owned()
            } else {
                scopes.join(" ")
            };
            let expiry = expires_at
                .and_then(|at| at.duration_since(std::time::SystemTime::now()).ok())
                .map_or_else(
                    || "no expiry given".to_owned(),
                    |d| format!("expires in {} s", d.as_secs()),
                );
            println!("{server}: logged in (scopes: {scopes}; {expiry}); stored in {store}");
        }
    }
    Ok(())
}

fn serve(config: config::Config) -> anyhow::Result<()> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}; is another latchkey running? Pick another address with --listen or the config's `listen`",
                    config.listen
                )
            })?;
        latchkey::daemon::run(listener, config, shutdown).await?;
        Ok(())
    })
}

/// Completes on SIGINT or SIGTERM. The handlers are installed here, before the
/// listener is announced, so a signal that comes right after start-up is not lost.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}

#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
