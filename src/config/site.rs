//! The site file (`site.toml`): one deployment of the application.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::env::expand;
use crate::{Error, Result};

/// A value read from the environment that must never be printed.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    /// The clear value, for the one place that needs it (opening a connection).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbKind {
    Sqlite,
}

impl DbKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DbKind::Sqlite => "sqlite",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Secondary,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

/// Whether the site has SDK customisations that must be upgraded separately
/// (step 7 of the vendor procedure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Customizations {
    /// The site has no SDK customisations.
    None,
    /// The site has customisations and upgrades them separately.
    UpgradedSeparately,
}

impl Customizations {
    pub fn as_str(self) -> &'static str {
        match self {
            Customizations::None => "none",
            Customizations::UpgradedSeparately => "upgraded-separately",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteFile {
    state_dir: Option<String>,
    application: ApplicationSection,
    database: DatabaseSection,
    #[serde(default)]
    service: ServiceConfig,
    #[serde(default)]
    checks: BTreeMap<String, String>,
    #[serde(rename = "node", default)]
    nodes: Vec<NodeSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplicationSection {
    name: String,
    customizations: Option<Customizations>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseSection {
    kind: DbKind,
    path: Option<String>,
    backup_dir: String,
    external_backup: Option<String>,
}

/// How an instance's service is stopped, started and health-checked on a node.
/// Templates may use `{app}`, `{version}`, `{folder}` and `{node}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub start: Option<String>,
    pub stop: Option<String>,
    pub health: Option<String>,
    /// Seconds a service command may take before it is considered failed.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_timeout() -> u64 {
    120
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSection {
    name: String,
    role: Role,
    #[serde(default = "default_address")]
    address: String,
    root: String,
}

fn default_address() -> String {
    "local".into()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAddress {
    Local,
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub role: Role,
    pub address: NodeAddress,
    /// Folder under which instance folders live, as a path on the node.
    pub root: String,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub kind: DbKind,
    /// Name used in messages; never contains a secret.
    pub name: String,
    /// SQLite: the database file.
    pub path: Option<PathBuf>,
    pub backup_dir: PathBuf,
    /// Set when the site backs up by other means; the reason is recorded.
    pub external_backup: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Site {
    pub file: PathBuf,
    pub dir: PathBuf,
    pub app_name: String,
    pub customizations: Option<Customizations>,
    pub database: DatabaseConfig,
    pub service: ServiceConfig,
    pub checks: BTreeMap<String, String>,
    pub nodes: Vec<NodeConfig>,
    pub state_dir: PathBuf,
}

impl Site {
    pub fn load(file: &Path) -> Result<Site> {
        let text =
            std::fs::read_to_string(file).map_err(|e| Error::io("read site file", file, e))?;
        Site::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Site> {
        let raw: SiteFile = toml::from_str(text).map_err(|e| super::toml_error(file, e))?;
        let dir = file
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let f = file.display();
        let resolve = |value: &str, key: &str| -> Result<PathBuf> {
            let v = expand(value, &format!("{f}: `{key}`"))?;
            Ok(dir.join(v))
        };

        let app_name = raw.application.name.trim().to_string();
        if app_name.is_empty() || app_name.contains(['/', '\\', '\0']) {
            return Err(Error::Config(format!(
                "{f}: `application.name` must be a non-empty name without `/` or `\\`"
            )));
        }

        let db = raw.database;
        let path = match db.kind {
            DbKind::Sqlite => match &db.path {
                Some(p) => Some(resolve(p, "database.path")?),
                None => {
                    return Err(Error::Config(format!(
                        "{f}: `database.path` is required for `kind = \"sqlite\"` (the database file, relative to the site file)"
                    )))
                }
            },
        };
        let database = DatabaseConfig {
            kind: db.kind,
            name: path
                .as_ref()
                .and_then(|p| p.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| app_name.clone()),
            path,
            backup_dir: resolve(&db.backup_dir, "database.backup_dir")?,
            external_backup: db.external_backup,
        };

        if raw.nodes.is_empty() {
            return Err(Error::Config(format!(
                "{f}: no `[[node]]`; a site needs at least one node, one of them with `role = \"primary\"`"
            )));
        }
        let mut nodes = Vec::with_capacity(raw.nodes.len());
        for (i, n) in raw.nodes.into_iter().enumerate() {
            let key = format!("node[{i}]");
            if n.name.is_empty()
                || !n
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(Error::Config(format!(
                    "{f}: `{key}.name` = {:?}: use letters, digits, `-`, `_` and `.` only",
                    n.name
                )));
            }
            if nodes.iter().any(|o: &NodeConfig| o.name == n.name) {
                return Err(Error::Config(format!(
                    "{f}: `{key}.name`: node `{}` is listed twice",
                    n.name
                )));
            }
            let address = match n.address.as_str() {
                "local" => NodeAddress::Local,
                other => {
                    return Err(Error::Config(format!(
                        "{f}: `{key}.address` = {other:?} for node `{}`: expected \"local\"",
                        n.name
                    )))
                }
            };
            let root = match address {
                NodeAddress::Local => {
                    let root = resolve(&n.root, &format!("{key}.root"))?;
                    if !root.is_dir() {
                        return Err(Error::Config(format!(
                            "{f}: `{key}.root` of node `{}`: folder `{}` does not exist; create it or correct `root`",
                            n.name,
                            root.display()
                        )));
                    }
                    root.to_string_lossy().into_owned()
                }
            };
            nodes.push(NodeConfig {
                name: n.name,
                role: n.role,
                address,
                root,
            });
        }
        let primaries: Vec<&str> = nodes
            .iter()
            .filter(|n| n.role == Role::Primary)
            .map(|n| n.name.as_str())
            .collect();
        match primaries.len() {
            1 => {}
            0 => {
                return Err(Error::Config(format!(
                    "{f}: `node.role`: no node has `role = \"primary\"`; mark exactly one node as primary"
                )))
            }
            _ => {
                return Err(Error::Config(format!(
                    "{f}: `node.role`: nodes {} are all `role = \"primary\"`; exactly one node may be primary",
                    primaries.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                )))
            }
        }
        let state_dir = match &raw.state_dir {
            Some(s) => resolve(s, "state_dir")?,
            None => dir.join(".uprun"),
        };
        Ok(Site {
            file: file.to_path_buf(),
            dir,
            app_name,
            customizations: raw.application.customizations,
            database,
            service: raw.service,
            checks: raw.checks,
            nodes,
            state_dir,
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
