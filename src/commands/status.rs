//! `uprun status`: the site as it is now. Only reads.

use serde::Serialize;

use crate::cli::StatusArgs;
use crate::config::Site;
use crate::nodes::{InstanceRecord, NodeInstances};
use crate::Result;

#[derive(Serialize)]
struct NodeStatus {
    name: String,
    role: &'static str,
    instance: Option<InstanceRecord>,
    earlier_instances: usize,
}

#[derive(Serialize)]
struct Status {
    site: String,
    database: String,
    database_version: String,
    migrations_applied: usize,
    /// The newest full backup the database server knows of (SQL Server: msdb).
    latest_full_backup: Option<String>,
    nodes: Vec<NodeStatus>,
    /// Runs that did not end well (failed, interrupted, incomplete, killed,
    /// damaged journal, never started), with the commands that resume or
    /// abandon them. Succeeded and abandoned runs are not listed.
    unfinished_runs: Vec<RunToFinish>,
}

#[derive(Serialize)]
struct RunToFinish {
    #[serde(flatten)]
    info: crate::journal::RunInfo,
    /// The exact command that resumes it (none when it cannot be resumed).
    resume: Option<String>,
    abandon: String,
}

pub fn exec(a: StatusArgs) -> Result<i32> {
    let site = Site::load(&super::site_or_default(a.site, "uprun status")?)?;
    let recovered = crate::run::recover_for_reading(&site)?;
    let mut db = crate::db::open(&site, true)?;
    let version = db.version()?;
    let history = db.history()?;
    // Shown, not required: a login without msdb access still gets a status.
    let latest_full_backup = match db.latest_full_backup() {
        Ok(b) => b,
        Err(e) => Some(format!("unknown ({e})")),
    };
    let transports =
        crate::nodes::connect_all(&site.nodes, &site.ssh, crate::nodes::ConnectMode::ReadOnly)?;
    let mut nodes = Vec::new();
    for (n, transport) in site.nodes.iter().zip(transports) {
        let inst = NodeInstances {
            transport,
            root: n.root.clone(),
            shell: n.shell,
            run_service_commands: false,
        };
        let m = inst.manifest()?;
        nodes.push(NodeStatus {
            name: n.name.clone(),
            role: n.role.as_str(),
            instance: m.current,
            earlier_instances: m.removed.len(),
        });
    }
    let status = Status {
        site: site.file.display().to_string(),
        database: format!("{} ({})", site.database.name, site.database.kind.as_str()),
        database_version: version.to_string(),
        migrations_applied: history.len(),
        latest_full_backup,
        nodes,
        unfinished_runs: crate::journal::list_runs(&site)?
            .into_iter()
            .map(|(info, _)| info)
            .filter(|info| info.needs_attention() || info.outcome == "never started")
            .map(|info| RunToFinish {
                resume: match info.outcome.as_str() {
                    "damaged" | "never started" => None,
                    _ => info.resume_command(&site.file),
                },
                abandon: info.abandon_command(&site.file),
                info,
            })
            .collect(),
    };
    if let Some(line) = &recovered {
        if a.json {
            eprintln!("{line}");
        } else {
            crate::outln!("{line}");
        }
    }
    if a.json {
        crate::outln!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
        return Ok(0);
    }
    // Manifests, the server and journals are text from outside: one inert line each.
    let e = crate::progress::escape_controls;
    crate::outln!("site {}", status.site);
    crate::outln!(
        "database {}: version {} ({} migration(s) applied by uprun)",
        status.database,
        status.database_version,
        status.migrations_applied
    );
    if let Some(b) = &status.latest_full_backup {
        crate::outln!("latest full backup: {}", e(b));
    }
    for n in &status.nodes {
        match &n.instance {
            Some(i) => crate::outln!(
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
            ),
            None => crate::outln!("node {} ({}): no instance", n.name, n.role),
        }
    }
    for r in &status.unfinished_runs {
        let i = &r.info;
        let what = match i.outcome.as_str() {
            "unfinished" => "killed (its process died without closing the journal)".to_string(),
            o => o.to_string(),
        };
        let started = if i.started.is_empty() {
            String::new()
        } else {
            format!(", started {}", i.started)
        };
        crate::outln!(
            "run {} {what} ({}{started}; last: {})",
            i.run_id,
            if i.script.is_empty() {
                "-"
            } else {
                i.script.as_str()
            },
            e(i.last_step.as_deref().unwrap_or("-"))
        );
        if let Some(d) = &i.damage {
            crate::outln!("  its journal cannot be read: {}", e(d));
        }
        if i.outcome == "never started" {
            crate::outln!("  nothing was changed by it (its journal has no header); start a new run, or set it aside");
        }
        if let Some(cmd) = &r.resume {
            crate::outln!("  resume:  {}", e(cmd));
        }
        crate::outln!("  abandon: {}", e(&r.abandon));
    }
    Ok(0)
}
