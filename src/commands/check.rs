//! `uprun check`: compile a procedure with its imports and lint it (see
//! `crate::lint`); any problem is bad input (exit 2).

use crate::cli::CheckArgs;
use crate::script::Procedure;
use crate::Result;

pub fn exec(a: CheckArgs) -> Result<i32> {
    let proc = Procedure::load(&a.script)?;
    crate::lint::check(&proc)?;
    super::output(false).say(&format!(
        "ok: `{}` compiles and its imports resolve",
        proc.name
    ));
    Ok(0)
}
