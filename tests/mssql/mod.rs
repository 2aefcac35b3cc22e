//! SQL Server backend at the protocol level: uprun (through its driver) talks
//! to a scripted TDS responder on 127.0.0.1 that plays a small "database"
//! (version, migration history with transactions, msdb backups, the applock).
//! Named instances are found through a SQL Server Browser on 127.0.0.1 (UDP,
//! `support::browser`). Nothing outside this machine is needed. The tests
//! against a real server are in `mssql_real.rs`.
//!
//! The fake server is in `fake` (its state) and `replies` (what it answers);
//! the tests are grouped by concern in the other modules.

mod backup;
mod browser;
mod cancel;
mod connection;
mod fake;
mod migrations;
mod preflight;
mod replies;

use fake::*;
use replies::*;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use uprun::config::{Release, Site};
use uprun::db::{Database, MssqlDatabase};

use crate::support::browser::{free_udp_port, instance, instance_request, Browser};
use crate::support::tds::{
    bit, guid, i, numeric, s, statements, Control, Ctx, Encryption, Reply, Request, TdsServer,
    Value,
};
use crate::support::{journal_entries, output_text, run_id, Sandbox};

const PASSWORD: &str = "Mock;Pa55-w0rd";
const BACKUP_DIR: &str = "/var/opt/mssql/backup";

/// A connection string for `Server=tcp:{server}`, without TLS.
fn connection_to(server: &str, password: &str) -> String {
    format!(
        "Server=tcp:{server};Database=FastApp;User Id=uprun;Password='{password}';Encrypt=DANGER_PLAINTEXT"
    )
}

/// The demo sandbox with its site pointed at `connection` (TOML-escaped
/// here), plus `extra` `[database]` keys (`connect_timeout_secs` is 10
/// unless they set it).
fn sandbox_at(connection: &str, extra: &str) -> Sandbox {
    let sb = Sandbox::new();
    sb.plain_start();
    let site = std::fs::read_to_string(sb.site()).expect("site");
    let timeout = if extra.contains("connect_timeout_secs") {
        ""
    } else {
        "connect_timeout_secs = 10\n"
    };
    let section = format!(
        "kind = \"mssql\"\nconnection = \"{}\"\nbackup_dir = \"{BACKUP_DIR}\"\n{timeout}{extra}",
        connection.replace('\\', "\\\\")
    );
    let site = site
        .replace("kind = \"sqlite\"\npath = \"db/app.sqlite\"", &section)
        .replace("backup_dir = \"backups\"\n", "");
    assert!(site.contains("kind = \"mssql\""), "site layout changed");
    std::fs::write(sb.site(), site).expect("write site");
    sb
}

fn open_db(sb: &Sandbox) -> MssqlDatabase {
    let site = Site::load(&sb.site()).expect("site");
    MssqlDatabase::open(&site.database, false).expect("open")
}

/// Is this the batch that records a migration in the history?
fn is_record(sql: &str) -> bool {
    sql.contains("uprun_migration_history (name, version, checksum")
}

/// Is this a rollback sent by uprun?
fn is_rollback(sql: &str) -> bool {
    sql.starts_with("IF @@TRANCOUNT > 0 ROLLBACK")
}

/// The requests from BEGIN TRANSACTION to the batch that records (and
/// commits) each migration, or to its rollback.
fn migration_sql(log: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for sql in log {
        if sql == uprun::db::mssql::BEGIN_SQL {
            current = Some(Vec::new());
        }
        if let Some(c) = current.as_mut() {
            c.push(sql.clone());
        }
        if is_record(sql) || is_rollback(sql) {
            if let Some(c) = current.take() {
                out.push(c);
            }
        }
    }
    out.extend(current);
    out
}

fn sha256_hex(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).expect("read migration");
    Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `uprun status` on the sandbox, with the SQL Server Browser at `browser_port`.
fn status(sb: &Sandbox, browser_port: u16) -> std::process::Output {
    sb.on_site(&["status"])
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .env(uprun::db::mssql::BROWSER_PORT_ENV, browser_port.to_string())
        .output()
        .expect("status")
}

fn assert_contains(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "lacks {needle:?}: {text}");
    }
    assert!(!text.contains(PASSWORD) && !text.contains("Pa55"), "{text}");
}

/// `uprun <cmd> in-place-upgrade` on the sandbox, with the password set.
fn uprun_on(sb: &Sandbox, cmd: &str, extra: &[&str]) -> (Option<i32>, String) {
    let out = sb
        .cmd(cmd, "in-place-upgrade", extra)
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .output()
        .expect("uprun");
    let all = output_text(&out);
    assert!(!all.contains(PASSWORD) && !all.contains("Pa55"), "{all}");
    (out.status.code(), all)
}

/// `plan`, then `run --yes`: each exits `code` and says every one of
/// `needles`; and neither sent a BACKUP or a migration to the server.
fn refused_in_plan_and_run(mock: &Mock, sb: &Sandbox, code: i32, needles: &[&str]) {
    for (cmd, extra) in [("plan", &[][..]), ("run", &["--yes"][..])] {
        let (got, all) = uprun_on(sb, cmd, extra);
        assert_eq!(got, Some(code), "{cmd}: {all}");
        assert_contains(&all, needles);
    }
    let sql = mock.sql();
    assert!(!sql.iter().any(|q| q.starts_with("BACKUP")), "{sql:#?}");
    assert!(migration_sql(&sql).is_empty(), "{sql:#?}");
}

fn history_names(mock: &Mock) -> Vec<String> {
    mock.fake().history.iter().map(|h| h.name.clone()).collect()
}

const THREE: [&str; 3] = [
    "2.0.0_01_strategy_priority.sql",
    "2.0.0_02_customer_email.sql",
    "2.0.0_03_audit_log.sql",
];

/// The logins the responder received: (user, database, password).
fn logins(mock: &Mock) -> Vec<(String, String, String)> {
    mock.server
        .log()
        .into_iter()
        .filter_map(|l| match l.request {
            Request::Login {
                user,
                database,
                password,
                ..
            } => Some((user, database, password)),
            _ => None,
        })
        .collect()
}
