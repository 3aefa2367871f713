//! The engine's modules do not import each other both ways (an import cycle), at the top
//! level (`router`, `store`, …) or one level down (`http::metrics`, `store::apply`, …).
//! Reads the sources as text, as `benches/tools/import_cycles.py` does: `crate::a::b`
//! paths and `super::` imports outside comments and `#[cfg(test)]` modules.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// Every module of `engine/src` (`a::b`), with its source up to its tests.
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut inner = prefix.to_vec();
            inner.push(name);
            modules(&path, &inner, out);
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") || name == "lib" || name == "main" {
            continue;
        }
        let mut parts = prefix.to_vec();
        if name != "mod" {
            parts.push(name);
        }
        let text = fs::read_to_string(&path).unwrap();
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap()
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        out.insert(parts.join("::"), code);
    }
}

/// The module paths named in `code` that are modules: `crate::x::y` and `super::x`.
fn imports(module: &str, code: &str, known: &BTreeSet<String>) -> BTreeSet<String> {
    let parent: Vec<&str> = module.split("::").collect();
    let parent = parent[..parent.len() - 1].join("::");
    let words = |rest: &str| -> Vec<String> {
        rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .next()
            .unwrap_or("")
            .split("::")
            .map(str::to_owned)
            .collect()
    };
    let mut found = BTreeSet::new();
    for (marker, base) in [("crate::", String::new()), ("super::", parent)] {
        for (at, _) in code.match_indices(marker) {
            let path = words(&code[at + marker.len()..]);
            for len in (1..=path.len()).rev() {
                let mut candidate = base.clone();
                if !candidate.is_empty() {
                    candidate.push_str("::");
                }
                candidate.push_str(&path[..len].join("::"));
                if known.contains(&candidate) {
                    found.insert(candidate);
                    break;
                }
            }
        }
        // `use super::{a, b::c}` and `use crate::{a, b}`: each name in the braces.
        for (at, _) in code.match_indices(&format!("use {marker}{{")) {
            let rest = &code[at + marker.len() + 5..];
            let inside = &rest[..rest.find("};").unwrap_or(rest.len())];
            for name in inside.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                let candidate = if base.is_empty() {
                    name.to_owned()
                } else {
                    format!("{base}::{name}")
                };
                if known.contains(&candidate) {
                    found.insert(candidate);
                }
            }
        }
    }
    found
}

fn at_depth(module: &str, depth: usize) -> String {
    module
        .split("::")
        .take(depth)
        .collect::<Vec<_>>()
        .join("::")
}

#[test]
fn no_two_modules_import_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = BTreeMap::new();
    modules(&src, &[], &mut sources);
    let known: BTreeSet<String> = sources.keys().cloned().collect();
    assert!(
        known.contains("shard::direct") && known.contains("store"),
        "{known:?}"
    );
    for depth in [1, 2] {
        let mut edges: BTreeSet<(String, String)> = BTreeSet::new();
        for (module, code) in &sources {
            for target in imports(module, code, &known) {
                let (a, b) = (at_depth(module, depth), at_depth(&target, depth));
                let nested = a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"));
                if a != b && !nested {
                    edges.insert((a, b));
                }
            }
        }
        let cycles: Vec<_> = edges
            .iter()
            .filter(|(a, b)| a < b && edges.contains(&(b.clone(), a.clone())))
            .collect();
        assert!(
            cycles.is_empty(),
            "modules that import each other: {cycles:?}"
        );
    }
}
