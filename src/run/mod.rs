//! The run, as a library: [`prepare`] (load the inputs, lock the site, load
//! the journal of a run to resume, plan with reads real and nothing changed),
//! then [`Prepared::consent`] (what the operator must accept), then
//! [`Prepared::execute`] (the run, every change journaled), which ends in a
//! [`RunReport`]. The CLI only asks the question and renders the report;
//! `uprun test` (the rehearsal) drives [`Session`] on disposable copies.
//! Beside the run: [`plan`], and the changes to a site's records that are
//! not runs, [`abandon`] and [`check_adoption`].

mod abandon;
mod adopt;
mod plan;
mod process;
mod resume;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Release, Site};
use crate::journal::{self, Entry, Journal, Replay};
use crate::lock::SiteLock;
use crate::ops::{Confirmation, Mode, Outcome, RunSpec, StepKind, StepRecord};
use crate::output::{Event, Output, OutputMode};
use crate::script::Procedure;
use crate::{Error, Result};

pub use crate::script::Session;
pub use abandon::abandon;
pub use adopt::{check_adoption, AdoptRequest, Adoption};
pub use plan::plan;
pub use process::{interactive, new_run_id, operator_name, recover_for_reading};
pub use resume::{load_resume, resume_command};

/// What to run: a procedure, a site file, a release folder.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub script: &'a str,
    pub site: &'a Path,
    pub release: Option<&'a Path>,
}

#[derive(Debug, Default, Clone)]
pub struct RunOptions {
    /// `--yes`: the operator consents without being asked.
    pub yes: bool,
    /// `--resume ID`: go on with an earlier run from its journal.
    pub resume: Option<String>,
    pub accept_changed_inputs: bool,
}

/// A run planned and locked, not started: nothing was changed yet.
pub struct Prepared {
    site: Site,
    release: Release,
    proc: Procedure,
    inputs: journal::Inputs,
    run_id: String,
    opts: RunOptions,
    interactive: bool,
    replay: Replay,
    accepted_changes: Vec<String>,
    planned: Vec<StepRecord>,
    // The site is ours for the whole run, planning included.
    _lock: SiteLock,
}

/// What the operator must accept before the run starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consent {
    /// Nothing to ask (no change needs consent, or `--yes`).
    NotNeeded,
    /// Ask this once, after listing the planned steps; no means nothing runs.
    Ask(String),
}

/// Load the inputs, lock the site and plan the run. A refusal or failure
/// here changes nothing.
pub fn prepare(target: &Target<'_>, opts: &RunOptions, reporter: &Output) -> Result<Prepared> {
    crate::phases::set_pass("start");
    let began = std::time::Instant::now();
    let site = Site::load(target.site)?;
    // Handshakes overlap with loading and hashing the release, the lock and
    // compiling; the planning pass takes the connections (or their errors).
    crate::nodes::prefetch(&site);
    let release = Release::load_opt(target.release)?;
    let proc = Procedure::load(target.script)?;
    crate::phases::record("load", began);
    let inputs = crate::phases::time("digest", || {
        journal::digest_inputs(&proc.recorded_name(), &proc.text, &site, &release)
    })?;
    let run_id = opts.resume.clone().unwrap_or_else(new_run_id);
    let lock = crate::phases::time("lock", || {
        SiteLock::acquire(&site, &run_id, opts.resume.as_deref())
    })?;
    // A transaction a killed process left half-done is rolled back before
    // anything reads the database (planning opens it read-only).
    if let Some(line) = crate::phases::time("recover", || crate::db::recover(&site))? {
        reporter.event(Event::Log {
            level: "warn".into(),
            message: line,
        });
    }
    let (replay, accepted_changes) = match &opts.resume {
        Some(id) => load_resume(&site, id, &inputs, opts.accept_changed_inputs)?,
        None => (Replay::default(), Vec::new()),
    };
    // Plan: reads are real, nothing changes. A refusal here changes nothing.
    let quiet = Arc::new(Output::new(OutputMode::Quiet));
    crate::phases::set_pass("plan");
    let planning = Session::plan(&site, &release, &proc, &run_id, replay.clone(), quiet)?;
    let planned_ok = crate::phases::time("plan", || planning.run());
    reporter.phases();
    if let Err(e) = planned_ok {
        reporter.line("The procedure stops while planning: nothing was changed.");
        return Err(e);
    }
    let planned = planning.ops.steps();
    Ok(Prepared {
        site,
        release,
        proc,
        inputs,
        run_id,
        opts: opts.clone(),
        interactive: interactive(),
        replay,
        accepted_changes,
        planned,
        _lock: lock,
    })
}

