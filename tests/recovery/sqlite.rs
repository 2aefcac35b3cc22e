//! A SQLite hot journal left by a kill inside a migration: rolled back by
//! whichever command opens the database next, and the run resumes after it.

use super::*;

#[test]
fn a_hot_sqlite_journal_from_a_kill_in_a_migration_is_rolled_back_by_status_plan_resume_and_new_runs(
) {
    let sb = Sandbox::new();
    add_bulk_migration(&sb);
    let id = killed_at(&sb, "sqlite:before-commit");
    let crashed = Crashed::take(&sb);
    // The precondition: a real hot journal, which a read-only connection
    // cannot roll back.
    let ro = rusqlite::Connection::open_with_flags(
        sb.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open read-only");
    let err = ro
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .expect_err("a hot journal blocks read-only connections");
    assert!(err.to_string().contains("readonly"), "{err}");
    drop(ro);

    // status: rolls back, says so, and shows the killed run.
    let (out, v) = status(&sb);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rolled back") && err.contains("app.sqlite-journal"),
        "{err}"
    );
    assert!(!db_journal(&sb).exists(), "the hot journal was played back");
    assert_eq!(v["database_version"], "1.0.0");
    assert_eq!(v["migrations_applied"], 0, "the migration was undone");
    assert_eq!(v["unfinished_runs"][0]["run_id"], id.as_str());

    // plan --resume.
    crashed.restore(&sb);
    let out = sb
        .cmd("plan", "in-place-upgrade", &["--resume", &id])
        .output()
        .expect("plan");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("rolled back"),
        "{}",
        output_text(&out)
    );

    // A new run after abandon.
    crashed.restore(&sb);
    sb.on_site(&["runs", "abandon", &id]).assert().success();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("new run");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("rolled back"),
        "{}",
        output_text(&out)
    );
    assert_eq!(sb.db_version(), "2.0.0");
}

#[test]
fn a_run_killed_inside_a_migration_resumes_after_the_rollback() {
    let sb = Sandbox::new();
    add_bulk_migration(&sb);
    let id = killed_at(&sb, "sqlite:before-commit");
    assert!(db_journal(&sb).exists());
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes", "--resume", &id])
        .output()
        .expect("resume");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("rolled back"),
        "{}",
        output_text(&out)
    );
    assert!(!db_journal(&sb).exists());
    assert_eq!(sb.db_version(), "2.0.0");
    let applied: i64 = sb
        .db()
        .query_row("SELECT count(*) FROM uprun_migration_history", [], |r| {
            r.get(0)
        })
        .expect("history");
    assert_eq!(applied, 4, "every migration once");
    for node in ["app01", "app02", "app03"] {
        assert_eq!(sb.manifest(node)["current"]["version"], "2.0.0", "{node}");
    }
}
