//! Architecture checks in the spirit of rust-analyzer's tidy tests: they read the
//! source as text and fail when a module reaches for what ARCHITECTURE.md says it
//! must not. Each rule here is an invariant stated there; change both together.
//!
//! Production code only: comments, string literals and the `#[cfg(test)]` module
//! at the end of a file are left out (tests may open a store anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One source file: its path under `src/`, its code with comments and strings
/// blanked, and its string literals.
struct Source {
    path: String,
    code: String,
    strings: Vec<String>,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).unwrap();
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => &text[..i],
                None => &text[..],
            };
            let (code, strings) = split(text);
            Source {
                path: f.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/"),
                code,
                strings,
            }
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Code with comments and string/char literals replaced by spaces, and the literals.
fn split(src: &str) -> (String, Vec<String>) {
    let b = src.as_bytes();
    let mut code = String::with_capacity(src.len());
    let mut strings = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) && !ident_before(b, i) {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&b'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                code.push(c as char);
                i += 1;
                continue;
            }
            let start = j + 1;
            let close: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
            let end = src[start..].find(&close).map_or(b.len(), |k| start + k);
            strings.push(src[start..end].to_string());
            code.push(' ');
            i = (end + close.len()).min(b.len());
        } else if c == b'"' {
            let start = i + 1;
            let mut j = start;
            while j < b.len() && b[j] != b'"' {
                if b[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            strings.push(src[start..j.min(b.len())].to_string());
            code.push(' ');
            i = j + 1;
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\'') or a lifetime ('a).
            if b.get(i + 1) == Some(&b'\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != b'\'' {
                    j += 1;
                }
                i = j + 1;
                code.push(' ');
            } else {
                let ch_len = src[i + 1..].chars().next().map_or(1, char::len_utf8);
                if b.get(i + 1 + ch_len) == Some(&b'\'') {
                    i += 2 + ch_len;
                    code.push(' ');
                } else {
                    code.push('\'');
                    i += 1;
                }
            }
        } else {
            let ch = src[i..].chars().next().unwrap();
            code.push(ch);
            i += ch.len_utf8();
        }
    }
    (code, strings)
}

fn ident_before(b: &[u8], i: usize) -> bool {
    i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')
}

/// Whether `code` uses the path `name::` as a crate of its own (not `x::name::`).
fn uses_crate(code: &str, name: &str) -> bool {
    let needle = format!("{name}::");
    code.match_indices(&needle).any(|(i, _)| {
        let before = code[..i].chars().next_back();
        !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
    })
}

/// The top-level module a file belongs to (`node` for `node/crud.rs`, `config` for `config.rs`).
fn top(path: &str) -> &str {
    path.split('/').next().unwrap().trim_end_matches(".rs")
}

/// The top-level modules `code` reaches with `crate::...` (grouped imports included).
fn imports(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for part in group.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&name) {
                    out.insert(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if modules.contains(&name) {
                out.insert(name);
            }
        }
    }
    out
}

fn module_graph(all: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeSet<String> = all
        .iter()
        .map(|s| top(&s.path).to_string())
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for s in all {
        let from = top(&s.path);
        if from == "lib" || from == "main" {
            continue;
        }
        let entry = graph.entry(from.to_string()).or_default();
        for to in imports(&s.code, &modules) {
            if to != from {
                entry.insert(to);
            }
        }
    }
    graph
}

/// A cycle through `start`, if there is one.
fn cycle_from(graph: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in graph.get(&at).into_iter().flatten() {
            if next == start {
                let mut cycle = path.clone();
                cycle.push(start.to_string());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut p = path.clone();
                p.push(next.clone());
                stack.push((next.clone(), p));
            }
        }
    }
    None
}

