//! `uprun test`: what an operator reads before the maintenance window.

use crate::cli::TestArgs;
use crate::config::{Release, Site};
use crate::ops::CommandPolicy;
use crate::rehearsal;
use crate::script::Procedure;
use crate::Result;

pub fn exec(a: TestArgs) -> Result<i32> {
    let out = super::output(a.target.json);
    let site = Site::load(&a.target.site)?;
    let release = Release::load_opt(a.target.release.as_deref())?;
    let proc = Procedure::load(&a.target.script)?;
    let policy = if a.run_commands {
        CommandPolicy::Run
    } else {
        CommandPolicy::Simulate
    };
    // The copy is of the database file alone: a transaction a killed process
    // left half-done in it is rolled back first.
    if let Some(line) = crate::run::recover_for_reading(&site)? {
        out.notice(&line);
    }
    let report = rehearsal::test_procedure(&site, &release, &proc, policy)?;
    if a.target.json {
        out.json(&report);
    } else {
        out.show(&report);
    }
    Ok(if report.all_converge() { 0 } else { 1 })
}
