//! `--resume`: the journal of the run to go on with, checked against the
//! inputs of this attempt.

use crate::config::Site;
use crate::journal::{self, Entry, Replay, RunOutcome};
use crate::ops::Outcome;
use crate::{Error, Result};

pub use crate::journal::resume_command;

/// Load the journal of the run to resume, and check it may be resumed with
/// these inputs. Returns what it did and the input changes accepted.
pub fn load_resume(
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
    if matches!(
        info.outcome,
        RunOutcome::Ended(Outcome::Succeeded | Outcome::Abandoned)
    ) {
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
