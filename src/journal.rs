//! The run journal: one JSON object per line in `<state_dir>/runs/<run_id>.jsonl`.
//! Every change is announced (`started`, fsynced) before it is made and closed
//! (`done` with its result, or `failed`) after. `--resume` replays it: done
//! calls return their recorded results, the call in flight is reconciled with
//! the real state. Owns the file format; it must not decide what a step does.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{Release, Site};
use crate::db::now_rfc3339;
use crate::{Error, Result};

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

    /// Reopen the journal of an earlier run to go on with it.
    pub fn reopen(site: &Site, run_id: &str) -> Result<Journal> {
        let path = journal_path(site, run_id);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| Error::io("open journal", &path, e))?;
        Ok(Journal {
            path,
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one entry and make it durable before returning.
    pub fn append(&self, entry: &Entry) -> Result<()> {
        let mut line =
            serde_json::to_vec(entry).map_err(|e| Error::Config(format!("journal entry: {e}")))?;
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.write_all(&line)
            .and_then(|()| f.sync_data())
            .map_err(|e| Error::io("write journal", &self.path, e))
    }
}

/// Read a journal. A last line cut short by a crash is ignored.
pub fn read(path: &Path) -> Result<Vec<Entry>> {
    let f = File::open(path).map_err(|e| Error::io("read journal", path, e))?;
    let lines: Vec<String> = BufReader::new(f)
        .lines()
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io("read journal", path, e))?;
    let mut out = Vec::with_capacity(lines.len());
    let last = lines.len().saturating_sub(1);
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(e) => out.push(e),
            Err(_) if i == last => break,
            Err(e) => {
                return Err(Error::Config(format!(
                    "journal `{}` line {}: {e}; the journal is damaged",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    Ok(out)
}

/// What an earlier attempt of a run did, by call key.
#[derive(Debug, Default, Clone)]
pub struct Replay {
    pub done: HashMap<String, Value>,
    /// Calls announced but never closed: the process died during them.
    pub in_flight: HashMap<String, Value>,
    /// Calls that failed; they are retried.
    pub failed: HashMap<String, String>,
}

impl Replay {
    pub fn from_entries(entries: &[Entry]) -> Replay {
        let mut r = Replay::default();
        for e in entries {
            match e {
                Entry::Started { key, intent, .. } => {
                    r.in_flight.insert(key.clone(), intent.clone());
                    r.failed.remove(key);
                }
                Entry::Done { key, result, .. } => {
                    r.in_flight.remove(key);
                    r.done.insert(key.clone(), result.clone());
                }
                Entry::Failed { key, error, .. } => {
                    r.in_flight.remove(key);
                    r.failed.insert(key.clone(), error.clone());
                }
                _ => {}
            }
        }
        r
    }

    pub fn is_empty(&self) -> bool {
        self.done.is_empty() && self.in_flight.is_empty()
    }
}

/// One run, as `uprun runs` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub run_id: String,
    pub script: String,
    pub started: String,
    pub ended: Option<String>,
    /// succeeded, failed, interrupted, abandoned, or `unfinished` when the
    /// process died without closing the journal.
    pub outcome: String,
    pub last_step: Option<String>,
    pub steps_done: usize,
}

pub fn summarize(run_id: &str, entries: &[Entry]) -> RunInfo {
    let mut info = RunInfo {
        run_id: run_id.to_string(),
        script: String::new(),
        started: String::new(),
        ended: None,
        outcome: "unfinished".into(),
        last_step: None,
        steps_done: 0,
    };
    let mut descriptions: HashMap<&str, &str> = HashMap::new();
    for e in entries {
        match e {
            Entry::Run { at, inputs, .. } => {
                info.started = at.clone();
                info.script = inputs.script.clone();
            }
            Entry::Resume { .. } => {
                info.ended = None;
                info.outcome = "unfinished".into();
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
                info.outcome = outcome.clone();
            }
            Entry::Note { .. } | Entry::Refusal { .. } | Entry::Unknown => {}
        }
    }
    info
}

/// Every run of a site, oldest first.
pub fn list_runs(site: &Site) -> Result<Vec<(RunInfo, Vec<Entry>)>> {
    let dir = runs_dir(site);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list runs in", &dir, e)),
    };
    let mut runs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("list runs in", &dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".jsonl") else {
            continue;
        };
        let entries = read(&entry.path())?;
        runs.push((summarize(id, &entries), entries));
    }
    runs.sort_by(|a, b| a.0.run_id.cmp(&b.0.run_id));
    Ok(runs)
}

pub fn entry_now_end(outcome: &str, error: Option<String>) -> Entry {
    Entry::End {
        outcome: outcome.into(),
        at: now_rfc3339(),
        error,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    crate::config::release::hex(&Sha256::digest(bytes))
}

fn hash_tree(h: &mut Sha256, root: &Path, dir: &Path) -> Result<()> {
    let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(it) => it
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io("read", dir, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read", dir, e)),
    };
    names.sort();
    for p in names {
        let rel = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        if p.is_dir() {
            hash_tree(h, root, &p)?;
        } else {
            let bytes = std::fs::read(&p).map_err(|e| Error::io("read", &p, e))?;
            h.update(rel.as_bytes());
            h.update([0]);
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
    }
    Ok(())
}

/// Digests of the script, the site file and the release (release.toml,
/// payload and migrations, names and contents).
pub fn digest_inputs(
    script_name: &str,
    script_text: &str,
    site: &Site,
    release: &Release,
) -> Result<Inputs> {
    let site_bytes =
        std::fs::read(&site.file).map_err(|e| Error::io("read site file", &site.file, e))?;
    let mut h = Sha256::new();
    if release.present {
        hash_tree(&mut h, &release.dir, &release.dir)?;
    }
    Ok(Inputs {
        script: script_name.to_string(),
        script_sha256: sha256_hex(script_text.as_bytes()),
        site: site.file.display().to_string(),
        site_sha256: sha256_hex(&site_bytes),
        release: release.dir.display().to_string(),
        release_version: release.version.to_string(),
        release_sha256: crate::config::release::hex(&h.finalize()),
    })
}

/// What differs between the inputs of the original run and now.
pub fn changed_inputs(before: &Inputs, now: &Inputs) -> Vec<String> {
    let mut out = Vec::new();
    if before.script_sha256 != now.script_sha256 {
        out.push(format!("the script `{}` changed", now.script));
    }
    if before.site_sha256 != now.site_sha256 {
        out.push(format!("the site file `{}` changed", now.site));
    }
    if before.release_sha256 != now.release_sha256 {
        out.push(format!(
            "the release changed (was {} at `{}`, now {} at `{}`)",
            before.release_version, before.release, now.release_version, now.release
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_unknown_entry_kinds_are_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("r.jsonl");
        std::fs::write(
            &path,
            concat!(
                "{\"type\":\"refusal\",\"by\":\"rail\",\"message\":\"no\",\"at\":\"t\"}\n",
                "{\"type\":\"written_by_a_newer_uprun\",\"x\":1}\n",
                "{\"type\":\"end\",\"outcome\":\"succeeded\",\"at\":\"t\"}\n",
            ),
        )
        .expect("write");
        let entries = read(&path).expect("readable");
        assert!(matches!(&entries[0], Entry::Refusal { by, .. } if by == "rail"));
        assert!(matches!(entries[1], Entry::Unknown));
        assert_eq!(summarize("r", &entries).outcome, "succeeded");
    }
}
