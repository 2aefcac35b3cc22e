//! `uprun run`: lock the site, plan first (so a failing check stops the run
//! before any change, and the operator sees what will happen), get consent,
//! then do it with every change journaled. `--resume` goes on with an earlier
//! run from its journal.

use std::path::Path;
use std::sync::Arc;

use crate::cli::RunArgs;
use crate::config::{Release, Site};
use crate::journal::{self, Entry, Journal, Replay};
use crate::lock::SiteLock;
use crate::ops::{Confirmation, Mode, RunSpec, StepRecord, StepStatus};
use crate::progress::{Event, OutputMode, Reporter};
use crate::script::Procedure;
use crate::{Error, Result};

pub fn exec(a: RunArgs) -> Result<i32> {
    let reporter = super::reporter(a.target.json);
    let opts = RunOptions {
        yes: a.yes,
        resume: a.resume,
        accept_changed_inputs: a.accept_changed_inputs,
    };
    execute(
        &a.target.script,
        &a.target.site,
        a.target.release.as_deref(),
        opts,
        reporter,
    )
}

#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    pub yes: bool,
    pub resume: Option<String>,
    pub accept_changed_inputs: bool,
}

/// Steps that change the site itself (a backup file does not) need consent.
fn needs_consent(s: &StepRecord) -> bool {
    s.changes && s.kind != "backup_db"
}

/// Load the journal of the run to resume, and check it may be resumed with
/// these inputs. Returns what it did and the input changes accepted.
pub(super) fn load_resume(
    site: &Site,
    id: &str,
    inputs: &journal::Inputs,
    accept: bool,
) -> Result<(Replay, Vec<String>)> {
    let path = journal::journal_path(site, id);
    if !path.exists() {
        return Err(Error::Config(format!(
            "no run `{id}` for site `{}` (no `{}`); `uprun runs --site {}` lists the runs",
            site.file.display(),
            path.display(),
            site.file.display()
        )));
    }
    let entries = journal::read(&path)?;
    let info = journal::summarize(id, &entries);
    if info.outcome == "succeeded" || info.outcome == "abandoned" {
        return Err(Error::Config(format!(
            "run `{id}` {}: there is nothing to resume",
            info.outcome
        )));
    }
    let Some(Entry::Run { inputs: before, .. }) =
        entries.iter().find(|e| matches!(e, Entry::Run { .. }))
    else {
        return Err(Error::Config(format!(
            "journal `{}` has no run header; it cannot be resumed",
            path.display()
        )));
    };
    let changed = journal::changed_inputs(before, inputs);
    if !changed.is_empty() && !accept {
        return Err(Error::Refused(format!(
            "cannot resume run `{id}`: {} since it started. Resuming with different inputs may not end where the run was going; \
to do it anyway, add --accept-changed-inputs (recorded in the journal)",
            changed.join("; ")
        )));
    }
    Ok((Replay::from_entries(&entries), changed))
}

