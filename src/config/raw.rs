//! The raw structs of the site file (`site.toml`), as serde reads them, and the
//! plain values (kinds, roles, shells) they name. Nothing here checks meaning or
//! touches the environment: `site.rs` turns these into a validated `Site`.
//! Every struct refuses unknown keys, so a typo is an error, not a default.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbKind {
    Sqlite,
    Mssql,
}

impl DbKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DbKind::Sqlite => "sqlite",
            DbKind::Mssql => "mssql",
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
pub(crate) struct SiteFile {
    pub state_dir: Option<String>,
    pub application: ApplicationSection,
    pub database: DatabaseSection,
    #[serde(default)]
    pub service: ServiceConfig,
    #[serde(default)]
    pub checks: BTreeMap<String, String>,
    #[serde(default)]
    pub ssh: SshSection,
    pub inventory: Option<InventorySection>,
    #[serde(rename = "node", default)]
    pub nodes: Vec<NodeSection>,
    #[serde(default)]
    pub limits: LimitsSection,
}

/// `[limits]`: bounds on a procedure. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsSection {
    pub script_timeout_secs: Option<u64>,
}

/// `[ssh]`: how uprun reaches `ssh://` nodes. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SshSection {
    pub identity: Option<String>,
    pub known_hosts: Option<String>,
    #[serde(default)]
    pub accept_new_host_keys: bool,
    pub connect_timeout_secs: Option<u64>,
    pub command_timeout_secs: Option<u64>,
    pub max_parallel_handshakes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApplicationSection {
    pub name: String,
    /// The application is being renamed on purpose: instances named this are
    /// upgraded to `name`.
    pub renamed_from: Option<String>,
    pub customizations: Option<Customizations>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DatabaseSection {
    pub kind: DbKind,
    pub path: Option<String>,
    pub backup_dir: String,
    pub external_backup: Option<String>,
    // SQL Server only.
    pub connection: Option<String>,
    pub database: Option<String>,
    pub trust_server_certificate: Option<bool>,
    pub ca_file: Option<String>,
    pub connect_timeout_secs: Option<u64>,
    pub query_timeout_secs: Option<u64>,
    pub operation_timeout_secs: Option<u64>,
    pub lock_timeout_secs: Option<u64>,
    pub refuse_other_sessions: Option<bool>,
}

impl DatabaseSection {
    /// The SQL Server keys that are set, for refusing them on other kinds.
    pub fn mssql_keys(&self) -> Vec<&'static str> {
        [
            ("connection", self.connection.is_some()),
            ("database", self.database.is_some()),
            (
                "trust_server_certificate",
                self.trust_server_certificate.is_some(),
            ),
            ("ca_file", self.ca_file.is_some()),
            ("connect_timeout_secs", self.connect_timeout_secs.is_some()),
            ("query_timeout_secs", self.query_timeout_secs.is_some()),
            (
                "operation_timeout_secs",
                self.operation_timeout_secs.is_some(),
            ),
            ("lock_timeout_secs", self.lock_timeout_secs.is_some()),
            (
                "refuse_other_sessions",
                self.refuse_other_sessions.is_some(),
            ),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| k)
        .collect()
    }
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
    /// Whether `node_command(.., #{ changes: false })` runs while planning
    /// (`plan`, and `run` before the operator's consent). Off by default: a
    /// command the script calls read-only may not be.
    #[serde(default)]
    pub read_commands_in_plan: bool,
}

fn default_timeout() -> u64 {
    120
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeSection {
    pub name: String,
    pub role: Role,
    #[serde(default = "default_address")]
    pub address: String,
    pub root: String,
    pub shell: Option<Shell>,
}

fn default_address() -> String {
    "local".into()
}

/// The shell that runs service commands on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shell {
    /// `sh`-compatible (Linux, macOS): commands go to the login shell as they are.
    #[default]
    Posix,
    /// Windows OpenSSH: commands are sent as
    /// `powershell.exe -NoProfile -NonInteractive -EncodedCommand <base64 UTF-16LE>`.
    Powershell,
}

impl Shell {
    pub fn as_str(self) -> &'static str {
        match self {
            Shell::Posix => "posix",
            Shell::Powershell => "powershell",
        }
    }
}

/// `[inventory]` in the site file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InventorySection {
    /// The inventory file, relative to the site file.
    pub file: String,
    /// Group whose (single) host is the primary node.
    #[serde(default = "default_primary")]
    pub primary_group: String,
    /// Group whose hosts are the secondary nodes.
    #[serde(default = "default_secondaries")]
    pub secondary_group: String,
    /// Root folder on every node, unless a host sets `uprun_root`.
    pub root: Option<String>,
    /// SSH user for hosts without `ansible_user`.
    pub user: Option<String>,
}

pub(crate) fn default_primary() -> String {
    "primary".into()
}
pub(crate) fn default_secondaries() -> String {
    "secondaries".into()
}
