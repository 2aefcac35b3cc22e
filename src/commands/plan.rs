//! `uprun plan`: the procedure with reads real and changes only described
//! (see `crate::run::plan`).

use crate::cli::PlanArgs;
use crate::run::Target;
use crate::Result;

pub fn exec(p: PlanArgs) -> Result<i32> {
    let a = p.target;
    let target = Target {
        script: &a.script,
        site: &a.site,
        release: a.release.as_deref(),
    };
    crate::run::plan(&target, p.resume.as_deref(), super::output(a.json))?;
    Ok(0)
}
