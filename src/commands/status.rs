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
    /// Runs whose journal never closed (their process died, or they are
    /// running now): resume or abandon them.
    unfinished_runs: Vec<crate::journal::RunInfo>,
}

pub fn exec(a: StatusArgs) -> Result<i32> {
    let site = Site::load(&a.site)?;
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
            .filter(|info| info.ended.is_none())
            .collect(),
    };
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
                "node {} ({}): {} {} in `{}` (since {})",
                n.name,
                n.role,
                e(&i.app_name),
                e(&i.version),
                e(&i.folder),
                e(&i.created)
            ),
            None => crate::outln!("node {} ({}): no instance", n.name, n.role),
        }
    }
    for r in &status.unfinished_runs {
        crate::outln!(
            "unfinished run {} ({}, started {}; last: {}): resume it with `uprun run {} --site {} --release RELEASE --resume {}`, or abandon it with `uprun runs abandon {} --site {}`",
            r.run_id,
            r.script,
            r.started,
            e(r.last_step.as_deref().unwrap_or("-")),
            r.script,
            site.file.display(),
            r.run_id,
            r.run_id,
            site.file.display()
        );
    }
    Ok(0)
}
