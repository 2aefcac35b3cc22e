//! Against a real SQL Server: opt-in, because no machine of ours has one.
//!
//! Set `UPRUN_MSSQL_TEST_CONNECTION` to an ADO.NET connection string for a
//! login that may create and drop databases, back up and restore (sysadmin on
//! a test server), for example
//! `Server=tcp:127.0.0.1,1433;User Id=sa;Password=...;TrustServerCertificate=true`.
//! Optionally set `UPRUN_MSSQL_TEST_BACKUP_DIR` to a folder on the server
//! (default `/var/opt/mssql/data`, which exists on the Linux images).
//! The tests are `#[ignore]`d, so that without a server they report as
//! ignored, never as passed; run them with
//! `cargo test --test main mssql_real -- --ignored`. Asked to run without
//! the variable, they fail and say what to set.
//!
//! Each test creates a throwaway database at 1.0.0 from the sandbox's SQL
//! Server schema and a one-node local site on it, and drops the database (and
//! its msdb backup history) again, also on failure. The backup files stay in
//! the backup folder on the server. The stock procedure: 2.0.0 with a
//! verified copy-only backup and the right history; a migration leaving a
//! transaction open: rolled back, not recorded; uprun killed while a migration
//! runs a WAITFOR: the server rolls it back, and the resumed run proves the
//! first backup (no second one), applies the rest once and ends at 2.0.0.

use std::time::{SystemTime, UNIX_EPOCH};

use tiberius::{Client, Config};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use crate::support::{run_id, Sandbox};

const ENV: &str = "UPRUN_MSSQL_TEST_CONNECTION";
const BACKUP_ENV: &str = "UPRUN_MSSQL_TEST_BACKUP_DIR";

/// A plain client for setting up and checking the server.
struct Admin {
    rt: tokio::runtime::Runtime,
    client: Client<Compat<TcpStream>>,
}

impl Admin {
    fn connect(connection: &str, database: &str) -> Admin {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut config = Config::from_ado_string(connection).expect("connection string");
        config.database(database);
        config.command_timeout(None);
        let client = rt.block_on(async {
            let tcp = TcpStream::connect(config.get_addr())
                .await
                .expect("reach the server");
            tcp.set_nodelay(true).expect("nodelay");
            Client::connect(config, tcp.compat_write())
                .await
                .expect("log in")
        });
        Admin { rt, client }
    }

    fn batch(&mut self, sql: &str) -> Vec<tiberius::Row> {
        let client = &mut self.client;
        self.rt.block_on(async {
            client
                .simple_query(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .into_first_result()
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
        })
    }
}

/// Drops the throwaway database when the test ends, however it ends.
struct Throwaway {
    connection: String,
    name: String,
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let q = uprun::db::mssql::quote_name(&self.name).expect("name");
        let mut admin = Admin::connect(&self.connection, "master");
        admin.batch(&format!(
            "IF DB_ID(N'{n}') IS NOT NULL BEGIN ALTER DATABASE {q} SET SINGLE_USER WITH ROLLBACK IMMEDIATE; DROP DATABASE {q}; END;
             EXEC msdb.dbo.sp_delete_database_backuphistory @database_name = N'{n}';",
            n = self.name
        ));
    }
}

/// The connection string of the real server, or a failure saying what to set.
fn connection() -> String {
    std::env::var(ENV).unwrap_or_else(|_| {
        panic!("set {ENV} to a SQL Server connection string to run the real-server tests (see tests/mssql_real.rs)")
    })
}

/// A throwaway database at 1.0.0 and a one-node local sandbox site on it.
struct RealSite {
    name: String,
    admin: Admin,
    db: Admin,
    sb: Sandbox,
    _cleanup: Throwaway,
}

