//! Checks before any change: the application lock, read-only checks, the
//! kind of server, a read-only database, other sessions and the free space
//! for the backup.

use super::*;

#[test]
fn lock_refused_stops_the_run_before_any_change() {
    let mock = Mock::start(Fake {
        lock_result: -1,
        ..Fake::default()
    });
    let sb = mock.sandbox();
    let before = sb.snapshot();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("another uprun run holds the lock on database `FastApp`"),
        "{err}"
    );
    let log = mock.server.log();
    let lock_req = log
        .iter()
        .find(|l| l.request.sql() == Some(uprun::db::mssql::LOCK_SQL))
        .expect("lock requested");
    assert_eq!(
        lock_req.request,
        Request::Batch(
            "DECLARE @result int;\nEXEC @result = sys.sp_getapplock @Resource = N'uprun', @LockMode = N'Exclusive', @LockOwner = N'Session', @LockTimeout = 0;\nSELECT @result AS result;".into()
        )
    );
    assert!(lock_req.app.starts_with("uprun run "), "{}", lock_req.app);
    // The lock is the first thing the run does: nothing is sent after it,
    // and nothing changed anywhere.
    let after: Vec<_> = log
        .iter()
        .skip_while(|l| l.request.sql() != Some(uprun::db::mssql::LOCK_SQL))
        .skip(1)
        .filter(|l| l.request.sql().is_some())
        .collect();
    assert!(after.is_empty(), "sent after the refused lock: {after:#?}");
    assert!(!mock.sql().iter().any(|q| q.starts_with("BACKUP")));
    assert_eq!(mock.fake().version, "1.0.0");
    assert_eq!(sb.snapshot(), before, "a refused run changed the nodes");
}

#[test]
fn check_queries_that_write_are_refused_before_reaching_the_server() {
    let mock = Mock::start(Fake::default());
    let sb = mock.sandbox();
    std::env::set_var("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD);
    let mut db = open_db(&sb);
    let sent = mock.sql().len();
    for bad in [
        "DELETE FROM strategies",
        "SELECT 1; DROP TABLE strategies",
        "SELECT * INTO copy FROM strategies",
    ] {
        let err = db.query_readonly(bad).expect_err(bad).to_string();
        assert!(err.contains("check queries must only read"), "{err}");
    }
    assert_eq!(mock.sql().len(), sent, "a refused query was sent");
    let rows = db
        .query_readonly("SELECT name, kind, state FROM strategies WHERE state <> 'valid'")
        .expect("read");
    assert!(rows.is_empty());
}

#[test]
fn azure_sql_database_and_managed_instance_are_refused_at_plan_time() {
    for (engine, edition, needles) in [
        (
            5,
            "SQL Azure",
            [
                "the server is Azure SQL Database (SERVERPROPERTY('EngineEdition') = 5",
                "no BACKUP DATABASE statement",
            ],
        ),
        (
            8,
            "SQL Azure",
            [
                "the server is Azure SQL Managed Instance (SERVERPROPERTY('EngineEdition') = 8)",
                "TO URL",
            ],
        ),
    ] {
        let mock = Mock::start(Fake {
            engine_edition: engine,
            edition: edition.into(),
            ..Fake::default()
        });
        let sb = mock.sandbox();
        let before = sb.snapshot();
        let mut all_needles = needles.to_vec();
        all_needles.extend([
            "backup_db cannot back up database `FastApp`",
            "`database.external_backup`",
        ]);
        refused_in_plan_and_run(&mock, &sb, 3, &all_needles);
        assert_eq!(mock.fake().version, "1.0.0");
        assert_eq!(sb.snapshot(), before, "a refused run changed the nodes");
    }
}

#[test]
fn a_read_only_database_or_secondary_is_refused_at_plan_time() {
    let mock = Mock::start(Fake {
        updateability: "READ_ONLY".into(),
        ..Fake::default()
    });
    let sb = mock.sandbox();
    refused_in_plan_and_run(
        &mock,
        &sb,
        3,
        &[
            "database `FastApp` on 127.0.0.1:",
            "cannot be upgraded: it is READ_ONLY",
            "connect to the primary replica",
        ],
    );
}

#[test]
fn other_sessions_in_the_database_are_listed_before_the_upgrade() {
    let mock = Mock::start(Fake {
        other_sessions: vec![(57, "app_svc".into(), "APP01".into(), "FastApp Web".into())],
        ..Fake::default()
    });
    let sb = mock.sandbox();
    let (code, all) = uprun_on(&sb, "plan", &[]);
    assert_eq!(code, Some(0), "{all}");
    assert_contains(
        &all,
        &["1 other session(s) are connected to database `FastApp`: #57 app_svc@APP01 (FastApp Web)"],
    );
    // A site may refuse to go on while they are connected.
    let sb = mock.sandbox_with("refuse_other_sessions = true");
    refused_in_plan_and_run(
        &mock,
        &sb,
        3,
        &[
            "#57 app_svc@APP01 (FastApp Web)",
            "`database.refuse_other_sessions = true`",
        ],
    );
    assert_eq!(mock.fake().version, "1.0.0");
}

#[test]
fn a_backup_that_clearly_does_not_fit_is_refused_at_plan_time() {
    // Express: no compression, so the estimate is the backup's size.
    let mock = Mock::start(Fake {
        engine_edition: 4,
        edition: "Express Edition (64-bit)".into(),
        space_used: Some((3 << 30, 1 << 30)),
        volumes: Some(vec![
            ("/".into(), 100 << 30),
            ("/var/opt/mssql/".into(), 2 << 30),
        ]),
        ..Fake::default()
    });
    let sb = mock.sandbox();
    refused_in_plan_and_run(
        &mock,
        &sb,
        3,
        &[
            "the backup of database `FastApp` does not fit in `/var/opt/mssql/backup`",
            "it needs about 4294967296 bytes (4.0 GiB)",
            "volume `/var/opt/mssql/` holding that folder has 2147483648 bytes (2.0 GiB) free",
            "`database.backup_dir`",
        ],
    );
    assert_eq!(mock.fake().version, "1.0.0");
}

#[test]
fn when_the_server_cannot_tell_the_free_space_the_plan_says_so() {
    let mock = Mock::start(Fake {
        volumes: None,
        ..Fake::default()
    });
    let sb = mock.sandbox();
    let (code, all) = uprun_on(&sb, "plan", &[]);
    assert_eq!(code, Some(0), "{all}");
    assert_contains(
        &all,
        &[
            "uprun cannot tell whether the backup of database `FastApp` (up to 6291456 bytes (6.0 MiB)) fits in `/var/opt/mssql/backup`",
            "check the free space there",
        ],
    );
    // A compressed backup that may not fit is a note too, not a refusal.
    let mock = Mock::start(Fake {
        space_used: Some((3 << 30, 1 << 30)),
        volumes: Some(vec![("/var/opt/mssql/".into(), 2 << 30)]),
        ..Fake::default()
    });
    let sb = mock.sandbox();
    let (code, all) = uprun_on(&sb, "plan", &[]);
    assert_eq!(code, Some(0), "{all}");
    assert_contains(
        &all,
        &["may not fit in `/var/opt/mssql/backup`", "compressed"],
    );
}
