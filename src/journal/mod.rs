//! The run journal: one JSON object per line in `<state_dir>/runs/<run_id>.jsonl`.
//! Every change is announced (`started`, fsynced) before it is made and closed
//! (`done` with its result, or `failed`) after. `--resume` replays it: done
//! calls return their recorded results, the call in flight is reconciled with
//! the real state. Owns the file format; it must not decide what a step does.

//!
//! This file holds the format (`Entry`) and the writer (`Journal`); `read`
//! reads journals back and replays them, `runs` summarises runs for
//! `uprun runs`, `inputs` digests what a run read.

mod inputs;
mod outcome;
mod read;
mod runs;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Site;
use crate::db::now_rfc3339;
use crate::{Error, Result};

pub use inputs::{changed_inputs, digest_inputs};
pub use outcome::{Outcome, RunOutcome};
pub use read::{read, read_full, side_file, Replay};
pub use runs::{damaged, list_runs, resume_command, shell_word, summarize, RunInfo};

/// Digests of a run's inputs; a resume with different inputs is refused unless
/// the operator accepts it explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    pub script: String,
    pub script_sha256: String,
    pub site: String,
    pub site_sha256: String,
    pub release: String,
    pub release_version: String,
    pub release_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Entry {
    Run {
        run_id: String,
        at: String,
        #[serde(flatten)]
        inputs: Inputs,
        user: String,
        pid: u32,
        uprun_version: String,
    },
    Resume {
        at: String,
        pid: u32,
        /// Inputs that differ from the original run, accepted by the operator.
        accepted_changes: Vec<String>,
    },
    Started {
        key: String,
        call: String,
        node: Option<String>,
        description: String,
        /// What the step is about to do (the record it will remove or create,
        /// the upgrade it will apply), for reconciliation after a crash.
        intent: Value,
        at: String,
        /// The node of the `for_each_node` closure the step ran in, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        within: Option<String>,
    },
    Done {
        key: String,
        result: Value,
        ms: u64,
        at: String,
    },
    Failed {
        key: String,
        error: String,
        at: String,
    },
    Note {
        at: String,
        message: String,
    },
    /// A refusal raised in the procedure (by a rail, or by the procedure
    /// with `refuse`), recorded whether or not the script caught it.
    Refusal {
        /// `rail` or `procedure`.
        by: String,
        message: String,
        at: String,
    },
    End {
        outcome: String,
        at: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// An entry of a kind this version does not know (written by a newer
    /// uprun): kept readable, ignored.
    #[serde(other)]
    Unknown,
}

/// An open journal, appended to durably.
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
}

pub fn runs_dir(site: &Site) -> PathBuf {
    site.state_dir.join("runs")
}

pub fn journal_path(site: &Site, run_id: &str) -> PathBuf {
    runs_dir(site).join(format!("{run_id}.jsonl"))
}

impl Journal {
    /// Create the journal of a new run.
    pub fn create(site: &Site, run_id: &str) -> Result<Journal> {
        let dir = runs_dir(site);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("create journal folder", &dir, e))?;
        let path = journal_path(site, run_id);
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("create journal", &path, e))?;
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(Journal {
            path,
            file: Mutex::new(file),
        })
    }

    /// Reopen the journal of an earlier run to go on with it. A last line
    /// torn by a crash or a full disk is moved to a side file next to the
    /// journal and the journal is cut back to its last complete entry before
    /// anything is appended (appending after the fragment would damage the
    /// journal for good). Returns what was repaired, for the journal's note
    /// and the output. A line damaged in the middle is an error.
    pub fn reopen(site: &Site, run_id: &str) -> Result<(Journal, Option<String>)> {
        let path = journal_path(site, run_id);
        let content = read_full(&path)?;
        let mut repaired = None;
        if let Some(torn) = &content.torn {
            let side = side_file(&path, "torn");
            std::fs::write(&side, &torn.bytes)
                .and_then(|()| File::open(&side).and_then(|f| f.sync_all()))
                .map_err(|e| Error::io("preserve the torn journal line in", &side, e))?;
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| Error::io("open journal", &path, e))?;
            f.set_len(torn.offset)
                .and_then(|()| f.sync_all())
                .map_err(|e| Error::io("cut the torn line off journal", &path, e))?;
            repaired = Some(format!(
                "the journal's last line (line {}, {} byte(s)) was torn by a crash or a full disk; it was moved to `{}` and the journal cut back to its last complete entry",
                torn.line,
                torn.bytes.len(),
                side.display()
            ));
        }
        let mut file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("open journal", &path, e))?;
        if content.missing_newline {
            file.write_all(b"\n")
                .and_then(|()| file.sync_data())
                .map_err(|e| Error::io("write journal", &path, e))?;
        }
        Ok((
            Journal {
                path,
                file: Mutex::new(file),
            },
            repaired,
        ))
    }

    /// A new journal at `path` (`runs abandon` of a damaged journal, which
    /// is set aside: the new one records the abandon).
    pub fn create_at(path: &Path) -> Result<Journal> {
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io("create journal", path, e))?;
        Ok(Journal {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one entry and make it durable before returning.
    pub fn append(&self, entry: &Entry) -> Result<()> {
        let mut line = serde_json::to_vec(entry)
            .map_err(|e| Error::Internal(format!("journal entry: {e}")))?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .map_err(|e| Error::io("write journal", &self.path, e))
    }
}

pub fn entry_now_end(outcome: &str, error: Option<String>) -> Entry {
    Entry::End {
        outcome: outcome.into(),
        at: now_rfc3339(),
        error,
    }
}

/// An absolute form of `p` (journals are read from any working folder).
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
