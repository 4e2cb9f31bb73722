//! The shape of the code, checked on its source: no import circle in any crate of the
//! workspace, between files or between top-level modules (a folder counts as one), and no
//! harness module that imports from a layer above its own (the order in
//! `harness/src/lib.rs`). An import is a `crate::` path in a file's code outside
//! `#[cfg(test)]`, or a `use` of `self::`, `super::` or a child module (a re-export counts),
//! credited to the longest module it names.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The harness's layers, bottom first: a module may import from its own layer and below.
const HARNESS_LAYERS: &[&str] = &[
    "error", "build", "trial", "store", "verdict", "history", "session", "bisect", "output", "cmd",
];

/// The workspace's crates whose modules are checked for circles.
const CRATES: &[&str] = &[
    "harness/src",
    "broker-under-test/src",
    "bench-cli/src",
    "bench-cli/schema/src",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every `.rs` file under `dir`, with its module path (`a::b` for `a/b.rs` and `a/b/mod.rs`;
/// the crate roots are left out).
fn modules(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(dir).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
                continue;
            }
            let code = fs::read_to_string(&path).unwrap();
            // Test modules may reach anywhere: only the code they test counts.
            let code = code.split("#[cfg(test)]").next().unwrap_or("").to_owned();
            out.insert(parts.join("::"), code);
        }
    }
    out
}

/// The paths a module's code names after `crate::`, each as its segments (a `crate::{a, b}`
/// group gives one path per item).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().last();
        rest = &rest[at + "crate::".len()..];
        // `chronik_harness::` or `my_crate::` are other crates, not this one.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let segs = segments(item.trim());
                if !segs.is_empty() {
                    paths.push(segs);
                }
            }
        } else {
            paths.push(segments(rest));
        }
    }
    paths
}

fn segments(text: &str) -> Vec<String> {
    let mut segs = Vec::new();
    let mut rest = text;
    loop {
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if end == 0 {
            break;
        }
        segs.push(rest[..end].to_owned());
        match rest[end..].strip_prefix("::") {
            Some(next) => rest = next,
            None => break,
        }
    }
    segs
}

/// The module paths a module's `use` statements name relative to it: `self::`, `super::`, or
/// a child module's name (`pub use state::Replication` in `replication` names
/// `replication::state`).
fn relative_paths(module: &str, code: &str, known: &BTreeSet<&String>) -> Vec<Vec<String>> {
    let here: Vec<String> = module.split("::").map(str::to_owned).collect();
    let mut paths = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        let Some(rest) = ["use ", "pub use ", "pub(crate) use "]
            .iter()
            .find_map(|p| line.strip_prefix(p))
        else {
            continue;
        };
        let segs = segments(rest);
        let Some(first) = segs.first() else { continue };
        let path = match first.as_str() {
            "self" => [here.clone(), segs[1..].to_vec()].concat(),
            "super" => [here[..here.len() - 1].to_vec(), segs[1..].to_vec()].concat(),
            _ => {
                let child = [here.clone(), vec![first.clone()]].concat();
                if !known.contains(&child.join("::")) {
                    continue;
                }
                [here.clone(), segs].concat()
            }
        };
        paths.push(path);
    }
    paths
}

/// Module -> the other modules it imports from; with `top`, every module counts as its
/// top-level module (a folder is one node).
fn graph(dir: &Path, top: bool) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(dir);
    let known: BTreeSet<&String> = mods.keys().collect();
    let node = |m: &str| {
        if top {
            m.split("::").next().unwrap().to_owned()
        } else {
            m.to_owned()
        }
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, code) in &mods {
        let from = node(name);
        let mut to = BTreeSet::new();
        for path in crate_paths(code)
            .into_iter()
            .chain(relative_paths(name, code, &known))
        {
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].join("::"))
                .find(|m| known.contains(m));
            if let Some(target) = target.map(|t| node(&t)).filter(|t| *t != from) {
                to.insert(target);
            }
        }
        edges.entry(from).or_default().extend(to);
    }
    let targets: Vec<String> = edges.values().flatten().cloned().collect();
    for t in targets {
        edges.entry(t).or_default();
    }
    edges
}

/// The strongly connected components with more than one module (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, i);
        s.low.insert(v, i);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in &s.edges[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

#[test]
fn no_crate_of_the_workspace_has_an_import_circle() {
    let mut found = Vec::new();
    for krate in CRATES {
        for top in [false, true] {
            let edges = graph(&workspace().join(krate), top);
            assert!(edges.len() > 2, "{krate}: modules found: {edges:?}");
            for circle in circles(&edges) {
                found.push(format!("{krate}: {}", circle.join(" <-> ")));
            }
        }
    }
    assert!(found.is_empty(), "import circles: {found:#?}");
}

#[test]
fn no_harness_module_imports_from_a_layer_above_its_own() {
    let rank = |module: &str| {
        let top = module.split("::").next().unwrap();
        HARNESS_LAYERS
            .iter()
            .position(|l| *l == top)
            .unwrap_or_else(|| panic!("{module} is in no layer of HARNESS_LAYERS"))
    };
    let edges = graph(&workspace().join("harness/src"), false);
    let mut upward = Vec::new();
    for (from, to) in &edges {
        for target in to {
            if rank(target) > rank(from) {
                upward.push(format!("{from} -> {target}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports from a higher layer: {upward:#?}"
    );
}

/// The checker itself: it sees a circle through a group import and a parent module, and
/// none in a chain.
#[test]
fn the_circle_finder_finds_circles_and_only_circles() {
    let edges = |pairs: &[(&str, &[&str])]| -> BTreeMap<String, BTreeSet<String>> {
        pairs
            .iter()
            .map(|(from, to)| (from.to_string(), to.iter().map(|t| t.to_string()).collect()))
            .collect()
    };
    let chain = edges(&[("a", &["b"]), ("b", &["c"]), ("c", &[])]);
    assert!(circles(&chain).is_empty());
    let loop3 = edges(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])]);
    assert_eq!(circles(&loop3), vec![vec!["a", "b", "c"]]);
    assert_eq!(
        crate_paths("use crate::{wal::storage, topics::Topics};\nlet x = crate::a::b(1);"),
        vec![
            vec!["wal".to_owned(), "storage".to_owned()],
            vec!["topics".to_owned(), "Topics".to_owned()],
            vec!["a".to_owned(), "b".to_owned()],
        ]
    );
    assert!(crate_paths("chronik_harness::cmd::exit").is_empty());
    let known = ["replication".to_owned(), "replication::state".to_owned()];
    let known: BTreeSet<&String> = known.iter().collect();
    assert_eq!(
        relative_paths(
            "replication",
            "pub use state::Replication;\nuse std::fs;",
            &known
        ),
        vec![vec!["replication", "state", "Replication"]]
    );
}
