//! The test builder: lays out a demo sandbox in a temporary folder, runs the
//! `uprun` binary against it and reads back the real state.

#![allow(dead_code)]

use std::collections::BTreeMap;
pub mod browser;
pub mod tds;

use std::path::{Path, PathBuf};

use assert_cmd::Command;

pub mod fifo;
pub mod sshd;

pub struct Sandbox {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
}

impl Sandbox {
    /// A fresh sandbox (`uprun demo --setup-only`).
    pub fn new() -> Sandbox {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("sb");
        uprun()
            .args(["demo", "--setup-only", "--dir"])
            .arg(&dir)
            .assert()
            .success();
        Sandbox { _tmp: tmp, dir }
    }

    /// Give the sandbox's application a start command that does not check
    /// the sandbox's SQLite file: for sites pointed at another database.
    pub fn plain_start(&self) {
        let text = std::fs::read_to_string(self.site()).expect("site");
        let start = text
            .lines()
            .find(|l| l.starts_with("start = "))
            .expect("start command")
            .to_string();
        let plain = "start = \"echo running {app} {version} on {node} > service.state\"";
        std::fs::write(self.site(), text.replace(&start, plain)).expect("write site");
    }

    pub fn site(&self) -> PathBuf {
        self.dir.join("site.toml")
    }

    pub fn release(&self) -> PathBuf {
        self.dir.join("release")
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("db/app.sqlite")
    }

    /// `uprun <cmd> <script> --site S --release R`, plus `extra`.
    pub fn cmd(&self, cmd: &str, script: &str, extra: &[&str]) -> Command {
        Command::from_std(self.process(cmd, script, extra))
    }

    /// [`Sandbox::cmd`] as a plain `std::process::Command` (to run it on a
    /// terminal, say).
    pub fn process(
        &self,
        cmd: &str,
        script: impl AsRef<std::ffi::OsStr>,
        extra: &[&str],
    ) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("uprun"));
        c.arg(cmd)
            .arg(script)
            .arg("--site")
            .arg(self.site())
            .arg("--release")
            .arg(self.release())
            .args(extra);
        c
    }

    /// `uprun ARGS --site S`: a command about the site (status, runs, ...).
    pub fn on_site(&self, args: &[&str]) -> Command {
        let mut c = uprun();
        c.args(args).arg("--site").arg(self.site());
        c
    }

    /// Write a custom procedure into the sandbox and return its path.
    pub fn script(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::write(&p, text).expect("write script");
        p
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.db_path()).expect("open db")
    }

    pub fn exec_sql(&self, sql: &str) {
        self.db().execute_batch(sql).expect("sql");
    }

    pub fn db_version(&self) -> String {
        self.db()
            .query_row(
                "SELECT value FROM app_meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .expect("version")
    }

    pub fn manifest(&self, node: &str) -> serde_json::Value {
        let p = self.dir.join("nodes").join(node).join(".uprun-node.json");
        serde_json::from_slice(&std::fs::read(&p).expect("manifest")).expect("manifest json")
    }

    /// Every file under the database and node folders, with its bytes.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        for sub in ["db", "nodes"] {
            collect(&self.dir.join(sub), &self.dir, &mut out);
        }
        out
    }

    /// Assert that the database and node folders are byte-identical to
    /// `before`, naming the files that differ.
    pub fn assert_unchanged(&self, before: &BTreeMap<PathBuf, Vec<u8>>, what: &str) {
        let after = self.snapshot();
        let mut diff: Vec<String> = Vec::new();
        for (p, bytes) in before {
            match after.get(p) {
                None => diff.push(format!("removed {}", p.display())),
                Some(b) if b != bytes => diff.push(format!("changed {}", p.display())),
                _ => {}
            }
        }
        for p in after.keys().filter(|p| !before.contains_key(*p)) {
            diff.push(format!("added {}", p.display()));
        }
        assert!(diff.is_empty(), "{what}: {diff:?}");
    }

    /// `uprun run SCRIPT --site SITE --release R --yes EXTRA` in the
    /// background, output piped.
    pub fn spawn_run(&self, site: &Path, script: &str, extra: &[&str]) -> std::process::Child {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("uprun"))
            .arg("run")
            .arg(script)
            .arg("--site")
            .arg(site)
            .arg("--release")
            .arg(self.release())
            .arg("--yes")
            .args(extra)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn uprun")
    }

    /// The run journals in `.uprun/runs`, sorted by name (none when the
    /// folder does not exist).
    pub fn journals(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = match std::fs::read_dir(self.dir.join(".uprun/runs")) {
            Ok(it) => it.map(|e| e.expect("entry").path()).collect(),
            Err(_) => Vec::new(),
        };
        out.sort();
        out
    }

    /// The sandbox's one run journal (asserts there is exactly one).
    pub fn only_journal(&self) -> PathBuf {
        let mut js = self.journals();
        assert_eq!(js.len(), 1, "one journal expected: {js:?}");
        js.remove(0)
    }

    pub fn backups(&self) -> Vec<PathBuf> {
        match std::fs::read_dir(self.dir.join("backups")) {
            Ok(it) => it.map(|e| e.expect("entry").path()).collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn collect(dir: &Path, base: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.expect("entry").path();
        if p.is_dir() {
            collect(&p, base, out);
        } else {
            out.insert(
                p.strip_prefix(base).expect("prefix").to_path_buf(),
                std::fs::read(&p).expect("read"),
            );
        }
    }
}

pub fn uprun() -> Command {
    Command::cargo_bin("uprun").expect("uprun binary")
}

/// The run id of a journal: its file name without `.jsonl`.
pub fn run_id(journal: &Path) -> String {
    journal
        .file_name()
        .expect("name")
        .to_string_lossy()
        .trim_end_matches(".jsonl")
        .to_string()
}

/// A journal's entries (lines that are not JSON, such as a torn last line,
/// are passed over).
pub fn journal_entries(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .expect("journal")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A command's stdout then its stderr, as text.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `planned` events of JSON-lines output, in order.
pub fn planned(stdout: &[u8]) -> Vec<serde_json::Value> {
    events(stdout)
        .into_iter()
        .filter(|e| e["event"] == "planned")
        .collect()
}

/// Parse JSON-lines output into events.
pub fn events(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("json event"))
        .collect()
}
