//! SQL Server settings (`kind = "mssql"` in `[database]`): the connection
//! string (read by `ado`), the database name, certificate trust and deadlines.
//! Checked here, once, so the backend (`db::mssql`) only connects.

pub(crate) mod ado;

use std::path::PathBuf;
use std::time::Duration;

use super::env::expand;
use super::raw::DatabaseSection;
use super::secret::Secret;
use super::source::Source;
use crate::{Error, Result};

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

/// Validate the `[database]` section of a SQL Server site: the settings, and
/// the backup folder on the server.
pub(crate) fn from_section(db: &DatabaseSection, src: &Source) -> Result<(MssqlConfig, PathBuf)> {
    let f = &src.file;
    let dir = &src.dir;
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
    let mut pairs = ado::pairs(raw_connection).map_err(|m| {
        Error::Config(format!(
            "{f}: `database.connection` is not a valid ADO.NET connection string: {m}"
        ))
    })?;
    for (key, value) in pairs.iter_mut() {
        *value = expand(value, &format!("{f}: `database.connection` (`{key}`)"))?;
    }
    ado::check(&pairs).map_err(|m| Error::Config(format!("{f}: `database.connection`: {m}")))?;
    ado::server(&pairs).map_err(|m| Error::Config(format!("{f}: `database.connection`: {m}")))?;
    let connection = ado::join(&pairs);
    let from_string = ado::get(&pairs, &["initial catalog"]);
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
    let tls_in_string = ado::get(&pairs, &["trustservercertificate"]).is_some();
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
    let settings = MssqlConfig {
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
    };
    Ok((settings, PathBuf::from(backup_dir)))
}
