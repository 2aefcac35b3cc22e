//! `uprun runs`: a site's runs from their journals.

use crate::cli::{RunsArgs, RunsCommand};
use crate::config::Site;
use crate::journal::{self, Entry, Journal};
use crate::progress::escape_controls as escape;
use crate::{Error, Result};

pub fn exec(a: RunsArgs) -> Result<i32> {
    let site = Site::load(&super::site_or_default(a.site, "uprun runs")?)?;
    let runs = journal::list_runs(&site)?;
    match a.command {
        None => {
            if a.json {
                let infos: Vec<_> = runs.iter().map(|(i, _)| i).collect();
                crate::outln!(
                    "{}",
                    serde_json::to_string_pretty(&infos).unwrap_or_default()
                );
                return Ok(0);
            }
            if runs.is_empty() {
                crate::outln!("no runs yet for {}", site.file.display());
            }
            if !runs.is_empty() {
                crate::outln!(
                    "{:<20}  {:<11} {:<16} {:<20}  {:<20}  {:>5}  last step",
                    "run",
                    "outcome",
                    "script",
                    "started",
                    "ended",
                    "done"
                );
            }
            for (i, _) in &runs {
                if let Some(d) = &i.damage {
                    crate::outln!(
                        "{}  damaged     {}; `{}` sets it aside",
                        i.run_id,
                        escape(d),
                        i.abandon_command(&site.file)
                    );
                    continue;
                }
                crate::outln!(
                    "{:<20}  {:<11} {:<16} {:<20}  {:<20}  {:>5}  {}",
                    i.run_id,
                    i.outcome,
                    i.script,
                    i.started,
                    i.ended.as_deref().unwrap_or("-"),
                    i.steps_done,
                    escape(i.last_step.as_deref().unwrap_or("-"))
                );
            }
        }
        Some(RunsCommand::Show { id }) => {
            let Some((info, entries)) = runs.iter().find(|(i, _)| i.run_id == id) else {
                return Err(Error::Config(format!(
                    "no run `{id}` for site `{}`",
                    site.file.display()
                )));
            };
            if a.json {
                crate::outln!(
                    "{}",
                    serde_json::to_string_pretty(entries).unwrap_or_default()
                );
                return Ok(0);
            }
            if info.damage.is_some() {
                // The whole error, naming the file and the line.
                journal::read(&journal::journal_path(&site, &id))?;
            }
            crate::outln!("run {} ({}): {}", info.run_id, info.script, info.outcome);
            let mut described: std::collections::HashMap<&str, &str> =
                std::collections::HashMap::new();
            for e in entries {
                match e {
                    Entry::Run {
                        at, inputs, user, ..
                    } => crate::outln!(
                        "{at}  started by {user}: {} on {} with release {} ({})",
                        inputs.script,
                        inputs.site,
                        inputs.release_version,
                        inputs.release
                    ),
                    Entry::Resume {
                        at,
                        accepted_changes,
                        ..
                    } => {
                        crate::outln!("{at}  resumed");
                        for c in accepted_changes {
                            crate::outln!("{at}    accepted: {c}");
                        }
                    }
                    Entry::Started {
                        at,
                        key,
                        description,
                        ..
                    } => {
                        described.insert(key, description);
                        crate::outln!("{at}  started  {}", escape(description))
                    }
                    Entry::Done { at, key, ms, .. } => crate::outln!(
                        "{at}  done     {} ({ms} ms)",
                        escape(described.get(key.as_str()).copied().unwrap_or(key))
                    ),
                    Entry::Failed { at, key, error } => crate::outln!(
                        "{at}  FAILED   {}: {}",
                        escape(described.get(key.as_str()).copied().unwrap_or(key)),
                        escape(error)
                    ),
                    Entry::Note { at, message } => {
                        crate::outln!("{at}  note     {}", escape(message))
                    }
                    Entry::Refusal { at, by, message } => {
                        crate::outln!("{at}  refused  {} (by the {by})", escape(message))
                    }
                    Entry::Unknown => {}
                    Entry::End { at, outcome, error } => {
                        crate::outln!(
                            "{at}  {outcome}{}",
                            error
                                .as_ref()
                                .map(|e| format!(": {}", escape(e)))
                                .unwrap_or_default()
                        )
                    }
                }
            }
        }
        Some(RunsCommand::Abandon { id }) => {
            let Some((info, _)) = runs.iter().find(|(i, _)| i.run_id == id) else {
                return Err(Error::Config(format!(
                    "no run `{id}` for site `{}`",
                    site.file.display()
                )));
            };
            if info.ended.is_some() {
                return Err(Error::Config(format!(
                    "run `{id}` already ended ({}); nothing to abandon",
                    info.outcome
                )));
            }
            let _lock = crate::lock::SiteLock::acquire(&site, &id, Some(&id))?;
            let path = journal::journal_path(&site, &id);
            if let Some(damage) = &info.damage {
                // Appending to a journal damaged in the middle would leave it
                // unreadable: it is set aside, kept for the record.
                let aside = journal::side_file(&path, "damaged");
                std::fs::rename(&path, &aside)
                    .map_err(|e| Error::io("set the damaged journal aside to", &aside, e))?;
                let j = Journal::create_at(&path)?;
                j.append(&Entry::Note {
                    at: crate::db::now_rfc3339(),
                    message: format!(
                        "the journal was damaged ({damage}); it was moved to `{}`",
                        aside.display()
                    ),
                })?;
                j.append(&journal::entry_now_end(
                    "abandoned",
                    Some("abandoned by the operator".into()),
                ))?;
                crate::outln!(
                    "the damaged journal of run {id} was moved to `{}`",
                    aside.display()
                );
            } else {
                let (j, repaired) = Journal::reopen(&site, &id)?;
                if let Some(note) = repaired {
                    j.append(&Entry::Note {
                        at: crate::db::now_rfc3339(),
                        message: note.clone(),
                    })?;
                    crate::outln!("{note}");
                }
                j.append(&journal::entry_now_end(
                    "abandoned",
                    Some("abandoned by the operator".into()),
                ))?;
            }
            // Payloads the run staged on the nodes (outside any instance) go.
            for line in crate::nodes::staging::clean_site(&site) {
                crate::outln!("{line}");
            }
            crate::outln!("run {id} abandoned; new runs may start. Nothing was undone: `uprun status --site {}` shows the site.", site.file.display());
        }
    }
    Ok(0)
}
