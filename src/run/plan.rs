//! `uprun plan`: the procedure with reads real and changes only described.
//! Plans are not runs: no journal, never listed by `uprun runs`.

use std::sync::Arc;

use crate::config::{Release, Site};
use crate::ops::Outcome;
use crate::output::{Event, Output};
use crate::script::Procedure;
use crate::Result;

use super::{load_resume, recover_for_reading, Session, Target};

/// Plan `target` (as resuming run `resume`, if given), showing each step on
/// `out` as it is planned and the count of changes at the end.
pub fn plan(target: &Target<'_>, resume: Option<&str>, out: Arc<Output>) -> Result<()> {
    let site = Site::load(target.site)?;
    crate::nodes::prefetch(&site);
    let release = Release::load_opt(target.release)?;
    let proc = Procedure::load(target.script)?;
    let run_id = "plan";
    out.event(Event::RunStarted {
        run_id: run_id.into(),
        mode: "plan".into(),
        script: proc.name.clone(),
        site: site.file.display().to_string(),
    });
    if let Some(line) = recover_for_reading(&site)? {
        out.event(Event::Log {
            level: "warn".into(),
            message: line,
        });
    }
    let replay = match resume {
        Some(id) => {
            let inputs =
                crate::journal::digest_inputs(&proc.recorded_name(), &proc.text, &site, &release)?;
            let (replay, changed) = load_resume(&site, id, &inputs, true)?;
            for c in changed {
                out.event(Event::Log {
                    level: "warn".into(),
                    message: format!("{c} since run {id} started: `run --resume` will refuse without --accept-changed-inputs"),
                });
            }
            replay
        }
        None => Default::default(),
    };
    let session = Session::plan(&site, &release, &proc, run_id, replay, out.clone())?;
    let outcome = session.run();
    let steps = session.ops.steps();
    // For procedures that use the database, through the session's connection
    // (no second login to the server); the others may run without one.
    if session.ops.database_used() {
        if let Ok(Some(b)) = session.ops.latest_full_backup() {
            out.event(Event::Log {
                level: "info".into(),
                message: format!("latest full backup of `{}`: {b}", site.database.name),
            });
        }
    }
    let (_, counted) = crate::ops::count_changes(&steps);
    let mut summary = vec![format!(
        "{} step(s): {counted}; nothing was changed",
        steps.len()
    )];
    if outcome.is_err() {
        summary.push("the procedure stops with the error below: `run` would stop there too".into());
    }
    let finished = if outcome.is_ok() {
        Outcome::Planned
    } else {
        Outcome::PlanFailed
    };
    out.event(Event::RunFinished {
        outcome: finished.to_string(),
        summary,
    });
    outcome
}
