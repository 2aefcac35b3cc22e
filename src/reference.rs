//! The host API reference (`uprun api`), generated from the documentation
//! that is registered with the engine (one source of truth), plus the bundled
//! modules' documented functions; and `.d.rhai` definition files for editors.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::script::{self, Sources, STDLIB};
use crate::{Error, Result};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    #[serde(default)]
    functions: Vec<FnMeta>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FnMeta {
    pub name: String,
    #[serde(default)]
    pub params: Vec<Param>,
    #[serde(default)]
    pub return_type: String,
    #[serde(default)]
    pub doc_comments: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct Param {
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub typ: Option<String>,
}

/// Every host function registered with the engine, with its documentation.
pub fn host_functions() -> Result<Vec<FnMeta>> {
    let engine = script::engine(None, None, &Sources::default());
    let json = engine
        .gen_fn_metadata_to_json(false)
        .map_err(|e| Error::Script(format!("cannot list the host API: {e}")))?;
    let meta: Metadata = serde_json::from_str(&json)
        .map_err(|e| Error::Script(format!("cannot read the host API metadata: {e}")))?;
    // The accessors of a caught host error are described in the header.
    Ok(meta
        .functions
        .into_iter()
        .filter(|f| {
            !f.params
                .first()
                .and_then(|p| p.typ.as_deref())
                .is_some_and(|t| t.contains(script::error::TYPE_NAME))
        })
        .collect())
}

fn doc_text(comments: &[String]) -> String {
    comments
        .iter()
        .flat_map(|c| c.lines())
        .map(|l| {
            l.trim()
                .trim_start_matches("///")
                .trim_start_matches("//!")
                .strip_prefix(' ')
                .unwrap_or_else(|| l.trim().trim_start_matches("///"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn signature(f: &FnMeta) -> String {
    let params: Vec<String> = f
        .params
        .iter()
        .map(|p| match (&p.name, &p.typ) {
            (Some(n), Some(t)) => format!("{n}: {}", t.trim_start_matches('&')),
            (Some(n), None) => n.clone(),
            (None, Some(t)) => t.clone(),
            (None, None) => "_".into(),
        })
        .collect();
    let ret = if f.return_type.is_empty() || f.return_type == "()" {
        String::new()
    } else {
        format!(" -> {}", f.return_type)
    };
    format!("{}({}){ret}", f.name, params.join(", "))
}

/// Write Rhai definition files (`.d.rhai`) for editors into `dir`.
pub fn write_definitions(dir: &Path) -> Result<()> {
    let engine = script::engine(None, None, &Sources::default());
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create definitions folder", dir, e))?;
    engine
        .definitions()
        .with_headers(true)
        .write_to_dir(dir)
        .map_err(|e| Error::io("write definitions into", dir, e))
}

/// The host API reference: every host function with its documentation,
/// then the bundled modules' documented functions.
pub fn reference() -> Result<String> {
    let mut by_name: BTreeMap<String, Vec<FnMeta>> = BTreeMap::new();
    for f in host_functions()? {
        by_name.entry(f.name.clone()).or_default().push(f);
    }
    let mut out = String::new();
    out.push_str("uprun host API\n\nOptions are maps; an unknown key is an error that lists the valid ones. A node argument is a\nnode map (from `nodes()`) or a node name. A failing call raises a host error, catchable\nwith `try { ... } catch (e) { ... }`: read `e.kind`, `e.message`, `e.node` (() when none); kinds: refused, config, database,\nnode, io. Only the host raises these: a script's own `throw` (of anything) fails the run as a script error (exit 1);\nto stop with a refusal (exit 3), call `refuse(message)`. Ctrl-C and the site's time limit cannot be caught.\n\n");
    for (_, overloads) in by_name {
        let mut overloads = overloads;
        overloads.sort_by_key(|f| f.params.len());
        for f in &overloads {
            out.push_str(&signature(f));
            out.push('\n');
        }
        let doc = overloads
            .iter()
            .map(|f| doc_text(&f.doc_comments))
            .find(|d| !d.is_empty())
            .unwrap_or_default();
        for line in doc.lines() {
            out.push_str("    ");
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str("Bundled modules: import \"std/NAME\" as NAME;\n\n");
    let engine = script::engine(None, None, &Sources::default());
    for (name, text) in STDLIB {
        let ast = engine
            .compile(text)
            .map_err(|e| Error::Script(format!("std/{name}: {e}")))?;
        out.push_str(&format!(
            "std/{name}: {}\n",
            script::Procedure::description(text)
        ));
        // In the module's own order (the engine keeps them hashed: an order
        // that changed from run to run).
        let mut fns: Vec<_> = ast
            .iter_functions()
            .filter(|f| !f.name.starts_with("anon$"))
            .collect();
        fns.sort_by_key(|f| (text.find(&format!("fn {}(", f.name)), f.name));
        for f in fns {
            out.push_str(&format!("  {name}::{}({})\n", f.name, f.params.join(", ")));
            for line in
                doc_text(&f.comments.iter().map(|c| c.to_string()).collect::<Vec<_>>()).lines()
            {
                out.push_str("      ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_host_function_is_documented() {
        let fns = host_functions().expect("metadata");
        assert!(fns.len() >= 20, "{} functions", fns.len());
        for f in &fns {
            assert!(
                !doc_text(&f.doc_comments).trim().is_empty(),
                "`{}` has no documentation",
                signature(f)
            );
            assert!(
                f.params.iter().all(|p| p.name.is_some()),
                "`{}` has unnamed parameters",
                signature(f)
            );
        }
    }

    #[test]
    fn the_hint_list_names_every_host_function() {
        let registered: std::collections::BTreeSet<String> = host_functions()
            .expect("metadata")
            .into_iter()
            .map(|f| f.name)
            .collect();
        let listed: std::collections::BTreeSet<String> = crate::script::api::host_functions()
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(registered, listed);
    }

    #[test]
    fn every_stdlib_function_is_documented() {
        let engine = script::engine(None, None, &Sources::default());
        for (name, text) in STDLIB {
            let ast = engine.compile(text).expect("stdlib compiles");
            for f in ast
                .iter_functions()
                .filter(|f| !f.name.starts_with("anon$"))
            {
                assert!(
                    !f.comments.is_empty(),
                    "std/{name}::{} has no documentation",
                    f.name
                );
            }
        }
    }
}
