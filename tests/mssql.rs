//! SQL Server backend at the protocol level: uprun (through its driver) talks
//! to a scripted TDS responder on 127.0.0.1 that plays a small "database"
//! (version, migration history with transactions, msdb backups, the applock).
//! Named instances are found through a SQL Server Browser on 127.0.0.1 (UDP,
//! `support::browser`). Nothing outside this machine is needed. The tests
//! against a real server are in `mssql_real.rs`.

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
use crate::support::Sandbox;

const PASSWORD: &str = "Mock;Pa55-w0rd";
const BACKUP_DIR: &str = "/var/opt/mssql/backup";

#[derive(Debug, Clone, PartialEq)]
struct HistoryRow {
    name: String,
    version: String,
    checksum: String,
    duration_ms: i64,
    applied_by: String,
}

#[derive(Clone, Copy, PartialEq)]
enum BackupMode {
    Ok,
    /// Hold the BACKUP until the progress monitor has read every queued value.
    WaitForProgress,
    /// Fail as SQL Server does when the folder does not exist.
    Error3201,
    /// Never answer (for at most 30 s).
    Silent,
    /// Stream "N percent processed." and run until cancelled (an attention),
    /// then report error 3204 as SQL Server does for an aborted backup.
    Long,
}

/// The backup set `RESTORE HEADERONLY` reports for a backup taken by the fake.
const SET_GUID: &str = "6F9619FF-8B86-D011-B42D-00C04FC964FF";
const FIRST_LSN: i128 = 37_000_000_012_300_001;
const LAST_LSN: i128 = 37_000_000_012_600_001;

/// What happens to the backup file on the "server" after some HEADERONLY reads.
#[derive(Clone, PartialEq)]
enum Tamper {
    /// The file now holds another backup set (this GUID).
    OtherSet(String),
    /// The file is gone (error 3201 on HEADERONLY).
    Missing,
    /// The header reads, but VERIFYONLY finds the media damaged.
    Damaged,
}

/// A write a session made inside its transaction, kept apart until it commits.
#[derive(Debug, Clone, PartialEq)]
enum Write {
    History(HistoryRow),
    Version(String),
    /// A migration statement (its text).
    Change(String),
}

/// The fake database behind the responder. Writes made inside a transaction
/// stay in `pending` (by connection) until the session's outermost COMMIT;
/// a ROLLBACK, an error under XACT_ABORT, or the end of the connection drops
/// them (see `support::tds::Session`).
struct Fake {
    version: String,
    history: Vec<HistoryRow>,
    /// Migration statements that are durable, in order.
    changes: Vec<String>,
    /// History rows written while the session was in another database.
    elsewhere: Vec<(String, HistoryRow)>,
    /// Written in an open transaction, per connection.
    pending: Vec<(usize, Write)>,
    lock_result: i64,
    engine_edition: i64,
    edition: String,
    backup: BackupMode,
    progress: VecDeque<i64>,
    /// Drop the connection on a batch containing this text.
    drop_on: Option<String>,
    reject_login: bool,
    /// Full backups known to "msdb": file, finished.
    backups: Vec<(String, String)>,
    /// RESTORE HEADERONLY requests answered so far.
    headers_read: usize,
    /// After this many HEADERONLY reads, the backup file is tampered with.
    tamper: Option<(usize, Tamper)>,
    /// The login may not read msdb (error 229).
    msdb_denied: bool,
    /// Told the connection number when a request that runs until cancelled
    /// (`WAITFOR`, a `BackupMode::Long` BACKUP) arrives.
    hung: Option<std::sync::mpsc::Sender<usize>>,
    /// The connection running a `BackupMode::Long` BACKUP.
    backing_up: Option<usize>,
    /// RESTORE VERIFYONLY requests answered so far, and which one (1: the
    /// verification after the backup, 2: the proof before the upgrade) runs
    /// until cancelled.
    verifies: usize,
    hang_verify: Option<usize>,
    /// Data and log bytes in use (None: VIEW DATABASE STATE denied).
    space_used: Option<(i64, i64)>,
    /// `sys.dm_os_volume_stats` of the database files: mount point, free
    /// bytes (None: VIEW SERVER STATE denied).
    volumes: Option<Vec<(String, i64)>>,
    /// DATABASEPROPERTYEX(..., 'Updateability').
    updateability: String,
    /// Other sessions in the database: id, login, host, program.
    other_sessions: Vec<(i64, String, String, String)>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            version: "1.0.0".into(),
            history: Vec::new(),
            changes: Vec::new(),
            elsewhere: Vec::new(),
            pending: Vec::new(),
            lock_result: 0,
            engine_edition: 3,
            edition: "Developer Edition (64-bit)".into(),
            backup: BackupMode::Ok,
            progress: VecDeque::new(),
            drop_on: None,
            reject_login: false,
            backups: Vec::new(),
            headers_read: 0,
            tamper: None,
            msdb_denied: false,
            hung: None,
            backing_up: None,
            verifies: 0,
            hang_verify: None,
            space_used: Some((5 << 20, 1 << 20)),
            volumes: Some(vec![("/var/opt/mssql/".into(), 50 << 30)]),
            updateability: "READ_WRITE".into(),
            other_sessions: Vec::new(),
        }
    }
}

impl Fake {
    /// How the backup file is tampered with now, if it is.
    fn tampered(&self) -> Option<&Tamper> {
        match &self.tamper {
            Some((after, t)) if self.headers_read > *after => Some(t),
            _ => None,
        }
    }
}

impl Fake {
    /// A write by connection `conn`: kept apart while it has a transaction open.
    fn write(&mut self, conn: usize, in_transaction: bool, w: Write) {
        if in_transaction {
            self.pending.push((conn, w));
        } else {
            self.apply(w);
        }
    }

    fn apply(&mut self, w: Write) {
        match w {
            Write::History(r) => self.history.push(r),
            Write::Version(v) => self.version = v,
            Write::Change(c) => self.changes.push(c),
        }
    }

    /// What a session's transaction control did to the data.
    fn settle(&mut self, conn: usize, c: &Control) {
        let (mine, others): (Vec<_>, Vec<_>) =
            self.pending.drain(..).partition(|(c, _)| *c == conn);
        self.pending = others;
        match c {
            Control::Committed => mine.into_iter().for_each(|(_, w)| self.apply(w)),
            Control::RolledBack => {}
            _ => self.pending.extend(mine),
        }
    }

