//! The config file as a person wrote it, for the commands that change it (`add`,
//! `remove`, `import`). `toml_edit` keeps every comment, blank line and key order
//! that `toml` would drop. A change is checked by loading the new text as the daemon
//! would before anything is written, and written atomically (a temporary file in the
//! same directory, renamed over the old one), owner-only: headers may hold API keys.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, InlineTable, Item, Table, value};

use crate::config::{self, ConfigError};

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not TOML latchkey can edit: {cause}\n  hint: run `latchkey check --config {path}` and fix what it says"
    )]
    Syntax { path: PathBuf, cause: String },
    #[error(
        "[servers.{name}] is already in {path}\n  hint: `latchkey remove {name}` first, or choose another name"
    )]
    Exists { name: String, path: PathBuf },
    #[error("there is no [servers.{name}] in {path}{}", hint_names(.names))]
    Missing {
        name: String,
        path: PathBuf,
        names: Vec<String>,
    },
    #[error("the change would make {path} invalid, so nothing was written:\n{source}")]
    Invalid { path: PathBuf, source: ConfigError },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn hint_names(names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!("\n  hint: the servers there are: {}", names.join(", "))
    }
}

/// A new `[servers.NAME]` table.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NewServer {
    pub name: String,
    pub url: String,
    /// As written: a value may be `${VAR}`.
    pub headers: Vec<(String, String)>,
    /// `None` for the default (`auto`).
    pub transport: Option<String>,
    pub client_id: Option<String>,
    /// Rather `${VAR}` than the secret itself; written as given.
    pub client_secret: Option<String>,
}

/// Header values and the client secret are not shown: they may be keys.
impl std::fmt::Debug for NewServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewServer")
            .field("name", &self.name)
            .field("url", &self.url)
            .field(
                "headers",
                &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("transport", &self.transport)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "…"))
            .finish()
    }
}

/// The text may hold keys: `Debug` shows only where it is.
pub struct ConfigFile {
    pub path: PathBuf,
    doc: DocumentMut,
    /// The text `doc` was parsed from: its comments are spans into it.
    source: String,
    /// The file did not exist: `save` creates it.
    pub created: bool,
}

impl std::fmt::Debug for ConfigFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigFile")
            .field("path", &self.path)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

