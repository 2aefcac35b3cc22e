//! The database seam: one trait, one backend per kind. Owns talking to the
//! database; it knows nothing about nodes, scripts or safety rails (those are
//! in `ops`, which decides what to apply and when).

pub mod batches;
mod lazy;
pub mod mssql;
mod sqlite;

use std::path::Path;

use semver::Version;
use serde::{Deserialize, Serialize};

use crate::config::{DatabaseBackend, Migration, Site};
use crate::Result;

pub use lazy::{LazyDatabase, Opener};
pub use mssql::MssqlDatabase;
pub use sqlite::SqliteDatabase;

/// What a backup left behind, as recorded in the run and returned to scripts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupReceipt {
    pub database: String,
    /// Where the backup is (on the database server for server databases).
    pub file: String,
    pub size: u64,
    /// Version of the database at the time of the backup.
    pub version: String,
    pub started: String,
    pub finished: String,
    /// True once the copy has been read back and checked.
    pub verified: bool,
    /// How it was verified (`integrity_check ok`, `RESTORE VERIFYONLY`...).
    pub verification: String,
    /// The backup carries page checksums (SQL Server `WITH CHECKSUM`) that the
    /// verification checked. Always false on SQLite (its check reads every page).
    /// Absent in journals written before it existed.
    #[serde(default)]
    pub checksum: bool,
    /// What the backup is, recorded when it is taken and proved again
    /// (`Database::prove_backup`) before anything irreversible. File backups
    /// (SQLite): the SHA-256 of the file, hex. Empty for server backups and in
    /// journals written before it existed (such a backup cannot be proved).
    #[serde(default)]
    pub sha256: String,
    /// SQL Server: the backup set's `BackupSetGUID`, as `RESTORE HEADERONLY`
    /// reports it (upper case). Empty for file backups.
    #[serde(default)]
    pub backup_set_guid: String,
    /// SQL Server: the backup set's `FirstLSN` and `LastLSN` (decimal text).
    #[serde(default)]
    pub first_lsn: String,
    #[serde(default)]
    pub last_lsn: String,
}

/// One row of the migration history table.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedMigration {
    pub name: String,
    pub version: String,
    pub checksum: String,
    pub applied_at: String,
    pub duration_ms: i64,
    pub applied_by: String,
}

/// A row returned by a read-only query, column name to value.
pub type Row = serde_json::Map<String, serde_json::Value>;

/// Progress callback: (done, total) in backend units (pages, percent, bytes).
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

pub trait Database: Send {
    /// How the database is named in messages. Never contains a secret.
    fn name(&self) -> &str;
    /// The application's schema version, as the database records it.
    fn version(&mut self) -> Result<Version>;
    /// Run a query that must not change anything and return its rows.
    fn query_readonly(&mut self, sql: &str) -> Result<Vec<Row>>;
    /// Take a full backup into `dir`.
    fn backup(&mut self, dir: &Path, progress: Progress<'_>) -> Result<BackupReceipt>;
    /// Read the backup back and check it; sets `verified`.
    fn verify_backup(&mut self, receipt: &mut BackupReceipt) -> Result<()>;
    /// Prove, right before an irreversible step, that the backup `receipt`
    /// describes is still there with the identity recorded when it was taken
    /// (file: size and SHA-256; SQL Server: the backup set's GUID and LSNs,
    /// checked by the server) and still readable. A missing or altered backup
    /// is `Error::Refused`, naming the file; nothing is changed either way.
    fn prove_backup(&mut self, receipt: &BackupReceipt) -> Result<()>;
    /// Migrations recorded as applied, oldest first.
    fn history(&mut self) -> Result<Vec<AppliedMigration>>;
    /// Apply one migration in its own transaction and record it in the history.
    fn apply(&mut self, migration: &Migration, applied_by: &str) -> Result<()>;
    /// Record the application's schema version.
    fn set_version(&mut self, version: &Version) -> Result<()>;
    /// Parse a migration the way `apply` will, without running it, so that a
    /// bad file is found before the first migration of an upgrade is applied.
    fn check_migration(&self, migration: &Migration) -> Result<()>;
    /// Refuse (`Error::Refused`), before anything changes, a backup into
    /// `dir` this backend cannot take on this server (plan and run alike):
    /// not possible on this edition, or clearly no room. Returns notes for the
    /// operator (what could not be checked). Backends that can always back up
    /// say nothing.
    fn check_backup_possible(&mut self, _dir: &Path) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// Before an upgrade is planned or run: refuse (`Error::Refused`) a
    /// database that cannot take it (read-only, a replica), and return notes
    /// for the operator (other sessions that may hold locks...).
    fn preflight_upgrade(&mut self) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// The newest full backup the server knows of (whoever took it), for
    /// `plan` and `status`. Backends without such a catalogue return None.
    fn latest_full_backup(&mut self) -> Result<Option<String>> {
        Ok(None)
    }
    /// Hold an exclusive lock on the database for the rest of the run, so two
    /// runs cannot interleave; refused (`Error::Refused`) when another run
    /// holds it. Backends without server-side locks rely on the run's file lock.
    fn lock_for_run(&mut self, _run_id: &str) -> Result<()> {
        Ok(())
    }
    /// Whether the database was reached (a lazily opened one may not be).
    fn opened(&self) -> bool {
        true
    }
}

/// Open the site's database. `read_only` is used by `plan` and `status`.
pub fn open(site: &Site, read_only: bool) -> Result<Box<dyn Database>> {
    match &site.database.backend {
        DatabaseBackend::Sqlite(s) => Ok(Box::new(SqliteDatabase::open_path(
            &site.database.name,
            &s.path,
            read_only,
        )?)),
        DatabaseBackend::Mssql(_) => Ok(Box::new(MssqlDatabase::open(&site.database, read_only)?)),
    }
}

/// Roll back a transaction left half-done in the site's database by a killed
/// process (a SQLite hot journal), so that read-only connections can read it.
/// Call with the site lock held. Returns the line to show when it did.
pub fn recover(site: &Site) -> Result<Option<String>> {
    match site.database.sqlite_path() {
        Some(path) => {
            if SqliteDatabase::roll_back_hot_journal(&site.database.name, path)? {
                Ok(Some(format!(
                    "database `{}`: a transaction left unfinished by a killed process (hot journal `{}-journal`) was rolled back; the database is as it was before that transaction",
                    site.database.name,
                    // Absolute: the line is read from any working folder.
                    std::path::absolute(path)
                        .unwrap_or_else(|_| path.to_path_buf())
                        .display()
                )))
            } else {
                Ok(None)
            }
        }
        None => Ok(None),
    }
}

/// Whether `recover` may have something to do (checked before taking a lock).
pub fn may_need_recovery(site: &Site) -> bool {
    site.database
        .sqlite_path()
        .is_some_and(SqliteDatabase::journal_left)
}

pub(crate) fn now_rfc3339() -> String {
    // Milliseconds: operators read these (journals, `uprun runs`, backups),
    // and the downtime window is measured from the journal's.
    time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
        ))
        .unwrap_or_default()
}
