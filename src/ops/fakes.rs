//! In-memory fakes of the database and of node transports, and a small world
//! built from them (a site, a release on disk, three nodes running the prior
//! version), so that the rails of `ops` are tested in process: every call is
//! recorded, and a test asserts what was (not) applied, written or run.
//! Test-only code.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use semver::Version;

use super::{Confirmation, Mode, Ops, RunSpec};
use crate::config::{Migration, Release, Shell, Site};
use crate::db::{AppliedMigration, BackupReceipt, Database, Progress, Row};
use crate::nodes::{
    DirState, ExecOutput, InstanceRecord, Manifest, NodeInstances, NodeTransport, PathIdentity,
    PayloadEntry,
};
use crate::output::{Output, OutputMode};
use crate::{Error, Result};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the fake database holds, and every call made to it.
#[derive(Debug)]
pub struct DbState {
    pub version: Version,
    /// Rows returned by read-only queries whose SQL contains the key.
    pub rows: Vec<(String, Vec<Row>)>,
    pub history: Vec<AppliedMigration>,
    /// Every call, in order: `version`, `query <sql>`, `backup <dir>`,
    /// `verify <file>`, `history`, `apply <name>`, `set_version <v>`, `check <name>`.
    pub calls: Vec<String>,
    /// `check_migration` fails for migrations with this name.
    pub bad_migration: Option<String>,
    /// `apply` fails (and leaves nothing) for migrations with this name.
    pub failing_migration: Option<String>,
}

impl DbState {
    /// The calls that changed the database (`apply`, `set_version`).
    pub fn changes(&self) -> Vec<String> {
        self.calls
            .iter()
            .filter(|c| c.starts_with("apply ") || c.starts_with("set_version "))
            .cloned()
            .collect()
    }

    /// The calls that took a backup.
    pub fn backups(&self) -> usize {
        self.calls
            .iter()
            .filter(|c| c.starts_with("backup "))
            .count()
    }
}

/// An in-memory `Database` over a shared `DbState`.
pub struct FakeDb {
    name: String,
    pub state: Arc<Mutex<DbState>>,
}

impl FakeDb {
    pub fn new(name: &str, version: &str) -> FakeDb {
        FakeDb {
            name: name.to_string(),
            state: Arc::new(Mutex::new(DbState {
                version: Version::parse(version).unwrap_or(Version::new(0, 0, 0)),
                rows: Vec::new(),
                history: Vec::new(),
                calls: Vec::new(),
                bad_migration: None,
                failing_migration: None,
            })),
        }
    }

    /// Another handle on the same database (for a second `Ops`).
    pub fn handle(&self) -> FakeDb {
        FakeDb {
            name: self.name.clone(),
            state: self.state.clone(),
        }
    }

    fn call(&self, what: String) -> MutexGuard<'_, DbState> {
        let mut st = lock(&self.state);
        st.calls.push(what);
        st
    }
}

