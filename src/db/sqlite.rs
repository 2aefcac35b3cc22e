//! SQLite backend (the embedded default). Backups use SQLite's online backup
//! API, so a running application can keep its database open.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{backup, Connection, OpenFlags};
use semver::Version;

use super::{now_rfc3339, AppliedMigration, BackupReceipt, Database, Progress, Row};
use crate::config::Migration;
use crate::{Error, Result};

/// Table and key where the application records its schema version.
pub const VERSION_TABLE: &str = "app_meta";
pub const VERSION_KEY: &str = "schema_version";
/// uprun's migration history table.
pub const HISTORY_TABLE: &str = "uprun_migration_history";

/// Pages copied per online-backup step (16 MiB with 4 KiB pages).
const PAGES_PER_STEP: i32 = 4096;
/// Buffer of the locked file copy.
const COPY_CHUNK: u64 = 64 << 20;
/// Read buffer of the backup's SHA-256.
const HASH_CHUNK: usize = 1 << 20;

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

    /// The rollback journal next to the database (`<file>-journal`).
    fn journal_file(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push("-journal");
        PathBuf::from(p)
    }

    /// A non-empty rollback journal next to the database: a transaction in
    /// progress, or a hot journal left by a process killed inside one.
    pub fn journal_left(path: &Path) -> bool {
        std::fs::metadata(Self::journal_file(path)).is_ok_and(|m| m.len() > 0)
    }

    /// Roll back a hot journal left by a killed process: a read-write
    /// connection's first read makes SQLite play the journal back (a
    /// read-only one cannot, and fails with "attempt to write a readonly
    /// database"). Returns true when the journal was rolled back. Call with
    /// the site lock held, so no run of ours is inside a transaction.
    pub fn roll_back_hot_journal(name: &str, path: &Path) -> Result<bool> {
        if !Self::journal_left(path) {
            return Ok(false);
        }
        let err = |e: rusqlite::Error| {
            Error::db(
                name,
                format!(
                    "`{}` has a rollback journal left by a process killed inside a transaction, and rolling it back failed: {e}. \
Rolling back needs write access to the database file and its folder; run uprun as a user who may write them",
                    path.display()
                ),
            )
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(err)?;
        conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .map_err(err)?;
        drop(conn);
        Ok(!Self::journal_left(path))
    }

    /// SQLite's online backup API: used for WAL databases, where the main file
    /// alone is not a consistent copy.
    fn online_backup(&self, partial: &Path, progress: Progress<'_>) -> Result<()> {
        let mut dst = Connection::open(partial)
            .map_err(|e| self.err(&format!("cannot create `{}`", partial.display()), e))?;
        // The copy is fsynced once at the end: no journal, no per-page syncs.
        dst.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")
            .map_err(|e| self.err("prepare backup file", e))?;
        let b =
            backup::Backup::new(&self.conn, &mut dst).map_err(|e| self.err("start backup", e))?;
        let mut retries = 0;
        loop {
            if crate::interrupt::abort_requested() {
                drop(b);
                let _ = std::fs::remove_file(partial);
                return Err(Error::Interrupted(
                    "interrupted: backup aborted by the operator (second Ctrl-C)".into(),
                ));
            }
            match b.step(PAGES_PER_STEP).map_err(|e| self.err("backup", e))? {
                backup::StepResult::Done => break,
                backup::StepResult::More => retries = 0,
                _ => {
                    retries += 1;
                    if retries > 200 {
                        return Err(Error::db(
                            &self.name,
                            "backup: the database stayed locked for 20 s; stop the writers and retry",
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            let p = b.progress();
            progress((p.pagecount - p.remaining) as u64, p.pagecount as u64);
        }
        let p = b.progress();
        progress(p.pagecount as u64, p.pagecount as u64);
        Ok(())
    }

    /// A rollback-journal database: hold a read transaction (SQLite's SHARED
    /// lock, so no writer can change the file) and copy the file's bytes. Same
    /// consistency as an online backup run in one step, at the speed of `cp`
    /// (the online backup API copies page by page: about 0.2x of `cp`, see
    /// BENCHMARKS.md). The copy is checked by `verify_backup`.
    fn locked_copy(&self, partial: &Path, progress: Progress<'_>) -> Result<()> {
        use std::io::Read;
        self.conn
            .execute_batch("BEGIN; SELECT count(*) FROM sqlite_master;")
            .map_err(|e| self.err("take a read lock for the backup", e))?;
        let mut copy = || -> std::io::Result<()> {
            let mut src = std::fs::File::open(&self.path)?;
            let total = src.metadata()?.len();
            let mut dst = std::fs::File::create(partial)?;
            let mut done = 0u64;
            // io::copy between files uses copy_file_range on Linux (as cp
            // does): no copy through user space. Chunks drive the progress bar.
            loop {
                if crate::interrupt::abort_requested() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::Interrupted,
                        "aborted by the operator (second Ctrl-C)",
                    ));
                }
                let n = std::io::copy(&mut (&mut src).take(COPY_CHUNK), &mut dst)?;
                if n == 0 {
                    break;
                }
                done += n;
                progress(done, total);
            }
            Ok(())
        };
        let copied = copy();
        let unlocked = self.conn.execute_batch("COMMIT;");
        if copied.is_err() {
            let _ = std::fs::remove_file(partial);
        }
        copied.map_err(|e| match e.kind() {
            std::io::ErrorKind::Interrupted => {
                Error::Interrupted(format!("interrupted: backup {e}"))
            }
            _ => Error::io("copy database into backup", partial, e),
        })?;
        unlocked.map_err(|e| self.err("release the backup's read lock", e))
    }

    /// SQLite's integrity check of a backup, and its version read back.
    fn check_backup(&self, receipt: &BackupReceipt) -> Result<()> {
        let path = Path::new(&receipt.file);
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| self.err(&format!("verify backup `{}`: cannot open", receipt.file), e))?;
        let result: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.err(&format!("verify backup `{}`", receipt.file), e))?;
        if result != "ok" {
            return Err(Error::db(
                &self.name,
                format!(
                    "backup `{}` failed its integrity check: {result}",
                    receipt.file
                ),
            ));
        }
        let v = read_version(&conn)
            .map_err(|m| Error::db(&self.name, format!("backup `{}`: {m}", receipt.file)))?;
        if v.to_string() != receipt.version {
            return Err(Error::db(
                &self.name,
                format!(
                    "backup `{}` is at version {v}, expected {}",
                    receipt.file, receipt.version
                ),
            ));
        }
        Ok(())
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

/// Size and SHA-256 (hex) of a file, read once in large chunks (the backup's
/// identity; SHA-256 uses the CPU's SHA extensions where it has them).
pub(crate) fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, crate::config::release::hex(&h.finalize())))
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
        let version = self.version()?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io("create backup folder", dir, e))?;
        let started = now_rfc3339();
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_default();
        let mut file = dir.join(format!("{}-{}-{}.sqlite", self.name, version, stamp));
        let mut n = 1;
        while file.exists() {
            n += 1;
            file = dir.join(format!("{}-{}-{}-{n}.sqlite", self.name, version, stamp));
        }
        let partial = file.with_extension("sqlite.partial");
        // Partial copies left by an interrupted backup of this database (the
        // site lock rules out a concurrent one).
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&format!("{}-", self.name)) && n.ends_with(".sqlite.partial") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let journal: String = self
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| self.err("read journal mode", e))?;
        if journal.eq_ignore_ascii_case("wal") {
            self.online_backup(&partial, progress)?;
        } else {
            self.locked_copy(&partial, progress)?;
        }
        let f = std::fs::File::open(&partial).map_err(|e| Error::io("open backup", &partial, e))?;
        f.sync_all()
            .map_err(|e| Error::io("sync backup", &partial, e))?;
        let size = f
            .metadata()
            .map_err(|e| Error::io("stat backup", &partial, e))?
            .len();
        drop(f);
        std::fs::rename(&partial, &file).map_err(|e| Error::io("rename backup", &partial, e))?;
        // Absolute in the receipt and the journal, so a resume started from
        // another working directory finds the same file.
        // (Windows: `absolute`; `canonicalize` would give a `\\?\` path.)
        #[cfg(windows)]
        let file = std::path::absolute(&file).map_err(|e| Error::io("locate backup", &file, e))?;
        #[cfg(not(windows))]
        let file =
            std::fs::canonicalize(&file).map_err(|e| Error::io("locate backup", &file, e))?;
        Ok(BackupReceipt {
            database: self.name.clone(),
            file: file.to_string_lossy().into_owned(),
            size,
            version: version.to_string(),
            started,
            finished: now_rfc3339(),
            verified: false,
            verification: String::new(),
            checksum: false,
            // Taken by `verify_backup`, while SQLite checks the copy.
            sha256: String::new(),
            backup_set_guid: String::new(),
            first_lsn: String::new(),
            last_lsn: String::new(),
        })
    }

    fn verify_backup(&mut self, receipt: &mut BackupReceipt) -> Result<()> {
        // The backup's identity (SHA-256) is taken while SQLite checks the
        // copy, on another thread: both read the file just written, from the
        // page cache, so the hash costs little more wall time than the check
        // alone (see BENCHMARKS.md).
        let path = Path::new(&receipt.file);
        let (checked, hashed) = std::thread::scope(|s| {
            let hasher = s.spawn(|| hash_file(path));
            let checked = self.check_backup(receipt);
            (checked, hasher.join())
        });
        checked?;
        let (size, sha256) = match hashed {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(Error::io("read back backup", path, e)),
            Err(_) => {
                return Err(Error::db(
                    &self.name,
                    format!("backup `{}`: hashing it failed", receipt.file),
                ))
            }
        };
        if size != receipt.size {
            return Err(Error::db(
                &self.name,
                format!(
                    "backup `{}` changed while it was verified: {size} bytes, {} when written",
                    receipt.file, receipt.size
                ),
            ));
        }
        receipt.sha256 = sha256;
        receipt.verified = true;
        receipt.verification =
            "PRAGMA integrity_check: ok; version read back; SHA-256 taken".into();
        Ok(())
    }

    fn prove_backup(&mut self, receipt: &BackupReceipt) -> Result<()> {
        let file = &receipt.file;
        let again =
            "take a new backup: re-run `backup_db()` before `upgrade_db()`, or start a new run";
        let refuse = |what: String| {
            Err(Error::Refused(format!(
                "database `{}`: the backup `{file}` {what}; the database was not touched; {again}",
                self.name
            )))
        };
        if receipt.sha256.is_empty() {
            return refuse(
                "was recorded without its SHA-256 (by an older uprun), so it cannot be proved"
                    .into(),
            );
        }
        let (size, sha256) = match hash_file(Path::new(file)) {
            Ok(v) => v,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return refuse("is missing".into())
            }
            Err(e) => return refuse(format!("cannot be read back ({e})")),
        };
        if size != receipt.size {
            return refuse(format!(
                "changed since it was taken: it now has {size} bytes, {} when taken",
                receipt.size
            ));
        }
        if sha256 != receipt.sha256 {
            return refuse(format!(
                "changed since it was taken: its SHA-256 is now {sha256}, {} when taken",
                receipt.sha256
            ));
        }
        Ok(())
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
mod tests {
    use super::*;

