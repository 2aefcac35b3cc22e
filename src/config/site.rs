//! The site file (`site.toml`): one deployment of the application.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
struct SiteFile {
    state_dir: Option<String>,
    application: ApplicationSection,
    database: DatabaseSection,
    #[serde(default)]
    service: ServiceConfig,
    #[serde(default)]
    checks: BTreeMap<String, String>,
    #[serde(default)]
    ssh: SshSection,
    inventory: Option<super::inventory::InventorySection>,
    #[serde(rename = "node", default)]
    nodes: Vec<NodeSection>,
    #[serde(default)]
    limits: LimitsSection,
}

/// `[limits]`: bounds on a procedure. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    script_timeout_secs: Option<u64>,
}

/// Bounds on a procedure (`[limits]` in the site file).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Wall-clock time a run's procedure may take, host calls included.
    pub script_timeout: Duration,
}

/// Default of `limits.script_timeout_secs`: a long maintenance window.
pub const DEFAULT_SCRIPT_TIMEOUT_SECS: u64 = 6 * 60 * 60;

/// `[ssh]`: how uprun reaches `ssh://` nodes. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SshSection {
    identity: Option<String>,
    known_hosts: Option<String>,
    #[serde(default)]
    accept_new_host_keys: bool,
    connect_timeout_secs: Option<u64>,
    command_timeout_secs: Option<u64>,
    max_parallel_handshakes: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplicationSection {
    name: String,
    /// The application is being renamed on purpose: instances named this are
    /// upgraded to `name`.
    renamed_from: Option<String>,
    customizations: Option<Customizations>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatabaseSection {
    kind: DbKind,
    path: Option<String>,
    backup_dir: String,
    external_backup: Option<String>,
    // SQL Server only.
    connection: Option<String>,
    database: Option<String>,
    trust_server_certificate: Option<bool>,
    ca_file: Option<String>,
    connect_timeout_secs: Option<u64>,
    query_timeout_secs: Option<u64>,
    operation_timeout_secs: Option<u64>,
    lock_timeout_secs: Option<u64>,
    refuse_other_sessions: Option<bool>,
}

impl DatabaseSection {
    /// The SQL Server keys that are set, for refusing them on other kinds.
    fn mssql_keys(&self) -> Vec<&'static str> {
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

/// Longest SQL Server identifier (`sysname`).
pub const MAX_SQL_NAME: usize = 128;

/// How uprun reaches a SQL Server database (`kind = "mssql"`).
#[derive(Debug, Clone)]
pub struct MssqlConfig {
    /// ADO.NET connection string with `${env:...}` expanded: holds the password.
    pub connection: Secret,
    /// The database to back up and upgrade (`database.database`, or the
    /// connection string's `Database`/`Initial Catalog`).
    pub database: String,
    /// Accept any server certificate (test servers only).
    pub trust_server_certificate: bool,
    /// Trust this CA (PEM/DER file on this machine) for the server certificate.
    pub ca_file: Option<PathBuf>,
    /// SQL Server Browser lookup (named instances), TCP connect, TLS and login.
    pub connect_timeout: Duration,
    /// Deadline for short statements (version, history, checks, lock).
    pub query_timeout: Duration,
    /// Deadline for one BACKUP, one RESTORE VERIFYONLY, one migration.
    pub operation_timeout: Duration,
    /// How long a migration's statement waits for a lock another session
    /// holds (`SET LOCK_TIMEOUT`) before it fails.
    pub lock_timeout: Duration,
    /// Refuse an upgrade while other sessions use the database (else they
    /// are listed as a warning).
    pub refuse_other_sessions: bool,
}

/// Check a SQL Server name before it is quoted into T-SQL.
pub fn check_sql_name(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.chars().count() > MAX_SQL_NAME {
        return Err(format!("the name is longer than {MAX_SQL_NAME} characters"));
    }
    if name.contains('\0') {
        return Err("the name contains a NUL character".into());
    }
    Ok(())
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAddress {
    Local,
    /// `ssh://user@host:port` (port 22 when not given).
    Ssh {
        user: String,
        host: String,
        port: u16,
    },
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeAddress::Local => f.write_str("local"),
            NodeAddress::Ssh { user, host, port } if host.contains(':') => {
                write!(f, "ssh://{user}@[{host}]:{port}")
            }
            NodeAddress::Ssh { user, host, port } => write!(f, "ssh://{user}@{host}:{port}"),
        }
    }
}

impl NodeAddress {
    /// Parse `local` or `ssh://user@host[:port]`; the error says what is wrong.
    pub fn parse(text: &str) -> std::result::Result<NodeAddress, String> {
        if text == "local" {
            return Ok(NodeAddress::Local);
        }
        let Some(rest) = text.strip_prefix("ssh://") else {
            return Err("expected \"local\" or \"ssh://user@host:port\"".into());
        };
        let Some((user, hostport)) = rest.rsplit_once('@') else {
            return Err("the user is missing: write \"ssh://user@host:port\"".into());
        };
        if user.is_empty() || user.contains([':', '/', ' ']) {
            return Err(format!(
                "user {user:?} is not a valid user name (a password never goes in the address: use a key or the SSH agent)"
            ));
        }
        let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err("unterminated `[` in the host".into());
            };
            match after {
                "" => (host, None),
                p => match p.strip_prefix(':') {
                    Some(p) => (host, Some(p)),
                    None => return Err(format!("unexpected {p:?} after the host")),
                },
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.contains(['/', '@', ' ', '?', '#']) {
            return Err(format!("host {host:?} is not a host name or IP address"));
        }
        let port = match port {
            None => 22,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
            },
        };
        Ok(NodeAddress::Ssh {
            user: user.to_string(),
            host: host.to_string(),
            port,
        })
    }
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

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub role: Role,
    pub address: NodeAddress,
    /// Folder under which instance folders live, as a path on the node.
    pub root: String,
    pub shell: Shell,
}

