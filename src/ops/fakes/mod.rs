//! In-memory fakes of the database and of node transports, and a small world
//! built from them (a site, a release on disk, three nodes running the prior
//! version), so that the rails of `ops` are tested in process: every call is
//! recorded, and a test asserts what was (not) applied, written or run.
//! Test-only code.

mod database;
mod transport;

pub use database::{DbState, FakeDb};
pub use transport::{FakeNode, NodeState};

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
