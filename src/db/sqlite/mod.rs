//! SQLite backend (the embedded default): the `Database` implementation over
//! one database file. Backups are in `backup`, the roll-back of a hot journal
//! left by a killed process in `recovery`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use semver::Version;

use super::{now_rfc3339, AppliedMigration, BackupReceipt, Database, Progress, Row};
use crate::config::Migration;
use crate::{Error, Result};

mod backup;
mod recovery;

/// Table and key where the application records its schema version.
pub const VERSION_TABLE: &str = "app_meta";
pub const VERSION_KEY: &str = "schema_version";
/// uprun's migration history table.
pub const HISTORY_TABLE: &str = "uprun_migration_history";

/// Pages copied per online-backup step (16 MiB with 4 KiB pages).
const PAGES_PER_STEP: i32 = 4096;
/// Buffer of the locked file copy.
const COPY_CHUNK: u64 = 64 << 20;

pub struct SqliteDatabase {
    name: String,
    path: PathBuf,
    conn: Connection,
}

impl SqliteDatabase {
    pub fn open_path(name: &str, path: &Path, read_only: bool) -> Result<Self> {
        if !path.is_file() {
            // Bad input (exit 2): the site file names a file that is not there.
            return Err(Error::Config(format!(
                "database `{name}`: database file `{}` does not exist; check `database.path` in the site file",
                path.display()
            )));
        }
        let flags = if read_only {
            OpenFlags::SQLITE_OPEN_READ_ONLY
        } else {
            OpenFlags::SQLITE_OPEN_READ_WRITE
        } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| Error::db(name, format!("cannot open `{}`: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(|e| Error::db(name, e.to_string()))?;
        Ok(SqliteDatabase {
            name: name.to_string(),
            path: path.to_path_buf(),
            conn,
        })
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::db(&self.name, format!("{what}: {e}"))
    }

    fn has_table(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    }
}

/// Read the schema version from an open connection (also used on backups).
fn read_version(conn: &Connection) -> std::result::Result<Version, String> {
    if !SqliteDatabase::has_table(conn, VERSION_TABLE).map_err(|e| e.to_string())? {
        return Err(format!(
            "no `{VERSION_TABLE}` table: this does not look like the application's database"
        ));
    }
    let v: String = conn
        .query_row(
            &format!("SELECT value FROM {VERSION_TABLE} WHERE key = ?1"),
            [VERSION_KEY],
            |r| r.get(0),
        )
        .map_err(|e| format!("cannot read `{VERSION_KEY}` from `{VERSION_TABLE}`: {e}"))?;
    Version::parse(v.trim()).map_err(|e| format!("recorded version {v:?} is not a version: {e}"))
}

fn value_to_json(v: rusqlite::types::ValueRef<'_>) -> serde_json::Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => f.into(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
        ValueRef::Blob(b) => format!("<{} bytes>", b.len()).into(),
    }
}

impl Database for SqliteDatabase {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&mut self) -> Result<Version> {
        read_version(&self.conn).map_err(|m| Error::db(&self.name, m))
    }