impl ConfigFile {
    /// The file at `path`, or an empty one to be created there.
    pub fn open(path: &Path) -> Result<Self, EditError> {
        let (text, created) = match std::fs::read_to_string(path) {
            Ok(text) => (text, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), true),
            Err(source) => {
                return Err(EditError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let doc = text.parse::<DocumentMut>().map_err(|e| EditError::Syntax {
            path: path.to_owned(),
            cause: e.message().to_owned(),
        })?;
        Ok(Self {
            path: path.to_owned(),
            doc,
            source: text,
            created,
        })
    }

    /// The names of the `[servers.*]` tables, in file order.
    pub fn server_names(&self) -> Vec<String> {
        self.doc
            .get("servers")
            .and_then(Item::as_table_like)
            .map(|t| t.iter().map(|(k, _)| k.to_owned()).collect())
            .unwrap_or_default()
    }

    /// Where the daemon listens (the `listen` key, else the default), read even
    /// while the file has no server yet and so does not load.
    pub fn listen(&self) -> std::net::SocketAddr {
        self.doc
            .get("listen")
            .and_then(Item::as_str)
            .and_then(|l| l.parse().ok())
            .unwrap_or(config::DEFAULT_LISTEN)
    }

    /// The `url` of each server, for finding one already added under another name.
    pub fn server_urls(&self) -> Vec<(String, String)> {
        let Some(servers) = self.doc.get("servers").and_then(Item::as_table_like) else {
            return Vec::new();
        };
        servers
            .iter()
            .filter_map(|(name, item)| {
                let url = item.as_table_like()?.get("url")?.as_str()?;
                Some((name.to_owned(), url.to_owned()))
            })
            .collect()
    }

    pub fn add(&mut self, server: &NewServer) -> Result<(), EditError> {
        if self.server_names().contains(&server.name) {
            return Err(EditError::Exists {
                name: server.name.clone(),
                path: self.path.clone(),
            });
        }
        let servers = self
            .doc
            .entry("servers")
            .or_insert_with(|| {
                let mut t = Table::new();
                t.set_implicit(true);
                Item::Table(t)
            })
            .as_table_mut()
            .ok_or_else(|| EditError::Syntax {
                path: self.path.clone(),
                cause: "`servers` is not a table".into(),
            })?;
        let mut table = Table::new();
        table.insert("url", value(&server.url));
        if let Some(transport) = &server.transport {
            table.insert("transport", value(transport));
        }
        if !server.headers.is_empty() {
            let mut headers = InlineTable::new();
            for (k, v) in &server.headers {
                headers.insert(k, v.as_str().into());
            }
            table.insert("headers", value(headers));
        }
        if server.client_id.is_some() || server.client_secret.is_some() {
            let mut oauth = Table::new();
            if let Some(id) = &server.client_id {
                oauth.insert("client_id", value(id));
            }
            if let Some(secret) = &server.client_secret {
                oauth.insert("client_secret", value(secret));
            }
            table.insert("oauth", Item::Table(oauth));
        }
        servers.insert(&server.name, Item::Table(table));
        // Comments after the last table belong to the document's end, where
        // toml_edit would leave them below the new table: keep them above it, so
        // the file reads as it did, with the table added at the bottom.
        let trailing = self.raw(self.doc.trailing());
        if !trailing.trim().is_empty() {
            self.doc.set_trailing("");
            if let Some(t) = self.doc["servers"][server.name.as_str()].as_table_mut() {
                t.decor_mut()
                    .set_prefix(format!("{}\n\n", trailing.trim_end()));
            }
        }
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> Result<(), EditError> {
        let servers = self.doc.get_mut("servers").and_then(Item::as_table_mut);
        let Some(removed) = servers.and_then(|t| t.remove(name)) else {
            return Err(EditError::Missing {
                name: name.to_owned(),
                path: self.path.clone(),
                names: self.server_names(),
            });
        };
        // The comments right above the table were about it and go with it; a
        // paragraph before a blank line was not, and stays: above the table that
        // came next, or at the end.
        let prefix = removed
            .as_table()
            .and_then(|t| t.decor().prefix())
            .map(|p| self.raw(p))
            .unwrap_or_default();
        let kept = prefix
            .rfind("\n\n")
            .map_or("", |i| &prefix[..i + 2])
            .to_owned();
        if kept.trim().is_empty() {
            return Ok(());
        }
        let after = removed.as_table().and_then(Table::position);
        let next = self
            .doc
            .get_mut("servers")
            .and_then(Item::as_table_mut)
            .and_then(|servers| {
                servers
                    .iter_mut()
                    .filter_map(|(_, item)| item.as_table_mut())
                    .filter(|t| t.position() > after)
                    .min_by_key(|t| t.position())
            });
        match next {
            Some(next) => {
                let own = next
                    .decor()
                    .prefix()
                    .and_then(|p| p.as_str())
                    .unwrap_or("")
                    .to_owned();
                next.decor_mut().set_prefix(format!("{kept}{own}"));
            }
            None => {
                let end = self.raw(self.doc.trailing());
                self.doc.set_trailing(format!("{kept}{end}"));
            }
        }
        Ok(())
    }

    fn raw(&self, raw: &toml_edit::RawString) -> String {
        raw_text(&self.source, raw)
    }

    pub fn text(&self) -> String {
        self.doc.to_string()
    }

    /// Checks the new text as `latchkey serve` would load it (`${VAR}` resolved
    /// from this environment), then writes it.
    pub fn save(&self) -> Result<config::Config, EditError> {
        let text = self.text();
        let mut loaded = config::parse(&self.path, &text, |name| std::env::var(name).ok())
            .map_err(|source| EditError::Invalid {
                path: self.path.clone(),
                source,
            })?;
        write_atomically(&self.path, text.as_bytes(), 0o600)?;
        config::name_the_file(&mut loaded, &self.path);
        Ok(loaded)
    }
}

/// A comment or whitespace run: written out, or a span into the parsed text.
fn raw_text(source: &str, raw: &toml_edit::RawString) -> String {
    raw.as_str()
        .or_else(|| raw.span().and_then(|r| source.get(r)))
        .unwrap_or("")
        .to_owned()
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`, so
/// that a reader (a reloading daemon) sees the old file or the new one, never half.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), EditError> {
    let failed = |source| EditError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(failed)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.latchkey-{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let result = options.open(&temp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = result.and_then(|()| std::fs::rename(&temp, path)) {
        let _ = std::fs::remove_file(&temp);
        return Err(failed(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMENTED: &str = "# my latchkey\nlisten = \"127.0.0.1:8931\" # the port\n\n# work things\n[servers.notes]\nurl = \"https://notes.example.com/mcp\" # keep\n";

    fn file(text: &str) -> ConfigFile {
        ConfigFile {
            path: PathBuf::from("config.toml"),
            doc: text.parse().expect("ok"),
            source: text.to_owned(),
            created: false,
        }
    }

    #[test]
    fn adding_keeps_every_comment_and_the_order() {
        let mut f = file(COMMENTED);
        f.add(&NewServer {
            name: "jira".into(),
            url: "https://jira.example.com/mcp".into(),
            headers: vec![("X-Api-Key".into(), "${JIRA_KEY}".into())],
            transport: Some("sse".into()),
            client_id: Some("abc".into()),
            client_secret: None,
        })
        .expect("ok");
        let text = f.text();
        assert!(text.starts_with(COMMENTED), "{text}");
        assert!(text.contains("[servers.jira]\nurl = \"https://jira.example.com/mcp\"\ntransport = \"sse\"\nheaders = { X-Api-Key = \"${JIRA_KEY}\" }\n\n[servers.jira.oauth]\nclient_id = \"abc\"\n"), "{text}");
        let config = config::parse(Path::new("c"), &text, |_| Some("k".into())).expect("ok");
        assert_eq!(
            config
                .servers
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["notes", "jira"]
        );
    }

    #[test]
    fn removing_keeps_the_rest_and_names_what_is_there() {
        let mut f = file(COMMENTED);
        f.add(&NewServer {
            name: "jira".into(),
            url: "https://jira.example.com/mcp".into(),
            ..NewServer::default()
        })
        .expect("ok");
        f.remove("jira").expect("ok");
        assert_eq!(f.text(), COMMENTED);
        let err = f.remove("wiki").expect_err("an error").to_string();
        assert!(
            err.contains("there is no [servers.wiki]") && err.contains("notes"),
            "{err}"
        );
    }

    #[test]
    fn comments_at_the_end_stay_through_an_add_and_a_remove() {
        let starter =
            "listen = \"127.0.0.1:8931\"\n\n# An example:\n# [servers.notes]\n# url = \"…\"\n";
        let mut f = file(starter);
        f.add(&NewServer {
            name: "jira".into(),
            url: "https://jira.example.com/mcp".into(),
            ..NewServer::default()
        })
        .expect("ok");
        assert_eq!(
            f.text(),
            format!("{starter}\n[servers.jira]\nurl = \"https://jira.example.com/mcp\"\n")
        );
        f.remove("jira").expect("ok");
        assert_eq!(f.text().trim_end(), starter.trim_end());
    }

    #[test]
    fn a_name_in_use_is_refused() {
        let mut f = file(COMMENTED);
        let err = f
            .add(&NewServer {
                name: "notes".into(),
                url: "https://x.example/mcp".into(),
                ..NewServer::default()
            })
            .expect_err("an error")
            .to_string();
        assert!(err.contains("latchkey remove notes"), "{err}");
    }

    #[test]
    fn nothing_invalid_is_written() {
        let dir = std::env::temp_dir().join(format!("latchkey-edit-{}", std::process::id()));
        let path = dir.join("config.toml");
        let mut f = ConfigFile::open(&path).expect("ok");
        assert!(f.created);
        f.add(&NewServer {
            name: "bad".into(),
            url: "not a url".into(),
            ..NewServer::default()
        })
        .expect("ok");
        let err = f.save().expect_err("an error").to_string();
        assert!(err.contains("nothing was written"), "{err}");
        assert!(!path.exists());
        let _ = std::fs::remove_dir_all(dir);
    }
}
