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
            "run `{id}` never started: its journal `{}` has no header (the process died before writing it, e.g. on a full disk), so nothing was changed by it and there is nothing to resume. \
Start a new run without --resume, or set it aside with `{}`",
            path.display(),
            info.abandon_command(&site.file)
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
    let inputs = crate::phases::time("digest", || journal::digest_inputs(&proc, &site, &release))?;
    let run_id = opts.resume.clone().unwrap_or_else(super::new_run_id);
    let interactive = super::interactive();

    // The site is ours for the whole run, planning included.
    let _lock = crate::phases::time("lock", || {
        SiteLock::acquire(&site, &run_id, opts.resume.as_deref())
    })?;
    // A transaction a killed process left half-done is rolled back before
    // anything reads the database (planning opens it read-only).
    if let Some(line) = crate::db::recover(&site)? {
        reporter.event(Event::Log {
            level: "warn".into(),
            message: line,
        });
    }
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
    // One consent, up front, for the whole run: the question counts what
    // `plan` counts, after listing every step with the irreversible one marked.
    let consent = planned.iter().filter(|s| needs_consent(s)).count();
    // The procedure's own questions (`confirm`) are asked with the plan too,
    // on a terminal; without one they are answered no, as documented.
    let questions = planned.iter().filter(|s| s.kind == "confirm").count();
    let (_, counted) = crate::ops::count_changes(&planned);
    let mut accepted = false;
    if (consent > 0 || (questions > 0 && interactive)) && !opts.yes {
        if !interactive {
            return Err(Error::Refused(format!(
                "the procedure would make {counted} to site `{}` and there is no terminal to confirm on: read `uprun plan {} --site {}{}`, then re-run with --yes. Nothing was changed.",
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
                irreversible: s.irreversible,
            });
        }
        let also = if questions > 0 {
            " and answer yes to the procedure's question(s) listed above"
        } else {
            ""
        };
        let q = if planned.iter().any(|s| s.changes && s.irreversible) {
            format!("Proceed with these {counted}{also}? Your answer covers the whole run, the IRREVERSIBLE step included; nothing more will be asked.")
        } else {
            format!("Proceed with these {counted}{also}? Your answer covers the whole run; nothing more will be asked.")
        };
        if !crate::ops::ask(&q) {
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
                user: super::operator_name(),
                pid: std::process::id(),
                uprun_version: env!("CARGO_PKG_VERSION").into(),
            })?;
            j
        }
        Some(id) => {
            let (j, repaired) = Journal::reopen(&site, id)?;
            if let Some(note) = repaired {
                j.append(&Entry::Note {
                    at: crate::db::now_rfc3339(),
                    message: note.clone(),
                })?;
                reporter.event(Event::Log {
                    level: "warn".into(),
                    message: note,
                });
            }
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
            if let Some(line) = session.ops.audited() {
                summary.push(line);
            }
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
            for s in not_attempted(&planned, &done) {
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
                journal::shell_word(&inputs.script),
                journal::shell_word(&inputs.site),
                if inputs.release.is_empty() {
                    String::new()
                } else {
                    format!(" --release {}", journal::shell_word(&inputs.release))
                }
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

/// The planned changes this attempt never reached: each planned change is
/// matched with a step of this attempt of the same kind on the same node (in
/// order), so a step is listed once, as done, failed, refused or not done.
fn not_attempted<'a>(planned: &'a [StepRecord], done: &[StepRecord]) -> Vec<&'a StepRecord> {
    let mut attempted: std::collections::HashMap<(&str, Option<&str>), usize> =
        std::collections::HashMap::new();
    for s in done.iter().filter(|s| s.changes) {
        *attempted.entry((s.kind, s.node.as_deref())).or_default() += 1;
    }
    planned
        .iter()
        .filter(|s| s.changes)
        .filter(|s| match attempted.get_mut(&(s.kind, s.node.as_deref())) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .collect()
}