impl Database for FakeDb {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&mut self) -> Result<Version> {
        let st = self.call("version".into());
        Ok(st.version.clone())
    }

    fn query_readonly(&mut self, sql: &str) -> Result<Vec<Row>> {
        let st = self.call(format!("query {sql}"));
        let first = sql.trim_start().to_ascii_uppercase();
        if !(first.starts_with("SELECT") || first.starts_with("WITH")) || sql.contains(';') {
            return Err(Error::db(
                &self.name,
                format!(
                    "check query `{sql}` would change the database; check queries must only read"
                ),
            ));
        }
        Ok(st
            .rows
            .iter()
            .find(|(k, _)| sql.contains(k.as_str()))
            .map(|(_, r)| r.clone())
            .unwrap_or_default())
    }

    fn backup(&mut self, dir: &Path, progress: Progress<'_>) -> Result<BackupReceipt> {
        let version = self
            .call(format!("backup {}", dir.display()))
            .version
            .clone();
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create backup folder", dir, e))?;
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let file = dir.join(format!("{}-{version}-{n}.bak", self.name));
        let bytes = format!("fake backup of {} at {version}\n", self.name);
        std::fs::write(&file, &bytes).map_err(|e| Error::io("write backup", &file, e))?;
        progress(1, 1);
        // Built from JSON so that fields added later (with defaults) need no
        // change here.
        serde_json::from_value(serde_json::json!({
            "database": self.name,
            "file": file.to_string_lossy(),
            "size": bytes.len(),
            "version": version.to_string(),
            "started": "2026-01-01T00:00:00Z",
            "finished": "2026-01-01T00:00:01Z",
            "verified": false,
            "verification": "",
        }))
        .map_err(|e| Error::db(&self.name, format!("fake receipt: {e}")))
    }

    fn verify_backup(&mut self, receipt: &mut BackupReceipt) -> Result<()> {
        drop(self.call(format!("verify {}", receipt.file)));
        if !Path::new(&receipt.file).is_file() {
            return Err(Error::db(
                &self.name,
                format!("backup `{}` is missing", receipt.file),
            ));
        }
        receipt.verified = true;
        receipt.verification = "fake: read back".into();
        receipt.sha256 = file_sha256(&receipt.file).unwrap_or_default();
        Ok(())
    }

    fn prove_backup(&mut self, receipt: &BackupReceipt) -> Result<()> {
        drop(self.call(format!("prove {}", receipt.file)));
        match file_sha256(&receipt.file) {
            Some(h) if !receipt.sha256.is_empty() && h == receipt.sha256 => Ok(()),
            _ => Err(Error::Refused(format!(
                "database `{}`: the backup `{}` is missing or changed since it was taken; the database was not touched",
                self.name, receipt.file
            ))),
        }
    }

    fn history(&mut self) -> Result<Vec<AppliedMigration>> {
        Ok(self.call("history".into()).history.clone())
    }

    fn apply(&mut self, m: &Migration, applied_by: &str) -> Result<()> {
        let mut st = self.call(format!("apply {}", m.name));
        if st.failing_migration.as_deref() == Some(m.name.as_str()) {
            return Err(Error::db(
                &self.name,
                format!("migration `{}` failed and was rolled back", m.name),
            ));
        }
        st.history.push(AppliedMigration {
            name: m.name.clone(),
            version: m.version.to_string(),
            checksum: m.checksum.clone(),
            applied_at: "2026-01-01T00:00:02Z".into(),
            duration_ms: 1,
            applied_by: applied_by.to_string(),
        });
        Ok(())
    }

    fn set_version(&mut self, version: &Version) -> Result<()> {
        self.call(format!("set_version {version}")).version = version.clone();
        Ok(())
    }

    fn check_migration(&self, m: &Migration) -> Result<()> {
        let mut st = lock(&self.state);
        st.calls.push(format!("check {}", m.name));
        if st.bad_migration.as_deref() == Some(m.name.as_str()) {
            return Err(Error::Config(format!(
                "migration `{}` does not parse; fix the release (nothing was applied)",
                m.path.display()
            )));
        }
        Ok(())
    }
}

/// What a fake node holds, and every call that changed it or ran a command.
#[derive(Debug, Default)]
pub struct NodeState {
    pub files: BTreeMap<String, Vec<u8>>,
    pub dirs: BTreeSet<String>,
    /// Symbolic links: path -> absolute target.
    pub links: BTreeMap<String, String>,
    /// Commands run, in order.
    pub execs: Vec<String>,
    /// Outcome of commands that contain the key (others succeed silently).
    pub outcomes: Vec<(String, ExecOutput)>,
    /// Changes made: `write <path>`, `mkdir <path>`, `rm <path>`, `upload <dest>`.
    pub changes: Vec<String>,
    /// The node says its file names ignore case (a Windows node).
    pub ignore_case: bool,
    /// Files read (`read_file`), resolved, in order.
    pub reads: Vec<String>,
}

impl NodeState {
    /// The node's manifest as stored (default when there is none).
    pub fn manifest(&self, root: &str) -> Manifest {
        self.files
            .get(&format!("{root}/{}", crate::nodes::instances::MANIFEST))
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }

    pub fn set_manifest(&mut self, root: &str, m: &Manifest) {
        let bytes = serde_json::to_vec_pretty(m).unwrap_or_default();
        self.files.insert(
            format!("{root}/{}", crate::nodes::instances::MANIFEST),
            bytes,
        );
    }

    /// Make commands containing `needle` fail with `stderr`.
    pub fn fail_on(&mut self, needle: &str, stderr: &str) {
        self.outcomes.push((
            needle.to_string(),
            ExecOutput {
                status: Some(1),
                stdout: String::new(),
                stderr: stderr.to_string(),
            },
        ));
    }

