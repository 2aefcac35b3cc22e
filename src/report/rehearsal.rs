//! `uprun test`'s report, as the operator reads it before the window.

use std::fmt;

use crate::rehearsal::TestReport;

impl fmt::Display for TestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "uprun test {} on a disposable copy of {} (the real site is not touched)",
            self.procedure, self.site
        )?;
        if self.commands_simulated {
            writeln!(f, "service commands and node_command are simulated (recorded, not run); --run-commands runs them in the copy")?;
        }
        let s = &self.end_state;
        writeln!(
            f,
            "clean run: {} changing step(s); ends with the database at {}",
            self.steps.len(),
            s.database_version
        )?;
        for (name, n) in &s.nodes {
            writeln!(
                f,
                "  {name}: {}",
                n.current.as_deref().unwrap_or("no instance")
            )?;
        }
        writeln!(
            f,
            "interrupted before and after each step's change, then resumed:"
        )?;
        for p in &self.paths {
            let verdict = if p.converged { "converges" } else { "DIVERGES" };
            writeln!(
                f,
                "  step {:>2} {:<6} {verdict:<9} {}{}",
                p.step,
                p.point,
                p.within
                    .as_ref()
                    .map(|n| format!("(for_each_node, {n}) "))
                    .unwrap_or_default(),
                p.description
            )?;
            for problem in &p.problems {
                writeln!(f, "             - {problem}")?;
            }
            for c in &p.reran_commands {
                writeln!(
                    f,
                    "             ! re-ran on resume (must be idempotent): {c}"
                )?;
            }
        }
        let bad = self.paths.iter().filter(|p| !p.converged).count();
        let reran = self
            .paths
            .iter()
            .filter(|p| !p.reran_commands.is_empty())
            .count();
        if reran > 0 {
            writeln!(f, "note: on {reran} path(s) a command ran again on resume (marked !): make sure it is idempotent")?;
        }
        if bad == 0 {
            writeln!(
                f,
                "result: every interruption point converges ({} paths); the safety rails held on every path",
                self.paths.len()
            )
        } else {
            writeln!(
                f,
                "result: {bad} of {} paths do not end where a clean run ends; make those steps safe to resume before the window",
                self.paths.len()
            )
        }
    }
}
