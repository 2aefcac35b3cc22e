//! The rehearsal behind `uprun test`: run a procedure on disposable copies of a site (SQLite copy of
//! the database, local copies of the node roots; never the real site), then
//! for every changing step simulate a crash before and after its change,
//! resume, and compare each end state with the clean run's. Owns the copies and
//! the comparison; the run itself goes through `ops` like any other.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{DatabaseBackend, DbKind, NodeAddress, Release, Site, SqliteConfig};
use crate::journal::{self, Entry, Journal, Replay};
use crate::nodes::{LocalTransport, NodeTransport};
use crate::ops::{CommandPolicy, Confirmation, CrashPoint, Mode, RunSpec};
use crate::output::{Output, OutputMode};
use crate::script::Procedure;
use crate::{Error, Result};

/// A copy of a site in a temporary folder, removed when dropped.
pub struct Disposable {
    _tmp: tempfile::TempDir,
    pub site: Site,
}

/// Copy `site` into a temporary folder: its SQLite database, every node's root
/// folder; backups and journals go into the copy too.
pub fn disposable(site: &Site) -> Result<Disposable> {
    if site.database.kind() != DbKind::Sqlite {
        return Err(Error::Config(format!(
            "uprun test works on a disposable copy and can copy SQLite databases only; `{}` uses {}: test the procedure on a sandbox site (`uprun demo --setup-only`) with the same nodes and checks",
            site.file.display(),
            site.database.kind().as_str()
        )));
    }
    if let Some(n) = site.nodes.iter().find(|n| n.address != NodeAddress::Local) {
        return Err(Error::Config(format!(
            "uprun test copies node roots locally and node `{}` is remote; test the procedure on a sandbox site with local nodes",
            n.name
        )));
    }
    let tmp = tempfile::tempdir()
        .map_err(|e| Error::io("create a temporary folder in", std::env::temp_dir(), e))?;
    let base = tmp.path();
    let mut copy = site.clone();
    let site_file = base.join("site.toml");
    std::fs::copy(&site.file, &site_file)
        .map_err(|e| Error::io("copy site file", &site.file, e))?;
    copy.file = site_file;
    copy.dir = base.to_path_buf();
    if let Some(db) = site.database.sqlite_path() {
        let dest = base.join("db").join(db.file_name().unwrap_or_default());
        std::fs::create_dir_all(base.join("db"))
            .map_err(|e| Error::io("create", base.join("db"), e))?;
        std::fs::copy(db, &dest).map_err(|e| Error::io("copy database", db, e))?;
        copy.database.backend = DatabaseBackend::Sqlite(SqliteConfig { path: dest });
    }
    copy.database.backup_dir = base.join("backups");
    copy.state_dir = base.join("state");
    let local = LocalTransport::new("copy");
    for n in copy.nodes.iter_mut() {
        let dest = base.join("nodes").join(&n.name);
        std::fs::create_dir_all(&dest).map_err(|e| Error::io("create", &dest, e))?;
        local.upload_tree(Path::new(&n.root), &dest.to_string_lossy())?;
        n.root = dest.to_string_lossy().into_owned();
    }
    Ok(Disposable {
        _tmp: tmp,
        site: copy,
    })
}

/// What a procedure leaves behind, in a form two runs can be compared by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndState {
    pub database_version: String,
    pub migrations: Vec<String>,
    /// Row count of every table (contents may hold times).
    pub tables: BTreeMap<String, i64>,
    pub nodes: BTreeMap<String, NodeState>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeState {
    /// `app version folder` of the current instance.
    pub current: Option<String>,
    pub removed: Vec<String>,
    pub used_folders: Vec<String>,
    /// Every file under the node's root with a digest of its bytes (`-` for
    /// files whose contents hold times: the manifest and instance configs).
    pub files: BTreeMap<String, String>,
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
    for e in entries {
        let p = e.map_err(|e| Error::io("list", dir, e))?.path();
        if p.is_dir() {
            walk(root, &p, out)?;
            continue;
        }
        let rel = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .to_string_lossy()
            .replace('\\', "/");
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(crate::nodes::instances::MANIFEST) {
            continue;
        }
        let digest = if name == crate::nodes::instances::INSTANCE_CONFIG {
            "-".to_string()
        } else {
            let bytes = std::fs::read(&p).map_err(|e| Error::io("read", &p, e))?;
            crate::config::release::sha256_hex(&bytes)[..16].to_string()
        };
        out.insert(rel, digest);
    }
    Ok(())
}

