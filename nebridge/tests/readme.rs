//! The README's feature table stays true to the tree: every file its "shown by" column
//! names exists, and every test it names after a file — `path` (`test_name`, …) — is a
//! `fn` in that file (or, for a directory, in a file under it). A renamed or deleted test
//! fails here instead of leaving a claim with no evidence.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The "shown by" cells (third column) of the table under "## Features".
fn shown_by_cells(readme: &str) -> Vec<String> {
    let table = readme
        .split("\n## Features\n")
        .nth(1)
        .expect("README has a Features section");
    table
        .lines()
        .filter(|l| l.starts_with('|') && !l.starts_with("|---") && !l.starts_with("| feature"))
        .map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            assert!(cells.len() >= 4, "a row with fewer than 4 cells: {l}");
            cells[2].to_owned()
        })
        .collect()
}

/// (path, the test names in the parentheses right after it) for each backticked path.
fn references(cell: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let parts: Vec<&str> = cell.split('`').collect();
    // Backticked spans are the odd parts; a path is one with a slash and no spaces.
    let mut i = 1;
    while i < parts.len() {
        let span = parts[i];
        let is_path = span.contains('/') && !span.contains(' ') && !span.starts_with("http");
        if is_path {
            let mut names = Vec::new();
            // Names follow as ` (`a`, `b`; `c`: detail)`: the spans listed (after "(", ", "
            // or "; "), until the text between them closes the ")".
            if parts.get(i + 1).is_some_and(|t| t.trim() == "(") {
                let mut j = i + 2;
                let mut listed = true;
                while j < parts.len() {
                    if listed {
                        names.push(parts[j].to_owned());
                    }
                    let between = parts.get(j + 1).copied().unwrap_or("");
                    if between.contains(')') {
                        break;
                    }
                    listed = matches!(between, ", " | "; ");
                    j += 2;
                }
            }
            out.push((span.trim_end_matches(':').to_owned(), names));
        }
        i += 2;
    }
    out
}

fn is_test_name(s: &str) -> bool {
    s.contains('_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn sources_under(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .is_some_and(|x| x == "rs" || x == "sh" || x == "py")
            {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn every_file_and_test_the_feature_table_names_exists() {
    let root = root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let cells = shown_by_cells(&readme);
    assert!(cells.len() > 40, "only {} rows found", cells.len());
    let mut missing = Vec::new();
    let mut checked = 0;
    for cell in &cells {
        for (path, names) in references(cell) {
            // `{a,b}.rs` style groups and globs are not paths to check.
            if path.contains(['{', '*']) {
                continue;
            }
            let full = root.join(&path);
            if !full.exists() {
                missing.push(format!("{path}: no such file"));
                continue;
            }
            let texts: Vec<String> = sources_under(&full)
                .iter()
                .map(|p| std::fs::read_to_string(p).unwrap_or_default())
                .collect();
            for name in names.iter().filter(|n| is_test_name(n)) {
                checked += 1;
                let decl = format!("fn {name}(");
                let decl_generic = format!("fn {name}<");
                // A fuzz target is a file of its own under the fuzz crate.
                let target = full.join("fuzz_targets").join(format!("{name}.rs"));
                if !target.is_file()
                    && !texts
                        .iter()
                        .any(|t| t.contains(&decl) || t.contains(&decl_generic))
                {
                    missing.push(format!("{path}: no fn {name}"));
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} test names found: is the parser right?"
    );
    assert!(
        missing.is_empty(),
        "the README names what is not there:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_parser_reads_paths_and_their_test_names() {
    let refs = references(
        "`a/b.rs` (`one_test`, `two_test`), `c/d.sh` (a `note`) via `e/f.rs` (`three_test`: \
         `field`; `four_test`); `x` and `g/`",
    );
    let want = [
        ("a/b.rs", vec!["one_test", "two_test"]),
        ("c/d.sh", vec![]),
        ("e/f.rs", vec!["three_test", "four_test"]),
        ("g/", vec![]),
    ];
    assert_eq!(refs.len(), want.len(), "{refs:?}");
    for ((p, n), (wp, wn)) in refs.iter().zip(want) {
        assert_eq!(
            (p.as_str(), n.iter().map(String::as_str).collect::<Vec<_>>()),
            (wp, wn)
        );
    }
}