impl Prepared {
    /// Every step the planning pass recorded, in order.
    pub fn planned(&self) -> &[StepRecord] {
        &self.planned
    }

    /// One consent, up front, for the whole run: the question counts what
    /// `plan` counts, after listing every step with the irreversible one
    /// marked. The procedure's own questions (`confirm`) are asked with the
    /// plan too, on a terminal; without one they are answered no, as
    /// documented. Refused when consent is needed and nobody can give it.
    pub fn consent(&self) -> Result<Consent> {
        let consent = self.planned.iter().filter(|s| s.needs_consent()).count();
        let questions = self
            .planned
            .iter()
            .filter(|s| s.kind == StepKind::Confirm)
            .count();
        let (_, counted) = crate::ops::count_changes(&self.planned);
        if !(consent > 0 || (questions > 0 && self.interactive)) || self.opts.yes {
            return Ok(Consent::NotNeeded);
        }
        if !self.interactive {
            return Err(Error::Refused(format!(
                "the procedure would make {counted} to site `{}` and there is no terminal to confirm on: read `uprun plan {} --site {}{}`, then re-run with --yes. Nothing was changed.",
                self.site.file.display(),
                self.proc.name,
                self.site.file.display(),
                self.release.arg()
            )));
        }
        let also = if questions > 0 {
            " and answer yes to the procedure's question(s) listed above"
        } else {
            ""
        };
        Ok(Consent::Ask(
            if self.planned.iter().any(|s| s.changes && s.irreversible) {
                format!("Proceed with these {counted}{also}? Your answer covers the whole run, the IRREVERSIBLE step included; nothing more will be asked.")
            } else {
                format!("Proceed with these {counted}{also}? Your answer covers the whole run; nothing more will be asked.")
            },
        ))
    }

    /// Run it, journaled. `accepted`: the operator answered yes to
    /// [`Prepared::consent`]'s question. Errors before the first step (the
    /// journal, the connections) are returned as they are; how the procedure
    /// ended is in the report.
    pub fn execute(self, accepted: bool, reporter: Arc<Output>) -> Result<RunReport> {
        crate::phases::set_pass("run");
        let began = std::time::Instant::now();
        let journal = Arc::new(self.open_journal(&reporter)?);
        crate::phases::record("journal", began);
        crate::interrupt::install(reporter.clone());
        let confirmation = Confirmation {
            yes: self.opts.yes,
            interactive: self.interactive,
        };
        let spec = RunSpec::new(
            &self.site,
            &self.release,
            Mode::Run,
            &self.run_id,
            confirmation,
        )
        .with_journal(journal.clone())
        .with_replay(self.replay.clone());
        let session = Session::open(spec, &self.proc, reporter.clone())?;
        if accepted {
            session.ops.accept_changes();
        }
        reporter.event(Event::RunStarted {
            run_id: self.run_id.clone(),
            mode: if self.opts.resume.is_some() {
                "resume".into()
            } else {
                "run".into()
            },
            script: self.proc.name.clone(),
            site: self.site.file.display().to_string(),
        });
        reporter.phases();
        for c in &self.accepted_changes {
            reporter.event(Event::Log {
                level: "warn".into(),
                message: format!("resuming although {c} (accepted)"),
            });
        }
        let outcome = session.run();
        let done = session.ops.steps();
        let mut report = RunReport {
            run_id: self.run_id.clone(),
            outcome: Outcome::Succeeded,
            error: None,
            changes: session.ops.summary(),
            downtime: None,
            audited: None,
            not_done: Vec::new(),
            database_upgraded: done.iter().any(StepRecord::upgraded_database),
            resume: resume_command(
                &self.inputs.script,
                &self.inputs.site,
                &self.inputs.release,
                &self.run_id,
            ),
            journal: journal.path().to_path_buf(),
        };
        // The downtime window, from what the journal recorded (this attempt
        // and any earlier one of a resumed run).
        if let Some(w) = journal::read(journal.path())
            .ok()
            .and_then(|entries| crate::downtime::window(&entries))
        {
            let text = w.describe();
            let _ = journal.append(&Entry::Note {
                at: crate::db::now_rfc3339(),
                message: text.clone(),
            });
            report.downtime = Some(text);
        }
        match outcome {
            Ok(()) => {
                report.audited = session.ops.audited();
                journal.append(&journal::entry_now_end(Outcome::Succeeded.as_str(), None))?;
            }
            Err(e) => {
                report.outcome = Outcome::of_error(&e);
                let _ = journal.append(&journal::entry_now_end(
                    report.outcome.as_str(),
                    Some(e.to_string()),
                ));
                report.not_done = crate::ops::not_attempted(&self.planned, &done)
                    .into_iter()
                    .map(|s| s.description.clone())
                    .collect();
                report.error = Some(e);
            }
        }
        Ok(report)
    }

