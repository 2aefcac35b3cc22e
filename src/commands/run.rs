//! `uprun run`: the run library (`crate::run`) with the operator's consent
//! asked on the terminal and its report shown.

use std::sync::Arc;

use crate::cli::RunArgs;
use crate::output::{Event, Output};
use crate::run::{self, Consent, RunOptions, Target};
use crate::Result;

pub fn exec(a: RunArgs) -> Result<i32> {
    let target = Target {
        script: &a.target.script,
        site: &a.target.site,
        release: a.target.release.as_deref(),
    };
    let opts = RunOptions {
        yes: a.yes,
        resume: a.resume,
        accept_changed_inputs: a.accept_changed_inputs,
    };
    execute(&target, &opts, super::output(a.target.json))
}

/// Plan, ask once (listing every step), run, and show how it ended. Exit 3
/// when the operator answers no.
pub fn execute(target: &Target<'_>, opts: &RunOptions, reporter: Arc<Output>) -> Result<i32> {
    let prepared = run::prepare(target, opts, &reporter)?;
    let accepted = match prepared.consent()? {
        Consent::NotNeeded => false,
        Consent::Ask(question) => {
            reporter.line("The procedure will:");
            for s in prepared.planned() {
                reporter.event(Event::Planned {
                    index: s.index,
                    kind: s.kind.to_string(),
                    description: s.description.clone(),
                    changes: s.changes,
                    irreversible: s.irreversible,
                });
            }
            if !reporter.ask(&question) {
                reporter.line("Cancelled: nothing was changed.");
                return Ok(3);
            }
            true
        }
    };
    let report = prepared.execute(accepted, reporter.clone())?;
    reporter.event(report.finished_event());
    report.into_result()
}
