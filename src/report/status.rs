//! `uprun status`: the site as it is now, read (never changed).

use std::fmt;

use serde::Serialize;

use crate::config::Site;
use crate::journal::{RunInfo, RunOutcome};
use crate::nodes::{InstanceRecord, NodeInstances};
use crate::output::escape_controls as e;
use crate::Result;

#[derive(Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub role: &'static str,
    pub instance: Option<InstanceRecord>,
    pub earlier_instances: usize,
}

#[derive(Serialize)]
pub struct Status {
    pub site: String,
    pub database: String,
    pub database_version: String,
    pub migrations_applied: usize,
    /// The newest full backup the database server knows of (SQL Server: msdb).
    pub latest_full_backup: Option<String>,
    pub nodes: Vec<NodeStatus>,
    /// Runs that did not end well (failed, interrupted, incomplete, killed,
    /// damaged journal, never started), with the commands that resume or
    /// abandon them. Succeeded and abandoned runs are not listed.
    pub unfinished_runs: Vec<RunToFinish>,
}

#[derive(Serialize)]
pub struct RunToFinish {
    #[serde(flatten)]
    pub info: RunInfo,
    /// The exact command that resumes it (none when it cannot be resumed).
    pub resume: Option<String>,
    pub abandon: String,
}

impl Status {
    /// Read the site's database, nodes and journals.
    pub fn read(site: &Site) -> Result<Status> {
        let mut db = crate::db::open(site, true)?;
        let version = db.version()?;
        let history = db.history()?;
        // Shown, not required: a login without msdb access still gets a status.
        let latest_full_backup = match db.latest_full_backup() {
            Ok(b) => b,
            Err(e) => Some(format!("unknown ({e})")),
        };
        let transports = crate::nodes::connect_all(site, crate::nodes::ConnectMode::ReadOnly)?;
        let mut nodes = Vec::new();
        for (n, transport) in site.nodes.iter().zip(transports) {
            let inst = NodeInstances::new(n, transport, false);
            let m = inst.manifest()?;
            nodes.push(NodeStatus {
                name: n.name.clone(),
                role: n.role.as_str(),
                instance: m.current,
                earlier_instances: m.removed.len(),
            });
        }
        Ok(Status {
            site: site.file.display().to_string(),
            database: format!("{} ({})", site.database.name, site.database.kind().as_str()),
            database_version: version.to_string(),
            migrations_applied: history.len(),
            latest_full_backup,
            nodes,
            unfinished_runs: crate::journal::list_runs(site)?
                .into_iter()
                .map(|(info, _)| info)
                .filter(|info| info.needs_attention() || info.outcome == RunOutcome::NeverStarted)
                .map(|info| RunToFinish {
                    resume: match info.outcome {
                        RunOutcome::Damaged | RunOutcome::NeverStarted => None,
                        _ => info.resume_command(&site.file),
                    },
                    abandon: info.abandon_command(&site.file),
                    info,
                })
                .collect(),
        })
    }
}

/// Manifests, the server and journals are text from outside: one inert line each.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "site {}", self.site)?;
        writeln!(
            f,
            "database {}: version {} ({} migration(s) applied by uprun)",
            self.database, self.database_version, self.migrations_applied
        )?;
        if let Some(b) = &self.latest_full_backup {
            writeln!(f, "latest full backup: {}", e(b))?;
        }
        for n in &self.nodes {
            match &n.instance {
                Some(i) => writeln!(
                    f,
                    "node {} ({}): {} {} in `{}`, {} (since {})",
                    n.name,
                    n.role,
                    e(&i.app_name),
                    e(&i.version),
                    e(&i.folder),
                    // As last recorded on the node; `run` observes health itself.
                    i.state
                        .map(|s| format!("last recorded {}", s.as_str()))
                        .unwrap_or_else(|| "state not recorded".into()),
                    e(&i.created)
                )?,
                None => writeln!(f, "node {} ({}): no instance", n.name, n.role)?,
            }
        }
        for r in &self.unfinished_runs {
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl fmt::Display for RunToFinish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.info;
        let what = match &i.outcome {
            RunOutcome::Unfinished => {
                "killed (its process died without closing the journal)".to_string()
            }
            o => o.to_string(),
        };
        let started = if i.started.is_empty() {
            String::new()
        } else {
            format!(", started {}", i.started)
        };
        let script = if i.script.is_empty() { "-" } else { &i.script };
        let last = e(i.last_step.as_deref().unwrap_or("-"));
        writeln!(
            f,
            "run {} {what} ({script}{started}; last: {last})",
            i.run_id
        )?;
        if let Some(d) = &i.damage {
            writeln!(f, "  its journal cannot be read: {}", e(d))?;
        }
        if i.outcome == RunOutcome::NeverStarted {
            writeln!(f, "  nothing was changed by it (its journal has no header); start a new run, or set it aside")?;
        }
        if let Some(cmd) = &self.resume {
            writeln!(f, "  resume:  {}", e(cmd))?;
        }
        writeln!(f, "  abandon: {}", e(&self.abandon))
    }
}