    /// Lexically normalised, with links followed (prefix by prefix).
    fn resolve(&self, path: &str) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut pending: Vec<String> = path
            .split('/')
            .rev()
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            match c.as_str() {
                "." => {}
                ".." => {
                    parts.pop();
                }
                _ => {
                    parts.push(c);
                    let here = format!("/{}", parts.join("/"));
                    if let Some(target) = self.links.get(&here) {
                        hops += 1;
                        if hops > 40 {
                            return here;
                        }
                        parts.clear();
                        pending.extend(
                            target
                                .split('/')
                                .rev()
                                .filter(|c| !c.is_empty())
                                .map(str::to_string),
                        );
                    }
                }
            }
        }
        format!("/{}", parts.join("/"))
    }

    fn exists(&self, canonical: &str) -> bool {
        self.dirs.contains(canonical) || self.files.contains_key(canonical)
    }
}

/// An in-memory `NodeTransport` over a shared `NodeState`. Paths are POSIX.
pub struct FakeNode {
    name: String,
    pub state: Arc<Mutex<NodeState>>,
}

impl FakeNode {
    pub fn new(name: &str) -> FakeNode {
        FakeNode {
            name: name.to_string(),
            state: Arc::new(Mutex::new(NodeState::default())),
        }
    }

    pub fn handle(&self) -> FakeNode {
        FakeNode {
            name: self.name.clone(),
            state: self.state.clone(),
        }
    }
}

fn ancestors(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut p = String::new();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        p.push('/');
        p.push_str(c);
        out.push(p.clone());
    }
    out
}

impl NodeTransport for FakeNode {
    fn node(&self) -> &str {
        &self.name
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let mut st = lock(&self.state);
        let p = st.resolve(path);
        st.reads.push(p.clone());
        Ok(st.files.get(&p).cloned())
    }

    fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let mut st = lock(&self.state);
        let p = st.resolve(path);
        st.changes.push(format!("write {p}"));
        st.files.insert(p, data.to_vec());
        Ok(())
    }

    fn dir_state(&self, path: &str) -> Result<DirState> {
        let st = lock(&self.state);
        let p = st.resolve(path);
        if !st.dirs.contains(&p) {
            return Ok(DirState::Missing);
        }
        let inside = format!("{p}/");
        let full = st.dirs.iter().any(|d| d.starts_with(&inside))
            || st.files.keys().any(|f| f.starts_with(&inside))
            || st.links.keys().any(|l| l.starts_with(&inside));
        Ok(if full {
            DirState::NotEmpty
        } else {
            DirState::Empty
        })
    }

    fn create_dir_all(&self, path: &str) -> Result<()> {
        let mut st = lock(&self.state);
        let p = st.resolve(path);
        st.changes.push(format!("mkdir {p}"));
        for a in ancestors(&p) {
            st.dirs.insert(a);
        }
        Ok(())
    }

    fn remove_tree(&self, path: &str) -> Result<()> {
        let mut st = lock(&self.state);
        let p = path.trim_end_matches('/').to_string();
        st.changes.push(format!("rm {p}"));
        let inside = format!("{p}/");
        st.dirs.retain(|d| *d != p && !d.starts_with(&inside));
        st.files.retain(|f, _| *f != p && !f.starts_with(&inside));
        st.links.retain(|l, _| *l != p && !l.starts_with(&inside));
        Ok(())
    }

    fn upload_entries(&self, entries: &[PayloadEntry], dest: &str) -> Result<u64> {
        let mut st = lock(&self.state);
        let dest = st.resolve(dest);
        if !st.dirs.contains(&dest) {
            return Err(Error::node(&self.name, format!("`{dest}` does not exist")));
        }
        st.changes.push(format!("upload {dest}"));
        let mut total = 0;
        for e in entries {
            let to = format!("{dest}/{}", e.rel);
            if e.is_dir {
                st.dirs.insert(to);
            } else {
                let bytes =
                    std::fs::read(&e.source).map_err(|err| Error::io("read", &e.source, err))?;
                total += bytes.len() as u64;
                st.files.insert(to, bytes);
            }
        }
        Ok(total)
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let mut st = lock(&self.state);
        let (f, t) = (st.resolve(from), st.resolve(to));
        if st.exists(&t) {
            return Err(Error::node(&self.name, format!("`{t}` exists")));
        }
        st.changes.push(format!("rename {f} {t}"));
        let inside = format!("{f}/");
        let moved = |p: &String| -> Option<String> {
            if *p == f {
                Some(t.clone())
            } else {
                p.strip_prefix(&inside).map(|rest| format!("{t}/{rest}"))
            }
        };
        st.dirs = st
            .dirs
            .iter()
            .map(|d| moved(d).unwrap_or_else(|| d.clone()))
            .collect();
        st.files = std::mem::take(&mut st.files)
            .into_iter()
            .map(|(k, v)| (moved(&k).unwrap_or(k), v))
            .collect();
        Ok(())
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        let mut st = lock(&self.state);
        let p = st.resolve(path);
        st.changes.push(format!("rm {p}"));
        st.files.remove(&p);
        Ok(())
    }

    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        let st = lock(&self.state);
        let p = st.resolve(path);
        if !st.dirs.contains(&p) {
            return Ok(None);
        }
        let inside = format!("{}/", p.trim_end_matches('/'));
        let mut names: BTreeSet<String> = BTreeSet::new();
        for k in st.dirs.iter().chain(st.files.keys()).chain(st.links.keys()) {
            if let Some(rest) = k.strip_prefix(&inside) {
                if let Some(first) = rest.split('/').next().filter(|f| !f.is_empty()) {
                    names.insert(first.to_string());
                }
            }
        }
        Ok(Some(names.into_iter().collect()))
    }

    fn exec(&self, command: &str, _cwd: &str, _timeout: Duration) -> Result<ExecOutput> {
        let mut st = lock(&self.state);
        st.execs.push(command.to_string());
        Ok(st
            .outcomes
            .iter()
            .find(|(k, _)| command.contains(k.as_str()))
            .map(|(_, o)| o.clone())
            .unwrap_or(ExecOutput {
                status: Some(0),
                stdout: String::new(),
                stderr: String::new(),
            }))
    }

    fn identity(&self, path: &str) -> Result<Option<PathIdentity>> {
        let st = lock(&self.state);
        let trimmed = path.trim_end_matches('/');
        let (parent, own) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
        let link_path = match own {
            "" | "." | ".." => None,
            name => Some(format!(
                "{}/{name}",
                st.resolve(parent).trim_end_matches('/')
            )),
        };
        let link = link_path.as_ref().is_some_and(|l| st.links.contains_key(l));
        let canonical = st.resolve(path);
        if !st.exists(&canonical) {
            return Ok(if link {
                // A dangling link: its own path.
                link_path.map(|l| PathIdentity {
                    canonical: l,
                    file_id: None,
                    link: true,
                })
            } else {
                None
            });
        }
        Ok(Some(PathIdentity {
            canonical,
            // Like SFTP: no inodes; identity is the canonical path.
            file_id: None,
            link,
        }))
    }

    fn paths_ignore_case(&self) -> bool {
        lock(&self.state).ignore_case
    }
}