/// How uprun reaches `ssh://` nodes (`[ssh]` in the site file).
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// Private key file; when absent, the SSH agent and then the usual
    /// `~/.ssh/id_*` files are tried.
    pub identity: Option<PathBuf>,
    /// Known-hosts file; when absent, `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// Record the key of a host that is not in known_hosts yet instead of
    /// refusing it. A changed key is always refused.
    pub accept_new_host_keys: bool,
    pub connect_timeout: Duration,
    /// Limit for one file operation on a node (service commands use
    /// `[service] timeout_secs`).
    pub command_timeout: Duration,
    /// SSH handshakes in flight at once. Below OpenSSH's default
    /// `MaxStartups 10:30:100`, past which sshd drops new connections.
    pub max_parallel_handshakes: usize,
}

/// Default of `[ssh] max_parallel_handshakes`: well under sshd's default
/// `MaxStartups` start (10), which sshd counts with a lag under load (8
/// measured one drop in 200 connections on a loaded machine).
pub const DEFAULT_MAX_PARALLEL_HANDSHAKES: usize = 6;

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            identity: None,
            known_hosts: None,
            accept_new_host_keys: false,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(60),
            max_parallel_handshakes: DEFAULT_MAX_PARALLEL_HANDSHAKES,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub kind: DbKind,
    /// Name used in messages; never contains a secret.
    pub name: String,
    /// SQLite: the database file.
    pub path: Option<PathBuf>,
    /// SQLite: a folder on this machine (relative to the site file). SQL Server:
    /// a folder ON THE SERVER, as the server sees it, used as written.
    pub backup_dir: PathBuf,
    /// Set when the site backs up by other means; the reason is recorded.
    pub external_backup: Option<String>,
    /// SQL Server: how to connect.
    pub mssql: Option<MssqlConfig>,
}

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

        let secs = |v: Option<u64>, default: u64, key: &str| -> Result<Duration> {
            match v {
                None => Ok(Duration::from_secs(default)),
                Some(0) => Err(Error::Config(format!(
                    "{f}: `{key}` must be at least 1 (seconds)"
                ))),
                Some(s) => Ok(Duration::from_secs(s)),
            }
        };

        let app_name = raw.application.name.trim().to_string();
        if app_name.is_empty() || app_name.contains(['/', '\\', '\0']) {
            return Err(Error::Config(format!(
                "{f}: `application.name` must be a non-empty name without `/` or `\\`"
            )));
        }

        let renamed_from = match &raw.application.renamed_from {
            None => None,
            Some(old) => {
                let old = old.trim().to_string();
                if old.is_empty() || old.contains(['/', '\\', '\0']) {
                    return Err(Error::Config(format!(
                        "{f}: `application.renamed_from` must be a non-empty name without `/` or `\\` (the name the instances have now)"
                    )));
                }
                if old == app_name {
                    return Err(Error::Config(format!(
                        "{f}: `application.renamed_from` = {old:?} is the same as `application.name`: nothing is renamed; remove `renamed_from`"
                    )));
                }
                Some(old)
            }
        };

        let db = raw.database;
        let database = match db.kind {
            DbKind::Sqlite => {
                if let Some(key) = db.mssql_keys().first() {
                    return Err(Error::Config(format!(
                        "{f}: `database.{key}` is a SQL Server setting; it is not used with `kind = \"sqlite\"`: remove it, or set `kind = \"mssql\"`"
                    )));
                }
                let path = match &db.path {
                    Some(p) => resolve(p, "database.path")?,
                    None => {
                        return Err(Error::Config(format!(
                            "{f}: `database.path` is required for `kind = \"sqlite\"` (the database file, relative to the site file)"
                        )))
                    }
                };
                DatabaseConfig {
                    kind: db.kind,
                    name: path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_else(|| app_name.clone()),
                    path: Some(path),
                    backup_dir: resolve(&db.backup_dir, "database.backup_dir")?,
                    external_backup: db.external_backup,
                    mssql: None,
                }
            }
            DbKind::Mssql => mssql_config(db, &dir, &f.to_string())?,
        };

        let (raw_nodes, from) = match &raw.inventory {
            Some(inv) => {
                if !raw.nodes.is_empty() {
                    return Err(Error::Config(format!(
                        "{f}: both `[inventory]` and `[[node]]` are given; take the nodes from one of them"
                    )));
                }
                let file = resolve(&inv.file, "inventory.file")?;
                let nodes = super::inventory::load(&file, inv)?;
                (nodes, Some(file))
            }
            None => (raw.nodes, None),
        };
        if raw_nodes.is_empty() {
            return Err(Error::Config(match &from {
                Some(inv) => format!(
                    "{f}: the inventory `{}` has no host in its primary or secondary group (`[inventory] primary_group` / `secondary_group`)",
                    inv.display()
                ),
                None => format!(
                    "{f}: no `[[node]]`; a site needs at least one node, one of them with `role = \"primary\"`"
                ),
            }));
        }
        // Where a node came from, for error messages.
        let origin = match &from {
            Some(inv) => format!("{f} (nodes from inventory `{}`)", inv.display()),
            None => f.to_string(),
        };
        let mut nodes = Vec::with_capacity(raw_nodes.len());
        for (i, n) in raw_nodes.into_iter().enumerate() {
            let key = match &from {
                Some(_) => format!("host `{}`", n.name),
                None => format!("node[{i}]"),
            };
            if n.name.is_empty()
                || !n
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(Error::Config(format!(
                    "{origin}: `{key}.name` = {:?}: use letters, digits, `-`, `_` and `.` only",
                    n.name
                )));
            }
            if nodes.iter().any(|o: &NodeConfig| o.name == n.name) {
                return Err(Error::Config(format!(
                    "{origin}: `{key}.name`: node `{}` is listed twice",
                    n.name
                )));
            }
            let address = NodeAddress::parse(&n.address).map_err(|why| {
                Error::Config(format!(
                    "{origin}: `{key}.address` = {:?} for node `{}`: {why}",
                    n.address, n.name
                ))
            })?;
            let shell = n.shell.unwrap_or_default();
            let root = match address {
                NodeAddress::Local => {
                    if shell != Shell::Posix {
                        return Err(Error::Config(format!(
                            "{origin}: `{key}.shell` of node `{}`: only `ssh://` nodes may use shell {:?}; local nodes run `sh`",
                            n.name,
                            shell.as_str()
                        )));
                    }
                    let root = resolve(&n.root, &format!("{key}.root"))?;
                    if !root.is_dir() {
                        return Err(Error::Config(format!(
                            "{origin}: `{key}.root` of node `{}`: folder `{}` does not exist; create it or correct `root`",
                            n.name,
                            root.display()
                        )));
                    }
                    root.to_string_lossy().into_owned()
                }
                NodeAddress::Ssh { .. } => {
                    let root = expand(&n.root, &format!("{origin}: `{key}.root`"))?;
                    if !is_absolute_remote(&root, shell) {
                        return Err(Error::Config(format!(
                            "{origin}: `{key}.root` = {root:?} of node `{}`: an ssh node's root is a path on the node and must be absolute ({})",
                            n.name,
                            match shell {
                                Shell::Posix => "starting with `/`",
                                Shell::Powershell => "like `C:/Apps/FastApp` or `D:\\Apps`",
                            }
                        )));
                    }
                    root
                }
            };
            nodes.push(NodeConfig {
                name: n.name,
                role: n.role,
                address,
                root,
                shell,
            });
        }
        check_roots_apart(&nodes, &origin)?;
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
        let ssh = SshSettings {
            identity: match &raw.ssh.identity {
                Some(p) => Some(resolve(p, "ssh.identity")?),
                None => None,
            },
            known_hosts: match &raw.ssh.known_hosts {
                Some(p) => Some(resolve(p, "ssh.known_hosts")?),
                None => None,
            },
            accept_new_host_keys: raw.ssh.accept_new_host_keys,
            connect_timeout: secs(raw.ssh.connect_timeout_secs, 10, "ssh.connect_timeout_secs")?,
            command_timeout: secs(raw.ssh.command_timeout_secs, 60, "ssh.command_timeout_secs")?,
            max_parallel_handshakes: match raw.ssh.max_parallel_handshakes {
                None => DEFAULT_MAX_PARALLEL_HANDSHAKES,
                Some(n @ 1..=1000) => n as usize,
                Some(n) => {
                    return Err(Error::Config(format!(
                        "{f}: `ssh.max_parallel_handshakes` = {n}: must be between 1 and 1000; keep it below the nodes' sshd `MaxStartups` (10 by default), past which sshd drops connections"
                    )))
                }
            },
        };
        let state_dir = match &raw.state_dir {
            Some(s) => resolve(s, "state_dir")?,
            None => dir.join(".uprun"),
        };
        Ok(Site {
            file: file.to_path_buf(),
            dir,
            app_name,
            renamed_from,
            customizations: raw.application.customizations,
            database,
            service: raw.service,
            checks: raw.checks,
            nodes,
            ssh,
            state_dir,
            limits: Limits {
                script_timeout: secs(
                    raw.limits.script_timeout_secs,
                    DEFAULT_SCRIPT_TIMEOUT_SECS,
                    "limits.script_timeout_secs",
                )?,
            },
        })
    }

    /// True when any node is reached over SSH.
    pub fn has_ssh_nodes(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(n.address, NodeAddress::Ssh { .. }))
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

