//! Spec citations cannot drift: every citation of a wire spec in the workspace's sources
//! must name a section that exists as a numbered heading of that spec in docs/spec/ (see
//! docs/spec/README.md).
//!
//! What counts as a citation:
//! - a spec file name followed by a section sign and a number, optionally wrapped onto the
//!   next comment line, with lists (`, `, `; `, `/`, `and`), ranges (`–`) and quoted names
//!   of a part of the section (a table row such as "Sealed box"), which must then occur in
//!   that section's text;
//! - a bare section sign in a non-Markdown file whose leading comment block (module doc)
//!   names exactly one spec, when it stands after `(`, at the start of a comment line, or
//!   after "of", "per", "see", "in", "under", "by"; a section sign after anything else
//!   (`RFC 5389`, another document's name) starts a list that is skipped as a whole.
//!
//! The section sign is written `\u{a7}` in this file so that its own samples are not
//! citations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The specs in docs/spec/ that code cites by bare file name.
const SPECS: [&str; 4] = [
    "codervpn-protocol.md",
    "tailnet.md",
    "manager-behaviour.md",
    "dylib-abi-and-compat.md",
];

/// The section sign.
const SIGN: char = '\u{a7}';

/// Directories never walked: build output, VCS data, fuzz corpora, seeds and artifacts.
const SKIP_DIRS: [&str; 8] = [
    "target",
    ".git",
    "corpus",
    "artifacts",
    "seeds",
    "coverage",
    "__pycache__",
    "node_modules",
];

/// Extensions of the files scanned; extension-less files are scanned when they start `#!`.
const EXTENSIONS: [&str; 9] = ["rs", "md", "sh", "py", "proto", "h", "c", "swift", "go"];

/// Words after which a bare section sign is a citation of the module's spec.
const BARE_LEAD_WORDS: [&str; 6] = ["of", "per", "see", "in", "under", "by"];

/// Comment markers stripped at the start of a continuation line, longest first.
const COMMENT_MARKERS: [&str; 7] = ["//!", "///", "//", "/*", "#", "*", "--"];

/// Longest quoted section-part name taken as one.
const MAX_LABEL: usize = 80;

/// One cited section.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Citation {
    /// 1-based line of the section sign.
    line: usize,
    spec: &'static str,
    /// `13.4`.
    section: String,
    /// Quoted names after the section number; each must occur in the section.
    labels: Vec<String>,
    /// Written as a bare section sign; `spec` is the one the module doc names.
    bare: bool,
}

/// A numbered heading of a spec and its text up to the next heading of the same or a
/// higher level.
#[derive(Debug)]
struct Section {
    number: String,
    body: String,
}

/// Each spec's sections; `None` when docs/spec/ lacks the file.
type Specs = BTreeMap<&'static str, Option<Vec<Section>>>;

#[test]
fn every_spec_citation_names_an_existing_section() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("proto/ has a parent")
        .to_path_buf();
    let spec_dir = root.join("docs").join("spec");
    let specs = load_specs(&spec_dir);

    let mut files = Vec::new();
    walk(&root, &spec_dir, &mut files);
    files.sort();

    let mut cited = Vec::new();
    for path in &files {
        let Some(text) = read_text(path) else {
            continue;
        };
        let rel = path
            .strip_prefix(&root)
            .unwrap_or(path)
            .display()
            .to_string();
        let home = if path.extension().is_some_and(|e| e == "md") {
            None
        } else {
            module_spec(&text)
        };
        cited.extend(scan(&text, home).into_iter().map(|c| (rel.clone(), c)));
    }

    let bare = cited.iter().filter(|(_, c)| c.bare).count();
    let labels: usize = cited.iter().map(|(_, c)| c.labels.len()).sum();
    eprintln!(
        "checked {} spec citations ({} named, {bare} bare, {labels} quoted section parts) in {} files",
        cited.len(),
        cited.len() - bare,
        files.len(),
    );
    // A walk from the wrong root or a broken pattern would find (almost) nothing and pass.
    assert!(
        cited.len() - bare >= 40,
        "only {} named spec citations found under {}: is the walk or the scanner broken?",
        cited.len() - bare,
        root.display(),
    );

    let problems = check(&cited, &specs);
    assert!(
        problems.is_empty(),
        "{} spec citation(s) name a section that docs/spec/ does not have:\n{}",
        problems.len(),
        problems.join("\n"),
    );
}

