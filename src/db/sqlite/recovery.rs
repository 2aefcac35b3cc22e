//! Recovery of a transaction a killed process left half-done: SQLite's hot
//! rollback journal, rolled back under the site lock so that read-only
//! connections can read the database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::SqliteDatabase;
use crate::{Error, Result};

impl SqliteDatabase {
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
}