/// Validate the `[database]` section of a SQL Server site.
fn mssql_config(db: DatabaseSection, dir: &Path, f: &str) -> Result<DatabaseConfig> {
    if db.path.is_some() {
        return Err(Error::Config(format!(
            "{f}: `database.path` is for SQLite; a SQL Server database is reached through `database.connection`"
        )));
    }
    let Some(raw_connection) = &db.connection else {
        return Err(Error::Config(format!(
            "{f}: `database.connection` is required for `kind = \"mssql\"`: an ADO.NET connection string such as \"Server=tcp:db01,1433;Database=FastApp;User Id=uprun;Password=${{env:UPRUN_DB_PASSWORD}}\""
        )));
    };
    // Parsed first, `${env:...}` substituted in each value afterwards: a
    // password holding `;` or a quote stays one value.
    let mut pairs = super::ado::pairs(raw_connection).map_err(|m| {
        Error::Config(format!(
            "{f}: `database.connection` is not a valid ADO.NET connection string: {m}"
        ))
    })?;
    for (key, value) in pairs.iter_mut() {
        *value = expand(value, &format!("{f}: `database.connection` (`{key}`)"))?;
    }
    super::ado::check(&pairs)
        .map_err(|m| Error::Config(format!("{f}: `database.connection`: {m}")))?;
    super::ado::server(&pairs)
        .map_err(|m| Error::Config(format!("{f}: `database.connection`: {m}")))?;
    let connection = super::ado::join(&pairs);
    let from_string = super::ado::get(&pairs, &["initial catalog"]);
    let database = match (&db.database, from_string) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) if !d.is_empty() => d.to_string(),
        _ => {
            return Err(Error::Config(format!(
                "{f}: no database named: set `database.database`, or `Database=` in `database.connection` (uprun refuses to fall back to the login's default database)"
            )))
        }
    };
    check_sql_name(&database)
        .map_err(|m| Error::Config(format!("{f}: database name {database:?}: {m}")))?;
    let tls_in_string = super::ado::get(&pairs, &["trustservercertificate"]).is_some();
    let trust = db.trust_server_certificate.unwrap_or(false);
    if tls_in_string && (db.trust_server_certificate.is_some() || db.ca_file.is_some()) {
        return Err(Error::Config(format!(
            "{f}: certificate trust is set both in `database.connection` (TrustServerCertificate...) and in `database.trust_server_certificate`/`database.ca_file`: set it in one place"
        )));
    }
    if trust && db.ca_file.is_some() {
        return Err(Error::Config(format!(
            "{f}: `database.trust_server_certificate = true` accepts any certificate, `database.ca_file` checks it against a CA: set one of them"
        )));
    }
    let ca_file = match &db.ca_file {
        Some(p) => {
            let p = dir.join(expand(p, &format!("{f}: `database.ca_file`"))?);
            if !p.is_file() {
                return Err(Error::Config(format!(
                    "{f}: `database.ca_file`: `{}` does not exist",
                    p.display()
                )));
            }
            Some(p)
        }
        None => None,
    };
    let backup_dir = expand(&db.backup_dir, &format!("{f}: `database.backup_dir`"))?;
    if backup_dir.trim().is_empty() || backup_dir.contains('\0') {
        return Err(Error::Config(format!(
            "{f}: `database.backup_dir` must be a folder on the SQL Server machine, e.g. \"/var/opt/mssql/backup\" or \"D:\\\\Backups\""
        )));
    }
    let secs = |v: Option<u64>, default: u64, key: &str| -> Result<Duration> {
        match v.unwrap_or(default) {
            0 => Err(Error::Config(format!(
                "{f}: `database.{key}` must be at least 1 second"
            ))),
            n => Ok(Duration::from_secs(n)),
        }
    };
    Ok(DatabaseConfig {
        kind: DbKind::Mssql,
        name: database.clone(),
        path: None,
        backup_dir: PathBuf::from(backup_dir),
        external_backup: db.external_backup,
        mssql: Some(MssqlConfig {
            connection: Secret::new(connection),
            database,
            trust_server_certificate: trust,
            ca_file,
            connect_timeout: secs(db.connect_timeout_secs, 15, "connect_timeout_secs")?,
            query_timeout: secs(db.query_timeout_secs, 300, "query_timeout_secs")?,
            operation_timeout: secs(
                db.operation_timeout_secs,
                6 * 3600,
                "operation_timeout_secs",
            )?,
            lock_timeout: secs(db.lock_timeout_secs, 120, "lock_timeout_secs")?,
            refuse_other_sessions: db.refuse_other_sessions.unwrap_or(false),
        }),
    })
}

