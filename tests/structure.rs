//! The crate's shape, as the README's "Architecture" states it: no import
//! cycle between sibling modules at any level, and the layers call only
//! down. Reads `src/` as text: every path a module names (`use crate::..`,
//! `use super::..`, grouped uses, and `crate::a::b` / `super::x` in code)
//! counts as a use of the deepest module it reaches. Test code (`tests.rs`,
//! `fakes.rs`, `rail_tests.rs`, `#[cfg(test)] mod .. {}`) is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

/// The layers, top to bottom, by top-level module; a module uses only its
/// own layer and those below. Modules not listed (`error`, `interrupt`,
/// `phases`, ...) are small helpers any layer may use.
const LAYERS: &[&[&str]] = &[
    &["cli", "commands"],
    &["run"],
    &["report", "rehearsal", "lint", "reference", "init"],
    &["script"],
    &["ops", "journal", "lock"],
    &["config", "db", "nodes"],
    &["output"],
];

/// Test-only modules (`#[cfg(test)]`), as files (`fakes.rs`) or folders
/// (`rail_tests/`): their imports are not the program's structure.
const TEST_MODULES: &[&str] = &["tests", "fakes", "rail_tests"];

/// Whether `file` (under `src`) is, or sits in, a test-only module.
fn is_test_module(src: &Path, file: &Path) -> bool {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    rel.components()
        .any(|c| TEST_MODULES.contains(&c.as_os_str().to_string_lossy().as_ref()))
}

/// Parents whose children still import each other in a cycle, known and to
/// be fixed by whoever works there (listed so that no new cycle comes in
/// meanwhile; the test fails once a listed cycle is gone, to drop it here).
/// None today.
const KNOWN_CYCLES: &[&str] = &[];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rs_files(&path, out);
        } else if path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b.rs` -> [a, b]; `src/a/mod.rs` -> [a]; `src/lib.rs` -> [].
fn module_of(src: &Path, path: &Path) -> Module {
    let rel = path
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut m: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if m.last().is_some_and(|l| l == "mod" || l == "lib") {
        m.pop();
    }
    m
}

/// The text with comments blanked and string and char literals emptied.
fn strip(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let (mut out, mut i) = (String::new(), 0);
    let at = |i: usize, s: &str| {
        s.chars()
            .enumerate()
            .all(|(k, ch)| c.get(i + k) == Some(&ch))
    };
    while i < c.len() {
        let word_before = i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_');
        if at(i, "//") {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if at(i, "/*") {
            let (mut depth, mut j) = (1, i + 2);
            while j < c.len() && depth > 0 {
                if at(j, "/*") {
                    depth += 1;
                    j += 2;
                } else if at(j, "*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            i = j;
        } else if c[i] == 'r' && !word_before && (at(i + 1, "\"") || at(i + 1, "#")) {
            let mut hashes = 0;
            while c.get(i + 1 + hashes) == Some(&'#') {
                hashes += 1;
            }
            if c.get(i + 1 + hashes) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            let end: String = std::iter::once('"')
                .chain("#".repeat(hashes).chars())
                .collect();
            let mut j = i + 2 + hashes;
            while j < c.len() && !at(j, &end) {
                j += 1;
            }
            i = j + end.len();
            out.push_str("\"\"");
        } else if c[i] == '"' {
            let mut j = i + 1;
            while j < c.len() && c[j] != '"' {
                j += if c[j] == '\\' { 2 } else { 1 };
            }
            i = j + 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            i += 3;
            out.push_str("' '");
        } else if c[i] == '\'' && c.get(i + 1) == Some(&'\\') {
            let mut j = i + 2;
            while j < c.len() && c[j] != '\'' {
                j += 1;
            }
            i = j + 1;
            out.push_str("' '");
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// The text without its `#[cfg(test)] mod name { .. }` blocks.
fn drop_test_mods(mut text: String) -> String {
    while let Some(start) = text.find("#[cfg(test)]") {
        let after = &text[start + "#[cfg(test)]".len()..];
        let trimmed = after.trim_start();
        let is_mod = trimmed.starts_with("mod ") || trimmed.starts_with("pub mod ");
        let open = trimmed.find(['{', ';']).filter(|_| is_mod);
        let Some(open) = open.filter(|&o| trimmed.as_bytes()[o] == b'{') else {
            // An attribute on something else: keep it, look further.
            text.replace_range(start..start + 2, "  ");
            continue;
        };
        let body = start + (text.len() - start - trimmed.len()) + open + 1;
        let (mut depth, mut j) = (1, body);
        let bytes = text.as_bytes();
        while j < bytes.len() && depth > 0 {
            match bytes[j] {
                b'{' => depth += 1,
                b'}' => depth -= 1,
                _ => {}
            }
            j += 1;
        }
        text.replace_range(start..j, "");
    }
    text
}

/// `a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e` (`a as b` -> `a@b`).
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.replace(" as ", "@");
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree];
    };
    let (prefix, inner) = (
        &tree[..open],
        &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())],
    );
    let (mut parts, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for ch in inner.chars() {
        match ch {
            ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
            '{' | '}' => {
                depth += if ch == '{' { 1 } else { -1 };
                cur.push(ch);
            }
            _ => cur.push(ch),
        }
    }
    parts.push(cur);
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&format!("{prefix}{p}")))
        .collect()
}

