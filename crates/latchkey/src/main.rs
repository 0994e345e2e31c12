use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use latchkey::cli::{Cli, Command, LogFormat};
use latchkey::config;
use latchkey::out::{say, sayln};

fn main() -> ExitCode {
    let cli = Cli::parse();
    latchkey::telemetry::init(&cli.log_level, cli.log_format == LogFormat::Json);
    let result = run(cli.command);
    latchkey::telemetry::finish();
    match result {
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
            say!("{}", latchkey::report::check(&path)?);
            Ok(())
        }
        Command::Login {
            server,
            config,
            url,
            headers,
            transport,
            no_browser,
        } => {
            let (config, name) =
                config::target(config, server, url.as_deref(), &headers, transport)?;
            login(&config, &name, !no_browser)
        }
        Command::Stdio {
            server,
            config,
            url,
            headers,
            transport,
            login_wait,
        } => {
            let (mut config, name) =
                config::target(config, server, url.as_deref(), &headers, transport)?;
            if let Some(secs) = login_wait {
                config.set_login_wait(std::time::Duration::from_secs(secs));
            }
            let runtime = runtime()?;
            let served = runtime.block_on(async {
                let shutdown = shutdown_signal()?;
                latchkey::stdio::run(config, name, shutdown).await?;
                anyhow::Ok(())
            });
            // The read of stdin may still be blocked in its thread: don't wait for it.
            runtime.shutdown_background();
            served
        }
        Command::Logout { server, config } => {
            let config = config::load(&config.unwrap_or_else(config::default_path))?;
            let problems = runtime()?.block_on(latchkey::login::logout(&config, &server))?;
            for problem in &problems {
                eprintln!("latchkey: warning: {problem}");
            }
            sayln!("{server}: logged out; the stored credentials are deleted");
            Ok(())
        }
        Command::Url {
            server,
            config,
            new,
            snippets,
        } => {
            let config = config::load(&config.unwrap_or_else(config::default_path))?;
            let url = runtime()?.block_on(latchkey::login::url(&config, &server, new))?;
            sayln!("{url}");
            if snippets {
                let file = config.servers.iter().find(|s| s.name == server);
                let file = file.and_then(|s| s.config_file.as_deref());
                say!("\n{}", latchkey::snippets::print(&server, &url, file));
            }
            if new {
                eprintln!(
                    "latchkey: {server} has a new key; a running daemon takes it when it reloads (systemctl --user reload latchkey), and the old URL stops working then"
                );
            }
            Ok(())
        }
        Command::Status { config, json } => {
            let config = config::load(&config.unwrap_or_else(config::default_path))?;
            let status = runtime()?.block_on(latchkey::report::status(&config))?;
            if json {
                sayln!("{status:#}");
            } else {
                sayln!("{}", latchkey::report::table(&status));
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
            say!("{}", latchkey::report::findings(&findings));
            let problems = findings.iter().filter(|f| f.fix.is_some()).count();
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
            // Taken before the runtime starts threads: this clears LISTEN_FDS.
            let activated = activated_listener()?;
            let mut listen = listen;
            if let Some(socket) = &activated {
                let local = socket
                    .local_addr()
                    .context("the socket passed in LISTEN_FDS")?;
                config::check_listen(local, config.allow_non_loopback)
                    .map_err(anyhow::Error::msg)
                    .context("the socket passed by socket activation (LISTEN_FDS); fix ListenStream= in latchkey.socket")?;
                tracing::info!(%local, "using the listening socket passed by the service manager (socket activation)");
                config.listen = local;
                listen = Some(local);
            }
            let runtime = runtime()?;
            runtime.block_on(async {
                let shutdown = shutdown_signal()?;
                let reload = reload_on_hangup(path, listen)?;
                latchkey::daemon::serve(config, activated, shutdown, reload).await?;
                anyhow::Ok(())
            })
        }
        Command::Init { config } => {
            let path = config.unwrap_or_else(config::default_path);
            latchkey::onboard::init(&path)?;
            sayln!(
                "Wrote a starter config to {}. Add a server with `latchkey add NAME URL`, or `latchkey import` the ones your MCP clients have.",
                path.display()
            );
            Ok(())
        }
        Command::Add {
            name,
            url,
            headers,
            transport,
            oauth_client_id,
            oauth_client_secret,
            no_login,
            config,
        } => {
            let path = config.clone().unwrap_or_else(config::default_path);
            let server = latchkey::onboard::NewServer {
                name: name.clone(),
                url,
                headers: headers
                    .iter()
                    .map(|h| {
                        h.split_once(':')
                            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                            .with_context(|| format!("--header {h:?} is not 'Name: value'"))
                    })
                    .collect::<anyhow::Result<_>>()?,
                transport: (transport != latchkey::cli::TransportArg::Auto)
                    .then(|| transport.as_str().to_owned()),
                client_id: oauth_client_id,
                client_secret: oauth_client_secret,
            };
            let added = runtime()?.block_on(latchkey::onboard::add(&path, &server))?;
            say!("{}", added.report());
            sayln!("\n{}", latchkey::onboard::reload());
            if added.needs_login()
                && !no_login
                && latchkey::onboard::ask(&format!("Log in to {name} now?"))
            {
                login(&config::load(&path)?, &name, true)?;
            }
            Ok(())
        }
        Command::Remove { name, config } => {
            let path = config.unwrap_or_else(config::default_path);
            let loaded = config::load(&path)?;
            let found = loaded.servers.iter().find(|s| s.name == name);
            if found.is_some_and(|s| matches!(s.oauth, config::OAuth::Enabled(_))) {
                match runtime()?.block_on(latchkey::login::logout(&loaded, &name)) {
                    Ok(problems) => problems
                        .iter()
                        .for_each(|p| eprintln!("latchkey: warning: {p}")),
                    Err(e) => eprintln!("latchkey: warning: {e:#}; the server is removed anyway"),
                }
            }
            latchkey::onboard::remove(&path, &name)?;
            sayln!(
                "Removed [servers.{name}] from {} (and logged out).",
                path.display()
            );
            sayln!("{}", latchkey::onboard::reload());
            Ok(())
        }
        Command::Import {
            from,
            rewrite,
            config,
        } => {
            use latchkey::onboard::import;
            let path = config.unwrap_or_else(config::default_path);
            let sources = import::sources(&from)?;
            let exe = std::env::current_exe()
                .ok()
                .and_then(|p| p.to_str().map(str::to_owned))
                .unwrap_or_else(|| "latchkey".into());
            let outcome = import::run(&path, &sources, &exe)?;
            let mut backups = Vec::new();
            if rewrite {
                for r in &outcome.rewrites {
                    backups.push((r.path.clone(), r.apply()?));
                }
            }
            say!("{}", import::report(&outcome, rewrite, &backups));
            if outcome.added > 0 {
                sayln!("\n{}", latchkey::onboard::reload());
            }
            Ok(())
        }
        Command::Service { action } => latchkey::service::run(action).map_err(Into::into),
    }
}

