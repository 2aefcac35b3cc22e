//! Runs as `uprun runs` and `uprun status` list them: a summary of each
//! journal, and the commands that resume or abandon a run.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use super::{absolute, read, runs_dir, Entry, Outcome, RunOutcome};
use crate::config::Site;
use crate::{Error, Result};

/// One run, as `uprun runs` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub run_id: String,
    /// The procedure: a bundled name or an absolute path (from the header).
    pub script: String,
    /// The site file and the release folder, from the header (absolute;
    /// empty when the run had no release or the header is missing).
    pub site: String,
    pub release: String,
    pub started: String,
    pub ended: Option<String>,
    /// How the run ended, or that it is unfinished, never started or
    /// damaged (see `damage`).
    pub outcome: RunOutcome,
    pub last_step: Option<String>,
    pub steps_done: usize,
    /// Why the journal cannot be read, for a damaged one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub damage: Option<String>,
}

impl RunInfo {
    /// A run that changed or may have changed the site and did not end well:
    /// the operator resumes or abandons it.
    pub fn needs_attention(&self) -> bool {
        matches!(
            self.outcome,
            RunOutcome::Unfinished
                | RunOutcome::Damaged
                | RunOutcome::Ended(Outcome::Failed | Outcome::Interrupted | Outcome::Incomplete)
        )
    }

    /// A run whose process died without closing its journal (or whose journal
    /// cannot be read): it keeps the site until resumed or abandoned.
    pub fn holds_site(&self) -> bool {
        matches!(self.outcome, RunOutcome::Unfinished | RunOutcome::Damaged)
    }

    /// The exact command that resumes this run (None without a header).
    pub fn resume_command(&self, site_file: &Path) -> Option<String> {
        if self.script.is_empty() {
            return None;
        }
        let site = self.site_arg(site_file);
        Some(resume_command(
            &self.script,
            &site,
            &self.release,
            &self.run_id,
        ))
    }

    /// The command that abandons this run.
    pub fn abandon_command(&self, site_file: &Path) -> String {
        format!(
            "uprun runs abandon {} --site {}",
            self.run_id,
            shell_word(&self.site_arg(site_file))
        )
    }

    /// The site file as the journal names it, else `site_file`; absolute.
    fn site_arg(&self, site_file: &Path) -> String {
        if self.site.is_empty() {
            absolute(site_file).display().to_string()
        } else {
            self.site.clone()
        }
    }
}

/// The command that resumes run `run_id` of `script` on `site` (with
/// `release`, when not empty).
pub fn resume_command(script: &str, site: &str, release: &str, run_id: &str) -> String {
    let release = if release.is_empty() {
        String::new()
    } else {
        format!(" --release {}", shell_word(release))
    };
    format!(
        "uprun run {} --site {}{release} --resume {run_id} --yes",
        shell_word(script),
        shell_word(site)
    )
}