/// Names of the world's nodes, the primary first.
pub const NODES: [&str; 3] = ["app01", "app02", "app03"];

/// The root of a world node.
pub fn root(node: &str) -> String {
    format!("/srv/{node}")
}

/// The site file of a world: three SSH nodes (never contacted), a SQLite
/// database (never opened: the fake stands in), service commands and one check.
pub const SITE: &str = r#"
[application]
name = "FastApp"
customizations = "none"

[database]
kind = "sqlite"
path = "db/app.sqlite"
backup_dir = "backups"

[service]
start = "start-app {app} {version}"
stop = "stop-app {app} {version}"
health = "health-app {app} {version}"

[checks]
invalid_strategies = "SELECT name, state FROM strategies WHERE state <> 'valid'"

[[node]]
name = "app01"
role = "primary"
address = "ssh://uprun@app01"
root = "/srv/app01"

[[node]]
name = "app02"
role = "secondary"
address = "ssh://uprun@app02"
root = "/srv/app02"

[[node]]
name = "app03"
role = "secondary"
address = "ssh://uprun@app03"
root = "/srv/app03"
"#;

/// The release file of a world: 2.0.0 from 1.0.0, one SQLite migration.
pub const RELEASE: &str = "version = \"2.0.0\"\nmin_upgrade_from = \"1.0.0\"\n";

/// A site, a release on disk, a fake database and fake nodes.
pub struct World {
    /// Holds the release (and backups) until the world is dropped.
    _tmp: tempfile::TempDir,
    pub site: Site,
    pub release: Release,
    pub db: FakeDb,
    pub nodes: Vec<FakeNode>,
}

/// An instance record of `app` `version` in `folder` on `node`.
pub fn record(node: &str, app: &str, version: &str, folder: &str) -> InstanceRecord {
    InstanceRecord {
        node: node.to_string(),
        app_name: app.to_string(),
        version: version.to_string(),
        folder: folder.to_string(),
        created: "2025-01-01T00:00:00Z".into(),
        removed: None,
        state: None,
    }
}

