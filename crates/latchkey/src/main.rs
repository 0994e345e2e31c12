use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use latchkey::cli::{Cli, Command, LogFormat};
use latchkey::config;

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
            let config = config::load(&path)?;
            for warning in config.warnings() {
                println!("warning: {warning}");
            }
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
            url,
            headers,
            transport,
            no_browser,
        } => match (server, url) {
            (Some(server), _) => {
                let config = config::load(&config.unwrap_or_else(config::default_path))?;
                login(&config, &server, !no_browser)
            }
            (None, Some(url)) => {
                let config = adhoc(config, &url, &headers, transport)?;
                login(&config, "remote", !no_browser)
            }
            (None, None) => anyhow::bail!("give a server name from the config, or --url URL"),
        },
        Command::Stdio {
            server,
            config,
            url,
            headers,
            transport,
        } => {
            let (config, name) = match (server, url) {
                (Some(name), _) => {
                    let path = config.unwrap_or_else(config::default_path);
                    let config = config::load(&path)?;
                    if !config.servers.iter().any(|s| s.name == name) {
                        anyhow::bail!(
                            "no server {name:?} in {}; configured: {}",
                            path.display(),
                            config
                                .servers
                                .iter()
                                .map(|s| s.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                    (config, name)
                }
                (None, Some(url)) => (
                    adhoc(config, &url, &headers, transport)?,
                    "remote".to_owned(),
                ),
                (None, None) => anyhow::bail!("give a server name from the config, or --url URL"),
            };
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
            println!("{server}: logged out; the stored credentials are deleted");
            Ok(())
        }
        Command::Url {
            server,
            config,
            new,
        } => {
            let config = config::load(&config.unwrap_or_else(config::default_path))?;
            let url = runtime()?.block_on(latchkey::login::url(&config, &server, new))?;
            println!("{url}");
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
                // Details quote servers' answers: escaped for the terminal.
                println!(
                    "[{mark}] {}: {}",
                    finding.check,
                    latchkey::telemetry::escape_controls(&finding.detail)
                );
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
            serve(config, path, listen, activated)
        }
        Command::Service { action } => latchkey::service::run(action).map_err(Into::into),
    }
}

/// The config for `latchkey stdio --url`: that one server, with the store settings
/// of the user's config when there is one, so tokens are shared with the daemon.
fn adhoc(
    config: Option<std::path::PathBuf>,
    url: &str,
    headers: &[String],
    transport: latchkey::cli::TransportArg,
) -> anyhow::Result<config::Config> {
    use latchkey::cli::TransportArg;
    let url = url::Url::parse(url).context("--url is not a URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        anyhow::bail!("--url must be an http or https URL");
    }
    let mut parsed = Vec::new();
    for header in headers {
        let (name, value) = header.split_once(':').with_context(|| {
            format!(
                "--header {name:?} is not 'Name: value'",
                name = header.split(':').next().unwrap_or_default()
            )
        })?;
        let name = http::HeaderName::from_bytes(name.trim().as_bytes())
            .with_context(|| format!("--header: {:?} is not a header name", name.trim()))?;
        // The value may be a secret: it is never quoted back.
        let mut value = http::HeaderValue::from_str(value.trim()).map_err(|_| {
            anyhow::anyhow!("--header {name}: the value has characters a header cannot carry")
        })?;
        value.set_sensitive(true);
        parsed.push((name, value));
    }
    let (store, state_dir) = config::load(&config.unwrap_or_else(config::default_path))
        .map(|c| (c.store, c.state_dir))
        .unwrap_or_default();
    Ok(config::Config::single(
        config::Server {
            name: "remote".to_owned(),
            uri: config::request_uri(&url).map_err(|e| anyhow::anyhow!("--{e}"))?,
            url: url.clone(),
            transport: match transport {
                TransportArg::Auto => config::Transport::Auto,
                TransportArg::StreamableHttp => config::Transport::StreamableHttp,
                TransportArg::Sse => config::Transport::Sse,
            },
            headers: parsed,
            oauth: config::OAuth::Enabled(config::OAuthConfig::default()),
            local_key: false,
            login_command: format!("latchkey login --url {}", latchkey::redacted(&url)),
        },
        store,
        state_dir,
    ))
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

/// `listen` is the address that overrides the config's, on start and on every
/// reload (`--listen`, or the socket passed by socket activation).
fn serve(
    config: config::Config,
    path: std::path::PathBuf,
    listen: Option<std::net::SocketAddr>,
    activated: Option<std::net::TcpListener>,
) -> anyhow::Result<()> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let reload = reload_on_hangup(path, listen)?;
        let listener = match activated {
            Some(socket) => {
                socket
                    .set_nonblocking(true)
                    .context("cannot use the socket passed in LISTEN_FDS")?;
                tokio::net::TcpListener::from_std(socket)
                    .context("cannot use the socket passed in LISTEN_FDS")?
            }
            None => tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {}; is another latchkey running? Pick another address with --listen or the config's `listen`",
                        config.listen
                    )
                })?,
        };
        let service = latchkey::daemon::Service {
            browser: std::sync::Arc::new(latchkey::callback::SystemBrowser),
            reload,
            notifier: latchkey::notify::Notifier::from_env(),
        };
        latchkey::daemon::run_service(listener, config, shutdown, service).await?;
        Ok(())
    })
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