#[test]
fn scanner_finds_citations_and_flags_missing_sections() {
    let sample = concat!(
        "//! DERP as a path (tailnet.md \u{a7}11 \"DERP transport\", \u{a7}13.3; RFC 5389 \u{a7}15.5).\n",
        "//! Upgrade (`tailnet.md` \u{a7}13.3 \"Upgrade request\",\n",
        "//! \"No such row\"; Go: `derphttp`). Setup: tailnet.md\n",
        "//! \u{a7}99.1 and STYLE.md \u{a7}1; compat (dylib-abi-and-compat.md \u{a7}3\u{2013}\u{a7}5).\n",
        "//! Not citations: tailnet.md alone, mytailnet.md \u{a7}2, tailnet.mdx \u{a7}2.\n",
    );
    let cites = scan(sample, None);
    let got: Vec<_> = cites
        .iter()
        .map(|c| (c.line, c.spec, c.section.as_str(), c.labels.clone()))
        .collect();
    let none = Vec::<String>::new;
    assert_eq!(
        got,
        vec![
            (1, "tailnet.md", "11", vec!["DERP transport".to_owned()]),
            (1, "tailnet.md", "13.3", none()),
            (
                2,
                "tailnet.md",
                "13.3",
                vec!["Upgrade request".to_owned(), "No such row".to_owned()]
            ),
            (4, "tailnet.md", "99.1", none()),
            (4, "dylib-abi-and-compat.md", "3", none()),
            (4, "dylib-abi-and-compat.md", "4", none()),
            (4, "dylib-abi-and-compat.md", "5", none()),
        ]
    );

    let mut specs = Specs::new();
    specs.insert(
        "tailnet.md",
        Some(sections(concat!(
            "# Tailnet\n\n## 11. Data plane\n\n| DERP transport | x |\n\n",
            "## 13. Wire constants\n\n### 13.3 DERP\n\n| Upgrade request | y |\n\n",
            "```\n## 99. only inside a code fence\n### 99.1 neither\n```\n",
        ))),
    );
    specs.insert("dylib-abi-and-compat.md", None);
    let cited: Vec<_> = cites.into_iter().map(|c| ("x.rs".to_owned(), c)).collect();
    let problems = check(&cited, &specs);
    assert_eq!(problems.len(), 5, "{problems:#?}");
    assert!(problems[0].starts_with("x.rs:2: tailnet.md \u{a7}13.3 \"No such row\""));
    assert!(problems[1].starts_with("x.rs:4: tailnet.md \u{a7}99.1: no heading numbered 99.1"));
    for p in &problems[2..] {
        assert!(
            p.contains("docs/spec/dylib-abi-and-compat.md does not exist"),
            "{p}"
        );
    }
}

#[test]
fn bare_signs_cite_the_spec_the_module_doc_names() {
    let sample = concat!(
        "#!/bin/sh\n",
        "# Stop and restart (manager-behaviour.md \u{a7}9).\n",
        "\n",
        "# Colours (\u{a7}6.2: green below 150 ms); the order of \u{a7}6.1 and \u{a7}6.3.\n",
        "# \u{a7}7 at the start of a comment line.\n",
        "# RFC 5769 \u{a7}2.2 and \u{a7}2.3, STYLE.md \u{a7}1, x\u{a7}4, spec \u{a7}5: not ours.\n",
    );
    let home = module_spec(sample);
    assert_eq!(home, Some("manager-behaviour.md"));
    let got: Vec<_> = scan(sample, home)
        .into_iter()
        .map(|c| (c.line, c.section, c.bare))
        .collect();
    assert_eq!(
        got,
        vec![
            (2, "9".to_owned(), false),
            (4, "6.2".to_owned(), true),
            (4, "6.1".to_owned(), true),
            (4, "6.3".to_owned(), true),
            (5, "7".to_owned(), true),
        ]
    );

    // Two specs in the module doc: a bare sign is ambiguous and not checked.
    let two = "//! (tailnet.md \u{a7}1; codervpn-protocol.md \u{a7}2)\n// of \u{a7}8\n";
    assert_eq!(module_spec(two), None);
    assert_eq!(scan(two, module_spec(two)).len(), 2);
}

