//! The adapters import one way only (`src/adapters/mod.rs`): the Redis side, then the
//! raft thread, then the network, then the disk, then the shared leaves; the core imports
//! no adapter. Inside a group (the Redis side too), files import each other without a
//! circle. This test reads the sources, so a new import that breaks the order fails here,
//! naming the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Groups from the top down; a file may import only its own group or one further down.
/// `entry` is `ffi::entry`, the module entry point Redis calls first: it registers the
/// Redis side's commands.
const GROUPS: &[&str] = &["entry", "redis", "raft_thread", "network", "disk", "shared"];
/// Modules directly under `src/adapters` that any group may use; they import no adapter
/// outside themselves.
const SHARED: &[&str] = &["counters", "queue", "ffi"];

/// One module of the adapters: its group and its name inside the group
/// (`network::transport` is ("network", "transport"); `ffi::data` is ("shared", "ffi")).
type Module = (String, String);

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

fn module_of_file(adapters: &Path, file: &Path) -> Module {
    let parts: Vec<String> = file
        .strip_prefix(adapters)
        .unwrap()
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    match parts.as_slice() {
        [name] if SHARED.contains(&name.as_str()) || name == "mod" => {
            ("shared".into(), name.clone())
        }
        [ffi, entry] if ffi == "ffi" && entry == "entry" => ("entry".into(), "ffi::entry".into()),
        [first, ..] if SHARED.contains(&first.as_str()) => ("shared".into(), first.clone()),
        [group, name] if GROUPS.contains(&group.as_str()) => (group.clone(), name.clone()),
        _ => panic!("{}: not in a known adapter group", file.display()),
    }
}

/// The module a path after `crate::adapters::` names, e.g. `network::transport::X`.
fn module_of_path(path: &str) -> Option<Module> {
    let mut parts = path.split("::");
    let first = parts.next()?;
    if path.starts_with("ffi::entry") {
        return Some(("entry".into(), "ffi::entry".into()));
    }
    if SHARED.contains(&first) {
        return Some(("shared".into(), first.into()));
    }
    let second = parts.next()?;
    GROUPS
        .contains(&first)
        .then(|| (first.into(), second.trim_start_matches('{').into()))
}

fn rank(group: &str) -> usize {
    GROUPS.iter().position(|g| *g == group).unwrap()
}

