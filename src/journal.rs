//! The run journal: one JSON object per line in `<state_dir>/runs/<run_id>.jsonl`.
//! Every change is announced (`started`, fsynced) before it is made and closed
//! (`done` with its result, or `failed`) after. `--resume` replays it: done
//! calls return their recorded results, the call in flight is reconciled with
//! the real state. Owns the file format; it must not decide what a step does.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::release::sha256_hex;
use crate::config::{DbKind, Release, Site};
use crate::db::now_rfc3339;
use crate::script::Procedure;
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

/// A last line cut short by a crash or a full disk.
#[derive(Debug, Clone)]
pub struct Torn {
    /// 1-based line number.
    pub line: usize,
    /// Where the torn line starts: the length of the complete part.
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// A journal as read: its complete entries and a torn last line, if any.
#[derive(Debug, Clone)]
pub struct Content {
    pub entries: Vec<Entry>,
    pub torn: Option<Torn>,
    /// The last line is a complete entry without its newline.
    pub missing_newline: bool,
}

/// Read a journal. A torn last line (not valid JSON: the write was cut short)
/// is returned apart; a damaged line before the last is an error naming the
/// file and the line.
pub fn read_full(path: &Path) -> Result<Content> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read journal", path, e))?;
    let mut out = Content {
        entries: Vec::new(),
        torn: None,
        missing_newline: false,
    };
    let mut offset = 0usize;
    let mut line_no = 0usize;
    while offset < bytes.len() {
        line_no += 1;
        let rest = &bytes[offset..];
        let (line, next, complete) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], offset + i + 1, true),
            None => (rest, bytes.len(), false),
        };
        let is_last = next >= bytes.len();
        if line.iter().all(u8::is_ascii_whitespace) {
            offset = next;
            continue;
        }
        match serde_json::from_slice::<Entry>(line) {
            Ok(e) => {
                out.entries.push(e);
                out.missing_newline = !complete;
            }
            Err(_) if is_last => {
                out.torn = Some(Torn {
                    line: line_no,
                    offset: offset as u64,
                    bytes: rest.to_vec(),
                });
                out.missing_newline = false;
            }
            Err(e) => {
                return Err(Error::Journal(format!(
                    "journal `{}` line {line_no}: {e}; the journal is damaged in the middle (not a torn last line). \
Keep a copy of it for the record; `uprun runs abandon` sets it aside so new runs may start",
                    path.display(),
                )))
            }
        }
        offset = next;
    }
    Ok(out)
}

/// Read a journal's complete entries; a torn last line is left out.
pub fn read(path: &Path) -> Result<Vec<Entry>> {
    Ok(read_full(path)?.entries)
}

/// A free name next to `path`: `<path>.<what>`, then `<path>.<what>-2`...
pub fn side_file(path: &Path, what: &str) -> PathBuf {
    let base = format!("{}.{what}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() {
        n += 1;
        candidate = PathBuf::from(format!("{base}-{n}"));
    }
    candidate
}

/// What an earlier attempt of a run did, by call key.
#[derive(Debug, Default, Clone)]
pub struct Replay {
    pub done: HashMap<String, Value>,
    /// Calls announced but never closed: the process died during them.
    pub in_flight: HashMap<String, Value>,
    /// Calls that failed; they are retried.
    pub failed: HashMap<String, String>,
    /// What each call was announced as doing (its `started` description).
    pub descriptions: HashMap<String, String>,
}

