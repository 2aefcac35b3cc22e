//! What `uprun check` finds: compile a procedure with its imports, then look at the
//! procedure and every module it imports for what the host would reject at
//! run time: calls of functions that do not exist (a misspelled host
//! function) and misspelled option keys. Every problem found is reported, not
//! only the first; any problem is bad input (exit 2).

use std::collections::HashSet;

use rhai::{ASTNode, Engine, Expr, OptimizationLevel, Position, Stmt, AST};

use crate::script::{self, Procedure, Sources};
use crate::{Error, Result};

/// Rhai's own keywords that read like function calls.
const KEYWORD_CALLS: &[&str] = &[
    "print",
    "debug",
    "type_of",
    "eval",
    "Fn",
    "call",
    "curry",
    "is_shared",
    "is_def_var",
    "is_def_fn",
];

/// Compile `proc` with its imports and lint it and every module it imports:
/// every problem found, rendered with its position, as one bad-input error.
pub fn check(proc: &Procedure) -> Result<()> {
    let sources = Sources::default();
    let mut engine = script::engine(proc.base.clone(), None, &sources);
    // Keep option maps as written, so their keys keep their positions.
    engine.set_optimization_level(OptimizationLevel::None);
    let ast = script::compile(&engine, proc, &sources)?;
    let known = known_functions(&engine);
    let mut rendered = Vec::new();
    // The procedure first, then its modules (compiled on their own: their
    // imports were resolved above).
    let mut units = vec![(proc.name.clone(), ast)];
    for (name, text) in sources.all() {
        if name == proc.name {
            continue;
        }
        match engine.compile(&text) {
            Ok(module) => units.push((name, module)),
            Err(e) => {
                let e: Box<rhai::EvalAltResult> = e.into();
                rendered.push(script::render_error(&e, &name, &sources));
            }
        }
    }
    for (name, unit) in &units {
        let mut problems = lint_functions(unit, &known);
        problems.extend(lint_options(unit));
        problems.sort_by_key(|(pos, _)| (pos.line(), pos.position()));
        for (pos, msg) in problems {
            rendered.push(
                script::render_error(
                    &rhai::EvalAltResult::ErrorRuntime(msg.into(), pos),
                    name,
                    &sources,
                )
                .replacen("error: script threw: ", "error: ", 1),
            );
        }
    }
    if !rendered.is_empty() {
        let n = rendered.len();
        rendered.push(format!(
            "{n} problem(s) in `{}`; nothing was run",
            proc.name
        ));
        return Err(Error::ScriptConfig(rendered.join("\n")));
    }
    Ok(())
}

/// Names of every function the engine knows without a namespace: host
/// functions and Rhai's standard library.
fn known_functions(engine: &Engine) -> HashSet<String> {
    engine
        .gen_fn_signatures(true)
        .iter()
        .filter(|s| !s.contains("::"))
        .filter_map(|s| s.split('(').next())
        .map(|n| n.trim().to_string())
        .chain(KEYWORD_CALLS.iter().map(|k| k.to_string()))
        .collect()
}

/// Calls of functions that exist nowhere: not in the host API, not in Rhai's
/// library, not defined in the same source. Calls through a module
/// (`m::f`) and of names that are also variables (function pointers) are
/// left to run time.
fn lint_functions(ast: &AST, known: &HashSet<String>) -> Vec<(Position, String)> {
    let mut defined: HashSet<String> = HashSet::new();
    for f in ast.iter_functions() {
        defined.insert(f.name.to_string());
        defined.extend(f.params.iter().map(|p| p.to_string()));
    }
    let mut calls = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, pos)))
            | Some(ASTNode::Stmt(Stmt::FnCall(call, pos)))
                if call.namespace.is_empty() && call.op_token.is_none() =>
            {
                calls.push((call.name.to_string(), *pos));
            }
            Some(ASTNode::Stmt(Stmt::Var(v, _, _))) => {
                defined.insert(v.0.name.to_string());
            }
            _ => {}
        }
        true
    });
    calls
        .into_iter()
        .filter(|(name, _)| {
            let identifier = name.chars().all(|c| c.is_alphanumeric() || c == '_');
            identifier && !known.contains(name) && !defined.contains(name)
        })
        .map(|(name, pos)| {
            let hint = match script::api::closest_host_function(&name) {
                Some(near) => format!("; did you mean `{near}`?"),
                None => String::new(),
            };
            (
                pos,
                format!("no function `{name}`{hint} (`uprun api` lists the host functions)"),
            )
        })
        .collect()
}

/// Literal option maps passed to host functions, checked against the keys
/// each function accepts.
fn lint_options(ast: &AST) -> Vec<(Position, String)> {
    let mut problems = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        let call = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, _))) => call,
            Some(ASTNode::Stmt(Stmt::FnCall(call, _))) => call,
            _ => return true,
        };
        let Some((name, keys)) = script::api::option_keys()
            .iter()
            .find(|(n, _)| *n == call.name.as_str())
        else {
            return true;
        };
        for arg in call.args.iter() {
            if let Expr::Map(map, _) = arg {
                for (ident, _) in map.0.iter() {
                    if !keys.contains(&ident.name.as_str()) {
                        let valid = script::api::valid_options(keys);
                        problems.push((
                            ident.pos,
                            format!(
                                "{name}: unknown option `{}`; valid options: {valid}",
                                ident.name
                            ),
                        ));
                    }
                }
            }
        }
        true
    });
    problems
}