pub fn execute(
    script: &str,
    site: &Path,
    release: Option<&Path>,
    opts: RunOptions,
    reporter: Arc<Reporter>,
) -> Result<i32> {
    crate::phases::set_pass("start");
    let began = std::time::Instant::now();
    let site = Site::load(site)?;
    // Handshakes overlap with loading and hashing the release, the lock and
    // compiling; the planning pass takes the connections (or their errors).
    crate::nodes::prefetch(&site.nodes, &site.ssh);
    let release = Release::load_opt(release)?;
    let proc = Procedure::load(script)?;
    crate::phases::record("load", began);
    let inputs = crate::phases::time("digest", || {
        journal::digest_inputs(&proc.name, &proc.text, &site, &release)
    })?;
    let run_id = opts.resume.clone().unwrap_or_else(super::new_run_id);
    let interactive = super::interactive();

    // The site is ours for the whole run, planning included.
    let _lock = crate::phases::time("lock", || {
        SiteLock::acquire(&site, &run_id, opts.resume.as_deref())
    })?;
    let (replay, accepted_changes) = match &opts.resume {
        Some(id) => load_resume(&site, id, &inputs, opts.accept_changed_inputs)?,
        None => (Replay::default(), Vec::new()),
    };

    // 1. Plan: reads are real, nothing changes. A refusal here changes nothing.
    let quiet = Arc::new(Reporter::new(OutputMode::Quiet));
    crate::phases::set_pass("plan");
    let planning = super::Session::open(
        RunSpec {
            replay: replay.clone(),
            ..RunSpec::new(
                &site,
                &release,
                Mode::Plan,
                &run_id,
                Confirmation::UNATTENDED,
            )
        },
        &proc,
        quiet,
    )?;
    let planned_ok = crate::phases::time("plan", || planning.run());
    reporter.phases();
    if let Err(e) = planned_ok {
        reporter.line("The procedure stops while planning: nothing was changed.");
        return Err(e);
    }
    let planned = planning.ops.steps();
    drop(planning);
    let consent = planned.iter().filter(|s| needs_consent(s)).count();
    let mut accepted = false;
    if consent > 0 && !opts.yes {
        if !interactive {
            return Err(Error::Refused(format!(
                "the procedure would make {consent} change(s) to site `{}` and there is no terminal to confirm on: read `uprun plan {} --site {}{}`, then re-run with --yes. Nothing was changed.",
                site.file.display(),
                proc.name,
                site.file.display(),
                release.arg()
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

    // 2. Run, journaled.
    crate::phases::set_pass("run");
    let began = std::time::Instant::now();
    let journal = Arc::new(match &opts.resume {
        None => {
            let j = Journal::create(&site, &run_id)?;
            j.append(&Entry::Run {
                run_id: run_id.clone(),
                at: crate::db::now_rfc3339(),
                inputs: inputs.clone(),
                user: std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
                pid: std::process::id(),
                uprun_version: env!("CARGO_PKG_VERSION").into(),
            })?;
            j
        }
        Some(id) => {
            let j = Journal::reopen(&site, id)?;
            j.append(&Entry::Resume {
                at: crate::db::now_rfc3339(),
                pid: std::process::id(),
                accepted_changes: accepted_changes.clone(),
            })?;
            j
        }
    });
    crate::phases::record("journal", began);
    crate::interrupt::install();
    let session = super::Session::open(
        RunSpec {
            journal: Some(journal.clone()),
            replay,
            ..RunSpec::new(
                &site,
                &release,
                Mode::Run,
                &run_id,
                Confirmation {
                    yes: opts.yes,
                    interactive,
                },
            )
        },
        &proc,
        reporter.clone(),
    )?;
    if accepted {
        session.ops.accept_changes();
    }
    reporter.event(Event::RunStarted {
        run_id: run_id.clone(),
        mode: if opts.resume.is_some() {
            "resume".into()
        } else {
            "run".into()
        },
        script: proc.name.clone(),
        site: site.file.display().to_string(),
    });
    reporter.phases();
    for c in &accepted_changes {
        reporter.event(Event::Log {
            level: "warn".into(),
            message: format!("resuming although {c} (accepted)"),
        });
    }
    let outcome = session.run();
    let done = session.ops.steps();
    let mut summary = session.ops.summary();
    // The downtime window, from what the journal recorded (this attempt and
    // any earlier one of a resumed run).
    if let Some(w) = journal::read(journal.path())
        .ok()
        .and_then(|entries| crate::downtime::window(&entries))
    {
        let text = w.describe();
        let _ = journal.append(&Entry::Note {
            at: crate::db::now_rfc3339(),
            message: text.clone(),
        });
        summary.push(text);
    }
    match &outcome {
        Ok(()) => {
            journal.append(&journal::entry_now_end("succeeded", None))?;
            reporter.event(Event::RunFinished {
                outcome: "succeeded".into(),
                summary,
            });
            Ok(0)
        }
        Err(e) => {
            let kind = match e {
                Error::Interrupted(_) => "interrupted",
                Error::Incomplete(_) => "incomplete",
                _ => "failed",
            };
            let _ = journal.append(&journal::entry_now_end(kind, Some(e.to_string())));
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
                "the database was NOT upgraded by this attempt".into()
            });
            summary.push(format!(
                "fix the cause, then resume: uprun run {} --site {}{} --resume {run_id} --yes",
                proc.name,
                site.file.display(),
                release.arg()
            ));
            summary.push(format!("journal: {}", journal.path().display()));
            reporter.event(Event::RunFinished {
                outcome: kind.into(),
                summary,
            });
            outcome.map(|()| 0)
        }
    }
}