/// Reads each spec of `dir` into its numbered sections.
fn load_specs(dir: &Path) -> Specs {
    SPECS
        .iter()
        .map(|&spec| {
            let text = fs::read_to_string(dir.join(spec)).ok();
            (spec, text.map(|t| sections(&t)))
        })
        .collect()
}

/// The numbered headings (`## 6. Title`, `### 6.2 Title`) of a Markdown text, outside code
/// fences, each with its text up to the next heading of the same or a higher level.
fn sections(text: &str) -> Vec<Section> {
    let lines: Vec<&str> = text.lines().collect();
    let mut in_fence = false;
    let mut headings = Vec::new(); // (line index, level, number)
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let level = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&level) || !line[level..].starts_with(' ') {
            continue;
        }
        let token = line[level..].split_whitespace().next().unwrap_or("");
        let number = token.trim_end_matches('.');
        let numbered = !number.is_empty()
            && number
                .split('.')
                .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit()));
        headings.push((i, level, numbered.then(|| number.to_owned())));
    }
    let mut out = Vec::new();
    for (k, (start, level, number)) in headings.iter().enumerate() {
        let Some(number) = number else {
            continue;
        };
        let end = headings[k + 1..]
            .iter()
            .find(|(_, l, _)| l <= level)
            .map_or(lines.len(), |(i, _, _)| *i);
        out.push(Section {
            number: number.clone(),
            body: lines[*start..end].join("\n"),
        });
    }
    out
}

/// Every problem with `cited` (file, citation) against `specs`, as `file:line: …` lines.
fn check(cited: &[(String, Citation)], specs: &Specs) -> Vec<String> {
    let mut problems = Vec::new();
    for (file, c) in cited {
        let what = if c.bare {
            format!(
                "{SIGN}{} (bare; the module doc names {})",
                c.section, c.spec
            )
        } else {
            format!("{} {SIGN}{}", c.spec, c.section)
        };
        let Some(Some(sections)) = specs.get(c.spec) else {
            problems.push(format!(
                "{file}:{}: {what}: docs/spec/{} does not exist",
                c.line, c.spec
            ));
            continue;
        };
        let Some(section) = sections.iter().find(|s| s.number == c.section) else {
            let known: Vec<&str> = sections.iter().map(|s| s.number.as_str()).collect();
            problems.push(format!(
                "{file}:{}: {what}: no heading numbered {} in docs/spec/{} (it has {})",
                c.line,
                c.section,
                c.spec,
                known.join(", ")
            ));
            continue;
        };
        for label in &c.labels {
            if !section.body.contains(label.as_str()) {
                problems.push(format!(
                    "{file}:{}: {what} \"{label}\": that text does not occur in section {} of docs/spec/{}",
                    c.line, c.section, c.spec
                ));
            }
        }
    }
    problems
}

/// The files to scan under `dir`, skipping `SKIP_DIRS`, `spec_dir` and symlinks.
fn walk(dir: &Path, spec_dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if kind.is_dir() {
            if !SKIP_DIRS.contains(&name.as_ref()) && path != spec_dir {
                walk(&path, spec_dir, out);
            }
        } else if kind.is_file() {
            match path.extension() {
                Some(ext) => {
                    if EXTENSIONS.iter().any(|e| ext == *e) {
                        out.push(path);
                    }
                }
                None => {
                    if fs::read(&path).is_ok_and(|b| b.starts_with(b"#!")) {
                        out.push(path);
                    }
                }
            }
        }
    }
}

/// The file as text; `None` for unreadable, non-UTF-8 or very large files.
fn read_text(path: &Path) -> Option<String> {
    let bytes = fs::read(path).ok()?;
    if bytes.len() > 4 << 20 {
        return None;
    }
    String::from_utf8(bytes).ok()
}

