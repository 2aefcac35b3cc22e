//! The Rhai engine: limits, module resolution, host API registration, and the
//! rendering of script errors with file, line, column and the source line.
//! This layer only converts between Rhai values and `ops` calls; no rule lives
//! here.

pub mod api;
mod render;
mod resolver;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rhai::{Engine, Scope, AST};

use crate::ops::Ops;
use crate::{Error, Result};

pub use render::render_error;
pub use resolver::{Sources, STDLIB};

/// The bundled procedures: name and source.
pub const BUNDLED: &[(&str, &str)] = &[
    (
        "in-place-upgrade",
        include_str!("../../scripts/in-place-upgrade.rhai"),
    ),
    ("backup", include_str!("../../scripts/backup.rhai")),
    (
        "verify-cluster",
        include_str!("../../scripts/verify-cluster.rhai"),
    ),
];

/// A procedure to run: its display name, its text and the folder its local
/// imports come from (`None` for bundled scripts).
#[derive(Debug, Clone)]
pub struct Procedure {
    pub name: String,
    pub text: String,
    pub base: Option<PathBuf>,
}

impl Procedure {
    /// A bundled name, or a path to a `.rhai` file.
    pub fn load(spec: &str) -> Result<Procedure> {
        if let Some((name, text)) = BUNDLED.iter().find(|(n, _)| *n == spec) {
            return Ok(Procedure {
                name: name.to_string(),
                text: text.to_string(),
                base: None,
            });
        }
        let path = Path::new(spec);
        if !path.exists() {
            let names: Vec<&str> = BUNDLED.iter().map(|(n, _)| *n).collect();
            return Err(Error::Config(format!(
                "no procedure `{spec}`: not a bundled name ({}) and no such file",
                names.join(", ")
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("read script", path, e))?;
        let base = path.parent().map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        });
        Ok(Procedure {
            name: spec.to_string(),
            text,
            base,
        })
    }

    /// The one-line description: the first `//!` line of the script.
    pub fn description(text: &str) -> String {
        text.lines()
            .find_map(|l| l.trim().strip_prefix("//!"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }
}

/// Build an engine for `proc`. With `ops`, host functions act; without, they
/// exist (for `check` and `api`) but fail when called.
pub fn engine(proc_base: Option<PathBuf>, ops: Option<Arc<Ops>>, sources: &Sources) -> Engine {
    let mut engine = Engine::new();
    engine.set_max_operations(50_000_000);
    engine.set_max_call_levels(64);
    engine.set_max_expr_depths(64, 64);
    engine.set_max_string_size(4 << 20);
    engine.set_max_array_size(100_000);
    engine.set_max_map_size(100_000);
    engine.set_max_modules(64);
    engine.set_strict_variables(true);
    engine.set_fail_on_invalid_map_property(true);
    engine.disable_symbol("eval");
    engine.set_module_resolver(resolver::SandboxResolver::new(proc_base, sources.clone()));
    if let Some(ops) = &ops {
        let o = ops.clone();
        engine.on_print(move |s| o.log("info", s));
        let o = ops.clone();
        engine.on_debug(move |s, _, _| o.log("debug", s));
        if ops.mode == crate::ops::Mode::Run {
            // Ctrl-C also stops a script busy between steps (a long loop).
            engine.on_progress(|_| {
                crate::interrupt::stop_requested().then(|| {
                    let mut m = rhai::Map::new();
                    m.insert("kind".into(), "interrupted".into());
                    m.insert(
                        "message".into(),
                        "interrupted: stopped by the operator (Ctrl-C)".into(),
                    );
                    m.into()
                })
            });
        }
    }
    api::register(&mut engine, ops);
    engine
}

/// Compile a procedure with its imports resolved (a broken module fails here,
/// before anything runs), or render the error.
pub fn compile(engine: &Engine, proc: &Procedure, sources: &Sources) -> Result<AST> {
    sources.insert(&proc.name, &proc.text);
    let mut ast = engine
        .compile_into_self_contained(&Scope::new(), &proc.text)
        .map_err(|e| Error::Script(render_error(&e, &proc.name, sources)))?;
    ast.set_source(proc.name.as_str());
    Ok(ast)
}

/// Run a compiled procedure to its end.
pub fn run(engine: &Engine, ast: &AST, proc: &Procedure, sources: &Sources) -> Result<()> {
    match engine.run_ast_with_scope(&mut Scope::new(), ast) {
        Ok(()) => Ok(()),
        Err(e) => {
            let text = render_error(&e, &proc.name, sources);
            match render::root_kind(&e).as_deref() {
                Some("refused") => Err(Error::ScriptRefused(text)),
                Some("interrupted") => Err(Error::Interrupted(render::plain_message(&e))),
                _ => Err(Error::Script(text)),
            }
        }
    }
}