impl Replay {
    pub fn from_entries(entries: &[Entry]) -> Replay {
        let mut r = Replay::default();
        for e in entries {
            match e {
                Entry::Started {
                    key,
                    intent,
                    description,
                    ..
                } => {
                    r.in_flight.insert(key.clone(), intent.clone());
                    r.descriptions.insert(key.clone(), description.clone());
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
    /// The procedure: a bundled name or an absolute path (from the header).
    pub script: String,
    /// The site file and the release folder, from the header (absolute;
    /// empty when the run had no release or the header is missing).
    pub site: String,
    pub release: String,
    pub started: String,
    pub ended: Option<String>,
    /// succeeded, failed, interrupted, incomplete, abandoned; `unfinished`
    /// when the process died (killed, power loss) without closing the journal;
    /// `never started` when the journal has no header (the process died
    /// before its first entry: nothing was changed); `damaged` when the
    /// journal cannot be read (see `damage`).
    pub outcome: String,
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
            self.outcome.as_str(),
            "unfinished" | "failed" | "interrupted" | "incomplete" | "damaged"
        )
    }

    /// A run whose process died without closing its journal (or whose journal
    /// cannot be read): it keeps the site until resumed or abandoned.
    pub fn holds_site(&self) -> bool {
        matches!(self.outcome.as_str(), "unfinished" | "damaged")
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
        outcome: "never started".into(),
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
                info.outcome = "unfinished".into();
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

/// A run whose journal cannot be read: listed as damaged, with why.
pub fn damaged(run_id: &str, error: &Error) -> RunInfo {
    RunInfo {
        damage: Some(error.to_string()),
        outcome: "damaged".into(),
        ..summarize(run_id, &[])
    }
}

/// Every run of a site, oldest first. A journal that cannot be read is listed
/// as damaged (with no entries); the others are listed as usual.
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
        match read(&entry.path()) {
            Ok(entries) => runs.push((summarize(id, &entries), entries)),
            Err(e) => runs.push((damaged(id, &e), Vec::new())),
        }
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

/// An absolute form of `p` (journals are read from any working folder).
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Digests of the script, the site file and everything a run reads from the
/// release: the release file, the payload folder wherever it lives, and the
/// migrations folder of each database kind (names and contents). Paths are
/// recorded absolute.
pub fn digest_inputs(proc: &Procedure, site: &Site, release: &Release) -> Result<Inputs> {
    let site_bytes =
        std::fs::read(&site.file).map_err(|e| Error::io("read site file", &site.file, e))?;
    let mut h = Sha256::new();
    if release.present {
        let file = std::fs::read(&release.file).map_err(|e| Error::io("read", &release.file, e))?;
        h.update(b"release file\0");
        h.update((file.len() as u64).to_le_bytes());
        h.update(&file);
        h.update(b"payload\0");
        hash_tree(&mut h, &release.payload, &release.payload)?;
        for kind in [DbKind::Sqlite, DbKind::Mssql] {
            if let Some(dir) = release.migrations_dir(kind) {
                h.update(format!("migrations {}\0", kind.as_str()).as_bytes());
                hash_tree(&mut h, &dir, &dir)?;
            }
        }
    }
    let script = match &proc.base {
        Some(_) => absolute(Path::new(&proc.name)).display().to_string(),
        None => proc.name.clone(),
    };
    Ok(Inputs {
        script,
        script_sha256: sha256_hex(proc.text.as_bytes()),
        site: absolute(&site.file).display().to_string(),
        site_sha256: sha256_hex(&site_bytes),
        release: if release.present {
            absolute(&release.dir).display().to_string()
        } else {
            String::new()
        },
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

    #[test]
    fn a_torn_last_line_is_kept_apart_and_a_damaged_middle_line_is_an_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("r.jsonl");
        let note = "{\"type\":\"note\",\"at\":\"t\",\"message\":\"m\"}";
        std::fs::write(&path, format!("{note}\n{note}\n{{\"type\":\"no")).expect("write");
        let c = read_full(&path).expect("readable");
        assert_eq!(c.entries.len(), 2);
        let torn = c.torn.expect("torn");
        assert_eq!(
            (torn.line, torn.bytes.as_slice()),
            (3, &b"{\"type\":\"no"[..])
        );
        assert_eq!(torn.offset as usize, 2 * (note.len() + 1));

        std::fs::write(&path, note).expect("write");
        let c = read_full(&path).expect("readable");
        assert!(c.torn.is_none() && c.missing_newline && c.entries.len() == 1);

        std::fs::write(&path, format!("{note}\n{{bad\n{note}\n")).expect("write");
        let e = read_full(&path).expect_err("damaged").to_string();
        assert!(e.contains("line 2") && e.contains("r.jsonl"), "{e}");
    }

    #[test]
    fn a_journal_without_header_never_started_and_holds_nothing() {
        let info = summarize("r", &[]);
        assert_eq!(info.outcome, "never started");
        assert!(!info.holds_site() && !info.needs_attention());
        assert!(info.resume_command(Path::new("/s/site.toml")).is_none());
    }
}
