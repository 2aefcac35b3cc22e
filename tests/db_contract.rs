//! The `Database` contract that `ops` relies on, run against every backend
//! (issue 13): the same test function over the real SQLite backend (a
//! temporary file) and over the SQL Server backend talking to the scripted TDS
//! responder of `mssql/` (its test in `mssql/migrations.rs` calls `contract`).
//!
//! The contract: a read-only query refuses anything that writes, and the
//! data is still there; each migration is one transaction: one that fails
//! leaves nothing behind and no history row; an applied one is recorded in
//! the history with its checksum; `set_version` is what `version` reads back.

use std::path::Path;

use semver::Version;
use uprun::config::Migration;
use uprun::db::{Database, SqliteDatabase};

/// A backend under test, in its starting state: the application's schema at
/// 1.0.0 with a `strategies` table, no migration history.
pub(crate) struct Subject<'a> {
    pub db: &'a mut dyn Database,
    /// A migration the backend applies.
    pub good: Migration,
    /// A migration whose first statement succeeds and a later one fails.
    pub failing: Migration,
    /// What the failing migration left behind, as observed on the backend
    /// itself (not through the trait): empty when nothing.
    pub leftovers: &'a dyn Fn() -> Vec<String>,
    /// A query that reads the `strategies` table.
    pub read: &'a str,
    /// Queries that would write, each of which must be refused.
    pub writes: &'a [&'a str],
}

pub(crate) fn migration(name: &str, sql: &str) -> Migration {
    use sha2::{Digest, Sha256};
    Migration {
        version: Version::new(2, 0, 0),
        name: name.to_string(),
        path: Path::new("/release/migrations").join(name),
        sql: sql.to_string(),
        checksum: Sha256::digest(sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    }
}

/// Run the contract; `backend` names it in failures.
pub(crate) fn contract(backend: &str, s: Subject<'_>) {
    let db = s.db;
    let v1 = Version::new(1, 0, 0);
    let v2 = Version::new(2, 0, 0);
    assert_eq!(db.version().expect("version"), v1, "{backend}");
    assert!(db.history().expect("history").is_empty(), "{backend}");

    // Read-only queries read, and refuse anything that writes.
    let before = db.query_readonly(s.read).expect("read");
    for sql in s.writes {
        let e = db
            .query_readonly(sql)
            .expect_err(&format!("{backend}: `{sql}` was accepted"));
        let text = e.to_string();
        assert!(text.contains("must only read"), "{backend}: {text}");
        assert!(text.contains(db.name()), "{backend}: {text}");
    }
    assert_eq!(
        db.query_readonly(s.read).expect("read"),
        before,
        "{backend}: a refused query changed the data"
    );

    // Both migrations parse.
    db.check_migration(&s.good).expect("good migration parses");
    db.check_migration(&s.failing)
        .expect("failing migration parses");

    // A failing migration leaves nothing and no history row.
    let e = db.apply(&s.failing, "contract").expect_err("fails");
    let text = e.to_string();
    assert!(
        text.contains(&s.failing.name) && text.contains("rolled back"),
        "{backend}: {text}"
    );
    assert_eq!((s.leftovers)(), Vec::<String>::new(), "{backend}");
    assert!(db.history().expect("history").is_empty(), "{backend}");
    assert_eq!(db.version().expect("version"), v1, "{backend}");

    // An applied migration is recorded with its checksum.
    db.apply(&s.good, "contract tester").expect("apply");
    let history = db.history().expect("history");
    assert_eq!(history.len(), 1, "{backend}: {history:?}");
    let h = &history[0];
    assert_eq!(h.name, s.good.name, "{backend}");
    assert_eq!(h.version, "2.0.0", "{backend}");
    assert_eq!(h.checksum, s.good.checksum, "{backend}");
    assert_eq!(h.applied_by, "contract tester", "{backend}");
    assert!(!h.applied_at.is_empty() && h.duration_ms >= 0, "{backend}");
    // Applying a migration does not record the version: `ops` does that.
    assert_eq!(db.version().expect("version"), v1, "{backend}");

    // set_version, then version.
    db.set_version(&v2).expect("set version");
    assert_eq!(db.version().expect("version"), v2, "{backend}");
}

#[test]
fn sqlite_keeps_the_database_contract() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("app.sqlite");
    {
        let c = rusqlite::Connection::open(&path).expect("create");
        c.execute_batch(
            "CREATE TABLE app_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT INTO app_meta VALUES ('schema_version', '1.0.0');
             CREATE TABLE strategies (name TEXT, kind TEXT, state TEXT);
             INSERT INTO strategies VALUES ('s1', 'matching', 'valid');",
        )
        .expect("fill");
    }
    let mut db = SqliteDatabase::open_path("app", &path, false).expect("open");
    let observe =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("observer");
    let leftovers = || -> Vec<String> {
        let mut stmt = observe
            .prepare("SELECT name FROM sqlite_master WHERE name IN ('audit_log', 'uprun_migration_history') UNION ALL SELECT 'strategy ' || name FROM strategies WHERE name <> 's1'")
            .expect("prepare");
        stmt.query_map([], |r| r.get::<_, String>(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    contract(
        "sqlite",
        Subject {
            db: &mut db,
            good: migration(
                "2.0.0_01_priority.sql",
                "ALTER TABLE strategies ADD priority INTEGER;\n",
            ),
            failing: migration(
                "2.0.0_02_broken.sql",
                "CREATE TABLE audit_log (at TEXT);\nINSERT INTO strategies VALUES ('s2', 'x', 'valid');\nINSERT INTO no_such_table VALUES (1);\n",
            ),
            leftovers: &leftovers,
            read: "SELECT name, kind, state FROM strategies ORDER BY name",
            writes: &[
                "DELETE FROM strategies",
                "UPDATE strategies SET state = 'valid'",
                "WITH x AS (SELECT 1) DELETE FROM strategies",
                "SELECT 1; DELETE FROM strategies",
                "CREATE TABLE t (x)",
                "ATTACH DATABASE ':memory:' AS other",
                "BEGIN IMMEDIATE",
                "COMMIT",
            ],
        },
    );
}