    /// The version as connection `conn` sees it (its own uncommitted write first).
    fn version_seen_by(&self, conn: usize) -> String {
        self.pending
            .iter()
            .rev()
            .find_map(|(c, w)| match w {
                Write::Version(v) if *c == conn => Some(v.clone()),
                _ => None,
            })
            .unwrap_or_else(|| self.version.clone())
    }
}

struct Mock {
    server: TdsServer,
    fake: Arc<Mutex<Fake>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Mock {
    fn start(fake: Fake) -> Mock {
        Mock::spawn(fake, None)
    }

    /// A responder that is the named instance `name`.
    fn start_instance(fake: Fake, name: &str) -> Mock {
        Mock::spawn(fake, Some(name))
    }

    /// A responder with a certificate (TLS as SQL Server does it).
    fn start_tls(fake: Fake, cert: &TestCert) -> Mock {
        Mock::spawn_with(fake, None, Some(cert.server_config()))
    }

    fn spawn(fake: Fake, name: Option<&str>) -> Mock {
        Mock::spawn_with(fake, name, None)
    }

    fn spawn_with(fake: Fake, name: Option<&str>, tls: Option<Arc<rustls::ServerConfig>>) -> Mock {
        let fake = Arc::new(Mutex::new(fake));
        // Set once the progress monitor has asked after the last queued value.
        let progress_read = Arc::new((Mutex::new(false), Condvar::new()));
        let (f, p) = (fake.clone(), progress_read.clone());
        let handler = Arc::new(move |ctx: &Ctx, req: &Request| answer(&f, &p, ctx, req));
        let server = match (name, tls) {
            (Some(name), _) => TdsServer::start_instance(handler, name),
            (None, Some(tls)) => TdsServer::start_tls(handler, tls),
            (None, None) => TdsServer::start(handler),
        };
        Mock { server, fake }
    }

    fn fake(&self) -> std::sync::MutexGuard<'_, Fake> {
        lock(&self.fake)
    }

    /// A connection string for the responder (no TLS: this one has no
    /// certificate; see `start_tls`).
    fn connection(&self, password: &str) -> String {
        connection_to(&format!("127.0.0.1,{}", self.server.port()), password)
    }

    /// Lay out the demo sandbox and point its site at the responder. The
    /// password comes from the environment, as on a real site.
    fn sandbox(&self) -> Sandbox {
        self.sandbox_with("")
    }

    /// `sandbox`, with more `[database]` keys.
    fn sandbox_with(&self, extra: &str) -> Sandbox {
        sandbox_at(&self.connection("${env:UPRUN_TEST_MSSQL_PASSWORD}"), extra)
    }

    fn sql(&self) -> Vec<String> {
        self.server.sql()
    }
}

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

fn rows(cols: &[&str], rows: Vec<Vec<Value>>) -> Vec<Reply> {
    vec![Reply::rows(cols, rows)]
}