    fn query_readonly(&mut self, sql: &str) -> Result<Vec<Row>> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| match e {
            rusqlite::Error::MultipleStatement => Error::db(
                &self.name,
                format!("check query `{sql}` holds more than one statement; check queries must only read: write one SELECT"),
            ),
            e => self.err(&format!("check query `{sql}`"), e),
        })?;
        // SQLite counts ATTACH, BEGIN and COMMIT as read-only (they change
        // the connection, not the file); a check returns rows.
        if !stmt.readonly() || stmt.column_count() == 0 {
            return Err(Error::db(
                &self.name,
                format!(
                    "check query `{sql}` would change the database; check queries must only read"
                ),
            ));
        }
        let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
        let mut rows = stmt
            .query([])
            .map_err(|e| Error::db(&self.name, e.to_string()))?;
        let mut out = Vec::new();
        while let Some(row) = rows
            .next()
            .map_err(|e| Error::db(&self.name, e.to_string()))?
        {
            let mut map = Row::new();
            for (i, n) in names.iter().enumerate() {
                let v = row
                    .get_ref(i)
                    .map_err(|e| Error::db(&self.name, e.to_string()))?;
                map.insert(n.clone(), value_to_json(v));
            }
            out.push(map);
        }
        Ok(out)
    }

    fn backup(&mut self, dir: &Path, progress: Progress<'_>) -> Result<BackupReceipt> {
        self.take_backup(dir, progress)
    }

    fn verify_backup(&mut self, receipt: &mut BackupReceipt) -> Result<()> {
        self.verify_copy(receipt)
    }

    fn prove_backup(&mut self, receipt: &BackupReceipt) -> Result<()> {
        self.prove_copy(receipt)
    }

    fn history(&mut self) -> Result<Vec<AppliedMigration>> {
        if !Self::has_table(&self.conn, HISTORY_TABLE).map_err(|e| self.err("history", e))? {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT name, version, checksum, applied_at, duration_ms, applied_by FROM {HISTORY_TABLE} ORDER BY rowid"
            ))
            .map_err(|e| self.err("read migration history", e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(AppliedMigration {
                    name: r.get(0)?,
                    version: r.get(1)?,
                    checksum: r.get(2)?,
                    applied_at: r.get(3)?,
                    duration_ms: r.get(4)?,
                    applied_by: r.get(5)?,
                })
            })
            .map_err(|e| self.err("read migration history", e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err("read migration history", e))
    }

    fn apply(&mut self, m: &Migration, applied_by: &str) -> Result<()> {
        let start = Instant::now();
        let name = self.name.clone();
        let fail = |e: rusqlite::Error| {
            Error::db(
                &name,
                format!("migration `{}` failed and was rolled back: {e}", m.name),
            )
        };
        let tx = self.conn.transaction().map_err(fail)?;
        tx.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (
                name TEXT PRIMARY KEY, version TEXT NOT NULL, checksum TEXT NOT NULL,
                applied_at TEXT NOT NULL, duration_ms INTEGER NOT NULL, applied_by TEXT NOT NULL)"
        ))
        .map_err(fail)?;
        tx.execute_batch(&m.sql).map_err(fail)?;
        tx.execute(
            &format!(
                "INSERT INTO {HISTORY_TABLE} (name, version, checksum, applied_at, duration_ms, applied_by)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
            ),
            rusqlite::params![
                m.name,
                m.version.to_string(),
                m.checksum,
                now_rfc3339(),
                start.elapsed().as_millis() as i64,
                applied_by
            ],
        )
        .map_err(fail)?;
        // Tests: a kill here leaves a hot rollback journal.
        crate::failpoint::hit("sqlite:before-commit");
        tx.commit().map_err(fail)
    }

    fn check_migration(&self, m: &Migration) -> Result<()> {
        check_sqlite_migration(m)
    }

    fn set_version(&mut self, version: &Version) -> Result<()> {
        self.conn
            .execute(
                &format!("UPDATE {VERSION_TABLE} SET value = ?1 WHERE key = ?2"),
                rusqlite::params![version.to_string(), VERSION_KEY],
            )
            .map_err(|e| self.err("record version", e))?;
        Ok(())
    }
}

impl std::fmt::Debug for SqliteDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqliteDatabase({})", self.path.display())
    }
}

/// A SQLite migration must hold complete statements (no unterminated string,
/// comment or trailing statement without `;`) and at least one of them. Names
/// of tables that earlier statements create cannot be resolved before they
/// run, so this is a syntactic check; `uprun test` rehearses the real thing.
fn check_sqlite_migration(m: &Migration) -> Result<()> {
    let bad = |why: &str| {
        Error::Config(format!(
            "migration `{}` {why}; fix the release (nothing was applied)",
            m.path.display()
        ))
    };
    let code: String = m
        .sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    if code.trim().is_empty() {
        return Err(bad("holds no statement"));
    }
    let text = std::ffi::CString::new(m.sql.as_str()).map_err(|_| bad("contains a NUL byte"))?;
    // SAFETY: `text` is a valid NUL-terminated string for the whole call.
    let complete = unsafe { rusqlite::ffi::sqlite3_complete(text.as_ptr()) };
    if complete == 0 {
        return Err(bad(
            "does not end with a complete statement (a missing `;`, or an unterminated string or comment)",
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A SQLite database at version 1.2.3 with 2000 rows of 900 bytes.
    pub(crate) fn make(dir: &Path, wal: bool) -> PathBuf {
        let p = dir.join(if wal { "wal.sqlite" } else { "plain.sqlite" });
        let c = Connection::open(&p).expect("create");
        if wal {
            let _: String = c
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .expect("wal");
        }
        c.execute_batch(
            "CREATE TABLE app_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT INTO app_meta VALUES ('schema_version', '1.2.3');
             CREATE TABLE t (x BLOB); INSERT INTO t SELECT randomblob(900) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 2000) SELECT i FROM n);",
        )
        .expect("fill");
        p
    }

    /// `make` (no WAL), opened for writing.
    pub(crate) fn open_sample(dir: &Path) -> SqliteDatabase {
        let src = make(dir, false);
        SqliteDatabase::open_path("app", &src, false).expect("open")
    }

    #[test]
    fn check_queries_must_only_read() {
        let tmp = tempfile::tempdir().expect("tmp");
        let mut db = open_sample(tmp.path());
        let err = db
            .query_readonly("DELETE FROM t")
            .expect_err("refused")
            .to_string();
        assert!(err.contains("must only read"), "{err}");
        assert_eq!(
            db.query_readonly("SELECT count(*) AS n FROM t")
                .expect("select")[0]["n"],
            2000
        );
    }
}
