//! `uprun check`: compile a procedure with its imports, and flag option keys
//! that the host functions would reject at run time.

use rhai::{ASTNode, Expr, OptimizationLevel, Position, Stmt};

use crate::cli::CheckArgs;
use crate::script::{self, api::OPTION_KEYS, Procedure, Sources};
use crate::{Error, Result};

pub fn exec(a: CheckArgs) -> Result<i32> {
    let proc = Procedure::load(&a.script)?;
    let sources = Sources::default();
    let mut engine = script::engine(proc.base.clone(), None, &sources);
    // Keep option maps as written, so their keys keep their positions.
    engine.set_optimization_level(OptimizationLevel::None);
    let ast = script::compile(&engine, &proc, &sources)?;
    let problems = lint_options(&ast);
    if !problems.is_empty() {
        let rendered: Vec<String> = problems
            .iter()
            .map(|(pos, msg)| {
                script::render_error(
                    &rhai::EvalAltResult::ErrorRuntime(msg.clone().into(), *pos),
                    &proc.name,
                    &sources,
                )
                .replacen("error: script threw: ", "error: ", 1)
            })
            .collect();
        return Err(Error::Script(rendered.join("\n")));
    }
    crate::outln!("ok: `{}` compiles and its imports resolve", proc.name);
    Ok(0)
}

/// Literal option maps passed to host functions, checked against the keys
/// each function accepts.
fn lint_options(ast: &rhai::AST) -> Vec<(Position, String)> {
    let mut problems = Vec::new();
    ast.walk(&mut |path: &[ASTNode]| {
        let call = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, _))) => call,
            Some(ASTNode::Stmt(Stmt::FnCall(call, _))) => call,
            _ => return true,
        };
        let Some((name, keys)) = OPTION_KEYS.iter().find(|(n, _)| *n == call.name.as_str()) else {
            return true;
        };
        for arg in call.args.iter() {
            if let Expr::Map(map, _) = arg {
                for (ident, _) in map.0.iter() {
                    if !keys.contains(&ident.name.as_str()) {
                        let valid = if keys.is_empty() {
                            "none".to_string()
                        } else {
                            keys.iter()
                                .map(|k| format!("`{k}`"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
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