fn param_str(params: &[Value], n: usize) -> String {
    params
        .get(n)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

/// The fake server's answer to one request.
fn answer(
    fake: &Mutex<Fake>,
    progress_read: &(Mutex<bool>, Condvar),
    ctx: &Ctx,
    req: &Request,
) -> Vec<Reply> {
    use uprun::db::mssql as q;
    let (sql, params) = match req {
        Request::Login { .. } => {
            return if lock(fake).reject_login {
                vec![Reply::error(18456, 14, "Login failed for user 'uprun'.")]
            } else {
                Vec::new()
            }
        }
        Request::Batch(sql) => (sql.as_str(), &[][..]),
        Request::Rpc { sql, params, .. } => (sql.as_str(), params.as_slice()),
        Request::Attention => {
            // What the session had open is gone if the attention ended it.
            if lock(&ctx.session).trancount == 0 {
                lock(fake).settle(ctx.conn, &Control::RolledBack);
            }
            let mut f = lock(fake);
            if f.backing_up == Some(ctx.conn) {
                f.backing_up = None;
                return vec![
                    Reply::error(3204, 16, "The backup or restore was aborted."),
                    Reply::error(3013, 16, "BACKUP DATABASE is terminating abnormally."),
                ];
            }
            return Vec::new();
        }
    };
    let mut f = lock(fake);
    if let Some(needle) = &f.drop_on {
        if sql.contains(needle.as_str()) {
            return vec![Reply::Disconnect];
        }
    }
    let mut session = lock(&ctx.session);
    let in_tx = session.trancount > 0;
    let home = session.database == "FastApp";
    if sql == q::VERSION_SQL {
        if !home {
            return vec![no_object("dbo.app_meta")];
        }
        return rows(&["value"], vec![vec![s(&f.version_seen_by(ctx.conn))]]);
    }
    if sql.contains("UPDATE dbo.app_meta SET value = @P1 WHERE [key] = @P2") {
        if !home {
            return vec![no_object("dbo.app_meta")];
        }
        f.write(ctx.conn, in_tx, Write::Version(param_str(params, 0)));
        let mut out = vec![Reply::Count(1)];
        if sql.contains("@@ROWCOUNT") {
            out.extend(rows(&["changed"], vec![vec![i(1)]]));
        }
        return out;
    }
    if sql == q::HISTORY_SQL {
        let mine = f.pending.iter().filter_map(|(c, w)| match w {
            Write::History(h) if *c == ctx.conn => Some(h),
            _ => None,
        });
        let r = f
            .history
            .iter()
            .chain(mine)
            .map(|h| {
                vec![
                    s(&h.name),
                    s(&h.version),
                    s(&h.checksum),
                    s("2026-01-01T00:00:00.000Z"),
                    i(h.duration_ms),
                    s(&h.applied_by),
                ]
            })
            .collect();
        return rows(
            &[
                "name",
                "version",
                "checksum",
                "applied_at",
                "duration_ms",
                "applied_by",
            ],
            r,
        );
    }
    if sql == q::HISTORY_TABLE_SQL {
        return Vec::new();
    }
    if sql.contains("dbo.uprun_migration_history (name, version, checksum") {
        return record(&mut f, &mut session, ctx.conn, sql, params);
    }
    if sql == q::EDITION_SQL {
        return rows(
            &["engine_edition", "edition"],
            vec![vec![i(f.engine_edition), s(&f.edition)]],
        );
    }
    if sql == q::UPDATEABILITY_SQL {
        return rows(&["updateability"], vec![vec![s(&f.updateability)]]);
    }
    if sql == q::OTHER_SESSIONS_SQL {
        let r = f
            .other_sessions
            .iter()
            .map(|(id, login, host, program)| vec![i(*id), s(login), s(host), s(program)])
            .collect();
        return rows(
            &["session_id", "login_name", "host_name", "program_name"],
            r,
        );
    }
    if sql == q::SPACE_USED_SQL {
        return match f.space_used {
            Some((data, log)) => rows(&["data_bytes", "log_bytes"], vec![vec![i(data), i(log)]]),
            None => vec![Reply::error(
                297,
                16,
                "The user does not have permission to perform this action.",
            )],
        };
    }
    if sql == q::VOLUMES_SQL {
        return match &f.volumes {
            Some(v) => rows(
                &["mount_point", "available_bytes"],
                v.iter().map(|(m, free)| vec![s(m), i(*free)]).collect(),
            ),
            None => vec![Reply::error(
                300,
                14,
                "VIEW SERVER STATE permission was denied on object 'server', database 'master'.",
            )],
        };
    }
    if sql == q::FIXED_DRIVES_SQL {
        // SQL Server on Linux has no fixed drives.
        return vec![Reply::error(
            208,
            16,
            "Invalid object name 'sys.dm_os_enumerate_fixed_drives'.",
        )];
    }
    if sql == q::SPID_SQL {
        return rows(&["spid"], vec![vec![i(50 + ctx.conn as i64)]]);
    }
    if sql == q::PROGRESS_SQL {
        return match f.progress.pop_front() {
            Some(p) => rows(&["percent_complete"], vec![vec![i(p)]]),
            None => {
                let (done, cv) = progress_read;
                *lock(done) = true;
                cv.notify_all();
                rows(&["percent_complete"], Vec::new())
            }
        };
    }
    if sql.starts_with("BACKUP DATABASE") {
        match f.backup {
            BackupMode::Error3201 => {
                return vec![
                    Reply::error(
                        3201,
                        16,
                        "Cannot open backup device '/var/opt/mssql/backup/x.bak'. Operating system error 2(The system cannot find the file specified.).",
                    ),
                    Reply::error(3013, 16, "BACKUP DATABASE is terminating abnormally."),
                ]
            }
            BackupMode::WaitForProgress => {
                drop(f);
                let (done, cv) = progress_read;
                let guard = lock(done);
                let (guard, timeout) = cv
                    .wait_timeout_while(guard, Duration::from_secs(30), |d| !*d)
                    .unwrap_or_else(|e| e.into_inner());
                drop(guard);
                if timeout.timed_out() {
                    return vec![Reply::error(50000, 16, "mock: progress was never polled")];
                }
                f = lock(fake);
            }
            BackupMode::Silent => {
                drop(f);
                // Released only when the test process ends (or after 30 s).
                let never = (Mutex::new(()), Condvar::new());
                let guard = lock(&never.0);
                let _ = never.1.wait_timeout(guard, Duration::from_secs(30));
                return vec![Reply::error(50000, 16, "mock: too late")];
            }
            BackupMode::Long => {
                f.backing_up = Some(ctx.conn);
                if let Some(tx) = &f.hung {
                    let _ = tx.send(ctx.conn);
                }
                return vec![
                    Reply::info(3211, "5 percent processed."),
                    Reply::info(3211, "10 percent processed."),
                    Reply::Hang,
                ];
            }
            BackupMode::Ok => {}
        }
        let file = param_str(params, 1);
        f.backups.push((file, "2026-01-01T01:02:03".into()));
        return vec![
            Reply::info(3211, "100 percent processed."),
            Reply::info(
                3014,
                "BACKUP DATABASE successfully processed 460 pages in 0.050 seconds (71.875 MB/sec).",
            ),
        ];
    }
    if f.msdb_denied && sql.contains("msdb.") {
        return vec![Reply::error(
            229,
            14,
            "The SELECT permission was denied on the object 'backupset', database 'msdb', schema 'dbo'.",
        )];
    }
    if sql == q::HEADERONLY_SQL {
        f.headers_read += 1;
        let set = match f.tampered() {
            Some(Tamper::Missing) => {
                return vec![
                    Reply::error(3201, 16, &format!("Cannot open backup device '{}'. Operating system error 2(The system cannot find the file specified.).", param_str(params, 0))),
                    Reply::error(3013, 16, "RESTORE HEADERONLY is terminating abnormally."),
                ]
            }
            Some(Tamper::OtherSet(g)) => g.clone(),
            _ => SET_GUID.to_string(),
        };
        // A few of the columns SQL Server returns, with its types.
        return rows(
            &[
                "BackupName",
                "BackupType",
                "Position",
                "DatabaseName",
                "FirstLSN",
                "LastLSN",
                "HasBackupChecksums",
                "IsDamaged",
                "BackupSetGUID",
                "BackupSize",
                "CompressedBackupSize",
                "BackupFinishDate",
            ],
            vec![vec![
                Value::Null,
                i(1),
                i(1),
                s("FastApp"),
                numeric(FIRST_LSN),
                numeric(LAST_LSN),
                bit(true),
                bit(false),
                guid(&set),
                numeric(376_832),
                numeric(123_456),
                // The server's local time (as SQL Server reports it).
                s("2026-01-01T02:02:03"),
            ]],
        );
    }
    if sql == q::VERIFY_SQL {
        f.verifies += 1;
        if f.hang_verify == Some(f.verifies) {
            if let Some(tx) = &f.hung {
                let _ = tx.send(ctx.conn);
            }
            return vec![Reply::Hang];
        }
        if f.tampered() == Some(&Tamper::Damaged) {
            return vec![
                Reply::error(3241, 16, "The media family on device is incorrectly formed. SQL Server cannot process this media family."),
                Reply::error(3013, 16, "VERIFY DATABASE is terminating abnormally."),
            ];
        }
        return vec![Reply::info(3262, "The backup set on file 1 is valid.")];
    }
    if sql == q::LATEST_FULL_SQL {
        let r = f
            .backups
            .last()
            .map(|(file, at)| vec![vec![s(file), s(at), i(1)]])
            .unwrap_or_default();
        return rows(&["file_name", "finished", "copy_only"], r);
    }
    if sql == q::LOCK_SQL {
        return rows(&["result"], vec![vec![i(f.lock_result)]]);
    }
    drop(f);
    drop(session);
    run_batch(fake, ctx, sql)
}

/// Error 208, as SQL Server reports an unknown table.
fn no_object(name: &str) -> Reply {
    Reply::error(208, 16, &format!("Invalid object name '{name}'."))
}

/// A batch of statements (transaction control, checks, migrations), run one
/// by one against the session and the fake data as SQL Server would.
fn run_batch(fake: &Mutex<Fake>, ctx: &Ctx, sql: &str) -> Vec<Reply> {
    let mut f = lock(fake);
    let mut session = lock(&ctx.session);
    let mut out = Vec::new();
    for stmt in statements(sql) {
        if let Some(c) = session.control(&stmt) {
            f.settle(ctx.conn, &c);
            if let Control::Failed(e) = c {
                out.push(e);
                return out;
            }
            continue;
        }
        let in_tx = session.trancount > 0;
        let upper = stmt.to_ascii_uppercase();
        if upper == "SELECT CAST(@@TRANCOUNT AS INT) AS TRANCOUNT" {
            out.extend(rows(
                &["trancount"],
                vec![vec![i(session.trancount as i64)]],
            ));
        } else if stmt.starts_with("UPDATE dbo.held_by_another_session") {
            // Blocked by another session's lock: SQL Server gives up after
            // LOCK_TIMEOUT (error 1222), else waits.
            if session.lock_timeout_ms.is_none() {
                out.push(Reply::Hang);
                return out;
            }
            let c = session.runtime_error();
            f.settle(ctx.conn, &c);
            out.push(Reply::error(
                1222,
                16,
                "Lock request time out period exceeded.",
            ));
            return out;
        } else if stmt.starts_with("EXEC dbo.recompute_totals") {
            let c = session.runtime_error();
            f.settle(ctx.conn, &c);
            out.push(Reply::ErrorIn {
                number: 8134,
                class: 16,
                message: "Divide by zero error encountered.".into(),
                line: 12,
                procedure: "dbo.recompute_totals".into(),
            });
            return out;
        } else if upper.starts_with("WAITFOR") {
            // Runs until cancelled.
            if let Some(tx) = &f.hung {
                let _ = tx.send(ctx.conn);
            }
            out.push(Reply::Hang);
            return out;
        } else if stmt.starts_with("SELECT name, kind, state FROM strategies") {
            out.extend(rows(&["name", "kind", "state"], Vec::new()));
        } else if stmt.contains("no_such_procedure") || upper.starts_with("THROW") {
            let e = if upper.starts_with("THROW") {
                Reply::error(50000, 16, "thrown by the migration")
            } else {
                Reply::Error {
                    number: 2812,
                    class: 16,
                    message: "Could not find stored procedure 'dbo.no_such_procedure'.".into(),
                    line: 2,
                }
            };
            let c = session.runtime_error();
            f.settle(ctx.conn, &c);
            out.push(e);
            return out;
        } else if stmt.starts_with("ALTER TABLE")
            || stmt.starts_with("UPDATE dbo.")
            || stmt.starts_with("CREATE TABLE dbo.audit_log")
            || stmt.starts_with("INSERT INTO dbo.audit_log")
        {
            f.write(ctx.conn, in_tx, Write::Change(stmt.clone()));
            out.push(Reply::Count(3));
        } else {
            out.push(Reply::error(
                50000,
                16,
                &format!("mock: unexpected SQL: {stmt}"),
            ));
            return out;
        }
    }
    out
}

/// `N'it''s'` → `it's`; integers as they are.
fn literals(values: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut chars = values.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            'N' if chars.peek() == Some(&'\'') => {}
            '\'' => {
                let mut text = String::new();
                while let Some(c) = chars.next() {
                    if c == '\'' {
                        if chars.peek() == Some(&'\'') {
                            chars.next();
                        } else {
                            break;
                        }
                    }
                    text.push(c);
                }
                out.push(Value::Str(text));
            }
            c if c.is_ascii_digit() => {
                let mut n = c.to_string();
                while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                    n.push(*d);
                    chars.next();
                }
                out.push(Value::Int(n.parse().unwrap_or(-1)));
            }
            _ => {}
        }
    }
    out
}