/// Runs a login to `server` (a browser if `open`) and says what it achieved.
fn login(config: &config::Config, server: &str, open: bool) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let browser = std::sync::Arc::new(latchkey::callback::TerminalBrowser { open });
    let outcome = runtime.block_on(latchkey::login::login(config, server, browser));
    // A read of stdin (for a pasted redirect) may still be blocked: don't wait for it.
    runtime.shutdown_background();
    sayln!("{}", outcome?.summary(server));
    Ok(())
}

/// One thread runs everything but blocking work (keyring, files, locks), which goes
/// to tokio's blocking pool. A request's work is a few header edits between two
/// sockets; on a multi-threaded runtime the client's connection task and the
/// upstream connection's task wake each other across threads, one futex call each
/// way per request, which cost more latency than the work itself (BENCHMARKS.md).
/// One core relays far more calls per second than MCP clients make.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // Log lines are written in batches, when the runtime runs out of work.
        .on_thread_park(latchkey::telemetry::flush)
        .build()
        .context("cannot start the async runtime")
}

/// The listening socket systemd passes as fd 3 (`LISTEN_FDS`, `LISTEN_PID`), if any.
fn activated_listener() -> anyhow::Result<Option<std::net::TcpListener>> {
    let mut passed = listenfd::ListenFd::from_env();
    if passed.len() > 1 {
        tracing::warn!(
            count = passed.len(),
            "more than one socket passed in LISTEN_FDS; using the first (fd 3)"
        );
    }
    passed
        .take_tcp_listener(0)
        .context("fd 3 from LISTEN_FDS is not a listening TCP socket; latchkey.socket needs ListenStream=127.0.0.1:8931 (an IP address and port)")
}

/// SIGHUP asks the daemon to reread the config at `path`.
#[cfg(unix)]
fn reload_on_hangup(
    path: std::path::PathBuf,
    listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<Option<latchkey::daemon::Reload>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    // One slot: SIGHUPs that come during a reload add one more, not one each.
    let (requests, received) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received; reloading the config");
            if let Err(tokio::sync::mpsc::error::TrySendError::Closed(())) = requests.try_send(()) {
                break;
            }
        }
    });
    Ok(Some(latchkey::daemon::Reload {
        requests: received,
        load: Box::new(move || {
            let mut config = config::load(&path)?;
            if let Some(listen) = listen {
                config.listen = listen;
            }
            Ok(config)
        }),
    }))
}

#[cfg(not(unix))]
fn reload_on_hangup(
    _path: std::path::PathBuf,
    _listen: Option<std::net::SocketAddr>,
) -> anyhow::Result<Option<latchkey::daemon::Reload>> {
    Ok(None)
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