/// Read the end state of a (copied) site.
pub fn end_state(site: &Site) -> Result<EndState> {
    let mut db = crate::db::open(site, true)?;
    let database_version = db.version()?.to_string();
    let migrations = db.history()?.into_iter().map(|m| m.name).collect();
    let mut tables = BTreeMap::new();
    for row in
        db.query_readonly("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?
    {
        let Some(name) = row.get("name").and_then(|v| v.as_str()).map(str::to_string) else {
            continue;
        };
        let q = format!(
            "SELECT count(*) AS n FROM \"{}\"",
            name.replace('"', "\"\"")
        );
        let n = db
            .query_readonly(&q)?
            .first()
            .and_then(|r| r.get("n"))
            .and_then(|v| v.as_i64())
            .unwrap_or(-1);
        tables.insert(name, n);
    }
    let mut nodes = BTreeMap::new();
    for n in &site.nodes {
        let transport = crate::nodes::connect(site, n, crate::nodes::ConnectMode::ReadOnly)?;
        let inst = crate::nodes::NodeInstances::new(n, transport, false);
        let m = inst.manifest()?;
        let show =
            |r: &crate::nodes::InstanceRecord| format!("{} {} {}", r.app_name, r.version, r.folder);
        let mut used = m.used_folders.clone();
        used.sort();
        let mut files = BTreeMap::new();
        walk(Path::new(&n.root), Path::new(&n.root), &mut files)?;
        nodes.insert(
            n.name.clone(),
            NodeState {
                current: m.current.as_ref().map(show),
                removed: m.removed.iter().map(show).collect(),
                used_folders: used,
                files,
            },
        );
    }
    Ok(EndState {
        database_version,
        migrations,
        tables,
        nodes,
    })
}

/// The differences between `got` and the clean run's `want`, in words.
pub fn differences(want: &EndState, got: &EndState) -> Vec<String> {
    let mut out = Vec::new();
    if want.database_version != got.database_version {
        out.push(format!(
            "database at {} (clean run: {})",
            got.database_version, want.database_version
        ));
    }
    if want.migrations != got.migrations {
        out.push(format!(
            "migration history {:?} (clean run: {:?})",
            got.migrations, want.migrations
        ));
    }
    for (t, n) in &want.tables {
        match got.tables.get(t) {
            Some(m) if m != n => out.push(format!("table `{t}` has {m} rows (clean run: {n})")),
            None => out.push(format!("table `{t}` is missing")),
            _ => {}
        }
    }
    for t in got.tables.keys().filter(|t| !want.tables.contains_key(*t)) {
        out.push(format!("table `{t}` exists only here"));
    }
    for (name, w) in &want.nodes {
        let Some(g) = got.nodes.get(name) else {
            continue;
        };
        if w.current != g.current {
            out.push(format!(
                "node `{name}` runs {:?} (clean run: {:?})",
                g.current, w.current
            ));
        }
        if w.removed != g.removed || w.used_folders != g.used_folders {
            out.push(format!(
                "node `{name}` instance history {:?} / folders {:?} (clean run: {:?} / {:?})",
                g.removed, g.used_folders, w.removed, w.used_folders
            ));
        }
        for (f, d) in &g.files {
            match w.files.get(f) {
                None => out.push(format!("node `{name}`: `{f}` exists only here")),
                Some(wd) if wd != d => out.push(format!("node `{name}`: `{f}` differs")),
                _ => {}
            }
        }
        for f in w.files.keys().filter(|f| !g.files.contains_key(*f)) {
            out.push(format!("node `{name}`: `{f}` is missing"));
        }
    }
    out
}

/// One attempt of a run on a copy.
struct Attempt {
    outcome: Result<()>,
    commands: Vec<(String, String)>,
}

fn attempt(
    site: &Site,
    release: &Release,
    proc: &Procedure,
    journal: Arc<Journal>,
    replay: Replay,
    crash_at: Option<CrashPoint>,
    commands: CommandPolicy,
) -> Result<Attempt> {
    let quiet = Arc::new(Output::new(OutputMode::Quiet));
    let spec = RunSpec {
        crash_at,
        commands,
        closures_in_order: true,
        ..RunSpec::new(
            site,
            release,
            Mode::Run,
            "uprun-test",
            Confirmation::UNATTENDED,
        )
        .with_journal(journal)
        .with_replay(replay)
    };
    let session = crate::script::Session::open(spec, proc, quiet)?;
    let outcome = session.run();
    Ok(Attempt {
        outcome,
        commands: session.ops.commands_run(),
    })
}

/// How one interruption point ended.
#[derive(Debug, Clone, Serialize)]
pub struct PathReport {
    pub step: usize,
    pub description: String,
    /// The node of the `for_each_node` closure the step ran in, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within: Option<String>,
    /// "before" or "after" the step's change.
    pub point: &'static str,
    pub converged: bool,
    /// Why not: state differences, a failed resume, a rail that did not hold.
    pub problems: Vec<String>,
    /// Changing commands that ran again on resume (they must be idempotent).
    pub reran_commands: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    pub procedure: String,
    /// The site file (of the real site; the report is about its copies).
    #[serde(skip)]
    pub site: String,
    pub steps: Vec<String>,
    pub end_state: EndState,
    pub paths: Vec<PathReport>,
    pub commands_simulated: bool,
}

impl TestReport {
    pub fn all_converge(&self) -> bool {
        self.paths.iter().all(|p| p.converged)
    }
}

/// Rails that must hold on every path, read from the journal and the end state.
fn rail_problems(entries: &[Entry], state: &EndState, clean: &EndState) -> Vec<String> {
    let mut out = Vec::new();
    let mut verified = false;
    let mut upgrades_checked = false;
    for e in entries {
        match e {
            Entry::Done { key, result, .. } if key.starts_with("backup_db") => {
                verified |= result
                    .get("verified")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false);
            }
            Entry::Started { call, .. } if call == "upgrade_db" && !upgrades_checked => {
                upgrades_checked = true;
                if !verified {
                    out.push(
                        "the database upgrade started without a verified backup in the journal"
                            .into(),
                    );
                }
            }
            _ => {}
        }
    }
    for (name, n) in &state.nodes {
        let had = clean
            .nodes
            .get(name)
            .map(|c| c.current.is_some())
            .unwrap_or(false);
        if had && n.current.is_none() {
            out.push(format!("node `{name}` is left without an instance"));
        }
    }
    out
}

