//! Migrations and their transactions over the protocol: the stock procedure,
//! failures and rollbacks, batches, transaction headers, `USE` and the
//! database contract.

use super::*;

#[test]
fn stock_procedure_upgrades_through_the_protocol() {
    let mock = Mock::start(Fake::default());
    let sb = mock.sandbox();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes", "--json"])
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}{err}");
    assert!(!stdout.contains(PASSWORD) && !err.contains(PASSWORD));

    let fake = mock.fake();
    assert_eq!(fake.version, "2.0.0");
    let release = Release::load(&sb.release()).expect("release");
    let migrations = release
        .migrations(uprun::config::DbKind::Mssql)
        .expect("migrations");
    assert_eq!(migrations.len(), 3);
    assert_eq!(fake.history.len(), 3, "{:#?}", fake.history);
    for (h, m) in fake.history.iter().zip(&migrations) {
        assert_eq!(h.name, m.name);
        assert_eq!(h.version, "2.0.0");
        assert_eq!(h.checksum, sha256_hex(&m.path));
        assert!(h.duration_ms >= 0);
        assert!(
            h.applied_by.contains("uprun") && h.applied_by.contains("run "),
            "{}",
            h.applied_by
        );
    }
    drop(fake);

    // Each migration: one transaction, its GO-separated batches as written, the
    // history row, the commit.
    let sql = mock.sql();
    let txs = migration_sql(&sql);
    assert_eq!(txs.len(), 3, "{sql:#?}");
    assert_eq!(txs[0].len(), 4, "{:#?}", txs[0]);
    assert_eq!(
        txs[0][..3],
        [
            "SET XACT_ABORT ON; BEGIN TRANSACTION;".to_string(),
            "ALTER TABLE dbo.strategies ADD priority int NOT NULL CONSTRAINT DF_strategies_priority DEFAULT 100;\n".into(),
            "UPDATE dbo.strategies SET priority = 10 WHERE kind = N'matching';\n".into(),
        ]
    );
    assert_eq!(
        txs[1][1],
        "ALTER TABLE dbo.customers ADD email nvarchar(320) NULL;\n"
    );
    assert_eq!(txs[2].len(), 4);
    // The history row: checked, recorded in the site's database by name,
    // committed and the commit proved, all in one request.
    let record = &txs[0][3];
    for needle in [
        "IF @trancount <> 1 OR @xact_state <> 1",
        "THROW 50001",
        "INSERT INTO [FastApp].dbo.uprun_migration_history (name, version, checksum, applied_at, duration_ms, applied_by) VALUES (N'2.0.0_01_strategy_priority.sql', N'2.0.0', N'",
        "COMMIT TRANSACTION;\nSELECT CAST(@@TRANCOUNT AS int) AS trancount;",
    ] {
        assert!(record.contains(needle), "lacks {needle:?}: {record}");
    }
    // Each migration ran in a session of its own.
    let log = mock.server.log();
    let conn_of = |sql: &str| {
        log.iter()
            .find(|l| l.request.sql() == Some(sql))
            .map(|l| l.conn)
            .expect("sent")
    };
    let conns: std::collections::BTreeSet<usize> = txs.iter().map(|t| conn_of(&t[1])).collect();
    assert_eq!(conns.len(), 3, "{conns:?}");
    // The backup came before the first migration, the version after the last.
    let pos = |pred: &dyn Fn(&str) -> bool| sql.iter().position(|q| pred(q)).expect("sent");
    let backup = pos(&|q| q.starts_with("BACKUP DATABASE"));
    let verify = pos(&|q| q.starts_with("RESTORE VERIFYONLY"));
    let first_tx = pos(&|q| q == uprun::db::mssql::BEGIN_SQL);
    let set_version = pos(&|q| q == uprun::db::mssql::SET_VERSION_SQL);
    assert!(backup < verify && verify < first_tx && first_tx < set_version);
    // The strategies check ran inside a transaction that was rolled back.
    let check = sql
        .iter()
        .rposition(|q| q.starts_with("SELECT name, kind, state FROM strategies"))
        .expect("check ran");
    assert_eq!(sql[check - 1], "BEGIN TRANSACTION;");
    assert_eq!(sql[check + 1], "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;");

    // Plan and status now show the backup msdb knows of.
    let out = sb
        .cmd("plan", "in-place-upgrade", &[])
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .output()
        .expect("plan");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("latest full backup of `FastApp`: `/var/opt/mssql/backup/FastApp-1.0.0-"),
        "{text}"
    );
    let out = sb
        .on_site(&["status"])
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("version 2.0.0 (3 migration(s)"), "{text}");
    assert!(
        text.contains("latest full backup: `/var/opt/mssql/backup/FastApp-1.0.0-"),
        "{text}"
    );
}

