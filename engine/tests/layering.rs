//! The engine's layering, checked from its sources (docs/ARCHITECTURE.md "Layers"): which
//! layer may name which, and no import cycle between files. A test so that a change which
//! reaches up or ties two files together fails here, naming the file and the line.
//!
//! The reading is textual: every `crate::a::b` path and every `super::…` path in a file
//! (outside its `#[cfg(test)]` tail and its `*_tests.rs` companions) names the module file
//! it resolves to. Re-exports count like any other use.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// What the leaf modules (`transport`, `logs`, `coalesce`) may not name: every layer that
/// does something with packets or sessions.
const LEAF_MAY_NOT_NAME: &[&str] = &[
    "net", "session", "tunnel", "connect", "ffi", "embedded", "device",
];

/// Top-level modules, and the ones each may not name.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "device",
        &[
            "net",
            "session",
            "tunnel",
            "connect",
            "ffi",
            "embedded",
            "transport",
        ],
    ),
    ("transport", LEAF_MAY_NOT_NAME),
    ("net", &["session", "tunnel", "connect", "ffi", "embedded"]),
    ("connect", &["session", "tunnel", "ffi", "embedded"]),
    ("session", &["tunnel", "ffi", "embedded"]),
    ("tunnel", &["ffi", "embedded"]),
    ("coalesce", LEAF_MAY_NOT_NAME),
    ("logs", LEAF_MAY_NOT_NAME),
];

/// A source file as a module path (`net::derp::client`) and its text.
fn modules(src: &Path) -> BTreeMap<Vec<String>, (PathBuf, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".rs") || name.ends_with("_tests.rs") || name == "tests.rs" {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap();
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
                parts.pop();
            }
            let text = fs::read_to_string(&path).unwrap();
            // The unit tests at the bottom of a file may reach anywhere.
            let text = match text.find("\n#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_owned(),
                None => text,
            };
            out.insert(parts, (path, text));
        }
    }
    out
}

/// The module files `text` (the file of module `me`) names, with the line that names each.
/// A file naming its own ancestors (`super::Thing` from a child) is not counted: a module
/// and the modules it declares are one room.
fn references(
    me: &[String],
    text: &str,
    known: &BTreeMap<Vec<String>, (PathBuf, String)>,
) -> Vec<(Vec<String>, usize)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let starts = code
            .match_indices("crate::")
            .chain(code.match_indices("super::"));
        for (start, _) in starts {
            let before = &code[..start];
            if before.ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
                continue; // the middle of a longer path (`super::super::`), or another crate's
            }
            let mut rest = &code[start..];
            let mut path: Vec<String> = Vec::new();
            if let Some(r) = rest.strip_prefix("crate::") {
                rest = r;
            } else {
                path = me.to_vec();
                while let Some(r) = rest.strip_prefix("super::") {
                    path.pop();
                    rest = r;
                }
            }
            // Follow the segments as long as they name a module file.
            let mut best = None;
            for seg in rest.split("::") {
                let seg: String = seg
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if seg.is_empty() {
                    break;
                }
                path.push(seg);
                if known.contains_key(&path) {
                    best = Some(path.clone());
                } else {
                    break;
                }
            }
            if let Some(target) = best
                && !me.starts_with(&target)
            {
                out.push((target, n + 1));
            }
        }
    }
    out
}

fn graph() -> BTreeMap<Vec<String>, BTreeMap<Vec<String>, usize>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known = modules(&src);
    let mut g = BTreeMap::new();
    for (m, (_, text)) in &known {
        let mut edges = BTreeMap::new();
        for (target, line) in references(m, text, &known) {
            edges.entry(target).or_insert(line);
        }
        g.insert(m.clone(), edges);
    }
    g
}

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("::")
    }
}

#[test]
fn no_layer_names_one_above_it() {
    let g = graph();
    let mut bad = Vec::new();
    for (from, edges) in &g {
        let Some(top) = from.first() else { continue };
        let Some((_, forbidden)) = FORBIDDEN.iter().find(|(l, _)| l == top) else {
            continue;
        };
        for (to, line) in edges {
            if to.first().is_some_and(|t| forbidden.contains(&t.as_str())) {
                bad.push(format!("{} (line {line}) names {}", show(from), show(to)));
            }
        }
    }
    assert!(bad.is_empty(), "upward imports:\n{}", bad.join("\n"));
}

#[test]
fn no_two_files_import_each_other() {
    let g = graph();
    assert!(g.len() > 50, "the walk found only {} files", g.len());
    let mut cycles = BTreeSet::new();
    for (a, edges) in &g {
        for (b, line) in edges {
            if let Some(back) = g.get(b).and_then(|e| e.get(a))
                && a < b
            {
                cycles.insert(format!(
                    "{} (line {line}) ⇄ {} (line {back})",
                    show(a),
                    show(b)
                ));
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "import cycles:\n{}",
        cycles.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn hosts_use_only_the_host_api() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut bad = Vec::new();
    let mut files = 0;
    for dir in ["nebridge/src", "capi/src"] {
        let mut stack = vec![root.join(dir)];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                files += 1;
                let text = fs::read_to_string(&path).unwrap();
                for (n, line) in text.lines().enumerate() {
                    for (i, _) in line.match_indices("codervpn_engine::") {
                        if !line[i..].starts_with("codervpn_engine::host") {
                            bad.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                        }
                    }
                }
            }
        }
    }
    assert!(files > 20, "the walk found only {files} files");
    assert!(
        bad.is_empty(),
        "outside codervpn_engine::host:\n{}",
        bad.join("\n")
    );
}
