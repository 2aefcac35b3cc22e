//! Recovery after crashes, through the binary: a SQLite hot journal left by a
//! kill inside a migration, torn and damaged run journals, a journal without
//! header, resume from another folder, one consent up front (on a real
//! terminal), and what `status` and a failed run tell the operator.

mod consent;
mod journals;
mod sqlite;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;

use serde_json::Value;

use crate::support::{events, output_text, run_id, uprun, Sandbox};

/// Kill the stock procedure with a failpoint; returns the run id.
fn killed_at(sb: &Sandbox, point: &str) -> String {
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .env("UPRUN_FAILPOINT", point)
        .output()
        .expect("run");
    assert_eq!(
        out.status.signal(),
        Some(9),
        "{point}: {}",
        output_text(&out)
    );
    let js = sb.journals();
    assert_eq!(js.len(), 1);
    run_id(&js[0])
}

fn status(sb: &Sandbox) -> (std::process::Output, Value) {
    let out = sb.on_site(&["status", "--json"]).output().expect("status");
    assert!(out.status.success(), "status: {}", output_text(&out));
    let v = serde_json::from_slice(&out.stdout).expect("status json");
    (out, v)
}

fn db_journal(sb: &Sandbox) -> PathBuf {
    sb.dir.join("db/app.sqlite-journal")
}

/// A first migration that writes more than SQLite's page cache holds, so
/// the transaction spills pages into the database file before its commit:
/// killed there, it leaves a hot journal (a small one would not).
fn add_bulk_migration(sb: &Sandbox) {
    std::fs::write(
        sb.release().join("migrations/sqlite/2.0.0_00_bulk.sql"),
        "CREATE TABLE bulk (x BLOB);\nWITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000) INSERT INTO bulk SELECT randomblob(300) FROM c;\n",
    )
    .expect("write migration");
}

/// The database file and its hot journal, as the kill left them.
struct Crashed {
    db: Vec<u8>,
    journal: Vec<u8>,
}

impl Crashed {
    fn take(sb: &Sandbox) -> Crashed {
        Crashed {
            db: std::fs::read(sb.db_path()).expect("db"),
            journal: std::fs::read(db_journal(sb)).expect("hot journal"),
        }
    }

    /// Put the crashed database back (each recovery consumes the journal).
    fn restore(&self, sb: &Sandbox) {
        std::fs::write(sb.db_path(), &self.db).expect("db");
        std::fs::write(db_journal(sb), &self.journal).expect("journal");
    }
}