/// The statement that records a migration in the history, in either form:
/// `sp_executesql` with parameters, or a batch of literals guarded by a check
/// of the transaction state and followed by COMMIT and `SELECT @@TRANCOUNT`.
/// The row goes to the database named in the statement, else the session's.
fn record(
    f: &mut Fake,
    session: &mut crate::support::tds::Session,
    conn: usize,
    sql: &str,
    params: &[Value],
) -> Vec<Reply> {
    let mut out = Vec::new();
    if sql.contains("SET XACT_ABORT ON") {
        session.xact_abort = true;
    }
    let expected = if sql.contains("IF @trancount <> 1 OR @xact_state <> 1") {
        Some((1, 1))
    } else if sql.contains("IF @trancount <> 0") {
        Some((0, 0))
    } else {
        None
    };
    if let Some((tc, xs)) = expected {
        let (now_tc, now_xs) = (session.trancount as i64, session.xact_state());
        if now_tc != tc || (tc == 1 && now_xs != xs) {
            let message = format!(
                "uprun: after the migration @@TRANCOUNT = {now_tc}, XACT_STATE() = {now_xs} (expected @@TRANCOUNT {})",
                if tc == 1 { "1, XACT_STATE() 1" } else { "0" }
            );
            let c = session.runtime_error();
            f.settle(conn, &c);
            return vec![Reply::error(50001, 16, &message)];
        }
    }
    let values = match sql.find("VALUES (") {
        Some(at) if params.is_empty() => literals(&sql[at + 8..].replace("SYSUTCDATETIME()", "")),
        _ => params.to_vec(),
    };
    let row = HistoryRow {
        name: param_str(&values, 0),
        version: param_str(&values, 1),
        checksum: param_str(&values, 2),
        duration_ms: values.get(3).and_then(|v| v.as_int()).unwrap_or(-1),
        applied_by: param_str(&values, 4),
    };
    let database = match sql.split_once("INSERT INTO [") {
        Some((_, rest)) => rest.split("].dbo.").next().unwrap_or_default().to_string(),
        None => session.database.clone(),
    };
    if database == "FastApp" {
        f.write(conn, session.trancount > 0, Write::History(row));
    } else {
        f.elsewhere.push((database, row));
    }
    out.push(Reply::Count(1));
    if sql.contains("COMMIT TRANSACTION;") {
        let c = session
            .control("COMMIT TRANSACTION")
            .unwrap_or(Control::Done);
        f.settle(conn, &c);
        if let Control::Failed(e) = c {
            out.push(e);
            return out;
        }
    }
    if sql.contains("SELECT CAST(@@TRANCOUNT AS int) AS trancount") {
        out.extend(rows(
            &["trancount"],
            vec![vec![i(session.trancount as i64)]],
        ));
    }
    out
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
    let out = crate::support::uprun()
        .args(["status", "--site"])
        .arg(sb.site())
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
    let out = crate::support::uprun()
        .args(["status", "--site"])
        .arg(sb.site())
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

#[test]
fn login_failure_names_host_and_port_but_not_the_password() {
    let mock = Mock::start(Fake {
        reject_login: true,
        ..Fake::default()
    });
    let sb = mock.sandbox();
    let out = crate::support::uprun()
        .args(["status", "--site"])
        .arg(sb.site())
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .output()
        .expect("status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let addr = format!("127.0.0.1:{}", mock.server.port());
    for needle in [
        "database `FastApp`",
        addr.as_str(),
        "rejected the user name or password",
        "18456",
    ] {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
    assert!(!err.contains(PASSWORD) && !err.contains("Pa55"), "{err}");
    match &mock.server.log()[0].request {
        Request::Login { user, database, .. } => {
            assert_eq!(user, "uprun");
            assert_eq!(database, "FastApp");
        }
        other => panic!("first request {other:?}"),
    }
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
fn debug_and_errors_never_show_the_connection_string() {
    let mock = Mock::start(Fake::default());
    let sb = mock.sandbox();
    std::env::set_var("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD);
    let site = Site::load(&sb.site()).expect("site");
    let text = format!("{site:?}");
    assert!(
        !text.contains("Pa55") && !text.contains("Server=tcp"),
        "{text}"
    );
    let db = open_db(&sb);
    let text = format!("{db:?}");
    assert!(!text.contains("Pa55") && text.contains("FastApp"), "{text}");
}

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

const INSTANCE: &str = "TESTINST";

/// `uprun status` on the sandbox, with the SQL Server Browser at `browser_port`.
fn status(sb: &Sandbox, browser_port: u16) -> std::process::Output {
    crate::support::uprun()
        .args(["status", "--site"])
        .arg(sb.site())
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .env(uprun::db::mssql::BROWSER_PORT_ENV, browser_port.to_string())
        .output()
        .expect("status")
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_contains(text: &str, needles: &[&str]) {
    for needle in needles {
        assert!(text.contains(needle), "lacks {needle:?}: {text}");
    }
    assert!(!text.contains(PASSWORD) && !text.contains("Pa55"), "{text}");
}

const PASSWORD_REF: &str = "${env:UPRUN_TEST_MSSQL_PASSWORD}";

#[test]
fn a_named_instance_is_found_through_the_browser_and_the_run_reaches_it() {
    let mock = Mock::start_instance(Fake::default(), INSTANCE);
    let browser = Browser::start(vec![
        instance("SQLEXPRESS", Some(1)),
        instance(INSTANCE, Some(mock.server.port())),
    ]);
    // Instance names are not case-sensitive.
    let sb = sandbox_at(&connection_to("127.0.0.1\\testinst", PASSWORD_REF), "");
    let (key, port) = browser.env();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .env(key, port)
        .output()
        .expect("run");
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_contains(&all, &[]);
    assert_eq!(mock.fake().version, "2.0.0");
    assert_eq!(mock.fake().history.len(), 3);

    // The Browser was asked for that instance only, and answered at once (so
    // its list of instances was never asked for).
    let requests = browser.requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| *r == instance_request("testinst")),
        "{requests:?}"
    );
    // Every connection (main, progress monitor, run lock) reached the
    // instance's port and named the instance in its prelogin.
    let prelogins = mock.server.prelogin_instances();
    assert!(prelogins.iter().all(|p| p == "testinst"), "{prelogins:?}");
    let apps: std::collections::BTreeSet<String> =
        mock.server.log().into_iter().map(|l| l.app).collect();
    assert!(
        apps.contains("uprun")
            && apps.contains("uprun progress")
            && apps.iter().any(|a| a.starts_with("uprun run ")),
        "{apps:?}"
    );
    assert_eq!(
        prelogins.len(),
        mock.server.log().iter().map(|l| l.conn).max().unwrap_or(0)
    );
}

#[test]
fn an_explicit_port_wins_over_the_browser_and_the_server_checks_the_instance() {
    let mock = Mock::start_instance(Fake::default(), INSTANCE);
    let browser = Browser::silent();
    let port = mock.server.port();
    let sb = sandbox_at(
        &connection_to(&format!("127.0.0.1\\{INSTANCE},{port}"), PASSWORD_REF),
        "connect_timeout_secs = 2",
    );
    let out = status(&sb, browser.port);
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(browser.requests().is_empty(), "the Browser was asked");
    let prelogins = mock.server.prelogin_instances();
    assert!(
        !prelogins.is_empty() && prelogins.iter().all(|p| p == INSTANCE),
        "{prelogins:?}"
    );

    // A port that belongs to another instance: the server refuses the name.
    let logins = |m: &Mock| {
        m.server
            .log()
            .iter()
            .filter(|l| matches!(l.request, Request::Login { .. }))
            .count()
    };
    let before = logins(&mock);
    let sb = sandbox_at(
        &connection_to(&format!("127.0.0.1\\OTHER,{port}"), PASSWORD_REF),
        "connect_timeout_secs = 2",
    );
    let out = status(&sb, browser.port);
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert_contains(
        &all,
        &[
            "database `FastApp`",
            &format!("the SQL Server at 127.0.0.1:{port} is not instance `OTHER`"),
            "leave the port out so that the SQL Server Browser finds the instance",
        ],
    );
    assert!(browser.requests().is_empty(), "the Browser was asked");
    assert_eq!(logins(&mock), before, "logged in to the wrong instance");
}

#[test]
fn a_browser_that_does_not_answer_is_named_with_what_to_do() {
    let mock = Mock::start_instance(Fake::default(), INSTANCE);
    let browser = Browser::silent();
    let sb = sandbox_at(
        &connection_to(&format!("127.0.0.1\\{INSTANCE}"), PASSWORD_REF),
        "connect_timeout_secs = 2",
    );
    let started = std::time::Instant::now();
    let out = status(&sb, browser.port);
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_contains(
        &all,
        &[
            "database `FastApp`",
            &format!(
                "SQL Server Browser on 127.0.0.1:{} did not answer for instance `{INSTANCE}` within 2 s (`database.connect_timeout_secs`)",
                browser.port
            ),
            "start the SQL Server Browser service on 127.0.0.1",
            &format!("`Server=tcp:127.0.0.1\\{INSTANCE},<port>`"),
        ],
    );
    // Asked for the instance, then again together with the list of instances.
    let requests = browser.requests();
    assert_eq!(requests.first(), Some(&instance_request(INSTANCE)));
    assert!(requests.contains(&vec![0x03]), "{requests:?}");
    // Nothing reached the server.
    assert!(mock.server.prelogin_instances().is_empty());
    assert!(mock.server.log().is_empty());
}

#[test]
fn no_browser_on_the_host_is_told_apart_from_a_silent_one() {
    let port = free_udp_port();
    let sb = sandbox_at(
        &connection_to(&format!("127.0.0.1\\{INSTANCE}"), PASSWORD_REF),
        "",
    );
    let started = std::time::Instant::now();
    let out = status(&sb, port);
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    // A closed port is known at once (ICMP port unreachable): no waiting.
    assert!(started.elapsed() < Duration::from_secs(8), "{all}");
    assert_contains(
        &all,
        &[
            &format!(
                "SQL Server Browser on 127.0.0.1:{port} is not running (UDP port {port} is closed), so instance `{INSTANCE}` cannot be found"
            ),
            "start the SQL Server Browser service on 127.0.0.1",
            &format!("`Server=tcp:127.0.0.1\\{INSTANCE},<port>`"),
        ],
    );
}

#[test]
fn unknown_instances_and_instances_without_tcp_are_explained() {
    let browser = Browser::start(vec![
        instance("SQLEXPRESS", Some(1)),
        instance("PIPES", None),
    ]);
    let sb = sandbox_at(&connection_to("127.0.0.1\\NOPE", PASSWORD_REF), "");
    let out = status(&sb, browser.port);
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert_contains(
        &all,
        &[
            &format!(
                "SQL Server Browser on 127.0.0.1:{} knows no instance `NOPE`; it reported `SQLEXPRESS`, `PIPES`: correct the instance name in `Server=` of `database.connection`",
                browser.port
            ),
        ],
    );
    // A real Browser ignores a request for an instance it does not know: the
    // list came from asking for all of them.
    let requests = browser.requests();
    assert_eq!(requests.first(), Some(&instance_request("NOPE")));
    assert!(requests.contains(&vec![0x03]), "{requests:?}");

    let sb = sandbox_at(&connection_to("127.0.0.1\\pipes", PASSWORD_REF), "");
    let out = status(&sb, browser.port);
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert_contains(
        &all,
        &[&format!(
            "instance `pipes` on 127.0.0.1 does not accept TCP connections (SQL Server Browser on 127.0.0.1:{} reports only: np): enable TCP/IP for the instance",
            browser.port
        )],
    );

    // Named pipes are refused before anything is sent.
    let before = browser.requests().len();
    let sb = sandbox_at(
        &format!("Server=np:\\\\127.0.0.1\\pipe\\MSSQL$PIPES\\sql\\query;Database=FastApp;User Id=uprun;Password='{PASSWORD_REF}'"),
        "",
    );
    let out = status(&sb, browser.port);
    let all = output_text(&out);
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert_contains(
        &all,
        &["protocol `np:` is not supported; uprun connects over TCP"],
    );
    assert_eq!(browser.requests().len(), before);
}

/// The sandbox on `mock`, with migration `name` added to the release.
fn sandbox_with_migration(mock: &Mock, name: &str, sql: &str) -> Sandbox {
    let sb = mock.sandbox();
    let dir = sb.release().join("migrations/mssql");
    assert!(dir.is_dir(), "release layout changed");
    std::fs::write(dir.join(name), sql).expect("write migration");
    sb
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

fn history_names(mock: &Mock) -> Vec<String> {
    mock.fake().history.iter().map(|h| h.name.clone()).collect()
}

const THREE: [&str; 3] = [
    "2.0.0_01_strategy_priority.sql",
    "2.0.0_02_customer_email.sql",
    "2.0.0_03_audit_log.sql",
];

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
    for (cmd, extra) in [("plan", &[][..]), ("run", &["--yes"][..])] {
        let (code, all) = uprun_on(&sb, cmd, extra);
        assert_eq!(code, Some(2), "{cmd}: {all}");
        assert_contains(
            &all,
            &[
                "2.0.0_02b_generated.sql line 2: `USE` switches to database `OtherDb`",
                "applies this release's migrations to database `FastApp`",
                "nothing was applied",
            ],
        );
    }
    let sql = mock.sql();
    assert!(!sql.iter().any(|q| q.starts_with("BACKUP")), "{sql:#?}");
    assert!(migration_sql(&sql).is_empty(), "{sql:#?}");
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
    let runs: Vec<_> = std::fs::read_dir(sb.dir.join(".uprun/runs"))
        .expect("runs")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(runs.len(), 1);
    runs[0]
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned()
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
        for (cmd, extra) in [("plan", &[][..]), ("run", &["--yes"][..])] {
            let (code, all) = uprun_on(&sb, cmd, extra);
            assert_eq!(code, Some(3), "{cmd}: {all}");
            assert_contains(&all, &needles);
            assert_contains(
                &all,
                &[
                    "backup_db cannot back up database `FastApp`",
                    "`database.external_backup`",
                ],
            );
        }
        let sql = mock.sql();
        assert!(!sql.iter().any(|q| q.starts_with("BACKUP")), "{sql:#?}");
        assert!(migration_sql(&sql).is_empty());
        assert_eq!(mock.fake().version, "1.0.0");
        assert_eq!(sb.snapshot(), before, "a refused run changed the nodes");
    }
}

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

#[test]
fn a_password_with_separators_and_quotes_stays_one_value() {
    let mock = Mock::start(Fake::default());
    let port = mock.server.port();
    // Substituted after the string is parsed: what the password holds cannot
    // add keys (here, another database and user) or end the value.
    let tricky = "x;Database=master;User Id=sa;'\"é";
    for connection in [
        format!("Server=tcp:127.0.0.1,{port};Database=FastApp;User Id=uprun;Password=${{env:UPRUN_TEST_TRICKY_PW}};Encrypt=DANGER_PLAINTEXT"),
        // `Addr` is a synonym of `Server`; the last `Password` wins.
        format!("Addr=tcp:127.0.0.1,{port};Initial Catalog=FastApp;uid=uprun;pwd=wrong;Password='${{env:UPRUN_TEST_TRICKY_PW}}';Encrypt=DANGER_PLAINTEXT"),
    ] {
        let sb = sandbox_at(&connection, "");
        let out = crate::support::uprun()
            .args(["status", "--site"])
            .arg(sb.site())
            .env("UPRUN_TEST_TRICKY_PW", tricky)
            .output()
            .expect("status");
        let all = output_text(&out);
        assert_eq!(out.status.code(), Some(0), "{all}");
        assert!(!all.contains(tricky), "{all}");
    }
    let seen = logins(&mock);
    assert!(!seen.is_empty());
    for (user, database, password) in seen {
        assert_eq!(
            (user.as_str(), database.as_str(), password.as_str()),
            ("uprun", "FastApp", tricky)
        );
    }
}

#[test]
fn windows_and_entra_authentication_are_refused_at_load() {
    let mock = Mock::start(Fake::default());
    let port = mock.server.port();
    for (extra, needle) in [
        ("Integrated Security=SSPI", "Windows authentication"),
        ("Trusted_Connection=Yes", "Windows authentication"),
        (
            "Authentication=ActiveDirectoryIntegrated",
            "Microsoft Entra",
        ),
        ("ApplicationIntent=ReadOnly", "read-only replica"),
        ("MultiSubnetFailover=true", "MultiSubnetFailover"),
    ] {
        let sb = sandbox_at(
            &format!(
                "Server=tcp:127.0.0.1,{port};Database=FastApp;{extra};Encrypt=DANGER_PLAINTEXT"
            ),
            "",
        );
        let out = status(&sb, 1);
        let all = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{extra}: {all}");
        assert_contains(&all, &["`database.connection`", needle]);
    }
    assert!(
        mock.server.log().is_empty(),
        "a refused string reached the server"
    );
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
    std::env::set_var("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD);
    let run = sb.spawn_run(&sb.site(), "in-place-upgrade", &[]);
    let conn = hung
        .recv_timeout(Duration::from_secs(60))
        .expect("the migration reached the server");
    let (code, all) = interrupt_twice(run);
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
    std::env::set_var("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD);
    let run = sb.spawn_run(&sb.site(), "in-place-upgrade", &[]);
    let conn = hung
        .recv_timeout(Duration::from_secs(60))
        .expect("the BACKUP reached the server");
    let (code, all) = interrupt_twice(run);
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
    let runs: Vec<_> = std::fs::read_dir(sb.dir.join(".uprun/runs"))
        .expect("runs")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let entries: Vec<serde_json::Value> = std::fs::read_to_string(&runs[0])
        .expect("journal")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
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
fn a_read_only_database_or_secondary_is_refused_at_plan_time() {
    let mock = Mock::start(Fake {
        updateability: "READ_ONLY".into(),
        ..Fake::default()
    });
    let sb = mock.sandbox();
    for (cmd, extra) in [("plan", &[][..]), ("run", &["--yes"][..])] {
        let (code, all) = uprun_on(&sb, cmd, extra);
        assert_eq!(code, Some(3), "{cmd}: {all}");
        assert_contains(
            &all,
            &[
                "database `FastApp` on 127.0.0.1:",
                "cannot be upgraded: it is READ_ONLY",
                "connect to the primary replica",
            ],
        );
    }
    let sql = mock.sql();
    assert!(!sql.iter().any(|q| q.starts_with("BACKUP")), "{sql:#?}");
    assert!(migration_sql(&sql).is_empty());
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
    for (cmd, extra) in [("plan", &[][..]), ("run", &["--yes"][..])] {
        let (code, all) = uprun_on(&sb, cmd, extra);
        assert_eq!(code, Some(3), "{cmd}: {all}");
        assert_contains(
            &all,
            &[
                "#57 app_svc@APP01 (FastApp Web)",
                "`database.refuse_other_sessions = true`",
            ],
        );
    }
    assert!(!mock.sql().iter().any(|q| q.starts_with("BACKUP")));
    assert_eq!(mock.fake().version, "1.0.0");
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

/// A server certificate made for a test, with the CA that signed it (None:
/// self-signed).
struct TestCert {
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: Vec<u8>,
    /// PEM of what a client is to trust: the CA, or the certificate itself.
    trust_pem: String,
}

impl TestCert {
    /// Like SQL Server's self-generated certificate: a name in the subject CN
    /// only, no subjectAltName, self-signed.
    fn self_signed_cn_only(cn: &str) -> TestCert {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).expect("self-signed");
        TestCert {
            trust_pem: cert.pem(),
            chain: vec![cert.der().clone()],
            key: key.serialize_der(),
        }
    }

    /// Signed by a test CA, for the DNS name `san`.
    fn ca_signed(san: &str) -> TestCert {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name = rcgen::DistinguishedName::new();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "uprun test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut leaf = rcgen::CertificateParams::new(vec![san.to_string()]).expect("params");
        leaf.distinguished_name = rcgen::DistinguishedName::new();
        leaf.distinguished_name.push(rcgen::DnType::CommonName, san);
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).expect("signed");
        TestCert {
            trust_pem: ca_cert.pem(),
            chain: vec![cert.der().clone()],
            key: key.serialize_der(),
        }
    }

    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key.clone().into());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), key)
            .expect("server config");
        // No tickets: nothing but the handshake before the login.
        config.send_tls13_tickets = 0;
        Arc::new(config)
    }

    /// Write what the client is to trust to `dir/name`; its path.
    fn write_trust(&self, dir: &Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, &self.trust_pem).expect("write CA file");
        path
    }
}

