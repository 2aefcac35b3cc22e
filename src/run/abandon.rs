//! `uprun runs abandon`: set an unfinished run aside, so that new runs may
//! start. Nothing is undone.

use crate::config::Site;
use crate::journal::{self, Entry, Journal, RunInfo};
use crate::ops::Outcome;
use crate::{Error, Result};

/// Close the journal of run `info` as abandoned, under the site lock.
/// Returns the lines to show.
pub fn abandon(site: &Site, info: &RunInfo) -> Result<Vec<String>> {
    let id = &info.run_id;
    if info.ended.is_some() {
        return Err(Error::Config(format!(
            "run `{id}` already ended ({}); nothing to abandon",
            info.outcome
        )));
    }
    let _lock = crate::lock::SiteLock::acquire(site, id, Some(id))?;
    let path = journal::journal_path(site, id);
    let end = || {
        journal::entry_now_end(
            Outcome::Abandoned.as_str(),
            Some("abandoned by the operator".into()),
        )
    };
    let mut lines = Vec::new();
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
        j.append(&end())?;
        lines.push(format!(
            "the damaged journal of run {id} was moved to `{}`",
            aside.display()
        ));
    } else {
        let (j, repaired) = Journal::reopen(site, id)?;
        if let Some(note) = repaired {
            j.append(&Entry::Note {
                at: crate::db::now_rfc3339(),
                message: note.clone(),
            })?;
            lines.push(note);
        }
        j.append(&end())?;
    }
    // Payloads the run staged on the nodes (outside any instance) go.
    lines.extend(crate::nodes::staging::clean_site(site));
    lines.push(format!("run {id} abandoned; new runs may start. Nothing was undone: `uprun status --site {}` shows the site.", site.file.display()));
    Ok(lines)
}
