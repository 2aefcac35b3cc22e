//! The Rhai engine: limits, module resolution, host API registration, and the
//! rendering of script errors with file, line, column and the source line.
//! This layer only converts between Rhai values and `ops` calls; no rule lives
//! here.

pub mod api;
pub mod error;
mod render;
mod resolver;
mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, Scope, AST};

use crate::ops::Ops;
use crate::{Error, Result};

pub use error::HostError;
pub use render::render_error;
pub use resolver::{Sources, STDLIB};
pub use session::Session;

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
    /// The procedure as a run's journal records it: its bundled name, or the
    /// absolute path of its file.
    pub fn recorded_name(&self) -> String {
        match &self.base {
            Some(_) => crate::journal::absolute(Path::new(&self.name))
                .display()
                .to_string(),
            None => self.name.clone(),
        }
    }

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

/// Most operations a procedure (or one `for_each_node` closure call) may
/// take. The stock procedure takes about 500 on three nodes; a runaway loop
/// stops here (copying megabyte strings, in seconds rather than hours) or at
/// the site's time limit, whichever comes first.
pub const MAX_OPERATIONS: u64 = 200_000;

/// Largest string (and total of the strings in one array or map) a script may
/// build, in bytes.
pub const MAX_STRING_SIZE: usize = 1 << 20;

/// Most items in one array or map (nested ones counted).
pub const MAX_ITEMS: usize = 100_000;

/// How often (in operations) the progress hook looks at the clock.
const CLOCK_EVERY: u64 = 64;

/// Build an engine for `proc`. With `ops`, host functions act; without, they
/// exist (for `check` and `api`) but fail when called. With `ops`, the run's
/// time limit (`limits.script_timeout_secs`) counts from here.
pub fn engine(proc_base: Option<PathBuf>, ops: Option<Arc<Ops>>, sources: &Sources) -> Engine {
    let mut engine = Engine::new();
    engine.set_max_operations(MAX_OPERATIONS);
    engine.set_max_call_levels(64);
    engine.set_max_expr_depths(64, 64);
    engine.set_max_string_size(MAX_STRING_SIZE);
    engine.set_max_array_size(MAX_ITEMS);
    engine.set_max_map_size(MAX_ITEMS);
    engine.set_max_modules(64);
    engine.set_strict_variables(true);
    engine.set_fail_on_invalid_map_property(true);
    engine.disable_symbol("eval");
    engine.set_module_resolver(resolver::SandboxResolver::new(proc_base, sources.clone()));
    error::register(&mut engine);
    if let Some(ops) = &ops {
        let o = ops.clone();
        engine.on_print(move |s| o.log("info", s));
        let o = ops.clone();
        engine.on_debug(move |s, _, _| o.log("debug", s));
        let watch_interrupt = ops.mode == crate::ops::Mode::Run;
        let limit = ops.site.limits.script_timeout;
        let started = Instant::now();
        // Between operations: Ctrl-C also stops a script busy between steps
        // (a long loop), and no procedure runs past its time limit. Host calls
        // count too: the clock is the run's, not the script's.
        engine.on_progress(move |n| {
            if watch_interrupt && crate::interrupt::stop_requested() {
                let e = HostError::new(
                    "interrupted",
                    "interrupted: stopped by the operator (Ctrl-C)",
                );
                return Some(Dynamic::from(e));
            }
            if n % CLOCK_EVERY == 0 && started.elapsed() > limit {
                return Some(Dynamic::from(HostError::new(
                    error::TIME_LIMIT,
                    time_limit_message(limit),
                )));
            }
            None
        });
    }
    api::register(&mut engine, ops);
    engine
}

fn time_limit_message(limit: Duration) -> String {
    format!(
        "the procedure ran past its time limit of {} s (site setting `limits.script_timeout_secs`)",
        limit.as_secs()
    )
}

/// Compile a procedure with its imports resolved (a broken module fails here,
/// before anything runs), or render the error.
pub fn compile(engine: &Engine, proc: &Procedure, sources: &Sources) -> Result<AST> {
    sources.insert(&proc.name, &proc.text);
    let mut ast = engine
        .compile_into_self_contained(&Scope::new(), &proc.text)
        .map_err(|e| {
            let text = render_error(&e, &proc.name, sources);
            // A syntax error or a missing module is bad input (exit 2), like a
            // bad site file; a module failing as it loads is the script's.
            if is_bad_source(&e) {
                Error::ScriptConfig(text)
            } else {
                Error::Script(text)
            }
        })?;
    ast.set_source(proc.name.as_str());
    Ok(ast)
}

fn is_bad_source(e: &rhai::EvalAltResult) -> bool {
    use rhai::EvalAltResult as E;
    match e {
        E::ErrorParsing(..) | E::ErrorModuleNotFound(..) => true,
        E::ErrorInModule(_, inner, _) => is_bad_source(inner),
        _ => false,
    }
}

/// Run a compiled procedure to its end. Only errors the host raised end it
/// as refused (3), bad input (2) or interrupted (130); anything else the
/// script throws is a script failure (1).
pub fn run(
    engine: &Engine,
    ast: &AST,
    proc: &Procedure,
    sources: &Sources,
    ops: &Ops,
) -> Result<()> {
    let Err(e) = engine.run_ast_with_scope(&mut Scope::new(), ast) else {
        return Ok(());
    };
    let text = render_error(&e, &proc.name, sources);
    let Some(host) = error::root_host_error(&e) else {
        return Err(Error::Script(text));
    };
    match host.kind() {
        "refused" => {
            if let Some(n) = host.refusal_number() {
                ops.refusal_ended_run(n);
            }
            Err(Error::ScriptRefused(text))
        }
        "interrupted" => Err(Error::Interrupted(host.to_string())),
        "config" => Err(Error::ScriptConfig(text)),
        _ => Err(Error::Script(text)),
    }
}