/// A connection string to the TLS responder at 127.0.0.1 (`Encrypt=` and
/// more keys in `extra`).
fn tls_connection(mock: &Mock, extra: &str) -> String {
    format!(
        "Server=tcp:127.0.0.1,{};Database=FastApp;User Id=uprun;Password=${{env:UPRUN_TEST_MSSQL_PASSWORD}}{extra}",
        mock.server.port()
    )
}

/// Plan, then run, the stock procedure; both must succeed, the run
/// upgrades, and every connection that logged in was encrypted `how`.
fn plan_and_run_succeed(mock: &Mock, sb: &Sandbox, how: Encryption) {
    for (cmd, extra) in [("plan", &[][..]), ("run", &["--yes"][..])] {
        let (code, all) = uprun_on(sb, cmd, extra);
        assert_eq!(code, Some(0), "{cmd}: {all}");
    }
    assert_eq!(mock.fake().version, "2.0.0");
    assert_eq!(history_names(mock), THREE);
    let logged_in: Vec<usize> = mock
        .server
        .log()
        .iter()
        .filter(|l| matches!(l.request, Request::Login { .. }))
        .map(|l| l.conn)
        .collect();
    let encrypted = mock.server.encrypted();
    assert!(logged_in.len() >= 3, "{logged_in:?}");
    for conn in logged_in {
        assert!(encrypted.contains(&(conn, how)), "{conn}: {encrypted:?}");
    }
}

