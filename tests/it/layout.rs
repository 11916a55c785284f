//! The module layout's one rule that a compiler does not check: imports between the crate's
//! top-level modules run one way (no cycles), so each module can be read, tested and replaced
//! knowing only what it depends on. Read from the source: every `crate::…` path outside
//! comments, including grouped `use crate::{a, b::c}` imports, is an edge from the module of
//! the file to the module it names; paths inside one module (a folder's files, `super::`) are
//! not edges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level module a source file belongs to: `src/hub.rs` → `hub`,
/// `src/session/timeline.rs` → `session`; `lib.rs` and `main.rs` are the root.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_owned())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module names a line of code refers to through `crate::`.
fn referenced(line: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // `crate::{a, b::{c, d}, e}`: the first name of each item at depth 0.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && !c.is_whitespace() => {
                        found.push(ident(&group[i..]));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.push(ident(after));
        }
        rest = after;
    }
    found.retain(|name| !name.is_empty());
    found
}

/// Every edge between two different top-level modules, with where it was seen.
fn module_edges() -> BTreeMap<(String, String), String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(&src, f)).collect();
    let mut edges = BTreeMap::new();
    for file in &files {
        let Some(from) = module_of(&src, file) else {
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for to in referenced(line) {
                if to != from && modules.contains(&to) {
                    let at = format!("{}:{}", file.display(), n + 1);
                    edges.entry((from.clone(), to)).or_insert(at);
                }
            }
        }
    }
    edges
}

/// A cycle in the graph, if there is one (depth-first search for a back edge).
fn find_cycle(edges: &BTreeMap<(String, String), String>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges.keys() {
        next.entry(from).or_default().push(to);
    }
    fn visit<'a>(
        node: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[start..].iter().map(|n| n.to_string()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node);
        for to in next.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(to, next, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    for node in next.keys() {
        if let Some(cycle) = visit(node, &next, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn imports_between_modules_run_one_way() {
    let edges = module_edges();
    assert!(
        edges.len() > 20,
        "the scan found too few imports to be reading the code: {edges:?}"
    );
    if let Some(cycle) = find_cycle(&edges) {
        let steps: Vec<String> = cycle
            .windows(2)
            .map(|pair| {
                let at = &edges[&(pair[0].clone(), pair[1].clone())];
                format!("{} -> {} ({at})", pair[0], pair[1])
            })
            .collect();
        panic!("modules import each other:\n  {}", steps.join("\n  "));
    }
}

#[test]
fn the_scan_sees_grouped_imports_and_finds_a_cycle() {
    assert_eq!(
        referenced("use crate::{hub::{Hub, X}, ids, race::Frame};"),
        ["hub", "ids", "race"]
    );
    assert_eq!(
        referenced("let x = crate::clock::wall_us() + crate::ids::hex(&b);"),
        ["clock", "ids"]
    );
    let edge = |a: &str, b: &str| ((a.to_owned(), b.to_owned()), String::new());
    let acyclic = BTreeMap::from([edge("a", "b"), edge("b", "c"), edge("a", "c")]);
    assert_eq!(find_cycle(&acyclic), None);
    let cyclic = BTreeMap::from([edge("a", "b"), edge("b", "c"), edge("c", "a")]);
    assert_eq!(
        find_cycle(&cyclic),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
}
