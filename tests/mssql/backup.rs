//! Backups over the protocol and their proof: the SQL sent, progress,
//! compression, server errors, the backup set identity and the proof on
//! resume.

use super::*;

#[test]
fn backup_and_verify_send_the_expected_sql_and_progress_drives_the_callback() {
    let mock = Mock::start(Fake {
        backup: BackupMode::WaitForProgress,
        progress: VecDeque::from([20, 55, 90]),
        ..Fake::default()
    });
    let sb = mock.sandbox();
    std::env::set_var("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD);
    let mut db = open_db(&sb);
    db.set_progress_interval(Duration::from_millis(5));
    let mut seen = Vec::new();
    let mut receipt = db
        .backup(Path::new(BACKUP_DIR), &mut |done, total| {
            seen.push((done, total))
        })
        .expect("backup");
    db.verify_backup(&mut receipt).expect("verify");

    // The server's progress, as polled, drove the callback, then 100 at the end.
    assert_eq!(
        seen,
        [(0, 100), (20, 100), (55, 100), (90, 100), (100, 100)]
    );

    assert!(
        receipt
            .file
            .starts_with("/var/opt/mssql/backup/FastApp-1.0.0-")
            && receipt.file.ends_with(".bak"),
        "{}",
        receipt.file
    );
    // Time to the millisecond and a tag of the process: a shared backup
    // folder never sees two backups under one name (FORMAT would overwrite).
    let name = receipt.file.trim_end_matches(".bak");
    let (stamp, tag) = name.rsplit_once('-').expect("tag");
    let stamp = stamp.rsplit('-').next().unwrap_or_default();
    assert_eq!(stamp.len(), "20261202T140918068Z".len(), "{stamp}");
    assert!(
        tag.len() == 4 && tag.chars().all(|c| c.is_ascii_hexdigit()),
        "{tag}"
    );
    assert_eq!(receipt.size, 123_456);
    // Both times from uprun's clock, in UTC (the server's are local).
    assert!(
        receipt.started.ends_with('Z')
            && receipt.finished.ends_with('Z')
            && receipt.started <= receipt.finished,
        "{} {}",
        receipt.started,
        receipt.finished
    );
    assert!(receipt.checksum && receipt.verified);
    assert!(receipt
        .verification
        .contains("RESTORE VERIFYONLY WITH CHECKSUM"));

    let log = mock.server.log();
    let backup = log
        .iter()
        .find(|l| l.request.sql().is_some_and(|q| q.starts_with("BACKUP")))
        .expect("a BACKUP was sent");
    assert_eq!(
        backup.request,
        Request::Rpc {
            sql: "BACKUP DATABASE @P1 TO DISK = @P2 WITH COPY_ONLY, CHECKSUM, INIT, FORMAT, STATS = 5, COMPRESSION".into(),
            declaration: "@P1 nvarchar(4000),@P2 nvarchar(4000)".into(),
            params: vec![s("FastApp"), s(&receipt.file)],
        }
    );
    let verify = log
        .iter()
        .find(|l| {
            l.request
                .sql()
                .is_some_and(|q| q.starts_with("RESTORE VERIFYONLY"))
        })
        .expect("a RESTORE VERIFYONLY was sent");
    assert_eq!(
        verify.request,
        Request::Rpc {
            sql: "RESTORE VERIFYONLY FROM DISK = @P1 WITH CHECKSUM".into(),
            declaration: "@P1 nvarchar(4000)".into(),
            params: vec![s(&receipt.file)],
        }
    );
    assert_eq!(verify.conn, backup.conn, "verified on the main connection");
    // Progress was read from another connection, for the backup's session.
    let polls: Vec<_> = log
        .iter()
        .filter(|l| l.request.sql() == Some(uprun::db::mssql::PROGRESS_SQL))
        .collect();
    assert_eq!(
        polls.len(),
        4,
        "three values, then the poll that released the backup"
    );
    for p in &polls {
        assert_ne!(p.conn, backup.conn);
        assert_eq!(p.app, "uprun progress");
        match &p.request {
            Request::Rpc { params, .. } => assert_eq!(params, &[i(50 + backup.conn as i64)]),
            other => panic!("poll sent as {other:?}"),
        }
    }
}

#[test]
fn no_compression_where_the_edition_lacks_it() {
    let mock = Mock::start(Fake {
        engine_edition: 4,
        edition: "Express Edition (64-bit)".into(),
        ..Fake::default()
    });
    let sb = mock.sandbox();
    std::env::set_var("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD);
    let mut db = open_db(&sb);
    db.backup(Path::new("D:\\Backups\\"), &mut |_, _| {})
        .expect("backup");
    let sql = mock.sql();
    let backup = sql
        .iter()
        .find(|q| q.starts_with("BACKUP"))
        .expect("backup sent");
    assert_eq!(
        backup,
        "BACKUP DATABASE @P1 TO DISK = @P2 WITH COPY_ONLY, CHECKSUM, INIT, FORMAT, STATS = 5"
    );
    let file = match &mock
        .server
        .log()
        .iter()
        .find(|l| l.request.sql() == Some(backup.as_str()))
        .expect("log")
        .request
    {
        Request::Rpc { params, .. } => param_str(params, 1),
        other => panic!("{other:?}"),
    };
    assert!(file.starts_with("D:\\Backups\\FastApp-1.0.0-"), "{file}");
}

#[test]
fn backup_error_3201_fails_the_run_with_the_servers_message() {
    let mock = Mock::start(Fake {
        backup: BackupMode::Error3201,
        ..Fake::default()
    });
    let sb = mock.sandbox();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    let all = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(1), "{all}");
    for needle in [
        "database `FastApp`",
        "SQL Server error 3201 (severity 16",
        "Cannot open backup device '/var/opt/mssql/backup/x.bak'",
        "`database.backup_dir`",
    ] {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
    // Nothing after the failed backup: no verification, no migration.
    let sql = mock.sql();
    assert!(!sql.iter().any(|q| q.starts_with("RESTORE")), "{sql:#?}");
    assert!(migration_sql(&sql).is_empty(), "{sql:#?}");
    assert_eq!(mock.fake().version, "1.0.0");
    assert!(!all.contains(PASSWORD));
}

const OTHER_SET: &str = "11111111-2222-3333-4444-555555555555";

#[test]
fn the_receipt_carries_the_backup_set_identity_and_the_proof_asks_the_server() {
    use uprun::db::mssql::{HEADERONLY_SQL, VERIFY_SQL};
    let mock = Mock::start(Fake::default());
    let sb = mock.sandbox();
    std::env::set_var("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD);
    let mut db = open_db(&sb);
    let mut receipt = db
        .backup(Path::new(BACKUP_DIR), &mut |_, _| {})
        .expect("backup");
    db.verify_backup(&mut receipt).expect("verify");
    // Read from the file's own header (uniqueidentifier, numeric(25,0), bit).
    assert_eq!(receipt.backup_set_guid, SET_GUID);
    assert_eq!(receipt.first_lsn, FIRST_LSN.to_string());
    assert_eq!(receipt.last_lsn, LAST_LSN.to_string());
    assert!(receipt.checksum && receipt.verified);
    assert!(
        receipt.sha256.is_empty(),
        "no file hash for a server backup"
    );
    let log = mock.server.log();
    let header = log
        .iter()
        .find(|l| l.request.sql() == Some(HEADERONLY_SQL))
        .expect("HEADERONLY sent");
    assert_eq!(
        header.request,
        Request::Rpc {
            sql: "RESTORE HEADERONLY FROM DISK = @P1".into(),
            declaration: "@P1 nvarchar(4000)".into(),
            params: vec![s(&receipt.file)],
        }
    );

    // The proof goes through the server: the header again, then VERIFYONLY.
    let before = mock.sql().len();
    db.prove_backup(&receipt)
        .expect("an untouched backup is proved");
    assert_eq!(mock.sql()[before..], [HEADERONLY_SQL, VERIFY_SQL]);

    let refused = |db: &mut MssqlDatabase, tamper: Tamper, needles: &[&str]| {
        mock.fake().tamper = Some((0, tamper));
        let err = db.prove_backup(&receipt).expect_err("refused");
        assert!(matches!(err, uprun::Error::Refused(_)), "{err:?}");
        let text = err.to_string();
        for n in [receipt.file.as_str(), "re-run `backup_db()`"]
            .iter()
            .chain(needles)
        {
            assert!(text.contains(n), "lacks {n:?}: {text}");
        }
    };
    refused(
        &mut db,
        Tamper::OtherSet(OTHER_SET.into()),
        &[OTHER_SET, SET_GUID],
    );
    refused(
        &mut db,
        Tamper::Missing,
        &["cannot be read", "SQL Server error 3201"],
    );
    refused(
        &mut db,
        Tamper::Damaged,
        &["RESTORE VERIFYONLY", "SQL Server error 3241"],
    );
}

#[test]
fn a_backup_replaced_before_the_upgrade_is_refused_and_no_migration_is_sent() {
    // HEADERONLY #1 is the backup's own; #2, right before the upgrade, finds
    // another backup set in the file.
    let mock = Mock::start(Fake {
        tamper: Some((1, Tamper::OtherSet(OTHER_SET.into()))),
        ..Fake::default()
    });
    let sb = mock.sandbox();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    let all = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(3), "{all}");
    for needle in [
        "the backup `/var/opt/mssql/backup/FastApp-1.0.0-",
        OTHER_SET,
        SET_GUID,
        "the database was not touched",
        "re-run `backup_db()`",
    ] {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
    let sql = mock.sql();
    assert!(migration_sql(&sql).is_empty(), "{sql:#?}");
    assert!(
        !sql.iter()
            .any(|q| q == uprun::db::mssql::SET_VERSION_SQL
                || q == uprun::db::mssql::HISTORY_TABLE_SQL),
        "{sql:#?}"
    );
    let fake = mock.fake();
    assert_eq!(fake.headers_read, 2);
    assert_eq!(fake.version, "1.0.0");
    assert!(fake.history.is_empty());
}

/// Run the stock procedure until the backup is done (killed before step 2),
/// and return the run id.
fn killed_after_the_backup(mock: &Mock, sb: &Sandbox) -> String {
    use std::os::unix::process::ExitStatusExt;
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .env("UPRUN_FAILPOINT", "step2:before")
        .output()
        .expect("run");
    assert_eq!(out.status.signal(), Some(9), "not killed: {out:?}");
    assert_eq!(mock.fake().headers_read, 1);
    run_id(&sb.only_journal())
}

#[test]
fn a_resumed_run_proves_the_backup_through_the_server_not_this_machines_files() {
    // The backup is at /var/opt/mssql/backup/... on the server; nothing is
    // there on this machine, and the resume must not look.
    let mock = Mock::start(Fake::default());
    let sb = mock.sandbox();
    let id = killed_after_the_backup(&mock, &sb);
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes", "--resume", &id])
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .output()
        .expect("resume");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let fake = mock.fake();
    assert_eq!(fake.version, "2.0.0");
    // Proved when replayed and again right before the upgrade; not taken again.
    assert_eq!(fake.headers_read, 3);
    assert_eq!(
        mock.sql()
            .iter()
            .filter(|q| q.starts_with("BACKUP DATABASE"))
            .count(),
        1
    );
}

#[test]
fn a_resumed_run_whose_backup_is_gone_from_the_server_is_refused() {
    let mock = Mock::start(Fake {
        tamper: Some((1, Tamper::Missing)),
        ..Fake::default()
    });
    let sb = mock.sandbox();
    let id = killed_after_the_backup(&mock, &sb);
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes", "--resume", &id])
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .output()
        .expect("resume");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    for needle in [
        "the backup `/var/opt/mssql/backup/FastApp-1.0.0-",
        "SQL Server error 3201",
        "earlier attempt",
        "start a new run",
    ] {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
    assert!(migration_sql(&mock.sql()).is_empty());
    assert_eq!(mock.fake().version, "1.0.0");
}

#[test]
fn a_login_without_msdb_access_backs_up_with_the_size_from_the_file() {
    let mock = Mock::start(Fake {
        msdb_denied: true,
        ..Fake::default()
    });
    let sb = mock.sandbox();
    let (code, all) = uprun_on(&sb, "run", &["--yes"]);
    assert_eq!(code, Some(0), "{all}");
    assert_contains(&all, &["(123456 bytes, verified)"]);
    assert_eq!(mock.fake().version, "2.0.0");
    // The backup step never asked msdb.
    let sql = mock.sql();
    let backup = sql
        .iter()
        .position(|q| q.starts_with("BACKUP DATABASE"))
        .expect("backup");
    let verify = sql
        .iter()
        .position(|q| q.starts_with("RESTORE VERIFYONLY"))
        .expect("verify");
    assert!(
        !sql[backup..verify].iter().any(|q| q.contains("msdb.")),
        "{sql:#?}"
    );
}
