//! The site file (`site.toml`): one deployment of the application. `Site::parse`
//! reads the raw file (`raw`) and checks it step by step: the application, the
//! database (`database`, `mssql`), the nodes (`inventory`, `node`), SSH
//! (`ssh`) and the limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::database::DatabaseConfig;
use super::node::{nodes_from_sections, NodeConfig};
use super::raw::{ApplicationSection, Customizations, NodeSection, Role, ServiceConfig, SiteFile};
use super::source::Source;
use super::ssh::SshSettings;
use crate::{Error, Result};

/// Bounds on a procedure (`[limits]` in the site file).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock time a run's procedure may take, host calls included.
    pub script_timeout: Duration,
}

/// Default of `limits.script_timeout_secs`: a long maintenance window.
pub const DEFAULT_SCRIPT_TIMEOUT_SECS: u64 = 6 * 60 * 60;

#[derive(Debug, Clone)]
pub struct Site {
    pub file: PathBuf,
    pub dir: PathBuf,
    pub app_name: String,
    /// `[application] renamed_from`: instances named this take `app_name`
    /// when they are created again (a deliberate rename). Without it, a new
    /// instance keeps the prior instance's name, and a site file whose name
    /// differs from the instances found is refused.
    pub renamed_from: Option<String>,
    pub customizations: Option<Customizations>,
    pub database: DatabaseConfig,
    pub service: ServiceConfig,
    pub checks: BTreeMap<String, String>,
    pub nodes: Vec<NodeConfig>,
    pub ssh: SshSettings,
    pub state_dir: PathBuf,
    pub limits: Limits,
}

impl Site {
    pub fn load(file: &Path) -> Result<Site> {
        let text = std::fs::read_to_string(file).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Config(format!(
                "no site file `{}`; `uprun init DIR` writes a commented one to start from",
                file.display()
            )),
            _ => Error::io("read site file", file, e),
        })?;
        Site::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Site> {
        let raw: SiteFile = toml::from_str(text).map_err(|e| super::toml_error(file, e))?;
        let src = Source::new(file);
        let (app_name, renamed_from) = application(&raw.application, &src)?;
        let database = DatabaseConfig::from_section(raw.database, &src, &app_name)?;
        let (sections, inventory) = node_sections(raw.inventory.as_ref(), raw.nodes, &src)?;
        // Where a node came from, for error messages.
        let origin = match &inventory {
            Some(inv) => format!("{} (nodes from inventory `{}`)", src.file, inv.display()),
            None => src.file.clone(),
        };
        let nodes = nodes_from_sections(sections, &src, &origin, inventory.is_some())?;
        let ssh = SshSettings::from_section(&raw.ssh, &src)?;
        let state_dir = match &raw.state_dir {
            Some(s) => src.resolve(s, "state_dir")?,
            None => src.dir.join(".uprun"),
        };
        let limits = Limits {
            script_timeout: src.secs(
                raw.limits.script_timeout_secs,
                DEFAULT_SCRIPT_TIMEOUT_SECS,
                "limits.script_timeout_secs",
            )?,
        };
        Ok(Site {
            file: file.to_path_buf(),
            dir: src.dir,
            app_name,
            renamed_from,
            customizations: raw.application.customizations,
            database,
            service: raw.service,
            checks: raw.checks,
            nodes,
            ssh,
            state_dir,
            limits,
        })
    }

    pub fn primary(&self) -> &NodeConfig {
        // Validated at load: exactly one primary.
        self.nodes
            .iter()
            .find(|n| n.role == Role::Primary)
            .unwrap_or(&self.nodes[0])
    }

    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// `[application]`: the application's name and the name it is renamed from.
fn application(app: &ApplicationSection, src: &Source) -> Result<(String, Option<String>)> {
    let app_name = app.name.trim().to_string();
    if app_name.is_empty() || app_name.contains(['/', '\\', '\0']) {
        return Err(src.error("`application.name` must be a non-empty name without `/` or `\\`"));
    }

    let renamed_from = match &app.renamed_from {
        None => None,
        Some(old) => {
            let old = old.trim().to_string();
            if old.is_empty() || old.contains(['/', '\\', '\0']) {
                return Err(src.error(
                    "`application.renamed_from` must be a non-empty name without `/` or `\\` (the name the instances have now)",
                ));
            }
            if old == app_name {
                return Err(src.error(format!(
                    "`application.renamed_from` = {old:?} is the same as `application.name`: nothing is renamed; remove `renamed_from`"
                )));
            }
            Some(old)
        }
    };
    Ok((app_name, renamed_from))
}

/// The node sections, from the site file or from its inventory (returned too).
fn node_sections(
    inventory: Option<&super::raw::InventorySection>,
    nodes: Vec<NodeSection>,
    src: &Source,
) -> Result<(Vec<NodeSection>, Option<PathBuf>)> {
    let (raw_nodes, from) = match inventory {
        Some(inv) => {
            if !nodes.is_empty() {
                return Err(src.error(
                    "both `[inventory]` and `[[node]]` are given; take the nodes from one of them",
                ));
            }
            let file = src.resolve(&inv.file, "inventory.file")?;
            let nodes = super::inventory::load(&file, inv)?;
            (nodes, Some(file))
        }
        None => (nodes, None),
    };
    if raw_nodes.is_empty() {
        return Err(src.error(match &from {
            Some(inv) => format!(
                "the inventory `{}` has no host in its primary or secondary group (`[inventory] primary_group` / `secondary_group`)",
                inv.display()
            ),
            None => "no `[[node]]`; a site needs at least one node, one of them with `role = \"primary\"`".to_string(),
        }));
    }
    Ok((raw_nodes, from))
}