/// The one spec the leading comment block (module doc, docstring) names, if exactly one.
fn module_spec(text: &str) -> Option<&'static str> {
    let mut lines = text.lines().peekable();
    if lines.peek().is_some_and(|l| l.starts_with("#!")) {
        lines.next();
    }
    while lines.peek().is_some_and(|l| l.trim().is_empty()) {
        lines.next();
    }
    let mut block = String::new();
    let first = lines.peek().map(|l| l.trim_start()).unwrap_or("");
    if let Some(quote) = ["\"\"\"", "'''"].into_iter().find(|q| first.starts_with(q)) {
        for (i, line) in lines.enumerate() {
            block.push_str(line);
            block.push('\n');
            let rest = if i == 0 {
                &line.trim_start()[3..]
            } else {
                line
            };
            if rest.contains(quote) {
                break;
            }
        }
    } else {
        for line in lines {
            let t = line.trim_start();
            if !COMMENT_MARKERS.iter().any(|m| t.starts_with(m)) {
                break;
            }
            block.push_str(line);
            block.push('\n');
        }
    }
    let named: BTreeSet<&'static str> = SPECS
        .iter()
        .copied()
        .filter(|spec| {
            block
                .match_indices(spec)
                .any(|(at, _)| is_name_at(&block, at, spec))
        })
        .collect();
    let mut named = named.into_iter();
    match (named.next(), named.next()) {
        (Some(spec), None) => Some(spec),
        _ => None,
    }
}

/// The spec citations of `text`; bare section signs count for `home` (the module's spec).
fn scan(text: &str, home: Option<&'static str>) -> Vec<Citation> {
    let mut out = Vec::new();
    let mut consumed = BTreeSet::new();
    for spec in SPECS {
        for (at, _) in text.match_indices(spec) {
            if !is_name_at(text, at, spec) {
                continue;
            }
            let mut i = after_name(text, at + spec.len());
            i = skip_gap(text, i);
            if text[i..].starts_with('(') {
                i = skip_gap(text, i + 1);
            }
            // A Markdown link names the spec twice; its list counts once.
            if text[i..].starts_with(SIGN) && !consumed.contains(&i) {
                parse_list(text, i, Some(spec), false, &mut consumed, &mut out);
            }
        }
    }
    for (at, _) in text.match_indices(SIGN) {
        if consumed.contains(&at) {
            continue;
        }
        // Not a citation of ours (an RFC's section, another document's): its whole list is
        // skipped.
        let spec = home.filter(|_| bare_lead(text, at));
        parse_list(text, at, spec, true, &mut consumed, &mut out);
    }
    out.sort_by_key(|c| c.line);
    out
}

/// Whether `spec` at byte `at` is a whole file name, not part of a longer one.
fn is_name_at(text: &str, at: usize, spec: &str) -> bool {
    let before = text[..at].chars().next_back();
    let after = text[at + spec.len()..].chars().next();
    let name_char = |c: char| c.is_alphanumeric() || matches!(c, '-' | '_' | '.');
    !before.is_some_and(name_char) && !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// Past what may close the name: a backtick, or a Markdown link's `](target)`.
fn after_name(text: &str, i: usize) -> usize {
    let rest = &text[i..];
    if rest.starts_with('`') {
        return i + 1;
    }
    if let Some(link) = rest.strip_prefix("](") {
        let line_end = link.find('\n').unwrap_or(link.len());
        if let Some(close) = link[..line_end].find(')') {
            return i + 2 + close + 1;
        }
    }
    i
}

/// Past spaces, and at most one line break followed by a comment marker and spaces.
fn skip_gap(text: &str, i: usize) -> usize {
    let i = skip_spaces(text, i);
    let rest = &text[i..];
    let Some(next) = rest
        .strip_prefix('\n')
        .or_else(|| rest.strip_prefix("\r\n"))
    else {
        return i;
    };
    let mut j = skip_spaces(text, text.len() - next.len());
    if let Some(marker) = COMMENT_MARKERS.iter().find(|m| text[j..].starts_with(**m)) {
        j += marker.len();
    }
    skip_spaces(text, j)
}

fn skip_spaces(text: &str, i: usize) -> usize {
    let rest = &text[i..];
    i + (rest.len() - rest.trim_start_matches([' ', '\t']).len())
}

/// Whether a bare section sign at `at` cites the module's spec: it follows `(`, starts the
/// comment, or follows one of `BARE_LEAD_WORDS`.
fn bare_lead(text: &str, at: usize) -> bool {
    let line_start = text[..at].rfind('\n').map_or(0, |p| p + 1);
    let before = &text[line_start..at];
    if !before.is_empty() && !before.ends_with([' ', '\t', '(']) {
        return false;
    }
    let t = before.trim_end();
    if t.ends_with('(') {
        return true;
    }
    let lead = t.trim_start();
    let lead = COMMENT_MARKERS
        .iter()
        .find_map(|m| lead.strip_prefix(m))
        .unwrap_or(lead);
    if lead.trim().is_empty() {
        return true;
    }
    let word_start = t
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_alphabetic())
        .last()
        .map_or(t.len(), |(i, _)| i);
    let word = &t[word_start..];
    let bounded = !t[..word_start]
        .chars()
        .next_back()
        .is_some_and(char::is_alphanumeric);
    bounded && BARE_LEAD_WORDS.contains(&word)
}