fn real_site() -> RealSite {
    let connection = connection();
    let backup_dir = std::env::var(BACKUP_ENV).unwrap_or_else(|_| "/var/opt/mssql/data".into());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!("uprun_test_{}_{nanos}", std::process::id());
    let quoted = uprun::db::mssql::quote_name(&name).expect("name");

    let mut admin = Admin::connect(&connection, "master");
    admin.batch(&format!("CREATE DATABASE {quoted};"));
    let cleanup = Throwaway {
        connection: connection.clone(),
        name: name.clone(),
    };
    let mut db = Admin::connect(&connection, &name);
    db.batch(uprun::sandbox::MSSQL_SCHEMA_1_0_0);

    // A one-node local site on that database.
    let sb = Sandbox::new();
    sb.plain_start();
    let site = std::fs::read_to_string(sb.site()).expect("site");
    let site = site
        .replace(
            "kind = \"sqlite\"\npath = \"db/app.sqlite\"",
            &format!("kind = \"mssql\"\nconnection = \"${{env:{ENV}}}\"\ndatabase = \"{name}\""),
        )
        .replace(
            "backup_dir = \"backups\"",
            &format!("backup_dir = {}", toml_string(&backup_dir)),
        );
    let one_node = match site.find("[[node]]\nname = \"app02\"") {
        Some(at) => site[..at].to_string(),
        None => site,
    };
    assert!(one_node.contains("kind = \"mssql\"") && !one_node.contains("app02"));
    std::fs::write(sb.site(), one_node).expect("write site");
    RealSite {
        name,
        admin,
        db,
        sb,
        _cleanup: cleanup,
    }
}

#[test]
#[ignore = "needs a SQL Server: set UPRUN_MSSQL_TEST_CONNECTION and run with --ignored"]
fn a_migration_that_leaves_a_transaction_open_is_rolled_back_on_a_real_server() {
    let mut site = real_site();
    // NOCOUNT and an unmatched BEGIN TRANSACTION: what the server does with
    // them is what this test is about.
    std::fs::write(
        site.sb
            .release()
            .join("migrations/mssql/2.0.0_04_unmatched.sql"),
        format!("USE [{}]\nGO\nSET NOCOUNT ON;\nBEGIN TRANSACTION;\nUPDATE dbo.customers SET name = name;\n", site.name),
    )
    .expect("write migration");
    let out = site
        .sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("left 1 transaction(s) open")
            && text.contains("the server confirmed: no transaction open"),
        "{text}"
    );
    let h = site
        .db
        .batch("SELECT name FROM dbo.uprun_migration_history ORDER BY id");
    assert_eq!(h.len(), 3, "only 01 to 03 are recorded");
    let v = site
        .db
        .batch("SELECT value FROM dbo.app_meta WHERE [key] = N'schema_version'");
    assert_eq!(v[0].get::<&str, _>(0), Some("1.0.0"));
    let open = site
        .admin
        .batch(&format!("SELECT COUNT(*) FROM sys.dm_tran_session_transactions AS t JOIN sys.dm_exec_sessions AS s ON s.session_id = t.session_id WHERE s.database_id = DB_ID(N'{}')", site.name));
    assert_eq!(
        open[0].get::<i32, _>(0),
        Some(0),
        "a transaction stayed open"
    );
}

#[test]
#[ignore = "needs a SQL Server: set UPRUN_MSSQL_TEST_CONNECTION and run with --ignored"]
fn stock_procedure_upgrades_a_real_server_database() {
    let RealSite {
        name,
        mut admin,
        mut db,
        sb,
        _cleanup,
        ..
    } = real_site();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");

    // At 2.0.0, with the migrations' effects and history.
    let v = db.batch("SELECT value FROM dbo.app_meta WHERE [key] = N'schema_version'");
    assert_eq!(v[0].get::<&str, _>(0), Some("2.0.0"));
    let p = db.batch("SELECT priority FROM dbo.strategies WHERE name = N'customer-match'");
    assert_eq!(p[0].get::<i32, _>(0), Some(10));
    let h = db.batch(
        "SELECT name, version, checksum, applied_by FROM dbo.uprun_migration_history ORDER BY id",
    );
    let release = uprun::config::Release::load(&sb.release()).expect("release");
    let migrations = release
        .migrations(uprun::config::DbKind::Mssql)
        .expect("migrations");
    assert_eq!(h.len(), migrations.len());
    for (row, m) in h.iter().zip(&migrations) {
        assert_eq!(row.get::<&str, _>("name"), Some(m.name.as_str()));
        assert_eq!(row.get::<&str, _>("version"), Some("2.0.0"));
        assert_eq!(row.get::<&str, _>("checksum"), Some(m.checksum.as_str()));
        assert!(row
            .get::<&str, _>("applied_by")
            .is_some_and(|b| b.contains("uprun")));
    }

    // A verified, copy-only, checksummed full backup taken by the run.
    let b = admin.batch(&format!(
        "SELECT TOP (1) mf.physical_device_name, CAST(bs.is_copy_only AS int) AS copy_only, CAST(bs.has_backup_checksums AS int) AS checksums
         FROM msdb.dbo.backupset AS bs JOIN msdb.dbo.backupmediafamily AS mf ON mf.media_set_id = bs.media_set_id
         WHERE bs.database_name = N'{name}' AND bs.type = 'D' ORDER BY bs.backup_finish_date DESC"
    ));
    assert_eq!(b.len(), 1, "no full backup in msdb");
    let file = b[0].get::<&str, _>(0).expect("file").to_string();
    assert!(file.contains(&name), "{file}");
    assert_eq!(b[0].get::<i32, _>("copy_only"), Some(1));
    assert_eq!(b[0].get::<i32, _>("checksums"), Some(1));
    admin.batch(&format!(
        "RESTORE VERIFYONLY FROM DISK = N'{}' WITH CHECKSUM",
        file.replace('\'', "''")
    ));
    assert!(text.contains("verified"), "{text}");
}

