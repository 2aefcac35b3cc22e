//! `uprun run`: plan first (so a failing check stops the run before any
//! change, and the operator sees what will happen), get consent, then do it.

use std::path::Path;
use std::sync::Arc;

use crate::cli::RunArgs;
use crate::config::{Release, Site};
use crate::ops::{Confirmation, Mode, StepRecord, StepStatus};
use crate::progress::{Event, OutputMode, Reporter};
use crate::script::Procedure;
use crate::{Error, Result};

pub fn exec(a: RunArgs) -> Result<i32> {
    let reporter = super::reporter(a.target.json);
    execute(
        &a.target.script,
        &a.target.site,
        &a.target.release,
        a.yes,
        reporter,
    )
}

/// Steps that change the site itself (a backup file does not) need consent.
fn needs_consent(s: &StepRecord) -> bool {
    s.changes && s.kind != "backup_db"
}

pub fn execute(
    script: &str,
    site: &Path,
    release: &Path,
    yes: bool,
    reporter: Arc<Reporter>,
) -> Result<i32> {
    let site = Site::load(site)?;
    let release = Release::load(release)?;
    let proc = Procedure::load(script)?;
    let run_id = super::new_run_id();
    let interactive = super::interactive();

    // 1. Plan: reads are real, nothing changes. A refusal here changes nothing.
    let quiet = Arc::new(Reporter::new(OutputMode::Quiet));
    let planning = super::Session::open(
        &site,
        &release,
        &proc,
        Mode::Plan,
        &run_id,
        quiet,
        Confirmation {
            yes: true,
            interactive: false,
        },
    )?;
    if let Err(e) = planning.run() {
        reporter.line("The procedure stops while planning: nothing was changed.");
        return Err(e);
    }
    let planned = planning.ops.steps();
    drop(planning);
    let consent = planned.iter().filter(|s| needs_consent(s)).count();
    let mut accepted = false;
    if consent > 0 && !yes {
        if !interactive {
            return Err(Error::Refused(format!(
                "the procedure would make {consent} change(s) to site `{}` and there is no terminal to confirm on: read `uprun plan {} --site {} --release {}`, then re-run with --yes. Nothing was changed.",
                site.file.display(),
                proc.name,
                site.file.display(),
                release.dir.display()
            )));
        }
        reporter.line("The procedure will:");
        for s in &planned {
            reporter.event(Event::Planned {
                index: s.index,
                kind: s.kind.to_string(),
                description: s.description.clone(),
                changes: s.changes,
            });
        }
        if !crate::ops::ask("Proceed with these changes?") {
            reporter.line("Cancelled: nothing was changed.");
            return Ok(3);
        }
        accepted = true;
    }

    // 2. Run.
    let session = super::Session::open(
        &site,
        &release,
        &proc,
        Mode::Run,
        &run_id,
        reporter.clone(),
        Confirmation { yes, interactive },
    )?;
    if accepted {
        session.ops.accept_changes();
    }
    reporter.event(Event::RunStarted {
        run_id: run_id.clone(),
        mode: "run".into(),
        script: proc.name.clone(),
        site: site.file.display().to_string(),
    });
    let outcome = session.run();
    let done = session.ops.steps();
    let mut summary = session.ops.summary();
    match &outcome {
        Ok(()) => {
            reporter.event(Event::RunFinished {
                outcome: "succeeded".into(),
                summary,
            });
            Ok(0)
        }
        Err(_) => {
            for s in planned.iter().skip(done.len()).filter(|s| s.changes) {
                summary.push(format!("not done: {}", s.description));
            }
            let upgraded = done
                .iter()
                .any(|s| s.kind == "upgrade_db" && s.status == StepStatus::Done && s.irreversible);
            summary.push(if upgraded {
                "the database WAS upgraded (irreversible); the verified backup is listed above"
                    .into()
            } else {
                "the database was NOT upgraded".into()
            });
            summary.push(format!(
                "fix the cause, then run again; `uprun status --site {}` shows the current state",
                site.file.display()
            ));
            reporter.event(Event::RunFinished {
                outcome: "failed".into(),
                summary,
            });
            outcome.map(|()| 0)
        }
    }
}
