//! Adoption (`uprun adopt`): record the instances that already run on a site's nodes
//! (installed by hand or by another tool) in each node's manifest, so that
//! uprun's rules see them: the next removal stops them, and no new instance is
//! ever created in their folders. What the operator states is checked against
//! the node first: the folder must exist, be a real folder directly under the
//! node's root and hold files; the site's health command runs in it. A node
//! that already has a manifest is never overwritten.

use crate::config::Site;
use crate::db::now_rfc3339;
use crate::nodes::instances::InstanceState;
use crate::nodes::{ConnectMode, DirState, InstanceRecord, Manifest, NodeInstances};
use crate::ops::check_folder_name;
use crate::{Error, Result};

/// What the operator states: the instances run `version` in `folder` on
/// `nodes` (every node when empty), named `app` (the site's name when none).
pub struct AdoptRequest<'a> {
    pub nodes: &'a [String],
    pub version: &'a str,
    pub folder: &'a str,
    pub app: Option<&'a str>,
    /// Record them (`--yes`); else only say what would be recorded.
    pub yes: bool,
}

/// The instances checked on their nodes, ready to be recorded.
pub struct Adoption {
    plan: Vec<(NodeInstances, InstanceRecord, Option<Error>)>,
    yes: bool,
}

/// Check what the operator states against every chosen node. Nothing is
/// written; [`Adoption::record`] writes the manifests.
pub fn check_adoption(site: &Site, a: &AdoptRequest<'_>) -> Result<Adoption> {
    let version = semver::Version::parse(a.version.trim()).map_err(|e| {
        Error::Config(format!(
            "--version {:?} is not a version ({e}); give the version the instances run, e.g. 1.0.0",
            a.version
        ))
    })?;
    let app = a
        .app
        .map(str::to_string)
        .unwrap_or_else(|| site.app_name.clone());
    if app.trim().is_empty() || app.contains(['\0', '\n', '\r']) {
        return Err(Error::Config(
            "--app must be a non-empty name on one line".into(),
        ));
    }
    let chosen: Vec<_> = if a.nodes.is_empty() {
        site.nodes.iter().collect()
    } else {
        let mut out = Vec::new();
        for name in a.nodes {
            out.push(site.node(name).ok_or_else(|| {
                Error::Config(format!(
                    "--node `{name}`: the site `{}` has no such node; it has {}",
                    site.file.display(),
                    site.nodes
                        .iter()
                        .map(|n| format!("`{}`", n.name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?);
        }
        out
    };
    for n in &chosen {
        check_folder_name(&n.name, a.folder)?;
    }
    // Adopting changes what runs decide: nobody else may run meanwhile.
    let _lock = crate::lock::SiteLock::acquire(site, "adopt", None)?;
    let owned: Vec<_> = chosen.iter().map(|n| (*n).clone()).collect();
    let mode = if a.yes {
        ConnectMode::ReadWrite
    } else {
        ConnectMode::ReadOnly
    };
    let transports = crate::nodes::connect_nodes(site, &owned, mode)?;
    let mut plan = Vec::new();
    for (n, transport) in owned.iter().zip(transports) {
        let inst = NodeInstances::new(n, transport, true);
        if inst.has_manifest()? {
            let m = inst.manifest()?;
            return Err(Error::Refused(format!(
                "node `{}` already has a manifest{}: uprun records its instances already, so nothing is adopted on any node (a manifest is never overwritten)",
                n.name,
                m.current
                    .map(|c| format!(" (current instance {} {} in `{}`)", c.app_name, c.version, c.folder))
                    .unwrap_or_default()
            )));
        }
        let path = inst.folder_path(a.folder);
        let id = inst.transport.identity(&path)?;
        match (inst.folder_state(a.folder)?, id) {
            (DirState::NotEmpty, Some(id)) if !id.link => {}
            (DirState::NotEmpty, Some(_)) => {
                return Err(Error::Refused(format!(
                    "node `{}`: `{path}` is a link; adopt the real folder under the node's root",
                    n.name
                )))
            }
            (state, _) => {
                return Err(Error::Config(format!(
                    "node `{}`: `{path}` {}; give --folder the instance's folder, directly under the node's root `{}`",
                    n.name,
                    if state == DirState::Missing { "does not exist" } else { "is empty" },
                    n.root
                )))
            }
        }
        let rec = InstanceRecord {
            node: n.name.clone(),
            app_name: app.clone(),
            version: version.to_string(),
            folder: a.folder.to_string(),
            created: now_rfc3339(),
            removed: None,
            state: None,
        };
        // The health command tells whether the stated instance is the one
        // that runs there; a failing one is said, not hidden, and recorded.
        let health = inst
            .service_command(
                "health",
                site.service.health.as_deref(),
                &rec,
                &site.service,
            )
            .err();
        let rec = InstanceRecord {
            state: Some(if health.is_none() {
                InstanceState::Healthy
            } else {
                InstanceState::Failed
            }),
            ..rec
        };
        plan.push((inst, rec, health));
    }
    Ok(Adoption { plan, yes: a.yes })
}

impl Adoption {
    /// One line per instance: what is (or would be) adopted, and a failing
    /// health command.
    pub fn lines(&self) -> Vec<String> {
        self.plan
            .iter()
            .map(|(_, rec, health)| {
                let line = format!(
                    "{} `{}`: {} {} in `{}`{}",
                    if self.yes { "adopting" } else { "would adopt" },
                    rec.node,
                    rec.app_name,
                    rec.version,
                    rec.folder,
                    match health {
                        None => String::new(),
                        Some(e) => format!(" (WARNING: its health command fails: {e})"),
                    }
                );
                crate::output::escape_controls(&line).into_owned()
            })
            .collect()
    }

    /// Write each node's manifest.
    pub fn record(self) -> Result<()> {
        for (inst, rec, _) in self.plan {
            let m = Manifest {
                used_folders: vec![rec.folder.clone()],
                current: Some(rec),
                removed: Vec::new(),
                pending: None,
            };
            inst.write_manifest(&m)?;
        }
        Ok(())
    }
}
