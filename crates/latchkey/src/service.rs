//! `latchkey service install | uninstall`: latchkey as a systemd user service.
//!
//! The units are the ones in the repository's `systemd/` directory, compiled in, with
//! `ExecStart` pointed at the binary that runs `install` and the file store's
//! directory made writable (the unit's `ProtectSystem=strict` makes everything else
//! read-only).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cli::ServiceAction;
use crate::out::sayln;

const SERVICE_UNIT: &str = include_str!("../../../systemd/latchkey.service");
const SOCKET_UNIT: &str = include_str!("../../../systemd/latchkey.socket");
const SERVICE: &str = "latchkey.service";
const SOCKET: &str = "latchkey.socket";

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(
        "cannot tell where systemd user units go: neither XDG_CONFIG_HOME nor HOME is set; set one of them"
    )]
    NoConfigHome,
    #[error(transparent)]
    NoStateDir(#[from] crate::credentials::NoStateDir),
    #[error(
        "cannot find this latchkey binary's path: {0}; run `latchkey service install` by its full path"
    )]
    CurrentExe(std::io::Error),
    #[error(
        "the binary's path {0:?} cannot go in a unit file (it is not UTF-8, or has a quote, backslash or newline); move latchkey to a plainer path"
    )]
    UnitPath(PathBuf),
    #[error("cannot write {path}: {source}; check that the directory is writable")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "`{command}` failed ({cause}); the unit files are as the messages above say. Is a systemd user manager running (`systemctl --user status`)? Run the command yourself once it is"
    )]
    Systemctl { command: String, cause: String },
}

/// Runs `latchkey service ACTION`, printing what it did and what is left to do.
pub fn run(action: ServiceAction) -> Result<(), ServiceError> {
    let dir = unit_dir()?;
    match action {
        ServiceAction::Install { now, socket } => install(&dir, now, socket),
        ServiceAction::Uninstall { now } => uninstall(&dir, now),
    }
}

/// `$XDG_CONFIG_HOME/systemd/user`, else `~/.config/systemd/user`.
pub fn unit_dir() -> Result<PathBuf, ServiceError> {
    crate::config::xdg_dir("XDG_CONFIG_HOME", ".config")
        .map(|base| base.join("systemd").join("user"))
        .ok_or(ServiceError::NoConfigHome)
}

/// The service unit for the binary at `exe`, with `state` writable.
pub fn service_unit(exe: &Path, state: &Path) -> Result<String, ServiceError> {
    let exe = unit_path(exe)?;
    let state = unit_path(state)?;
    let mut unit = String::new();
    for line in SERVICE_UNIT.lines() {
        if line.starts_with("ExecStart=") {
            unit.push_str(&format!("ExecStart={exe} serve"));
        } else if line.starts_with("ReadWritePaths=") {
            unit.push_str(&format!("ReadWritePaths={state} %t/latchkey"));
        } else {
            unit.push_str(line);
        }
        unit.push('\n');
    }
    Ok(unit)
}

/// A path as a unit file argument: quoted, with `%` (a specifier) doubled.
fn unit_path(path: &Path) -> Result<String, ServiceError> {
    let text = path
        .to_str()
        .filter(|text| !text.contains(['"', '\\', '\n']))
        .ok_or_else(|| ServiceError::UnitPath(path.to_owned()))?;
    Ok(format!("\"{}\"", text.replace('%', "%%")))
}

fn install(dir: &Path, now: bool, socket: bool) -> Result<(), ServiceError> {
    let exe = std::env::current_exe().map_err(ServiceError::CurrentExe)?;
    let state = crate::credentials::state_dir()?;
    // It must exist before the unit starts: the sandbox cannot create it.
    create_private_dir(&state)?;
    std::fs::create_dir_all(dir).map_err(|source| ServiceError::Write {
        path: dir.to_owned(),
        source,
    })?;
    write(&dir.join(SERVICE), &service_unit(&exe, &state)?)?;
    let start = if socket {
        write(&dir.join(SOCKET), SOCKET_UNIT)?;
        SOCKET
    } else {
        SERVICE
    };
    let commands = [vec!["daemon-reload"], vec!["enable", "--now", start]];
    if now {
        for args in &commands {
            systemctl(args)?;
        }
        sayln!(
            "latchkey: {start} is enabled and started; `systemctl --user status latchkey` shows it"
        );
    } else {
        sayln!("To start latchkey now and at every login, run:");
        for args in &commands {
            sayln!("  systemctl --user {}", args.join(" "));
        }
    }
    sayln!(
        "Logs: journalctl --user -u latchkey. Reload the config: systemctl --user reload latchkey"
    );
    Ok(())
}

fn uninstall(dir: &Path, now: bool) -> Result<(), ServiceError> {
    let units: Vec<PathBuf> = [SOCKET, SERVICE]
        .iter()
        .map(|unit| dir.join(unit))
        .filter(|path| path.exists())
        .collect();
    if units.is_empty() {
        sayln!(
            "latchkey: no latchkey units in {}; nothing to remove",
            dir.display()
        );
        return Ok(());
    }
    let stop = ["disable", "--now", SOCKET, SERVICE];
    if now {
        systemctl(&stop)?;
    }
    for path in &units {
        std::fs::remove_file(path).map_err(|source| ServiceError::Remove {
            path: path.clone(),
            source,
        })?;
        sayln!("latchkey: removed {}", path.display());
    }
    if now {
        systemctl(&["daemon-reload"])?;
    } else {
        sayln!("To stop latchkey and forget the units, run:");
        sayln!("  systemctl --user {}", stop.join(" "));
        sayln!("  systemctl --user daemon-reload");
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), ServiceError> {
    std::fs::write(path, text).map_err(|source| ServiceError::Write {
        path: path.to_owned(),
        source,
    })?;
    sayln!("latchkey: wrote {}", path.display());
    Ok(())
}

fn create_private_dir(path: &Path) -> Result<(), ServiceError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path).map_err(|source| ServiceError::Write {
        path: path.to_owned(),
        source,
    })
}

fn systemctl(args: &[&str]) -> Result<(), ServiceError> {
    let command = format!("systemctl --user {}", args.join(" "));
    let status = Command::new("systemctl")
        .arg("--user")
        .args(args)
        .status()
        .map_err(|e| ServiceError::Systemctl {
            command: command.clone(),
            cause: e.to_string(),
        })?;
    if !status.success() {
        return Err(ServiceError::Systemctl {
            command,
            cause: status.to_string(),
        });
    }
    Ok(())
}