#[test]
fn tls_with_a_self_signed_certificate_works_when_the_site_trusts_the_server() {
    let cert = TestCert::self_signed_cn_only("SQLSRV01");
    let mock = Mock::start_tls(Fake::default(), &cert);
    let sb = sandbox_at(
        &tls_connection(&mock, ""),
        "trust_server_certificate = true\n",
    );
    plan_and_run_succeed(&mock, &sb, Encryption::All);
    // The login went through TLS: the responder read the password from it.
    assert!(logins(&mock).iter().all(|(_, _, pw)| pw == PASSWORD));
}

#[test]
fn tls_with_a_ca_signed_certificate_for_another_name_works_with_ca_file_and_host_name() {
    let cert = TestCert::ca_signed("db01.corp.example");
    let mock = Mock::start_tls(Fake::default(), &cert);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = cert.write_trust(dir.path(), "corp-ca.pem");
    let ca_key = format!("ca_file = \"{}\"\n", ca.display());
    // The CA alone: the certificate does not name 127.0.0.1.
    let sb = sandbox_at(&tls_connection(&mock, ""), &ca_key);
    let (code, all) = uprun_on(&sb, "plan", &[]);
    assert_ne!(code, Some(0), "{all}");
    assert_contains(
        &all,
        &[
            "subject alternative names: DNS:db01.corp.example",
            "`HostNameInCertificate=<a DNS name above>`",
        ],
    );
    assert!(logins(&mock).is_empty());
    let sb = sandbox_at(
        &tls_connection(&mock, ";HostNameInCertificate=db01.corp.example"),
        &ca_key,
    );
    plan_and_run_succeed(&mock, &sb, Encryption::All);
}