#[test]
#[ignore = "needs a SQL Server: set UPRUN_MSSQL_TEST_CONNECTION and run with --ignored"]
fn killed_during_a_migration_then_resumed_ends_upgraded_on_a_real_server() {
    use std::time::{Duration, Instant};
    let mut site = real_site();
    // A fourth migration that changes a row, then waits: uprun is killed
    // while the server runs the WAITFOR inside the migration's transaction.
    std::fs::write(
        site.sb.release().join("migrations/mssql/2.0.0_04_slow.sql"),
        "UPDATE dbo.strategies SET priority = priority + 100 WHERE name = N'customer-match';\nGO\nWAITFOR DELAY '00:00:20';\n",
    )
    .expect("write migration");
    let sb = &site.sb;
    let mut run = sb.spawn_run(&sb.site(), "in-place-upgrade", &[]);
    let waiting = format!(
        "SELECT COUNT(*) FROM sys.dm_exec_requests WHERE database_id = DB_ID(N'{}') AND command = N'WAITFOR'",
        site.name
    );
    // Observe the server until the migration is in its WAITFOR.
    let until = Instant::now() + Duration::from_secs(120);
    loop {
        if site.admin.batch(&waiting)[0].get::<i32, _>(0).unwrap_or(0) > 0 {
            break;
        }
        if let Some(status) = run.try_wait().expect("wait") {
            let out = run.wait_with_output().expect("output");
            panic!("uprun ended ({status}) before the migration waited: {out:?}");
        }
        assert!(
            Instant::now() < until,
            "the migration never reached its WAITFOR"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    run.kill().expect("kill uprun");
    let _ = run.wait();
    // The server ends the killed process's sessions and rolls back the open
    // migration: wait (bounded) until none is left in the database.
    let sessions = format!(
        "SELECT COUNT(*) FROM sys.dm_exec_sessions WHERE database_id = DB_ID(N'{}') AND program_name LIKE N'uprun%'",
        site.name
    );
    let until = Instant::now() + Duration::from_secs(60);
    while site.admin.batch(&sessions)[0].get::<i32, _>(0).unwrap_or(0) > 0 {
        assert!(
            Instant::now() < until,
            "uprun's sessions outlived the process"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let history = "SELECT name FROM dbo.uprun_migration_history ORDER BY id";
    assert_eq!(site.db.batch(history).len(), 3, "01 to 03 recorded, 04 not");
    let priority = "SELECT priority FROM dbo.strategies WHERE name = N'customer-match'";
    assert_eq!(
        site.db.batch(priority)[0].get::<i32, _>(0),
        Some(10),
        "the killed migration's change was rolled back"
    );
    let version = "SELECT value FROM dbo.app_meta WHERE [key] = N'schema_version'";
    assert_eq!(site.db.batch(version)[0].get::<&str, _>(0), Some("1.0.0"));

    // Resume: the backup is proved (not taken again), 04 runs once.
    let id = run_id(&sb.only_journal());
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes", "--resume", &id])
        .output()
        .expect("resume");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(site.db.batch(version)[0].get::<&str, _>(0), Some("2.0.0"));
    let names: Vec<String> = site
        .db
        .batch(history)
        .iter()
        .filter_map(|r| r.get::<&str, _>(0).map(str::to_string))
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(names[3], "2.0.0_04_slow.sql");
    assert_eq!(site.db.batch(priority)[0].get::<i32, _>(0), Some(110));
    let backups = site.admin.batch(&format!(
        "SELECT COUNT(*) FROM msdb.dbo.backupset WHERE database_name = N'{}' AND type = 'D'",
        site.name
    ));
    assert_eq!(
        backups[0].get::<i32, _>(0),
        Some(1),
        "the resumed run proved the first backup instead of taking another"
    );
}

fn toml_string(s: &str) -> String {
    format!("'{s}'")
}