    /// A new run's journal with its header, or the resumed run's, reopened.
    fn open_journal(&self, reporter: &Output) -> Result<Journal> {
        let Some(id) = &self.opts.resume else {
            let j = Journal::create(&self.site, &self.run_id)?;
            j.append(&Entry::Run {
                run_id: self.run_id.clone(),
                at: crate::db::now_rfc3339(),
                inputs: self.inputs.clone(),
                user: operator_name(),
                pid: std::process::id(),
                uprun_version: env!("CARGO_PKG_VERSION").into(),
            })?;
            return Ok(j);
        };
        let (j, repaired) = Journal::reopen(&self.site, id)?;
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
            accepted_changes: self.accepted_changes.clone(),
        })?;
        Ok(j)
    }
}

/// How a run ended, for the CLI to render.
#[derive(Debug)]
pub struct RunReport {
    pub run_id: String,
    pub outcome: Outcome,
    /// Why it did not succeed.
    pub error: Option<Error>,
    /// The changes of this attempt with their status (done, FAILED,
    /// refused, interrupted), and refusals the procedure caught.
    pub changes: Vec<String>,
    /// The downtime window the journal shows.
    pub downtime: Option<String>,
    /// What the run-end audit observed, when the run succeeded.
    pub audited: Option<String>,
    /// Planned changes this attempt never reached.
    pub not_done: Vec<String>,
    /// This attempt upgraded the database (irreversibly).
    pub database_upgraded: bool,
    /// The command that resumes this run.
    pub resume: String,
    pub journal: PathBuf,
}

impl RunReport {
    /// The lines under `run <outcome>`.
    pub fn summary(&self) -> Vec<String> {
        let mut out = self.changes.clone();
        out.extend(self.downtime.clone());
        if self.error.is_none() {
            out.extend(self.audited.clone());
            return out;
        }
        out.extend(self.not_done.iter().map(|d| format!("not done: {d}")));
        out.push(if self.database_upgraded {
            "the database WAS upgraded (irreversible); the verified backup is listed above".into()
        } else {
            "the database was NOT upgraded by this attempt".into()
        });
        out.push(format!("fix the cause, then resume: {}", self.resume));
        out.push(format!("journal: {}", self.journal.display()));
        out
    }

    /// The `run_finished` event that shows it.
    pub fn finished_event(&self) -> Event {
        Event::RunFinished {
            outcome: self.outcome.as_str().into(),
            summary: self.summary(),
        }
    }

    /// The exit code, or the error `main` renders.
    pub fn into_result(self) -> Result<i32> {
        match self.error {
            None => Ok(0),
            Some(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(error: Option<Error>) -> RunReport {
        RunReport {
            run_id: "r1".into(),
            outcome: error.as_ref().map_or(Outcome::Succeeded, Outcome::of_error),
            error,
            changes: vec!["done: backup".into()],
            downtime: Some("downtime: 2 s".into()),
            audited: Some("audit: every node at 2.0.0".into()),
            not_done: vec!["upgrade the database".into()],
            database_upgraded: false,
            resume: "uprun run p --site s --resume r1 --yes".into(),
            journal: PathBuf::from("/j/r1.jsonl"),
        }
    }

    #[test]
    fn a_successful_run_reports_its_changes_downtime_and_audit() {
        let r = report(None);
        assert_eq!(
            r.summary(),
            [
                "done: backup",
                "downtime: 2 s",
                "audit: every node at 2.0.0"
            ]
        );
        assert_eq!(r.into_result().expect("exit code"), 0);
    }

    #[test]
    fn a_failed_run_reports_what_was_not_done_and_how_to_resume() {
        let r = report(Some(Error::Interrupted("interrupted".into())));
        assert_eq!(r.outcome, Outcome::Interrupted);
        assert_eq!(
            r.summary(),
            [
                "done: backup",
                "downtime: 2 s",
                "not done: upgrade the database",
                "the database was NOT upgraded by this attempt",
                "fix the cause, then resume: uprun run p --site s --resume r1 --yes",
                "journal: /j/r1.jsonl",
            ]
        );
        let Event::RunFinished { outcome, .. } = r.finished_event() else {
            panic!("not a run_finished event");
        };
        assert_eq!(outcome, "interrupted");
        assert_eq!(r.into_result().map_err(|e| e.exit_code()), Err(130));
    }
}
