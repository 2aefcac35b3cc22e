//! `uprun plan`: the procedure with reads real and changes only described.

use crate::cli::PlanArgs;
use crate::config::{Release, Site};
use crate::ops::Outcome;
use crate::progress::Event;
use crate::script::Procedure;
use crate::Result;

pub fn exec(p: PlanArgs) -> Result<i32> {
    let a = p.target;
    let site = Site::load(&a.site)?;
    crate::nodes::prefetch(&site.nodes, &site.ssh);
    let release = Release::load_opt(a.release.as_deref())?;
    let proc = Procedure::load(&a.script)?;
    let reporter = super::reporter(a.json);
    // Plans are not runs: no journal, never listed by `uprun runs`.
    let run_id = "plan".to_string();
    reporter.event(Event::RunStarted {
        run_id: run_id.clone(),
        mode: "plan".into(),
        script: proc.name.clone(),
        site: site.file.display().to_string(),
    });
    if let Some(line) = crate::run::recover_for_reading(&site)? {
        reporter.event(Event::Log {
            level: "warn".into(),
            message: line,
        });
    }
    let replay = match &p.resume {
        Some(id) => {
            let inputs = crate::journal::digest_inputs(&proc, &site, &release)?;
            let (replay, changed) = crate::run::load_resume(&site, id, &inputs, true)?;
            for c in changed {
                reporter.event(Event::Log {
                    level: "warn".into(),
                    message: format!("{c} since run {id} started: `run --resume` will refuse without --accept-changed-inputs"),
                });
            }
            replay
        }
        None => Default::default(),
    };
    let session =
        crate::run::Session::plan(&site, &release, &proc, &run_id, replay, reporter.clone())?;
    let outcome = session.run();
    let steps = session.ops.steps();
    // For procedures that use the database, through the session's connection
    // (no second login to the server); the others may run without one.
    if session.ops.database_used() {
        if let Ok(Some(b)) = session.ops.latest_full_backup() {
            reporter.event(Event::Log {
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
    reporter.event(Event::RunFinished {
        outcome: if outcome.is_ok() {
            Outcome::Planned
        } else {
            Outcome::PlanFailed
        }
        .to_string(),
        summary,
    });
    outcome.map(|()| 0)
}
