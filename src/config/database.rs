//! `[database]` in the site file: which backend holds the application's
//! database and how to reach it. One variant per backend, so a SQLite site
//! cannot carry a connection string nor a SQL Server site a file path; a new
//! backend is one more variant and one more `from_section` arm.

use std::path::{Path, PathBuf};

use super::mssql::{self, MssqlConfig};
use super::raw::{DatabaseSection, DbKind};
use super::source::Source;
use crate::Result;

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// Name used in messages; never contains a secret.
    pub name: String,
    /// SQLite: a folder on this machine (relative to the site file). SQL Server:
    /// a folder ON THE SERVER, as the server sees it, used as written.
    pub backup_dir: PathBuf,
    /// Set when the site backs up by other means; the reason is recorded.
    pub external_backup: Option<String>,
    /// What the backend needs to reach the database.
    pub backend: DatabaseBackend,
}

/// The settings of one backend.
#[derive(Debug, Clone)]
pub enum DatabaseBackend {
    Sqlite(SqliteConfig),
    Mssql(MssqlConfig),
}

/// How uprun reaches a SQLite database (`kind = "sqlite"`).
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// The database file.
    pub path: PathBuf,
}

impl DatabaseConfig {
    pub fn kind(&self) -> DbKind {
        match self.backend {
            DatabaseBackend::Sqlite(_) => DbKind::Sqlite,
            DatabaseBackend::Mssql(_) => DbKind::Mssql,
        }
    }

    /// The database file, for a SQLite site.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match &self.backend {
            DatabaseBackend::Sqlite(s) => Some(&s.path),
            DatabaseBackend::Mssql(_) => None,
        }
    }

    /// The connection settings, for a SQL Server site.
    pub fn mssql(&self) -> Option<&MssqlConfig> {
        match &self.backend {
            DatabaseBackend::Mssql(m) => Some(m),
            DatabaseBackend::Sqlite(_) => None,
        }
    }

    /// Check the `[database]` section. `app_name` names a SQLite database whose
    /// file has no stem.
    pub(crate) fn from_section(
        db: DatabaseSection,
        src: &Source,
        app_name: &str,
    ) -> Result<DatabaseConfig> {
        match db.kind {
            DbKind::Sqlite => sqlite_config(db, src, app_name),
            DbKind::Mssql => {
                let (m, backup_dir) = mssql::from_section(&db, src)?;
                Ok(DatabaseConfig {
                    name: m.database.clone(),
                    backup_dir,
                    external_backup: db.external_backup,
                    backend: DatabaseBackend::Mssql(m),
                })
            }
        }
    }
}

/// Validate the `[database]` section of a SQLite site.
fn sqlite_config(db: DatabaseSection, src: &Source, app_name: &str) -> Result<DatabaseConfig> {
    if let Some(key) = db.mssql_keys().first() {
        return Err(src.error(format!(
            "`database.{key}` is a SQL Server setting; it is not used with `kind = \"sqlite\"`: remove it, or set `kind = \"mssql\"`"
        )));
    }
    let Some(path) = &db.path else {
        return Err(src.error(
            "`database.path` is required for `kind = \"sqlite\"` (the database file, relative to the site file)",
        ));
    };
    let path = src.resolve(path, "database.path")?;
    Ok(DatabaseConfig {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| app_name.to_string()),
        backup_dir: src.resolve(&db.backup_dir, "database.backup_dir")?,
        external_backup: db.external_backup,
        backend: DatabaseBackend::Sqlite(SqliteConfig { path }),
    })
}
