//! Host functions that talk to the operator: `log`, `warn`, `refuse`,
//! `confirm`.

use std::sync::Arc;

use rhai::NativeCallContext;

use super::super::error::HostError;
use super::{fail, ops, reg, HostResult, Registrar};
use crate::ops::{Ops, RefusedBy};

pub(super) fn register(r: &mut Registrar, o: &Option<Arc<Ops>>) {
    for (name, level, doc) in [
        (
            "log",
            "info",
            "Write an informational line to the run's output.",
        ),
        ("warn", "warn", "Write a warning to the run's output."),
    ] {
        let x = o.clone();
        reg(
            r,
            name,
            &["message: &str", "()"],
            doc,
            move |_: NativeCallContext, msg: &str| -> HostResult<()> {
                // Without a site (`uprun check` loading a module that logs at
                // its top level) there is no run output to write to.
                if let Some(o) = &x {
                    o.log(level, msg);
                }
                Ok(())
            },
        );
    }
    let x = o.clone();
    reg(r, "refuse", &["message: &str", "()"],
        "Stop the procedure with a refusal: the run ends refused (exit 3), nothing more is done, and the\njournal and summary record it as a refusal by the procedure. For checks that should stop a run before\nany change (a pre-flight check found a problem). Catchable like a rail's refusal; a caught one is still\nrecorded and listed in the end-of-run summary.",
        move |ctx: NativeCallContext, msg: &str| -> HostResult<()> {
            let ops = ops(&x, &ctx)?;
            let n = ops.record_refusal(RefusedBy::Procedure, msg);
            Err(HostError::refusal(format!("refused by the procedure: {msg}"), Some(n))
                .raise(ctx.call_position()))
        });
    let x = o.clone();
    reg(r, "confirm", &["question: &str", "bool"],
        "Ask the operator a yes/no question. `run` asks it up front with the plan, on the terminal, and one\nanswer covers the whole run (nothing is asked mid-run); `--yes` answers yes; without a terminal and\nwithout `--yes` the answer is no. In plan mode the question is listed and answered yes.",
        move |ctx: NativeCallContext, q: &str| -> HostResult<bool> {
            let ops = ops(&x, &ctx)?;
            ops.confirm(q).map_err(|e| fail(ops, e, ctx.call_position()))
        });
}