/// Every `crate::adapters::...` path in a source, with its line number. Grouped imports
/// (`crate::adapters::redis::{a, b}`) name each module inside the braces.
fn adapter_paths(source: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let joined = source;
    let marker = "crate::adapters::";
    let mut at = 0;
    while let Some(offset) = joined[at..].find(marker) {
        let start = at + offset + marker.len();
        let line = joined[..start].matches('\n').count() + 1;
        let rest = &joined[start..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let path = rest[..end].trim_end_matches(':').to_string();
        if rest[end..].starts_with('{') && path.is_empty() {
            // `crate::adapters::{redis::x, disk::y}` would hide the order: keep it explicit.
            panic!("line {line}: one import names modules of several adapter groups");
        }
        if rest[end..].starts_with('{') {
            if module_of_path(&path).is_some() {
                found.push((line, path.clone()));
            }
            let close = rest[end..].find('}').unwrap() + end;
            for name in rest[end + 1..close].split(',') {
                let name = name.trim().split("::").next().unwrap_or("").trim();
                if !name.is_empty() && name != "self" {
                    found.push((line, format!("{path}::{name}")));
                }
            }
        } else {
            found.push((line, path));
        }
        at = start;
    }
    found
}

struct Graph {
    /// For each module, the modules it imports, with one place each import is made.
    edges: BTreeMap<Module, BTreeMap<Module, String>>,
}

fn read_graph() -> Graph {
    let adapters = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/adapters");
    let mut files = Vec::new();
    rust_files(&adapters, &mut files);
    let mut edges: BTreeMap<Module, BTreeMap<Module, String>> = BTreeMap::new();
    for file in files {
        let from = module_of_file(&adapters, &file);
        let source = std::fs::read_to_string(&file).unwrap();
        if from.0 != "entry" {
            // Through `use crate::adapters::ffi;` the entry point would hide as `ffi::entry`.
            assert!(
                !source.contains("ffi::entry"),
                "{}: only Redis calls the entry point",
                file.display()
            );
        }
        if from.0 != "shared" && from.0 != "entry" {
            // Imports spelled `super::x` would be invisible to this test.
            let hidden = source
                .lines()
                .any(|line| line.contains("super::") && !line.contains("use super::*;"));
            assert!(
                !hidden,
                "{}: name adapters by `crate::adapters::` paths, not `super::`",
                file.display()
            );
        }
        let imports = edges.entry(from.clone()).or_default();
        for (line, path) in adapter_paths(&source) {
            let to = module_of_path(&path)
                .unwrap_or_else(|| panic!("{}:{line}: unknown path {path}", file.display()));
            if to != from {
                imports
                    .entry(to)
                    .or_insert_with(|| format!("{}:{line}", file.display()));
            }
        }
    }
    Graph { edges }
}

#[test]
fn adapters_import_down_the_groups_only() {
    let graph = read_graph();
    let mut wrong = Vec::new();
    for (from, imports) in &graph.edges {
        for (to, place) in imports {
            let upward = rank(&to.0) < rank(&from.0);
            let shared_reaching_out = from.0 == "shared" && to.0 != "shared";
            if upward || shared_reaching_out {
                wrong.push(format!(
                    "{place}: {}::{} imports {}::{}",
                    from.0, from.1, to.0, to.1
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the order:\n{}",
        wrong.join("\n")
    );
    // The check sees the real files: the driver imports the network and the disk, and
    // the entry point the Redis side.
    let entry = &graph.edges[&("entry".to_string(), "ffi::entry".to_string())];
    assert!(entry.contains_key(&("redis".to_string(), "module".to_string())));
    let driver = &graph.edges[&("raft_thread".to_string(), "driver".to_string())];
    assert!(driver.contains_key(&("network".to_string(), "transport".to_string())));
    assert!(driver.contains_key(&("disk".to_string(), "logio".to_string())));
}

#[test]
fn the_core_imports_no_adapter() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    rust_files(&core, &mut files);
    assert!(files.len() > 10, "the core's files were not found");
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        assert!(
            !source.contains("crate::adapters"),
            "{} imports an adapter",
            file.display()
        );
    }
}

/// Circles among the files of one group, found by depth-first search.
fn circles(graph: &Graph, group: &str) -> Vec<Vec<Module>> {
    let nodes: BTreeSet<&Module> = graph.edges.keys().filter(|m| m.0 == group).collect();
    let mut found = Vec::new();
    let mut done: BTreeSet<&Module> = BTreeSet::new();
    fn visit<'a>(
        graph: &'a Graph,
        node: &'a Module,
        group: &str,
        stack: &mut Vec<&'a Module>,
        done: &mut BTreeSet<&'a Module>,
        found: &mut Vec<Vec<Module>>,
    ) {
        if let Some(at) = stack.iter().position(|m| *m == node) {
            found.push(stack[at..].iter().map(|m| (*m).clone()).collect());
            return;
        }
        if done.contains(node) {
            return;
        }
        stack.push(node);
        for next in graph.edges.get(node).into_iter().flat_map(|e| e.keys()) {
            if next.0 == group {
                visit(graph, next, group, stack, done, found);
            }
        }
        stack.pop();
        done.insert(node);
    }
    for node in nodes {
        visit(graph, node, group, &mut Vec::new(), &mut done, &mut found);
    }
    found
}

#[test]
fn no_group_has_an_import_circle() {
    let graph = read_graph();
    for group in GROUPS {
        let found = circles(&graph, group);
        assert!(found.is_empty(), "import circles in {group}: {found:?}");
    }
}