/// A word as a POSIX shell reads it: quoted when it holds anything but
/// plain path characters.
pub fn shell_word(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@=,".contains(c))
    {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

pub fn summarize(run_id: &str, entries: &[Entry]) -> RunInfo {
    let mut info = RunInfo {
        run_id: run_id.to_string(),
        script: String::new(),
        site: String::new(),
        release: String::new(),
        started: String::new(),
        ended: None,
        outcome: RunOutcome::NeverStarted,
        last_step: None,
        steps_done: 0,
        damage: None,
    };
    let mut descriptions: HashMap<&str, &str> = HashMap::new();
    for e in entries {
        match e {
            Entry::Run { at, inputs, .. } => {
                info.started = at.clone();
                info.script = inputs.script.clone();
                info.site = inputs.site.clone();
                info.release = inputs.release.clone();
                info.outcome = RunOutcome::Unfinished;
            }
            Entry::Resume { .. } => {
                info.ended = None;
                info.outcome = RunOutcome::Unfinished;
            }
            Entry::Started {
                key, description, ..
            } => {
                descriptions.insert(key, description);
                info.last_step = Some(format!("started: {description}"));
            }
            Entry::Done { key, .. } => {
                info.steps_done += 1;
                info.last_step = Some(format!(
                    "done: {}",
                    descriptions.get(key.as_str()).unwrap_or(&key.as_str())
                ));
            }
            Entry::Failed { key, error, .. } => {
                info.last_step = Some(format!(
                    "failed: {}: {error}",
                    descriptions.get(key.as_str()).unwrap_or(&key.as_str())
                ));
            }
            Entry::End { outcome, at, .. } => {
                info.ended = Some(at.clone());
                info.outcome = RunOutcome::ended(outcome);
            }
            Entry::Note { .. } | Entry::Refusal { .. } | Entry::Unknown => {}
        }
    }
    info
}

/// A run whose journal cannot be read: listed as damaged, with why.
pub fn damaged(run_id: &str, error: &Error) -> RunInfo {
    RunInfo {
        damage: Some(error.to_string()),
        outcome: RunOutcome::Damaged,
        ..summarize(run_id, &[])
    }
}

/// Every run of a site, oldest first. A journal that cannot be read is listed
/// as damaged (with no entries); the others are listed as usual.
pub fn list_runs(site: &Site) -> Result<Vec<(RunInfo, Vec<Entry>)>> {
    let dir = runs_dir(site);
    let mut runs = Vec::new();
    for (name, path) in crate::config::files_ending(&dir, ".jsonl", "list runs in")? {
        let id = name.strip_suffix(".jsonl").unwrap_or(&name);
        match read(&path) {
            Ok(entries) => runs.push((summarize(id, &entries), entries)),
            Err(e) => runs.push((damaged(id, &e), Vec::new())),
        }
    }
    runs.sort_by(|a, b| a.0.run_id.cmp(&b.0.run_id));
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_without_header_never_started_and_holds_nothing() {
        let info = summarize("r", &[]);
        assert_eq!(info.outcome, RunOutcome::NeverStarted);
        assert!(!info.holds_site() && !info.needs_attention());
        assert!(info.resume_command(Path::new("/s/site.toml")).is_none());
    }

    #[test]
    fn summarize_follows_the_attempts_of_a_run() {
        let inputs = crate::journal::Inputs {
            script: "up.rhai".into(),
            script_sha256: String::new(),
            site: "/s/site.toml".into(),
            site_sha256: String::new(),
            release: "/r".into(),
            release_version: "2.0.0".into(),
            release_sha256: String::new(),
        };
        let started = |key: &str| Entry::Started {
            key: key.into(),
            call: "c".into(),
            node: None,
            description: format!("step {key}"),
            intent: serde_json::Value::Null,
            at: "t".into(),
            within: None,
        };
        let mut entries = vec![
            Entry::Run {
                run_id: "r".into(),
                at: "t0".into(),
                inputs,
                user: "u".into(),
                pid: 1,
                uprun_version: "0".into(),
            },
            started("a"),
            Entry::Done {
                key: "a".into(),
                result: serde_json::Value::Null,
                ms: 1,
                at: "t1".into(),
            },
            started("b"),
            Entry::Failed {
                key: "b".into(),
                error: "boom".into(),
                at: "t2".into(),
            },
            Entry::End {
                outcome: "failed".into(),
                at: "t3".into(),
                error: None,
            },
        ];
        let info = summarize("r", &entries);
        assert_eq!((info.outcome.as_str(), info.steps_done), ("failed", 1));
        assert_eq!(info.last_step.as_deref(), Some("failed: step b: boom"));
        assert_eq!(
            (info.script.as_str(), info.started.as_str()),
            ("up.rhai", "t0")
        );
        assert_eq!(info.ended.as_deref(), Some("t3"));
        // A resume reopens the run: unfinished again, until its own end.
        entries.push(Entry::Resume {
            at: "t4".into(),
            pid: 2,
            accepted_changes: Vec::new(),
        });
        let info = summarize("r", &entries);
        assert_eq!(
            (info.outcome.as_str(), info.ended.as_deref()),
            ("unfinished", None)
        );
        assert!(info.needs_attention());
    }
}