#[test]
fn no_module_cycles() {
    let all = sources();
    let graph = module_graph(&all);
    assert!(graph.len() > 10, "the source tree was not read: {graph:?}");
    // The check can fail: fhir must not depend on what depends on it.
    assert!(graph["fhirpath"].contains("fhir"), "{graph:?}");
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_from(&graph, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

/// `(where a rule applies, what it forbids, why)`; `allowed` paths are exempt.
struct Rule {
    what: &'static str,
    applies: fn(&str) -> bool,
    forbidden: fn(&Source) -> Option<String>,
}

fn rules() -> Vec<Rule> {
    vec![
        Rule {
            what: "http/ builds its app from what startup opened: it never names a store backend",
            applies: |p| p.starts_with("http/"),
            forbidden: |s| {
                ["store::sqlite", "store::postgres", "SqliteStore", "PostgresStore"]
                    .into_iter()
                    .find(|n| s.code.contains(n))
                    .map(str::to_string)
            },
        },
        Rule {
            what: "the hub holds no patient data: hub/ never imports node/",
            applies: |p| p.starts_with("hub/"),
            forbidden: |s| s.code.contains("crate::node").then(|| "crate::node".into()),
        },
        Rule {
            what: "only startup.rs (the composition root) and store/ open stores",
            applies: |p| p != "startup.rs" && !p.starts_with("store/"),
            forbidden: |s| {
                ["SqliteStore::open", "PostgresStore::open"]
                    .into_iter()
                    .find(|n| s.code.contains(n))
                    .map(str::to_string)
            },
        },
        Rule {
            what: "only store/ knows SQL and the database drivers",
            applies: |p| !p.starts_with("store/"),
            forbidden: |s| {
                if uses_crate(&s.code, "rusqlite") {
                    return Some("rusqlite".into());
                }
                if uses_crate(&s.code, "postgres") {
                    return Some("postgres".into());
                }
                let sql = [
                    "SELECT ",
                    "INSERT INTO",
                    "DELETE FROM",
                    "CREATE TABLE",
                    "CREATE INDEX",
                    "DROP SCHEMA",
                    "DROP TABLE",
                ];
                s.strings.iter().find_map(|lit| {
                    sql.iter()
                        .find(|k| lit.contains(*k))
                        .map(|k| format!("SQL `{k}` in \"{lit}\""))
                })
            },
        },
        Rule {
            what: "only the hub's federation client and the CLI make HTTP requests (reqwest)",
            applies: |p| !p.starts_with("hub/") && !p.starts_with("cli/"),
            forbidden: |s| uses_crate(&s.code, "reqwest").then(|| "reqwest".into()),
        },
        Rule {
            what: "only http/ knows actix-web",
            applies: |p| !p.starts_with("http/"),
            forbidden: |s| {
                (uses_crate(&s.code, "actix_web") || uses_crate(&s.code, "actix_tls")).then(|| "actix".into())
            },
        },
        Rule {
            what: "only fhir/model.rs touches fhirbolt",
            applies: |p| p != "fhir/model.rs",
            forbidden: |s| uses_crate(&s.code, "fhirbolt").then(|| "fhirbolt".into()),
        },
        Rule {
            what: "only the error table (error.rs) and the HTTP layer decide HTTP statuses",
            applies: |p| p != "error.rs" && !p.starts_with("http/") && !p.starts_with("cli/") && !p.starts_with("hub/"),
            forbidden: |s| s.code.contains("StatusCode::").then(|| "StatusCode".into()),
        },
    ]
}

#[test]
fn modules_import_only_what_the_architecture_allows() {
    let all = sources();
    let mut broken = Vec::new();
    for rule in rules() {
        for s in all.iter().filter(|s| (rule.applies)(&s.path)) {
            if let Some(found) = (rule.forbidden)(s) {
                broken.push(format!("{}: {} ({found})", s.path, rule.what));
            }
        }
    }
    assert!(broken.is_empty(), "architecture rules broken:\n{}", broken.join("\n"));
}

#[test]
fn the_rules_can_fail() {
    // Each rule, fed a file that breaks it, says so.
    let fake = |path: &str, text: &str| {
        let (code, strings) = split(text);
        Source {
            path: path.into(),
            code,
            strings,
        }
    };
    let cases = [
        fake("http/x.rs", "use crate::store::sqlite::SqliteStore;"),
        fake("hub/x.rs", "use crate::node::FhirService;"),
        fake("feeds/x.rs", "let s = SqliteStore::open(p);"),
        fake("cli/x.rs", r#"c.batch_execute("DROP SCHEMA x CASCADE");"#),
        fake("node/x.rs", "let c = reqwest::Client::new();"),
        fake("node/x.rs", "use actix_web::HttpResponse;"),
        fake("validation/x.rs", "use fhirbolt::model;"),
        fake("node/x.rs", "let s = actix_web::http::StatusCode::OK;"),
    ];
    let rules = rules();
    for (i, case) in cases.iter().enumerate() {
        let caught = rules
            .iter()
            .any(|r| (r.applies)(&case.path) && (r.forbidden)(case).is_some());
        assert!(caught, "case {i} ({}) was not caught", case.path);
    }
    // Comments and strings do not count as imports.
    let quiet = fake("hub/x.rs", "// crate::node is not used here\nlet s = \"crate::node\";");
    assert!(!quiet.code.contains("crate::node"));
    // A cycle is found.
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("a".into());
    assert!(cycle_from(&g, "a").is_some());
}
