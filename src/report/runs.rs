//! `uprun runs`: a site's runs from their journals, and one run's steps.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use crate::journal::{Entry, RunInfo};
use crate::output::escape_controls as escape;

/// Every run of a site, oldest first.
pub struct RunList<'a> {
    pub site_file: PathBuf,
    pub runs: &'a [(RunInfo, Vec<Entry>)],
}

impl fmt::Display for RunList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.runs.is_empty() {
            return writeln!(f, "no runs yet for {}", self.site_file.display());
        }
        writeln!(
            f,
            "{:<20}  {:<11} {:<16} {:<20}  {:<20}  {:>5}  last step",
            "run", "outcome", "script", "started", "ended", "done"
        )?;
        for (i, _) in self.runs {
            if let Some(d) = &i.damage {
                writeln!(
                    f,
                    "{}  damaged     {}; `{}` sets it aside",
                    i.run_id,
                    escape(d),
                    i.abandon_command(&self.site_file)
                )?;
                continue;
            }
            writeln!(
                f,
                "{:<20}  {:<11} {:<16} {:<20}  {:<20}  {:>5}  {}",
                i.run_id,
                i.outcome,
                i.script,
                i.started,
                i.ended.as_deref().unwrap_or("-"),
                i.steps_done,
                escape(i.last_step.as_deref().unwrap_or("-"))
            )?;
        }
        Ok(())
    }
}

/// One run, entry by entry.
pub struct RunShow<'a> {
    pub info: &'a RunInfo,
    pub entries: &'a [Entry],
}

impl fmt::Display for RunShow<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.info;
        writeln!(f, "run {} ({}): {}", info.run_id, info.script, info.outcome)?;
        let mut described: HashMap<&str, &str> = HashMap::new();
        for e in self.entries {
            match e {
                Entry::Run {
                    at, inputs, user, ..
                } => writeln!(
                    f,
                    "{at}  started by {user}: {} on {} with release {} ({})",
                    inputs.script, inputs.site, inputs.release_version, inputs.release
                )?,
                Entry::Resume {
                    at,
                    accepted_changes,
                    ..
                } => {
                    writeln!(f, "{at}  resumed")?;
                    for c in accepted_changes {
                        writeln!(f, "{at}    accepted: {c}")?;
                    }
                }
                Entry::Started {
                    at,
                    key,
                    description,
                    ..
                } => {
                    described.insert(key, description);
                    writeln!(f, "{at}  started  {}", escape(description))?
                }
                Entry::Done { at, key, ms, .. } => writeln!(
                    f,
                    "{at}  done     {} ({ms} ms)",
                    escape(described.get(key.as_str()).copied().unwrap_or(key))
                )?,
                Entry::Failed { at, key, error } => writeln!(
                    f,
                    "{at}  FAILED   {}: {}",
                    escape(described.get(key.as_str()).copied().unwrap_or(key)),
                    escape(error)
                )?,
                Entry::Note { at, message } => writeln!(f, "{at}  note     {}", escape(message))?,
                Entry::Refusal { at, by, message } => {
                    writeln!(f, "{at}  refused  {} (by the {by})", escape(message))?
                }
                Entry::Unknown => {}
                Entry::End { at, outcome, error } => writeln!(
                    f,
                    "{at}  {outcome}{}",
                    error
                        .as_ref()
                        .map(|e| format!(": {}", escape(e)))
                        .unwrap_or_default()
                )?,
            }
        }
        Ok(())
    }
}
