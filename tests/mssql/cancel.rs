//! Deadlines and cancellation: a silent server, a migration past its
//! deadline, and a second Ctrl-C, each cancelled on the server (an attention)
//! with the rollback confirmed.

use super::*;

#[test]
fn a_silent_backup_hits_our_deadline_and_the_next_call_reconnects() {
    let mock = Mock::start(Fake {
        backup: BackupMode::Silent,
        ..Fake::default()
    });
    let sb = mock.sandbox_with("operation_timeout_secs = 1");
    std::env::set_var("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD);
    let mut db = open_db(&sb);
    let started = std::time::Instant::now();
    let err = db
        .backup(Path::new(BACKUP_DIR), &mut |_, _| {})
        .expect_err("deadline")
        .to_string();
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        err.contains("database `FastApp`: backup to `/var/opt/mssql/backup/FastApp-1.0.0-")
            && err.contains("no answer within 1 s, and no acknowledgement of uprun's cancel within 10 s; the connection was closed"),
        "{err}"
    );
    let backup_conn = mock
        .server
        .log()
        .iter()
        .find(|l| l.request.sql().is_some_and(|q| q.starts_with("BACKUP")))
        .map(|l| l.conn)
        .expect("backup sent");
    // The abandoned connection is not reused: the next read opens a new one.
    assert_eq!(db.version().expect("version").to_string(), "1.0.0");
    let read = mock
        .server
        .log()
        .into_iter()
        .rfind(|l| l.request.sql() == Some(uprun::db::mssql::VERSION_SQL))
        .expect("version read");
    assert_ne!(read.conn, backup_conn);
    assert_eq!(read.app, "uprun");
}

#[test]
fn a_migration_past_its_deadline_is_cancelled_on_the_server_and_the_rollback_confirmed() {
    let mock = Mock::start(Fake::default());
    let sb = mock.sandbox_with("operation_timeout_secs = 1");
    let dir = sb.release().join("migrations/mssql");
    std::fs::write(
        dir.join("2.0.0_04_slow.sql"),
        "UPDATE dbo.customers SET city = city;\nGO\nWAITFOR DELAY '01:00:00';\n",
    )
    .expect("write migration");
    let started = std::time::Instant::now();
    let (code, all) = uprun_on(&sb, "run", &["--yes"]);
    assert_eq!(code, Some(1), "{all}");
    assert!(started.elapsed() < Duration::from_secs(30), "{all}");
    assert_contains(
        &all,
        &[
            "migration `2.0.0_04_slow.sql` failed in batch 2 of 2",
            "not finished within 1 s (`database.operation_timeout_secs`), so uprun cancelled it (TDS attention) and the server acknowledged that it stopped",
            "it was rolled back and is not recorded in the history (the server confirmed: no transaction open)",
        ],
    );
    // The attention went to the session running the migration, which then
    // answered the confirming rollback.
    let log = mock.server.log();
    let slow = log
        .iter()
        .find(|l| l.request.sql().is_some_and(|q| q.starts_with("WAITFOR")))
        .map(|l| l.conn)
        .expect("sent");
    let after: Vec<&Request> = log
        .iter()
        .filter(|l| l.conn == slow)
        .map(|l| &l.request)
        .skip_while(|r| !matches!(r, Request::Attention))
        .collect();
    assert!(
        matches!(after.first(), Some(Request::Attention))
            && after.get(1).and_then(|r| r.sql()).is_some_and(is_rollback),
        "{after:#?}"
    );
    assert_eq!(history_names(&mock), THREE);
    let fake = mock.fake();
    assert_eq!(fake.version, "1.0.0");
    assert!(!fake.changes.iter().any(|c| c.contains("city = city")));
}

#[test]
fn a_second_ctrl_c_cancels_the_migration_on_the_server_and_confirms_the_rollback() {
    let (hung_tx, hung) = std::sync::mpsc::channel();
    let mock = Mock::start(Fake {
        hung: Some(hung_tx),
        ..Fake::default()
    });
    let sb = mock.sandbox();
    std::fs::write(
        sb.release().join("migrations/mssql/2.0.0_04_slow.sql"),
        "UPDATE dbo.customers SET city = city;\nGO\nWAITFOR DELAY '01:00:00';\n",
    )
    .expect("write migration");
    let (conn, code, all) = interrupted_while_hung(&sb, &hung, "the migration reached the server");
    assert_eq!(code, Some(130), "{all}");
    assert_contains(
        &all,
        &[
            "migration `2.0.0_04_slow.sql` failed in batch 2 of 2",
            "aborted by the operator (second Ctrl-C): uprun cancelled the request (TDS attention) and the server acknowledged that it stopped",
            "it was rolled back and is not recorded in the history (the server confirmed: no transaction open)",
        ],
    );
    assert_eq!(mock.server.session(conn).map(|s| s.attentions), Some(1));
    assert_eq!(history_names(&mock), THREE);
    let fake = mock.fake();
    assert_eq!(fake.version, "1.0.0");
    assert!(!fake.changes.iter().any(|c| c.contains("city = city")));
}

