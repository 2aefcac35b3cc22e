//! SQLite backups: a copy of the database file (under SQLite's read lock, or
//! through the online backup API for WAL databases), checked by SQLite and
//! identified by its size and SHA-256, and proved again before an upgrade.

use std::path::Path;
use std::time::Duration;

use rusqlite::{backup, Connection, OpenFlags};

use super::{read_version, SqliteDatabase, COPY_CHUNK, PAGES_PER_STEP};
use crate::config::release::sha256_file;
use crate::db::{now_rfc3339, BackupReceipt, Database, Progress};
use crate::{Error, Result};

impl SqliteDatabase {
    /// Copy the database into `dir` (see `Database::backup`).
    pub(super) fn take_backup(
        &mut self,
        dir: &Path,
        progress: Progress<'_>,
    ) -> Result<BackupReceipt> {
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

    /// Check the copy and take its SHA-256 (see `Database::verify_backup`).
    pub(super) fn verify_copy(&mut self, receipt: &mut BackupReceipt) -> Result<()> {
        // The backup's identity (SHA-256) is taken while SQLite checks the
        // copy, on another thread: both read the file just written, from the
        // page cache, so the hash costs little more wall time than the check
        // alone (see BENCHMARKS.md).
        let path = Path::new(&receipt.file);
        let (checked, hashed) = std::thread::scope(|s| {
            let hasher = s.spawn(|| sha256_file(path));
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

    /// The copy is still the one taken (see `Database::prove_backup`).
    pub(super) fn prove_copy(&self, receipt: &BackupReceipt) -> Result<()> {
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
        let (size, sha256) = match sha256_file(Path::new(file)) {
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::{make, open_sample};
    use super::*;

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

    /// A sample database and a backup of it, not verified yet.
    fn backed_up(dir: &Path) -> (SqliteDatabase, BackupReceipt) {
        let mut db = open_sample(dir);
        let receipt = db.backup(&dir.join("b"), &mut |_, _| {}).expect("backup");
        (db, receipt)
    }

    #[test]
    fn a_damaged_backup_fails_verification() {
        let tmp = tempfile::tempdir().expect("tmp");
        let (mut db, mut receipt) = backed_up(tmp.path());
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
        let (mut db, mut receipt) = backed_up(tmp.path());
        assert!(receipt.sha256.is_empty(), "taken by the verification");
        db.verify_backup(&mut receipt).expect("verify");
        let (size, sha) = sha256_file(Path::new(&receipt.file)).expect("hash");
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
}
