//! A database opened on first use. A procedure that never touches the
//! database (a rolling restart, `verify-cluster` on nodes only) runs without
//! one being reachable; the first call that needs it opens it, and a failure
//! to open is that call's error, named as usual.

use std::path::Path;
use std::sync::Mutex;

use semver::Version;

use super::{AppliedMigration, BackupReceipt, Database, Progress, Row};
use crate::config::Migration;
use crate::Result;

/// Opens the database (and takes its run lock, in run mode).
pub type Opener = Box<dyn FnOnce() -> Result<Box<dyn Database>> + Send>;

enum Slot {
    Closed(Option<Opener>),
    Open(Box<dyn Database>),
}

pub struct LazyDatabase {
    name: String,
    slot: Mutex<Slot>,
}

impl LazyDatabase {
    /// `name` is how messages name the database (never a secret).
    pub fn new(name: &str, opener: Opener) -> LazyDatabase {
        LazyDatabase {
            name: name.to_string(),
            slot: Mutex::new(Slot::Closed(Some(opener))),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut dyn Database) -> Result<T>) -> Result<T> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Slot::Closed(opener) = &mut *slot {
            let Some(open) = opener.take() else {
                return Err(crate::Error::db(
                    &self.name,
                    "opening it failed earlier in this run",
                ));
            };
            *slot = Slot::Open(open()?);
        }
        match &mut *slot {
            Slot::Open(db) => f(db.as_mut()),
            Slot::Closed(_) => Err(crate::Error::db(&self.name, "not open")),
        }
    }
}

impl Database for LazyDatabase {
    fn name(&self) -> &str {
        &self.name
    }
    fn version(&mut self) -> Result<Version> {
        self.with(|db| db.version())
    }
    fn query_readonly(&mut self, sql: &str) -> Result<Vec<Row>> {
        self.with(|db| db.query_readonly(sql))
    }
    fn backup(&mut self, dir: &Path, progress: Progress<'_>) -> Result<BackupReceipt> {
        self.with(|db| db.backup(dir, progress))
    }
    fn verify_backup(&mut self, receipt: &mut BackupReceipt) -> Result<()> {
        self.with(|db| db.verify_backup(receipt))
    }
    fn prove_backup(&mut self, receipt: &BackupReceipt) -> Result<()> {
        self.with(|db| db.prove_backup(receipt))
    }
    fn history(&mut self) -> Result<Vec<AppliedMigration>> {
        self.with(|db| db.history())
    }
    fn apply(&mut self, migration: &Migration, applied_by: &str) -> Result<()> {
        self.with(|db| db.apply(migration, applied_by))
    }
    fn set_version(&mut self, version: &Version) -> Result<()> {
        self.with(|db| db.set_version(version))
    }
    fn check_migration(&self, migration: &Migration) -> Result<()> {
        self.with(|db| db.check_migration(migration))
    }
    fn check_backup_possible(&mut self, dir: &Path) -> Result<Vec<String>> {
        self.with(|db| db.check_backup_possible(dir))
    }
    fn preflight_upgrade(&mut self) -> Result<Vec<String>> {
        self.with(|db| db.preflight_upgrade())
    }
    fn latest_full_backup(&mut self) -> Result<Option<String>> {
        self.with(|db| db.latest_full_backup())
    }
    fn lock_for_run(&mut self, run_id: &str) -> Result<()> {
        self.with(|db| db.lock_for_run(run_id))
    }
    fn opened(&self) -> bool {
        matches!(
            *self.slot.lock().unwrap_or_else(|e| e.into_inner()),
            Slot::Open(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_on_first_use_only_and_reports_a_failed_open_once() {
        let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = opened.clone();
        let mut db = LazyDatabase::new(
            "app",
            Box::new(move || {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Err(crate::Error::db("app", "database file `x` does not exist"))
            }),
        );
        assert_eq!(db.name(), "app");
        assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 0);
        let e = db.version().expect_err("open fails");
        assert!(e.to_string().contains("does not exist"), "{e}");
        let e = db.version().expect_err("still closed");
        assert!(e.to_string().contains("failed earlier"), "{e}");
        assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