/// Send SIGINT to `run` once, wait for uprun to say it stops after the
/// current step, then send the second; the exit status and all of stderr.
/// Start the stock run, wait until the request the fake hangs on reaches
/// the server (`what` names it), then press Ctrl-C twice: the session that
/// hung, uprun's exit code and its output.
fn interrupted_while_hung(
    sb: &Sandbox,
    hung: &std::sync::mpsc::Receiver<usize>,
    what: &str,
) -> (usize, Option<i32>, String) {
    std::env::set_var("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD);
    let run = sb.spawn_run(&sb.site(), "in-place-upgrade", &[]);
    let conn = hung
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{what} did not reach the server: {e}"));
    let (code, all) = interrupt_twice(run);
    (conn, code, all)
}

fn interrupt_twice(mut run: std::process::Child) -> (Option<i32>, String) {
    use std::io::BufRead;
    let stderr = run.stderr.take().expect("stderr");
    let (line_tx, lines) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = line_tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let pid = run.id() as i32;
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("uprun acknowledged the first Ctrl-C");
        let first = line.contains("stopping after the current step");
        seen.push(line);
        if first {
            break;
        }
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let status = run.wait().expect("run");
    seen.extend(lines.iter());
    let _ = reader.join();
    (status.code(), seen.join("\n"))
}

#[test]
fn a_second_ctrl_c_cancels_a_running_backup_on_the_server() {
    let (hung_tx, hung) = std::sync::mpsc::channel();
    let mock = Mock::start(Fake {
        backup: BackupMode::Long,
        progress: VecDeque::from([5, 10]),
        hung: Some(hung_tx),
        ..Fake::default()
    });
    let sb = mock.sandbox();
    let (conn, code, all) = interrupted_while_hung(&sb, &hung, "the BACKUP reached the server");
    assert_eq!(code, Some(130), "{all}");
    assert_contains(
        &all,
        &[
            "database `FastApp`: backup to `/var/opt/mssql/backup/FastApp-1.0.0-",
            "aborted by the operator (second Ctrl-C): uprun cancelled the request (TDS attention) and the server acknowledged that it stopped",
            "uprun records no backup from this step",
        ],
    );
    // The attention went to the session running the BACKUP, which answered it.
    assert_eq!(mock.server.session(conn).map(|s| s.attentions), Some(1));
    let after: Vec<Request> = mock
        .server
        .log()
        .into_iter()
        .filter(|l| l.conn == conn)
        .map(|l| l.request)
        .skip_while(|r| !r.sql().is_some_and(|q| q.starts_with("BACKUP")))
        .collect();
    assert!(
        matches!(after.get(1), Some(Request::Attention)),
        "{after:#?}"
    );
    // Nothing was verified, proved or upgraded.
    let sql = mock.sql();
    assert!(!sql.iter().any(|q| q.starts_with("RESTORE")), "{sql:#?}");
    assert!(migration_sql(&sql).is_empty(), "{sql:#?}");
    let fake = mock.fake();
    assert_eq!(fake.version, "1.0.0");
    assert!(fake.backups.is_empty());
    // The journal: the backup step started and failed, nothing after it.
    let entries = journal_entries(&sb.only_journal());
    let failed = entries
        .iter()
        .find(|e| e["type"] == "failed")
        .unwrap_or_else(|| panic!("no failed step: {entries:#?}"));
    assert!(
        failed["key"]
            .as_str()
            .is_some_and(|k| k.starts_with("backup_db")),
        "{failed:#?}"
    );
    assert!(
        !entries
            .iter()
            .any(|e| e["type"] == "started" && e["call"] == "upgrade_db"),
        "{entries:#?}"
    );
}

#[test]
fn a_second_ctrl_c_cancels_the_verification_and_the_proof_on_the_server() {
    for (nth, what) in [
        (
            1,
            "verification of backup `/var/opt/mssql/backup/FastApp-1.0.0-",
        ),
        (2, "prove backup `/var/opt/mssql/backup/FastApp-1.0.0-"),
    ] {
        let (hung_tx, hung) = std::sync::mpsc::channel();
        let mock = Mock::start(Fake {
            hang_verify: Some(nth),
            hung: Some(hung_tx),
            ..Fake::default()
        });
        let sb = mock.sandbox();
        let (conn, code, all) =
            interrupted_while_hung(&sb, &hung, "RESTORE VERIFYONLY reached the server");
        assert_eq!(code, Some(130), "{nth}: {all}");
        assert_contains(
            &all,
            &[
                what,
                "aborted by the operator (second Ctrl-C): uprun cancelled the request (TDS attention) and the server acknowledged that it stopped",
            ],
        );
        assert_eq!(mock.server.session(conn).map(|s| s.attentions), Some(1));
        assert!(migration_sql(&mock.sql()).is_empty());
        assert_eq!(mock.fake().version, "1.0.0");
    }
}