#[test]
fn tls_failure_describes_the_certificate_the_server_offered_and_what_trusts_it() {
    let cert = TestCert::self_signed_cn_only("SQLSRV01");
    let mock = Mock::start_tls(Fake::default(), &cert);
    let sb = sandbox_at(&tls_connection(&mock, ""), "");
    for cmd in ["plan", "run"] {
        let extra: &[&str] = if cmd == "run" { &["--yes"] } else { &[] };
        let (code, all) = uprun_on(&sb, cmd, extra);
        assert_ne!(code, Some(0), "{cmd}: {all}");
        assert_contains(
            &all,
            &[
                "TLS with 127.0.0.1:",
                "the server's certificate was rejected",
                "The server offered subject `CN=SQLSRV01`, subject alternative names: none, issuer `CN=SQLSRV01` (self-signed), valid from ",
                "uprun checks the server's certificate whatever `Encrypt` says (the login carries the password)",
                "no subject alternative name",
                "`database.ca_file`",
                "`HostNameInCertificate=",
                "`database.trust_server_certificate = true`",
            ],
        );
        // The driver's own advice (its API) is not passed on.
        assert!(!all.contains("Config::trust_cert"), "{all}");
    }
    // No login reached the server: the password never left under TLS that
    // failed, and the probe sends none.
    assert!(logins(&mock).is_empty());
    assert_eq!(mock.fake().version, "1.0.0");
}

