//! The layer check (issue 14): every `crate::` path in `src/` must point to a module
//! in a lower layer than its own, as ARCHITECTURE.md's "Layers" list declares them
//! (read from between its `<!-- layers -->` markers, so the list has one home).
//! Run: `cargo test -p latchkey --test layers`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Module name → (layer index, layer name), from ARCHITECTURE.md.
fn layers() -> BTreeMap<String, (usize, String)> {
    let doc =
        std::fs::read_to_string(root().join("../../ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let list = doc
        .split("<!-- layers -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- /layers -->").next())
        .expect("ARCHITECTURE.md has a <!-- layers --> … <!-- /layers --> list");
    let mut layers = BTreeMap::new();
    for (index, line) in list
        .lines()
        .filter(|l| !l.starts_with("```") && !l.trim().is_empty())
        .enumerate()
    {
        // "name words   module module   comment": columns are two or more spaces apart.
        let columns: Vec<&str> = line
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        let (name, modules) = (columns[0], columns.get(1).copied().unwrap_or_default());
        for module in modules.split_whitespace() {
            layers.insert(module.to_owned(), (index, name.to_owned()));
        }
    }
    layers
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules that `text` names through `crate::`, in both `crate::a::b`
/// and `crate::{a, b::{c, d}}` forms (a group may span lines), each with its offset.
fn named_modules(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The top-level items of the group: split at depth-0 commas.
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.push((at, std::mem::take(&mut item)));
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.push((at, item));
        } else {
            found.push((at, rest.to_owned()));
        }
    }
    found
        .into_iter()
        .map(|(at, item)| {
            let name: String = item
                .trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (at, name)
        })
        .filter(|(_, name)| {
            name.starts_with(|c: char| c.is_ascii_lowercase()) && name != "self" && name != "super"
        })
        .collect()
}

#[test]
fn imports_only_point_down_the_layers() {
    let layers = layers();
    let src = root().join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a path");
        let module = Path::new(first.as_os_str())
            .file_stem()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        // The crate root and the binary sit above every layer.
        if module == "lib" || module == "main" {
            continue;
        }
        let Some((own, own_name)) = layers.get(&module) else {
            problems.push(format!(
                "src/{}: module `{module}` is in no layer; add it to the list in ARCHITECTURE.md (\"Layers\")",
                relative.display()
            ));
            continue;
        };
        // Comments blanked, lines kept: a doc comment may name any module.
        let text: String = std::fs::read_to_string(file)
            .expect("read")
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("//") {
                    ""
                } else {
                    l
                }
            })
            .flat_map(|l| [l, "\n"])
            .collect();
        for (at, used) in named_modules(&text) {
            let number = text[..at].matches('\n').count();
            {
                if used == module || used == "fuzzing" {
                    continue;
                }
                match layers.get(&used) {
                    Some((theirs, _)) if theirs > own => {}
                    Some((_, their_name)) => problems.push(format!(
                        "src/{}:{}: `{module}` ({own_name}) uses `crate::{used}` ({their_name}), which is not below it. Move what it uses down into a lower layer (or this code up); the layers are in ARCHITECTURE.md",
                        relative.display(),
                        number + 1
                    )),
                    None => problems.push(format!(
                        "src/{}:{}: `crate::{used}` is in no layer; add it to the list in ARCHITECTURE.md (\"Layers\")",
                        relative.display(),
                        number + 1
                    )),
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "imports that do not point down:\n{}",
        problems.join("\n")
    );
}

fn names(text: &str) -> Vec<String> {
    named_modules(text)
        .into_iter()
        .map(|(_, name)| name)
        .collect()
}

#[test]
fn groups_and_paths_are_both_read() {
    assert_eq!(
        names("use crate::{\n    config::{Config, Server},\n    error::ProxyError, self};"),
        ["config", "error"]
    );
    assert_eq!(
        names("let x = crate::redact::redacted(&u); crate::Secret"),
        ["redact"]
    );
}