/// The named components of a path, lexically normalised: `.` and empty
/// components dropped, `..` resolved, `\\` a separator and case folded on
/// Windows nodes (`windows`). `/C:/x` and `C:\\x` give the same components.
/// Meant for absolute paths, whose leading root it drops.
pub fn path_components(path: &str, windows: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let seps: &[char] = if windows { &['/', '\\'] } else { &['/'] };
    for c in path.split(seps) {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c if windows => out.push(c.to_lowercase()),
            c => out.push(c.to_string()),
        }
    }
    out
}

/// How the root folders of two nodes overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    Same,
    /// The first is inside the second.
    Inside,
    /// The first contains the second.
    Contains,
}

/// How two normalised paths overlap, if they do.
pub fn overlap(a: &[String], b: &[String]) -> Option<Overlap> {
    if a == b {
        Some(Overlap::Same)
    } else if a.starts_with(b) {
        Some(Overlap::Inside)
    } else if b.starts_with(a) {
        Some(Overlap::Contains)
    } else {
        None
    }
}

/// Rail: every node has a root folder of its own. Two nodes whose roots are
/// the same folder, or one inside the other, would take each other's manifest
/// and instance folders: removing "a secondary" would remove the primary's
/// instance. Local roots are compared as this machine resolves them (links
/// followed); SSH roots when the nodes share host and port, lexically.
fn check_roots_apart(nodes: &[NodeConfig], origin: &str) -> Result<()> {
    // Where a root lives (None: this machine) and its normalised components.
    let place = |n: &NodeConfig| -> (Option<(String, u16)>, Vec<String>) {
        match &n.address {
            NodeAddress::Local => {
                let resolved = std::fs::canonicalize(&n.root)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| n.root.clone());
                (None, path_components(&resolved, cfg!(windows)))
            }
            NodeAddress::Ssh { host, port, .. } => (
                Some((host.to_lowercase(), *port)),
                path_components(&n.root, n.shell == Shell::Powershell),
            ),
        }
    };
    let placed: Vec<_> = nodes.iter().map(|n| (n, place(n))).collect();
    for (i, (a, (host_a, pa))) in placed.iter().enumerate() {
        for (b, (host_b, pb)) in placed.iter().skip(i + 1) {
            if host_a != host_b {
                continue;
            }
            let why = "each node needs a root folder of its own, or one node's manifest and instance folders would be taken for the other's (removing one node's instance would remove the other's)";
            match overlap(pa, pb) {
                None => {}
                Some(Overlap::Same) => {
                    return Err(Error::Config(format!(
                        "{origin}: nodes `{}` and `{}` share the root folder `{}` (`{}`): {why}",
                        a.name, b.name, a.root, b.root
                    )))
                }
                Some(o) => {
                    let (inner, outer) = if o == Overlap::Inside { (a, b) } else { (b, a) };
                    return Err(Error::Config(format!(
                        "{origin}: the root of node `{}` (`{}`) is inside the root of node `{}` (`{}`): {why}",
                        inner.name, inner.root, outer.name, outer.root
                    )));
                }
            }
        }
    }
    Ok(())
}