#[test]
fn encrypt_optional_still_checks_the_certificate_and_says_so() {
    // A CA-signed certificate for another name, the CA not given.
    let cert = TestCert::ca_signed("db01.corp.example");
    let mock = Mock::start_tls(Fake::default(), &cert);
    let sb = sandbox_at(&tls_connection(&mock, ";Encrypt=Optional"), "");
    let (code, all) = uprun_on(&sb, "plan", &[]);
    assert_ne!(code, Some(0), "{all}");
    assert_contains(
        &all,
        &[
            "The server offered subject `CN=db01.corp.example`, subject alternative names: DNS:db01.corp.example, issuer `CN=uprun test CA` (issued by `CN=uprun test CA`)",
            "uprun checks the server's certificate with `Encrypt=Optional` too, unlike SqlClient",
            "give the CA that signed it in `database.ca_file`",
            "`HostNameInCertificate=<a DNS name above>`",
        ],
    );
    assert!(logins(&mock).is_empty());
    // With the CA and the name, the same Encrypt=Optional connection works
    // (the responder then encrypts the login only, as SQL Server does).
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = cert.write_trust(dir.path(), "corp-ca.pem");
    let sb = sandbox_at(
        &tls_connection(
            &mock,
            ";Encrypt=Optional;HostNameInCertificate=db01.corp.example",
        ),
        &format!("ca_file = \"{}\"\n", ca.display()),
    );
    plan_and_run_succeed(&mock, &sb, Encryption::LoginOnly);
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
    for (cmd, extra) in [("plan", &[][..]), ("run", &["--yes"][..])] {
        let (code, all) = uprun_on(&sb, cmd, extra);
        assert_eq!(code, Some(3), "{cmd}: {all}");
        assert_contains(
            &all,
            &[
                "the backup of database `FastApp` does not fit in `/var/opt/mssql/backup`",
                "it needs about 4294967296 bytes (4.0 GiB)",
                "volume `/var/opt/mssql/` holding that folder has 2147483648 bytes (2.0 GiB) free",
                "`database.backup_dir`",
            ],
        );
    }
    let sql = mock.sql();
    assert!(!sql.iter().any(|q| q.starts_with("BACKUP")), "{sql:#?}");
    assert!(migration_sql(&sql).is_empty());
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
        std::env::set_var("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD);
        let run = sb.spawn_run(&sb.site(), "in-place-upgrade", &[]);
        let conn = hung
            .recv_timeout(Duration::from_secs(60))
            .expect("RESTORE VERIFYONLY reached the server");
        let (code, all) = interrupt_twice(run);
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