/// Parses the list that starts with the section sign at `i`, marking every sign of it
/// consumed and, when `spec` is known, recording its sections.
fn parse_list(
    text: &str,
    mut i: usize,
    spec: Option<&'static str>,
    bare: bool,
    consumed: &mut BTreeSet<usize>,
    out: &mut Vec<Citation>,
) {
    loop {
        consumed.insert(i);
        let line = text[..i].matches('\n').count() + 1;
        let Some((first, mut j)) = section_number(text, i + SIGN.len_utf8()) else {
            return;
        };
        let mut numbers = vec![first];
        if let Some(dash) = ["\u{2013}", "\u{2014}", "-"]
            .into_iter()
            .find(|d| text[j..].starts_with(d))
        {
            let mut k = j + dash.len();
            let sign = text[k..].starts_with(SIGN).then_some(k);
            if sign.is_some() {
                k += SIGN.len_utf8();
            }
            if let Some((last, after)) = section_number(text, k) {
                consumed.extend(sign);
                numbers.extend(between(&numbers[0], &last));
                numbers.push(last);
                j = after;
            }
        }
        let (labels, after_labels) = quoted_labels(text, j);
        j = after_labels;
        if let Some(spec) = spec {
            out.extend(numbers.into_iter().map(|section| Citation {
                line,
                spec,
                section,
                labels: labels.clone(),
                bare,
            }));
        }
        let k = skip_spaces(text, j);
        let rest = &text[k..];
        let sep = [",", ";", "/", "and ", "or "]
            .into_iter()
            .find(|s| rest.starts_with(s));
        let Some(sep) = sep else {
            return;
        };
        let next = skip_gap(text, k + sep.len());
        if !text[next..].starts_with(SIGN) {
            return;
        }
        i = next;
    }
}

/// `13.4` at byte `i`: digits, then `.digits` groups; a trailing full stop is not taken.
fn section_number(text: &str, i: usize) -> Option<(String, usize)> {
    let digits = |from: usize| text[from..].bytes().take_while(u8::is_ascii_digit).count();
    let n = digits(i);
    if n == 0 {
        return None;
    }
    let mut end = i + n;
    while text[end..].starts_with('.') {
        let more = digits(end + 1);
        if more == 0 {
            break;
        }
        end += 1 + more;
    }
    Some((text[i..end].to_owned(), end))
}

/// The whole sections strictly between `first` and `last` of a range such as 3–5.
fn between(first: &str, last: &str) -> Vec<String> {
    match (first.parse::<u32>(), last.parse::<u32>()) {
        (Ok(a), Ok(b)) if a < b && b - a < 50 => (a + 1..b).map(|n| n.to_string()).collect(),
        _ => Vec::new(),
    }
}

/// Quoted names right after a section number (`"Sealed box", "Client-info JSON"`), a list
/// that may wrap onto the next comment line after a comma.
fn quoted_labels(text: &str, i: usize) -> (Vec<String>, usize) {
    let mut labels = Vec::new();
    let mut end = i;
    loop {
        let start = if labels.is_empty() {
            skip_spaces(text, end)
        } else {
            let k = skip_spaces(text, end);
            if !text[k..].starts_with(',') {
                break;
            }
            skip_gap(text, k + 1)
        };
        let Some(rest) = text[start..].strip_prefix('"') else {
            break;
        };
        let Some(close) = rest.find(['"', '\n']) else {
            break;
        };
        let label = &rest[..close];
        if !rest[close..].starts_with('"') || label.is_empty() || label.len() > MAX_LABEL {
            break;
        }
        labels.push(label.to_owned());
        end = start + 1 + close + 1;
    }
    (labels, end)
}