    fn make(dir: &Path, wal: bool) -> PathBuf {
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

    #[test]
    fn both_backup_paths_give_a_verified_copy() {
        let tmp = tempfile::tempdir().expect("tmp");
        for wal in [false, true] {
            let src = make(tmp.path(), wal);
            let mut db = SqliteDatabase::open_path("app", &src, false).expect("open");
            let mut last = (0, 0);
            let mut receipt = db
                .backup(&tmp.path().join("b"), &mut |d, t| last = (d, t))
                .expect("backup");
            assert!(
                last.1 > 0 && last.0 == last.1,
                "progress reached the end: {last:?}"
            );
            assert_eq!(receipt.version, "1.2.3");
            db.verify_backup(&mut receipt).expect("verify");
            assert!(receipt.verified);
            assert!(Path::new(&receipt.file).is_absolute(), "{}", receipt.file);
            assert_eq!(receipt.sha256.len(), 64);
            // Reading the copy back (integrity check) left it as hashed.
            db.prove_backup(&receipt).expect("proved");
            let copy = Connection::open(&receipt.file).expect("open copy");
            let n: i64 = copy
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .expect("count");
            assert_eq!(
                n, 2000,
                "wal={wal}: the copy holds every row (including WAL frames)"
            );
            // The source is usable afterwards: the read lock was released.
            db.conn
                .execute("INSERT INTO t VALUES (x'00')", [])
                .expect("write after backup");
        }
    }

    #[test]
    fn a_damaged_backup_fails_verification() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = make(tmp.path(), false);
        let mut db = SqliteDatabase::open_path("app", &src, false).expect("open");
        let mut receipt = db
            .backup(&tmp.path().join("b"), &mut |_, _| {})
            .expect("backup");
        // Overwrite a stretch in the middle of the copy.
        let mut bytes = std::fs::read(&receipt.file).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid..mid + 8192].fill(0xA5);
        std::fs::write(&receipt.file, bytes).expect("write");
        assert!(db.verify_backup(&mut receipt).is_err());
        assert!(!receipt.verified);
    }

    #[test]
    fn a_missing_or_altered_backup_fails_its_proof() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = make(tmp.path(), false);
        let mut db = SqliteDatabase::open_path("app", &src, false).expect("open");
        let mut receipt = db
            .backup(&tmp.path().join("b"), &mut |_, _| {})
            .expect("backup");
        assert!(receipt.sha256.is_empty(), "taken by the verification");
        db.verify_backup(&mut receipt).expect("verify");
        let (size, sha) = hash_file(Path::new(&receipt.file)).expect("hash");
        assert_eq!(
            (size, sha.as_str()),
            (receipt.size, receipt.sha256.as_str())
        );
        let original = std::fs::read(&receipt.file).expect("read");
        let refused = |db: &mut SqliteDatabase, receipt: &BackupReceipt, needle: &str| {
            let err = db.prove_backup(receipt).expect_err("refused");
            assert!(matches!(err, Error::Refused(_)), "{err:?}");
            let text = err.to_string();
            assert!(text.contains(&receipt.file), "{text}");
            assert!(text.contains(needle), "{text}");
            assert!(text.contains("re-run `backup_db()`"), "{text}");
        };
        // One byte changed, same size.
        let mut bytes = original.clone();
        bytes[100] ^= 0xff;
        std::fs::write(&receipt.file, &bytes).expect("write");
        refused(&mut db, &receipt, "SHA-256");
        // Truncated.
        std::fs::write(&receipt.file, &original[..4096]).expect("write");
        refused(&mut db, &receipt, "4096 bytes");
        // Gone.
        std::fs::remove_file(&receipt.file).expect("rm");
        refused(&mut db, &receipt, "is missing");
        // Restored: proved again.
        std::fs::write(&receipt.file, &original).expect("write");
        db.prove_backup(&receipt).expect("proved");
        // Recorded by an older uprun (no hash): cannot be proved.
        let old = BackupReceipt {
            sha256: String::new(),
            ..receipt.clone()
        };
        refused(&mut db, &old, "older uprun");
    }

    #[test]
    fn receipts_from_older_journals_still_read() {
        let old = serde_json::json!({
            "database": "app", "file": "backups/app.sqlite", "size": 1, "version": "1.0.0",
            "started": "", "finished": "", "verified": true, "verification": "ok"
        });
        let r: BackupReceipt = serde_json::from_value(old).expect("reads");
        assert!(r.sha256.is_empty() && r.backup_set_guid.is_empty() && !r.checksum);
    }

    #[test]
    fn check_queries_must_only_read() {
        let tmp = tempfile::tempdir().expect("tmp");
        let src = make(tmp.path(), false);
        let mut db = SqliteDatabase::open_path("app", &src, false).expect("open");
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