/// The paths a text names from `crate`, `super` or `self`.
fn named_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut code = String::new();
    let mut rest = text;
    while let Some(u) = find_word(rest, "use") {
        code.push_str(&rest[..u]);
        let after = &rest[u + 3..];
        let Some(end) = after.find(';') else { break };
        out.extend(expand(&after[..end]));
        rest = &after[end + 1..];
    }
    code.push_str(rest);
    let bytes = code.as_bytes();
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(k) = code[from..].find(root).map(|k| k + from) {
            from = k + root.len();
            if k > 0
                && (bytes[k - 1].is_ascii_alphanumeric()
                    || bytes[k - 1] == b'_'
                    || bytes[k - 1] == b':')
            {
                continue;
            }
            let end = code[k..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |e| e + k);
            out.push(code[k..end].to_string());
        }
    }
    out
}

/// Where `word` stands as a whole word followed by white space.
fn find_word(text: &str, word: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut from = 0;
    while let Some(k) = text[from..].find(word).map(|k| k + from) {
        let before = k == 0 || !(b[k - 1].is_ascii_alphanumeric() || b[k - 1] == b'_');
        let after = b
            .get(k + word.len())
            .is_some_and(|c| c.is_ascii_whitespace());
        if before && after {
            return Some(k);
        }
        from = k + word.len();
    }
    None
}

/// (from module, to module) -> one path that makes the use.
fn uses() -> BTreeMap<(Module, Module), String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rs_files(&src, &mut files);
    let modules: BTreeSet<Module> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut out = BTreeMap::new();
    for file in &files {
        let name = file.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.as_deref() == Some("main.rs") || is_test_module(&src, file) {
            continue;
        }
        let from = module_of(&src, file);
        let text = std::fs::read_to_string(file).expect("read");
        for path in named_paths(&drop_test_mods(strip(&text))) {
            let path = path.split('@').next().unwrap_or("").trim_end_matches("::");
            let mut segs = path.split("::").filter(|s| !s.is_empty()).peekable();
            let mut target: Module = match segs.peek() {
                Some(&"crate") => {
                    segs.next();
                    Vec::new()
                }
                _ => from.clone(),
            };
            while let Some(&s) = segs.peek() {
                match s {
                    "super" => {
                        target.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                segs.next();
            }
            for s in segs {
                let mut deeper = target.clone();
                deeper.push(s.to_string());
                if !modules.contains(&deeper) {
                    break;
                }
                target = deeper;
            }
            if target != from {
                out.entry((from.clone(), target))
                    .or_insert_with(|| path.to_string());
            }
        }
    }
    out
}

fn show(m: &[String]) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

#[test]
fn no_import_cycle_between_sibling_modules() {
    let uses = uses();
    // Child-of-parent edges: a -> b when anything inside a uses anything inside b.
    let mut edges: BTreeMap<(Module, Module), String> = BTreeMap::new();
    for ((from, to), path) in &uses {
        let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
        if common < from.len() && common < to.len() {
            let a = from[..=common].to_vec();
            let b = to[..=common].to_vec();
            edges
                .entry((a, b))
                .or_insert_with(|| format!("{} uses {path}", show(from)));
        }
    }
    let reaches = |start: &Module, goal: &Module| {
        let (mut seen, mut todo) = (BTreeSet::new(), vec![start.clone()]);
        while let Some(m) = todo.pop() {
            if &m == goal {
                return true;
            }
            if seen.insert(m.clone()) {
                todo.extend(
                    edges
                        .keys()
                        .filter(|(a, _)| *a == m)
                        .map(|(_, b)| b.clone()),
                );
            }
        }
        false
    };
    let in_cycle: Vec<_> = edges.iter().filter(|((a, b), _)| reaches(b, a)).collect();
    let known = |m: &Module| KNOWN_CYCLES.contains(&show(&m[..m.len() - 1]).as_str());
    let cycles: Vec<String> = in_cycle
        .iter()
        .filter(|((a, _), _)| !known(a))
        .map(|((a, b), why)| format!("{} -> {}: {why}", show(a), show(b)))
        .collect();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
    for parent in KNOWN_CYCLES {
        assert!(
            in_cycle
                .iter()
                .any(|((a, _), _)| show(&a[..a.len() - 1]) == *parent),
            "the cycle under `{parent}` is gone: remove it from KNOWN_CYCLES"
        );
    }
    // The reader sees what it checks: the crate's modules use one another.
    assert!(edges.contains_key(&(vec!["script".into()], vec!["ops".into()])));
}

#[test]
fn the_layers_call_only_down() {
    let rank = |m: &Module| {
        let top = m.first()?;
        LAYERS.iter().position(|l| l.contains(&top.as_str()))
    };
    let up: Vec<String> = uses()
        .iter()
        .filter(|((from, to), _)| matches!((rank(from), rank(to)), (Some(f), Some(t)) if t < f))
        .map(|((from, _), path)| format!("{} uses {path}", show(from)))
        .collect();
    assert!(up.is_empty(), "calls up the layers:\n{}", up.join("\n"));
}

#[test]
fn paths_are_read_as_rust_names_them() {
    assert_eq!(
        expand("crate::ops::{self, Ops as O, step::{Outcome, StepKind}}"),
        [
            "crate::ops::self",
            "crate::ops::Ops@O",
            "crate::ops::step::Outcome",
            "crate::ops::step::StepKind"
        ]
    );
    let text = strip("// use crate::a;\nlet s = \"crate::b\"; let c = '\"'; x(crate::c::d);\n");
    assert_eq!(named_paths(&text), ["crate::c::d"]);
    let text =
        drop_test_mods("use crate::a;\n#[cfg(test)]\nmod tests {\n use crate::b; { }\n}\n".into());
    assert_eq!(named_paths(&text), ["crate::a"]);
}