impl World {
    /// Every node runs FastApp 1.0.0 in `FastApp-1.0.0`; the database is at 1.0.0.
    pub fn new() -> World {
        World::build(
            SITE,
            RELEASE,
            &[(
                "2.0.0_01_priority.sql",
                "ALTER TABLE strategies ADD priority INTEGER;\n",
            )],
        )
    }

    /// A world with `site` and `release` texts and these SQLite migrations
    /// (in `migrations/sqlite/`; none: no folder).
    pub fn build(site: &str, release: &str, migrations: &[(&str, &str)]) -> World {
        let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let site_file = tmp.path().join("site.toml");
        let site = Site::parse(&site_file, site).unwrap_or_else(|e| panic!("site: {e}"));
        let rel = tmp.path().join("release");
        let write = |p: PathBuf, text: &str| {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir: {e}"));
            }
            std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        };
        write(rel.join("release.toml"), release);
        write(rel.join("payload/bin/app.txt"), "FastApp 2.0.0\n");
        for (name, sql) in migrations {
            write(rel.join("migrations/sqlite").join(name), sql);
        }
        let release = Release::load(&rel).unwrap_or_else(|e| panic!("release: {e}"));
        let nodes: Vec<FakeNode> = NODES.iter().map(|n| FakeNode::new(n)).collect();
        let world = World {
            _tmp: tmp,
            site,
            release,
            db: FakeDb::new("app", "1.0.0"),
            nodes,
        };
        for n in NODES {
            world.install(n, &record(n, "FastApp", "1.0.0", "FastApp-1.0.0"));
        }
        world
    }

    /// Put `rec` on its node as the current instance (folder with a file,
    /// recorded as used).
    pub fn install(&self, node: &str, rec: &InstanceRecord) {
        let root = root(node);
        let mut st = self.node(node);
        for a in ancestors(&format!("{root}/{}", rec.folder)) {
            st.dirs.insert(a);
        }
        st.files.insert(
            format!("{root}/{}/bin/app.txt", rec.folder),
            b"old".to_vec(),
        );
        let mut m = st.manifest(&root);
        if !m.used_folders.contains(&rec.folder) {
            m.used_folders.push(rec.folder.clone());
        }
        m.current = Some(rec.clone());
        st.set_manifest(&root, &m);
    }

    /// The state of a node.
    pub fn node(&self, name: &str) -> MutexGuard<'_, NodeState> {
        let n = self
            .nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"));
        lock(&n.state)
    }

    /// The state of the database.
    pub fn db(&self) -> MutexGuard<'_, DbState> {
        lock(&self.db.state)
    }

    /// A node's manifest as stored now.
    pub fn manifest(&self, node: &str) -> Manifest {
        self.node(node).manifest(&root(node))
    }

    /// Whether any node was changed or ran a command.
    pub fn nodes_untouched(&self) -> bool {
        NODES.iter().all(|n| {
            let st = self.node(n);
            st.changes.is_empty() && st.execs.is_empty()
        })
    }

    /// An `Ops` over the world, as `run --yes` (or `plan`) builds it.
    pub fn ops(&self, mode: Mode) -> Ops {
        self.ops_confirmed(mode, Confirmation::UNATTENDED)
    }

    /// An `Ops` over the world with `confirmation`.
    pub fn ops_confirmed(&self, mode: Mode, confirmation: Confirmation) -> Ops {
        let spec = RunSpec::new(&self.site, &self.release, mode, "test-run", confirmation);
        let nodes = self
            .site
            .nodes
            .iter()
            .map(|n| NodeInstances {
                transport: Box::new(
                    self.nodes
                        .iter()
                        .find(|f| f.name == n.name)
                        .map(FakeNode::handle)
                        .unwrap_or_else(|| FakeNode::new(&n.name)),
                ),
                root: n.root.clone(),
                shell: Shell::Posix,
                run_service_commands: true,
            })
            .collect();
        Ops::new(
            spec,
            Box::new(self.db.handle()),
            nodes,
            Arc::new(Output::new(OutputMode::Quiet)),
        )
    }
}

/// Hex SHA-256 of a file, or `None` when it cannot be read.
fn file_sha256(path: &str) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    Some(crate::config::release::sha256_hex(&bytes))
}