/// An absolute path on a remote node: `/x` anywhere, `C:/x` or `C:\\x` on Windows.
fn is_absolute_remote(path: &str, shell: Shell) -> bool {
    let b = path.as_bytes();
    path.starts_with('/')
        || (shell == Shell::Powershell
            && b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && (b[2] == b'/' || b[2] == b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(database: &str) -> Result<Site> {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("n1")).expect("mkdir");
        let text = format!(
            "[application]\nname = \"FastApp\"\n[database]\n{database}\n[[node]]\nname = \"n1\"\nrole = \"primary\"\nroot = \"n1\"\n"
        );
        Site::parse(&dir.path().join("site.toml"), &text)
    }

    #[test]
    fn mssql_section_is_read_and_the_password_stays_secret() {
        std::env::set_var("UPRUN_TEST_SITE_PW", "Sup3r;Secret");
        let s = site(
            "kind = \"mssql\"\nconnection = \"Server=tcp:db01,1433;Database=FastApp;User Id=uprun;Password='${env:UPRUN_TEST_SITE_PW}'\"\nbackup_dir = 'D:\\Backups'\ntrust_server_certificate = true\nconnect_timeout_secs = 5",
        )
        .expect("site");
        let m = s.database.mssql.as_ref().expect("mssql");
        assert_eq!(s.database.name, "FastApp");
        assert_eq!(m.database, "FastApp");
        assert!(m.trust_server_certificate);
        assert_eq!(m.connect_timeout, Duration::from_secs(5));
        assert_eq!(s.database.backup_dir, PathBuf::from("D:\\Backups"));
        assert!(m.connection.expose().contains("Sup3r;Secret"));
        let debug = format!("{s:?}");
        assert!(!debug.contains("Sup3r") && debug.contains("***"), "{debug}");
    }

    #[test]
    fn mssql_database_override_and_errors() {
        let s = site("kind = \"mssql\"\nconnection = \"Server=db01\"\ndatabase = \"Other]DB\"\nbackup_dir = \"/b\"")
            .expect("site");
        assert_eq!(s.database.name, "Other]DB");
        let e = site("kind = \"mssql\"\nconnection = \"Server=db01\"\nbackup_dir = \"/b\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no database named"), "{e}");
        let e = site(&format!(
            "kind = \"mssql\"\nconnection = \"Server=db01\"\ndatabase = \"{}\"\nbackup_dir = \"/b\"",
            "x".repeat(129)
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("longer than 128"), "{e}");
        let e = site("kind = \"mssql\"\nconnection = \"Server=db01;Database=A;TrustServerCertificate=true\"\ntrust_server_certificate = false\nbackup_dir = \"/b\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("one place"), "{e}");
        let e =
            site("kind = \"sqlite\"\npath = \"a.sqlite\"\nconnection = \"x\"\nbackup_dir = \"b\"")
                .unwrap_err()
                .to_string();
        assert!(
            e.contains("`database.connection` is a SQL Server setting"),
            "{e}"
        );
        let e = site("kind = \"mssql\"\nbackup_dir = \"/b\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`database.connection` is required"), "{e}");
    }

    #[test]
    fn parses_node_addresses() {
        assert_eq!(NodeAddress::parse("local"), Ok(NodeAddress::Local));
        assert_eq!(
            NodeAddress::parse("ssh://deploy@app02.example.com"),
            Ok(NodeAddress::Ssh {
                user: "deploy".into(),
                host: "app02.example.com".into(),
                port: 22
            })
        );
        assert_eq!(
            NodeAddress::parse("ssh://root@127.0.0.1:2222"),
            Ok(NodeAddress::Ssh {
                user: "root".into(),
                host: "127.0.0.1".into(),
                port: 2222
            })
        );
        let v6 = NodeAddress::parse("ssh://u@[::1]:2200").unwrap();
        assert_eq!(v6.to_string(), "ssh://u@[::1]:2200");
        for bad in [
            "ssh://host",
            "ssh://u@host:0",
            "ssh://u@host:99999",
            "ssh://u@:22",
            "ssh://u:pw@host",
            "sftp://u@h",
            "remote",
        ] {
            assert!(NodeAddress::parse(bad).is_err(), "{bad}");
        }
    }

    fn site_with(dir: &Path, extra: &str, nodes: &str) -> Result<Site> {
        let text = format!(
            "[application]\nname = \"FastApp\"\n[database]\nkind = \"sqlite\"\npath = \"db.sqlite\"\nbackup_dir = \"b\"\n{extra}\n{nodes}"
        );
        Site::parse(&dir.join("site.toml"), &text)
    }

    #[test]
    fn ssh_nodes_and_settings() {
        let dir = tempfile::tempdir().unwrap();
        let site = site_with(
            dir.path(),
            "[ssh]\nidentity = \"keys/id\"\naccept_new_host_keys = true\nconnect_timeout_secs = 3\n",
            "[[node]]\nname = \"w1\"\nrole = \"primary\"\naddress = \"ssh://admin@win1:22\"\nroot = \"C:/Apps\"\nshell = \"powershell\"\n\
             [[node]]\nname = \"l1\"\nrole = \"secondary\"\naddress = \"ssh://deploy@l1\"\nroot = \"/opt/app\"\n",
        )
        .unwrap();
        assert_eq!(site.nodes[0].shell, Shell::Powershell);
        assert_eq!(site.nodes[1].shell, Shell::Posix);
        assert_eq!(site.ssh.identity, Some(dir.path().join("keys/id")));
        assert!(site.ssh.accept_new_host_keys);
        assert_eq!(site.ssh.connect_timeout, Duration::from_secs(3));
        assert!(site.has_ssh_nodes());

        let err = site_with(
            dir.path(),
            "",
            "[[node]]\nname = \"l1\"\nrole = \"primary\"\naddress = \"ssh://deploy@l1:70000\"\nroot = \"/opt\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("site.toml") && err.contains("node[0].address") && err.contains("port"),
            "{err}"
        );
        let err = site_with(
            dir.path(),
            "",
            "[[node]]\nname = \"l1\"\nrole = \"primary\"\naddress = \"ssh://deploy@l1\"\nroot = \"opt\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("node[0].root") && err.contains("absolute"),
            "{err}"
        );
        let err = site_with(dir.path(), "[ssh]\nidentty = \"x\"\n", "")
            .unwrap_err()
            .to_string();
        assert!(err.contains("identty"), "{err}");
    }

    fn two_nodes(first: (&str, &str), second: (&str, &str)) -> String {
        format!(
            "[[node]]\nname = \"a\"\nrole = \"primary\"\naddress = \"{}\"\nroot = {:?}\n\
             [[node]]\nname = \"b\"\nrole = \"secondary\"\naddress = \"{}\"\nroot = {:?}\n",
            first.0, first.1, second.0, second.1
        )
    }

    #[test]
    fn node_roots_must_not_overlap() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("n/a/inner")).unwrap();
        std::fs::create_dir_all(dir.path().join("n/b")).unwrap();
        let err = |nodes: String| site_with(dir.path(), "", &nodes).unwrap_err().to_string();
        let e = err(two_nodes(("local", "n/a"), ("local", "./n/b/../a/")));
        assert!(e.contains("nodes `a` and `b` share the root folder"), "{e}");
        let e = err(two_nodes(("local", "n/a/inner"), ("local", "n/a")));
        assert!(
            e.contains("the root of node `a` (`") && e.contains("inside the root of node `b`"),
            "{e}"
        );
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink("a", dir.path().join("n/link")).unwrap();
            let e = err(two_nodes(("local", "n/a"), ("local", "n/link")));
            assert!(e.contains("share the root folder"), "{e}");
        }
        assert!(site_with(
            dir.path(),
            "",
            &two_nodes(("local", "n/a"), ("local", "n/b"))
        )
        .is_ok());
        // SSH nodes: compared when they share host and port.
        let ssh = "ssh://u@h1:22";
        let e = err(two_nodes(
            (ssh, "/opt/app/"),
            ("ssh://v@H1", "/opt/x/../app"),
        ));
        assert!(e.contains("share the root folder"), "{e}");
        let e = err(two_nodes((ssh, "/opt/app"), (ssh, "/opt/app/b")));
        assert!(e.contains("inside the root of node `a`"), "{e}");
        assert!(site_with(
            dir.path(),
            "",
            &two_nodes((ssh, "/opt/app"), ("ssh://u@h2", "/opt/app"))
        )
        .is_ok());
        assert!(site_with(
            dir.path(),
            "",
            &two_nodes((ssh, "/opt/app"), ("ssh://u@h1:2222", "/opt/app"))
        )
        .is_ok());
        assert!(site_with(
            dir.path(),
            "",
            &two_nodes((ssh, "/opt/app"), (ssh, "/opt/app2"))
        )
        .is_ok());
        // Windows nodes ignore case and take either separator.
        let nodes = two_nodes((ssh, "C:/Apps/Fast"), (ssh, "c:\\apps\\fast\\b"))
            .replace("root = \"C:", "shell = \"powershell\"\nroot = \"C:")
            .replace("root = \"c:", "shell = \"powershell\"\nroot = \"c:");
        let e = err(nodes);
        assert!(e.contains("inside the root of node `a`"), "{e}");
    }

    #[test]
    fn renamed_from_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("n1")).unwrap();
        let parse = |app: &str| {
            let text = format!(
                "[application]\n{app}\n[database]\nkind = \"sqlite\"\npath = \"db.sqlite\"\nbackup_dir = \"b\"\n[[node]]\nname = \"n1\"\nrole = \"primary\"\nroot = \"n1\"\n"
            );
            Site::parse(&dir.path().join("site.toml"), &text)
        };
        let s = parse("name = \"NewApp\"\nrenamed_from = \"FastApp\"").unwrap();
        assert_eq!(s.renamed_from.as_deref(), Some("FastApp"));
        assert_eq!(parse("name = \"FastApp\"").unwrap().renamed_from, None);
        let e = parse("name = \"FastApp\"\nrenamed_from = \"FastApp\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing is renamed"), "{e}");
        let e = parse("name = \"NewApp\"\nrenamed_from = \"a/b\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("application.renamed_from"), "{e}");
        let e = parse("name = \"NewApp\"\nrenamed_form = \"FastApp\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("renamed_form"), "{e}");
    }
}
