//! `uprun test`: what an operator reads before the maintenance window.

use crate::cli::TestArgs;
use crate::config::{Release, Site};
use crate::ops::CommandPolicy;
use crate::rehearsal;
use crate::script::Procedure;
use crate::Result;

pub fn exec(a: TestArgs) -> Result<i32> {
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
        eprintln!("{line}");
    }
    let report = rehearsal::test_procedure(&site, &release, &proc, policy)?;
    if a.target.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(if report.all_converge() { 0 } else { 1 });
    }
    crate::outln!(
        "uprun test {} on a disposable copy of {} (the real site is not touched)",
        report.procedure,
        site.file.display()
    );
    if report.commands_simulated {
        crate::outln!("service commands and node_command are simulated (recorded, not run); --run-commands runs them in the copy");
    }
    let s = &report.end_state;
    crate::outln!(
        "clean run: {} changing step(s); ends with the database at {}",
        report.steps.len(),
        s.database_version
    );
    for (name, n) in &s.nodes {
        crate::outln!(
            "  {name}: {}",
            n.current.as_deref().unwrap_or("no instance")
        );
    }
    crate::outln!("interrupted before and after each step's change, then resumed:");
    for p in &report.paths {
        let verdict = if p.converged { "converges" } else { "DIVERGES" };
        crate::outln!(
            "  step {:>2} {:<6} {verdict:<9} {}{}",
            p.step,
            p.point,
            p.within
                .as_ref()
                .map(|n| format!("(for_each_node, {n}) "))
                .unwrap_or_default(),
            p.description
        );
        for problem in &p.problems {
            crate::outln!("             - {problem}");
        }
        for c in &p.reran_commands {
            crate::outln!("             ! re-ran on resume (must be idempotent): {c}");
        }
    }
    let bad = report.paths.iter().filter(|p| !p.converged).count();
    let reran = report
        .paths
        .iter()
        .filter(|p| !p.reran_commands.is_empty())
        .count();
    if reran > 0 {
        crate::outln!("note: on {reran} path(s) a command ran again on resume (marked !): make sure it is idempotent");
    }
    if bad == 0 {
        crate::outln!(
            "result: every interruption point converges ({} paths); the safety rails held on every path",
            report.paths.len()
        );
        Ok(0)
    } else {
        crate::outln!(
            "result: {bad} of {} paths do not end where a clean run ends; make those steps safe to resume before the window",
            report.paths.len()
        );
        Ok(1)
    }
}