fn count(cmds: &[(String, String)]) -> BTreeMap<(String, String), usize> {
    let mut m = BTreeMap::new();
    for c in cmds {
        *m.entry(c.clone()).or_insert(0) += 1;
    }
    m
}

/// Run the whole test.
pub fn test_procedure(
    site: &Site,
    release: &Release,
    proc: &Procedure,
    commands: CommandPolicy,
) -> Result<TestReport> {
    let clean = disposable(site)?;
    let j = Arc::new(Journal::create(&clean.site, "uprun-test")?);
    let a = attempt(
        &clean.site,
        release,
        proc,
        j.clone(),
        Replay::default(),
        None,
        commands,
    )?;
    if let Err(e) = a.outcome {
        return Err(Error::Script(format!(
            "the clean run on a copy of the site fails, so there is nothing to interrupt:\n{e}"
        )));
    }
    let want = end_state(&clean.site)?;
    let clean_cmds = count(&a.commands);
    // Descriptions name the copy's folders: say so instead of a temporary path.
    let copy_dir = clean.site.dir.display().to_string();
    let started: Vec<(String, Option<String>)> = journal::read(j.path())?
        .into_iter()
        .filter_map(|e| match e {
            Entry::Started {
                description,
                within,
                ..
            } => Some((description.replace(&copy_dir, "<copy>"), within)),
            _ => None,
        })
        .collect();
    let steps: Vec<String> = started.iter().map(|(d, _)| d.clone()).collect();
    drop(clean);

    let mut paths = Vec::new();
    for (i, (description, within)) in started.iter().enumerate() {
        for after_change in [false, true] {
            let point = if after_change { "after" } else { "before" };
            let copy = disposable(site)?;
            let j = Arc::new(Journal::create(&copy.site, "uprun-test")?);
            let crash = CrashPoint {
                step: i + 1,
                after_change,
            };
            let first = attempt(
                &copy.site,
                release,
                proc,
                j.clone(),
                Replay::default(),
                Some(crash),
                commands,
            )?;
            let mut problems = Vec::new();
            let mut ran = first.commands.clone();
            match &first.outcome {
                Err(Error::Interrupted(_)) => {
                    let entries = journal::read(j.path())?;
                    let second = attempt(
                        &copy.site,
                        release,
                        proc,
                        j.clone(),
                        Replay::from_entries(&entries),
                        None,
                        commands,
                    )?;
                    ran.extend(second.commands.clone());
                    if let Err(e) = &second.outcome {
                        problems.push(format!(
                            "the resumed run fails: {}",
                            first_line(&e.to_string())
                        ));
                    }
                }
                Err(e) => problems.push(format!(
                    "the interrupted run failed before the crash point: {}",
                    first_line(&e.to_string())
                )),
                Ok(()) => problems.push(
                    "the run never reached this step (the procedure took another path)".into(),
                ),
            }
            let got = end_state(&copy.site)?;
            problems.extend(differences(&want, &got));
            problems.extend(rail_problems(&journal::read(j.path())?, &got, &want));
            let reran_commands = count(&ran)
                .into_iter()
                .filter(|(k, n)| *n > clean_cmds.get(k).copied().unwrap_or(0))
                .map(|((node, cmd), n)| {
                    format!(
                        "`{cmd}` on `{node}` ran {n} time(s) (clean run: {})",
                        clean_cmds
                            .get(&(node.clone(), cmd.clone()))
                            .copied()
                            .unwrap_or(0)
                    )
                })
                .collect();
            paths.push(PathReport {
                step: i + 1,
                description: description.clone(),
                within: within.clone(),
                point,
                converged: problems.is_empty(),
                problems,
                reran_commands,
            });
        }
    }
    Ok(TestReport {
        procedure: proc.name.clone(),
        site: site.file.display().to_string(),
        steps,
        end_state: want,
        paths,
        commands_simulated: commands == CommandPolicy::Simulate,
    })
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or("")
        .trim_start_matches("error: ")
        .to_string()
}

#[cfg(test)]
mod tests;