#[test]
fn dropped_connection_during_a_migration_fails_the_run_and_history_shows_it() {
    let mock = Mock::start(Fake {
        drop_on: Some("ALTER TABLE dbo.customers".into()),
        ..Fake::default()
    });
    let sb = mock.sandbox();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{err}");
    for needle in [
        "migration `2.0.0_02_customer_email.sql` failed in batch 1 of 2",
        "was lost",
        "not recorded in the history",
    ] {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
    {
        let fake = mock.fake();
        let names: Vec<_> = fake.history.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["2.0.0_01_strategy_priority.sql"]);
        assert_eq!(fake.version, "1.0.0");
    }
    // No commit after the lost batch, and nothing of migration 03.
    let sql = mock.sql();
    let lost = sql
        .iter()
        .position(|q| q.starts_with("ALTER TABLE dbo.customers"))
        .expect("sent");
    assert!(!sql[lost..].iter().any(|q| q.contains("COMMIT")));
    assert!(!sql.iter().any(|q| q.contains("audit_log")));

    // `status` reads the history back: one migration applied, still 1.0.0.
    let out = sb
        .on_site(&["status"])
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("version 1.0.0 (1 migration(s) applied"),
        "{text}"
    );
}

#[test]
fn server_error_in_a_migration_names_the_file_line_and_rolls_back() {
    let mock = Mock::start(Fake::default());
    let sb = mock.sandbox();
    std::env::set_var("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD);
    let mut db = open_db(&sb);
    let bad = uprun::config::Migration {
        version: semver::Version::new(2, 0, 0),
        name: "2.0.0_10_broken.sql".into(),
        path: sb.dir.join("2.0.0_10_broken.sql"),
        sql: "-- first batch\nUPDATE dbo.strategies SET state = state;\nGO\n\nUPDATE dbo.customers SET city = city;\nEXEC dbo.no_such_procedure;\n".into(),
        checksum: "0".repeat(64),
    };
    let err = db.apply(&bad, "tester").expect_err("fails").to_string();
    for needle in [
        "database `FastApp`",
        "migration `2.0.0_10_broken.sql` failed in batch 2 of 2 (line 5 of",
        "SQL Server error 2812 (severity 16, state 1, line 2): Could not find stored procedure 'dbo.no_such_procedure'.",
        "at line 6 of",
        "rolled back and is not recorded in the history",
    ] {
        assert!(err.contains(needle), "error lacks {needle:?}: {err}");
    }
    let sql = mock.sql();
    assert!(sql.last().is_some_and(|q| is_rollback(q)), "{sql:#?}");
    assert!(!sql.iter().any(|q| is_record(q)));
    assert!(mock.fake().history.is_empty());
    assert!(mock.fake().pending.is_empty());
}

/// The sandbox on `mock`, with migration `name` added to the release.
fn sandbox_with_migration(mock: &Mock, name: &str, sql: &str) -> Sandbox {
    let sb = mock.sandbox();
    let dir = sb.release().join("migrations/mssql");
    assert!(dir.is_dir(), "release layout changed");
    std::fs::write(dir.join(name), sql).expect("write migration");
    sb
}

#[test]
fn an_unmatched_begin_transaction_is_rolled_back_not_reported_applied() {
    let mock = Mock::start(Fake::default());
    let sb = sandbox_with_migration(
        &mock,
        "2.0.0_04_unmatched.sql",
        "BEGIN TRANSACTION;\nUPDATE dbo.customers SET city = city;\n",
    );
    let (code, all) = uprun_on(&sb, "run", &["--yes"]);
    assert_eq!(code, Some(1), "{all}");
    assert_contains(
        &all,
        &[
            "migration `2.0.0_04_unmatched.sql` left 1 transaction(s) open (a BEGIN TRANSACTION without its COMMIT)",
            "it was rolled back (the server confirmed: no transaction open)",
            "@@TRANCOUNT = 2, XACT_STATE() = 1",
        ],
    );
    assert!(!all.contains("succeeded"), "{all}");
    // What the server keeps once uprun has gone: 01 to 03, not 04, and the
    // version untouched.
    assert_eq!(history_names(&mock), THREE);
    let fake = mock.fake();
    assert_eq!(fake.version, "1.0.0");
    assert!(
        !fake.changes.iter().any(|c| c.contains("city = city")),
        "{:#?}",
        fake.changes
    );
}

#[test]
fn a_migration_that_ends_the_transaction_itself_is_not_recorded() {
    let mock = Mock::start(Fake::default());
    // What a CATCH block that rolls back without THROW leaves behind.
    let sb = sandbox_with_migration(
        &mock,
        "2.0.0_04_swallowed.sql",
        "UPDATE dbo.customers SET city = city;\n-- BEGIN CATCH\nIF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;\n-- END CATCH\n",
    );
    let (code, all) = uprun_on(&sb, "run", &["--yes"]);
    assert_eq!(code, Some(1), "{all}");
    assert_contains(
        &all,
        &[
            "migration `2.0.0_04_swallowed.sql` ended the transaction uprun opened for it",
            "NOT recorded in the history",
            "@@TRANCOUNT = 0, XACT_STATE() = 0",
        ],
    );
    // Not recorded as applied with its changes gone.
    assert_eq!(history_names(&mock), THREE);
    assert_eq!(mock.fake().version, "1.0.0");
}

#[test]
fn set_nocount_in_a_migration_does_not_break_the_version_update() {
    let mock = Mock::start(Fake::default());
    let sb = sandbox_with_migration(
        &mock,
        "2.0.0_04_nocount.sql",
        "SET NOCOUNT ON;\nUPDATE dbo.customers SET city = city;\n",
    );
    let (code, all) = uprun_on(&sb, "run", &["--yes"]);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(mock.fake().version, "2.0.0");
    assert_eq!(history_names(&mock).len(), 4);
    // The migration's session kept NOCOUNT; the version was written from another.
    let log = mock.server.log();
    let conn_of = |pred: &dyn Fn(&str) -> bool| {
        log.iter()
            .find(|l| l.request.sql().is_some_and(pred))
            .map(|l| l.conn)
            .expect("sent")
    };
    let migration = conn_of(&|q| q.starts_with("SET NOCOUNT ON"));
    let version = conn_of(&|q| q == uprun::db::mssql::SET_VERSION_SQL);
    assert!(mock.server.session(migration).is_some_and(|s| s.nocount));
    assert_ne!(migration, version);
}

#[test]
fn use_of_another_database_is_refused_before_anything_changes() {
    let mock = Mock::start(Fake::default());
    let sb = sandbox_with_migration(
        &mock,
        "2.0.0_02b_generated.sql",
        "-- generated by SSMS\nUSE [OtherDb]\nGO\nUPDATE dbo.customers SET city = city;\n",
    );
    refused_in_plan_and_run(
        &mock,
        &sb,
        2,
        &[
            "2.0.0_02b_generated.sql line 2: `USE` switches to database `OtherDb`",
            "applies this release's migrations to database `FastApp`",
            "nothing was applied",
        ],
    );
    let fake = mock.fake();
    assert_eq!(fake.version, "1.0.0");
    assert!(fake.history.is_empty() && fake.elsewhere.is_empty());
}

#[test]
fn use_of_the_sites_own_database_is_accepted() {
    let mock = Mock::start(Fake::default());
    let sb = sandbox_with_migration(
        &mock,
        "2.0.0_04_generated.sql",
        "USE [FastApp]\nGO\nUPDATE dbo.customers SET city = city;\n",
    );
    let (code, all) = uprun_on(&sb, "run", &["--yes"]);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(mock.fake().version, "2.0.0");
    assert_eq!(history_names(&mock).len(), 4);
}

#[test]
fn a_byte_order_mark_does_not_hide_the_no_transaction_header() {
    let mock = Mock::start(Fake::default());
    let sb = sandbox_with_migration(
        &mock,
        "2.0.0_04_bom.sql",
        "\u{feff}-- uprun: no-transaction\nUPDATE dbo.customers SET city = city;\n",
    );
    let (code, all) = uprun_on(&sb, "run", &["--yes"]);
    assert_eq!(code, Some(0), "{all}");
    let sql = mock.sql();
    // Three migrations in a transaction; the fourth on its own, its history
    // row guarded by "no transaction open".
    let begins = sql
        .iter()
        .filter(|q| *q == uprun::db::mssql::BEGIN_SQL)
        .count();
    assert_eq!(begins, 3, "{sql:#?}");
    let record = sql.iter().rfind(|q| is_record(q)).expect("recorded");
    assert!(
        record.contains("IF @trancount <> 0") && record.contains("N'2.0.0_04_bom.sql'"),
        "{record}"
    );
    assert!(!sql.iter().any(|q| q.contains('\u{feff}')), "BOM sent");
    assert_eq!(history_names(&mock).len(), 4);
}

#[test]
fn a_go_after_a_comment_separates_batches_as_in_ssms() {
    let mock = Mock::start(Fake::default());
    let sb = sandbox_with_migration(
        &mock,
        "2.0.0_04_two_parts.sql",
        "UPDATE dbo.customers SET city = city;\n/* part 2 */ GO\nUPDATE dbo.strategies SET state = state;\n",
    );
    let (code, all) = uprun_on(&sb, "run", &["--yes"]);
    assert_eq!(code, Some(0), "{all}");
    let txs = migration_sql(&mock.sql());
    assert_eq!(
        txs[3][1..3],
        [
            "UPDATE dbo.customers SET city = city;\n".to_string(),
            "UPDATE dbo.strategies SET state = state;\n".to_string()
        ]
    );
}

#[test]
fn a_migration_blocked_by_another_sessions_lock_fails_after_the_lock_timeout() {
    let mock = Mock::start(Fake::default());
    let sb = mock.sandbox_with("operation_timeout_secs = 5\nlock_timeout_secs = 7");
    std::fs::write(
        sb.release().join("migrations/mssql/2.0.0_04_blocked.sql"),
        "UPDATE dbo.held_by_another_session SET x = 1;\n",
    )
    .expect("write migration");
    let (code, all) = uprun_on(&sb, "run", &["--yes"]);
    assert_eq!(code, Some(1), "{all}");
    assert_contains(
        &all,
        &[
            "migration `2.0.0_04_blocked.sql` failed in batch 1 of 1",
            "SQL Server error 1222",
            "another session held a lock it needed for more than 7 s, `database.lock_timeout_secs`",
            "it was rolled back and is not recorded in the history (the server confirmed: no transaction open)",
        ],
    );
    let log = mock.server.log();
    let conn = log
        .iter()
        .find(|l| {
            l.request
                .sql()
                .is_some_and(|q| q.contains("held_by_another_session"))
        })
        .map(|l| l.conn)
        .expect("sent");
    assert_eq!(
        mock.server.session(conn).and_then(|s| s.lock_timeout_ms),
        Some(7000)
    );
    assert_eq!(history_names(&mock), THREE);
}

#[test]
fn an_error_inside_a_procedure_names_the_procedure_and_its_line_not_a_file_line() {
    let mock = Mock::start(Fake::default());
    let sb = sandbox_with_migration(
        &mock,
        "2.0.0_04_totals.sql",
        "UPDATE dbo.customers SET city = city;\nGO\n\nEXEC dbo.recompute_totals;\n",
    );
    let (code, all) = uprun_on(&sb, "run", &["--yes"]);
    assert_eq!(code, Some(1), "{all}");
    assert_contains(
        &all,
        &[
            "migration `2.0.0_04_totals.sql` failed in batch 2 of 2 (line 4 of",
            "SQL Server error 8134",
            "at line 12 of `dbo.recompute_totals` (a procedure, function or trigger the batch called)",
        ],
    );
    assert!(!all.contains("at line 15 of"), "{all}");
}

/// The `Database` contract of `db_contract.rs`, over the protocol: the
/// responder's "database" keeps the history per transaction, so what a failed
/// migration left is what it holds, plus whether the driver committed.
#[test]
fn the_database_contract_holds_over_the_protocol() {
    use uprun::db::mssql::BEGIN_SQL;
    let mock = Mock::start(Fake::default());
    let sb = mock.sandbox();
    std::env::set_var("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD);
    let mut db = open_db(&sb);
    let leftovers = || -> Vec<String> {
        let mut out = Vec::new();
        {
            let f = mock.fake();
            out.extend(f.pending.iter().map(|(_, w)| format!("pending {w:?}")));
            out.extend(f.history.iter().map(|r| format!("history {}", r.name)));
        }
        let sql = mock.sql();
        if let Some(begin) = sql.iter().rposition(|q| q == BEGIN_SQL) {
            if sql[begin..].iter().any(|q| is_record(q)) {
                out.push("the failed migration was committed".into());
            }
        }
        if !sql.last().is_some_and(|q| is_rollback(q)) {
            out.push(format!("not rolled back: {:?}", sql.last()));
        }
        out
    };
    crate::db_contract::contract(
        "mssql (TDS responder)",
        crate::db_contract::Subject {
            db: &mut db,
            good: crate::db_contract::migration(
                "2.0.0_01_priority.sql",
                "ALTER TABLE dbo.strategies ADD priority int NULL;\n",
            ),
            failing: crate::db_contract::migration(
                "2.0.0_02_broken.sql",
                "UPDATE dbo.strategies SET state = state;\nGO\nEXEC dbo.no_such_procedure;\n",
            ),
            leftovers: &leftovers,
            read: "SELECT name, kind, state FROM strategies WHERE state <> 'valid'",
            writes: &[
                "DELETE FROM strategies",
                "UPDATE strategies SET state = 'valid'",
                "WITH x AS (SELECT 1 AS n) DELETE FROM strategies",
                "SELECT 1; DROP TABLE strategies",
                "SELECT * INTO copy FROM strategies",
                "BEGIN TRANSACTION",
                "EXEC dbo.cleanup_strategies",
            ],
        },
    );
    assert_eq!(mock.fake().version, "2.0.0");
}
