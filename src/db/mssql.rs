//! SQL Server backend, through tiberius (the only module that imports it).
//!
//! The `Database` trait is synchronous; this backend owns a current-thread
//! tokio runtime and blocks on it. Connections:
//! - the main one, for reads, the backup, verification and migrations;
//! - a short-lived monitor during a backup, polling
//!   `sys.dm_exec_requests.percent_complete` for the backup's session (the
//!   driver does not expose the server's "N percent processed" messages);
//! - during a run, a dedicated connection holding the session-scoped
//!   application lock (`sp_getapplock`), released when uprun exits.
//!
//! Timeouts: tiberius's per-response `command_timeout` is switched off (a
//! BACKUP may send nothing for minutes) and every call gets a deadline of our
//! own instead: `query_timeout` for short statements, `operation_timeout` for a
//! backup, a verification or one migration. A call that misses its deadline
//! closes its connection, so the server aborts (and rolls back) what it was
//! doing.
//!
//! Named instances (`Server=host\INSTANCE`): the instance's TCP port is asked
//! of the SQL Server Browser (UDP 1434, MS-SQLR `CLNT_UCAST_INST`) once, when
//! the database is opened, so every connection of the process (main, progress
//! monitor, run lock) reaches the same instance. An explicit port
//! (`host\INSTANCE,port`) wins and the Browser is not asked, as ADO.NET does;
//! the instance name still goes to the server in the prelogin, which refuses a
//! port that belongs to another instance. tiberius's own lookup
//! (`sql-browser-tokio`, `TcpStream::connect_named`) is not used: it waits a
//! fixed 1 s without asking again, sends the Browser query to the explicit
//! port when one is given, cannot tell an unknown instance from a missing
//! Browser, and cannot be pointed at a test Browser.
//!
//! Secrets: the connection string is only handed to the driver; messages name
//! the database and `host:port` (or `host\INSTANCE at host:port`), never the
//! string or the password.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::future::LocalBoxFuture;
use semver::Version;
use tiberius::{AuthMethod, Client, ColumnData, Config, EncryptionLevel, FromSql, ToSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::batches;
use super::{now_rfc3339, AppliedMigration, BackupReceipt, Database, Progress, Row};
use crate::config::ado::{self, ServerAddr};
use crate::config::Migration;
use crate::config::{check_sql_name, DatabaseConfig, MssqlConfig};
use crate::{Error, Result};

type Conn = Client<Compat<TcpStream>>;

/// The application's version table (schema `dbo`), as on SQLite.
pub const VERSION_SQL: &str = "SELECT value FROM dbo.app_meta WHERE [key] = @P1";
/// The row count is read with `@@ROWCOUNT`, not from the DONE token, which a
/// `SET NOCOUNT ON` left by anyone would turn to 0.
pub const SET_VERSION_SQL: &str = "SET NOCOUNT OFF; UPDATE dbo.app_meta SET value = @P1 WHERE [key] = @P2; SELECT CAST(@@ROWCOUNT AS int) AS changed;";
pub const VERSION_KEY: &str = "schema_version";

/// uprun's migration history, created on first use.
pub const HISTORY_TABLE_SQL: &str = "IF OBJECT_ID(N'dbo.uprun_migration_history', N'U') IS NULL
CREATE TABLE dbo.uprun_migration_history (
    id int IDENTITY(1,1) NOT NULL,
    name nvarchar(255) NOT NULL CONSTRAINT PK_uprun_migration_history PRIMARY KEY,
    version nvarchar(64) NOT NULL,
    checksum char(64) NOT NULL,
    applied_at datetime2(3) NOT NULL,
    duration_ms bigint NOT NULL,
    applied_by nvarchar(256) NOT NULL
)";
pub const HISTORY_SQL: &str = "IF OBJECT_ID(N'dbo.uprun_migration_history', N'U') IS NOT NULL
SELECT name, version, checksum, CONVERT(nvarchar(33), applied_at, 127) AS applied_at, duration_ms, applied_by
FROM dbo.uprun_migration_history ORDER BY id";
/// XACT_ABORT: any error dooms the transaction, so nothing half-done can be committed.
pub const BEGIN_SQL: &str = "SET XACT_ABORT ON; BEGIN TRANSACTION;";
pub const ROLLBACK_SQL: &str = "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;";
/// After a failed migration: roll back, and say what is left open (0 proves
/// the rollback).
pub const ROLLBACK_CHECKED_SQL: &str =
    "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION; SELECT CAST(@@TRANCOUNT AS int) AS trancount;";
/// The error number the history batch throws when the migration left the
/// transaction in another state than the one uprun opened.
pub const TRANSACTION_STATE_ERROR: u32 = 50001;
/// What starts the statement that records a migration (for tests and logs).
pub const RECORD_INSERT: &str = "INSERT INTO ";

/// `N'...'`: a T-SQL Unicode string literal.
fn n_literal(s: &str) -> String {
    format!("N'{}'", s.replace('\'', "''"))
}

/// The one batch that ends a migration: check the transaction state the
/// migration left, record it in the history, commit, and prove the commit.
///
/// - A plain batch, not `sp_executesql`: a COMMIT inside a procedure call
///   that changes `@@TRANCOUNT` raises error 266 after committing.
/// - The check and the COMMIT are in the same request, so nothing can run
///   between them: `@@TRANCOUNT` must be 1 and `XACT_STATE()` 1 (the
///   transaction uprun opened, still committable), or 0 for a
///   `-- uprun: no-transaction` migration. Anything else (an unmatched
///   BEGIN TRANSACTION, a CATCH block that rolled back without rethrowing, a
///   doomed transaction) throws `TRANSACTION_STATE_ERROR` before the history
///   row is written, so a migration is never recorded without its changes.
/// - The history table is named with its database: a migration's `USE` (or
///   other session settings) cannot send the row elsewhere. `SET XACT_ABORT
///   ON` again, since a migration may have turned it off.
/// - The last result is `@@TRANCOUNT` after the commit: 0, or nothing was
///   committed.
pub fn record_batch(
    database: &str,
    transactional: bool,
    m: &AppliedMigration,
) -> std::result::Result<String, String> {
    let db = quote_name(database)?;
    let (guard, expected) = if transactional {
        ("@trancount <> 1 OR @xact_state <> 1", "1, XACT_STATE() 1")
    } else {
        ("@trancount <> 0", "0")
    };
    let commit = if transactional {
        "COMMIT TRANSACTION;\n"
    } else {
        ""
    };
    Ok(format!(
        "SET XACT_ABORT ON;
DECLARE @trancount int = @@TRANCOUNT, @xact_state int = XACT_STATE();
IF {guard}
BEGIN
    DECLARE @state nvarchar(200) = CONCAT(N'uprun: after the migration @@TRANCOUNT = ', @trancount, N', XACT_STATE() = ', @xact_state, N' (expected @@TRANCOUNT {expected})');
    THROW {TRANSACTION_STATE_ERROR}, @state, 1;
END;
{RECORD_INSERT}{db}.dbo.uprun_migration_history (name, version, checksum, applied_at, duration_ms, applied_by) VALUES ({}, {}, {}, SYSUTCDATETIME(), {}, {});
{commit}SELECT CAST(@@TRANCOUNT AS int) AS trancount;",
        n_literal(&m.name),
        n_literal(&m.version),
        n_literal(&m.checksum),
        m.duration_ms,
        n_literal(&m.applied_by),
    ))
}

/// `@@TRANCOUNT` and `XACT_STATE()` from a `TRANSACTION_STATE_ERROR` message.
fn transaction_state(message: &str) -> Option<(i64, i64)> {
    let number_after = |key: &str| -> Option<i64> {
        let rest = &message[message.find(key)? + key.len()..];
        let n: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        n.parse().ok()
    };
    Some((
        number_after("@@TRANCOUNT = ")?,
        number_after("XACT_STATE() = ")?,
    ))
}
/// Check queries run inside a transaction that is always rolled back.
pub const READ_BEGIN_SQL: &str = "BEGIN TRANSACTION;";

pub const EDITION_SQL: &str = "SELECT CAST(SERVERPROPERTY('EngineEdition') AS int) AS engine_edition, CAST(SERVERPROPERTY('Edition') AS nvarchar(128)) AS edition";
/// Can the database be written to (not read-only, not a readable secondary)?
pub const UPDATEABILITY_SQL: &str =
    "SELECT CAST(DATABASEPROPERTYEX(DB_NAME(), 'Updateability') AS nvarchar(20)) AS updateability";
/// Other user sessions in the database (all of them only with VIEW SERVER
/// STATE; without it a login sees its own), uprun's own left out.
pub const OTHER_SESSIONS_SQL: &str = "SELECT CAST(session_id AS int) AS session_id, CAST(login_name AS nvarchar(128)) AS login_name, CAST(host_name AS nvarchar(128)) AS host_name, CAST(program_name AS nvarchar(128)) AS program_name FROM sys.dm_exec_sessions WHERE database_id = DB_ID() AND session_id <> @@SPID AND is_user_process = 1 AND program_name NOT LIKE N'uprun%' ORDER BY session_id";
pub const SPID_SQL: &str = "SELECT CAST(@@SPID AS int) AS spid";
pub const PROGRESS_SQL: &str = "SELECT CAST(percent_complete AS int) AS percent_complete FROM sys.dm_exec_requests WHERE session_id = @P1";
/// `@P1` is the database name, `@P2` the file on the server.
pub const BACKUP_SQL: &str =
    "BACKUP DATABASE @P1 TO DISK = @P2 WITH COPY_ONLY, CHECKSUM, INIT, FORMAT, STATS = 5";
pub const VERIFY_SQL: &str = "RESTORE VERIFYONLY FROM DISK = @P1 WITH CHECKSUM";
/// The header of the backup set in a backup file on the server (`@P1`), for
/// its identity: taken right after the backup, and again (with `VERIFY_SQL`)
/// before the upgrade. The column set varies by version, so columns are read
/// by name: `BackupSetGUID` (uniqueidentifier), `FirstLSN` and `LastLSN`
/// (numeric(25,0)), `HasBackupChecksums` and `IsDamaged` (bit), of the first
/// row (position 1: the set `RESTORE VERIFYONLY`
/// checks; `INIT, FORMAT` leaves only that one in the file).
pub const HEADERONLY_SQL: &str = "RESTORE HEADERONLY FROM DISK = @P1";
/// The newest full backup of a database (`@P1`), whoever took it.
pub const LATEST_FULL_SQL: &str = "SELECT TOP (1) mf.physical_device_name AS file_name, CONVERT(nvarchar(33), bs.backup_finish_date, 126) AS finished, CAST(bs.is_copy_only AS int) AS copy_only
FROM msdb.dbo.backupset AS bs JOIN msdb.dbo.backupmediafamily AS mf ON mf.media_set_id = bs.media_set_id
WHERE bs.database_name = @P1 AND bs.type = 'D' ORDER BY bs.backup_finish_date DESC";
/// The run lock: session-owned, so it lives exactly as long as its connection.
pub const LOCK_SQL: &str = "DECLARE @result int;
EXEC @result = sys.sp_getapplock @Resource = N'uprun', @LockMode = N'Exclusive', @LockOwner = N'Session', @LockTimeout = 0;
SELECT @result AS result;";

/// Quote a name for T-SQL: `[` + name with `]` doubled + `]`. Names longer than
/// 128 characters or containing NUL are refused.
pub fn quote_name(name: &str) -> std::result::Result<String, String> {
    check_sql_name(name)?;
    Ok(format!("[{}]", name.replace(']', "]]")))
}

/// Why `BACKUP DATABASE ... TO DISK` cannot work on this engine edition
/// (`SERVERPROPERTY('EngineEdition')`), with what to do; None where it can.
fn no_backup_to_disk(engine_edition: i64, edition: &str, database: &str) -> Option<String> {
    let what_to_do = "take the backup by the platform's means before the window, say how in `database.external_backup` in the site file, and run a procedure that does not call `backup_db` (`upgrade_db` then accepts the site's external backup); nothing was changed";
    match engine_edition {
        5 => Some(format!(
            "backup_db cannot back up database `{database}`: the server is Azure SQL Database (SERVERPROPERTY('EngineEdition') = 5, edition `{edition}`), which has no BACKUP DATABASE statement (Azure takes its backups; restore is point-in-time or from a database copy); {what_to_do}"
        )),
        8 => Some(format!(
            "backup_db cannot back up database `{database}`: the server is Azure SQL Managed Instance (SERVERPROPERTY('EngineEdition') = 8), which only writes copy-only backups TO URL (Azure Blob Storage with a credential), not to a folder; uprun does not take backups to URL: run `BACKUP DATABASE ... TO URL = '...' WITH COPY_ONLY, CHECKSUM` yourself, then {what_to_do}"
        )),
        _ => None,
    }
}

/// Editions with backup compression: Enterprise/Developer/Evaluation (3),
/// Managed Instance (8), Standard (2, but not Web, which shares the number).
fn supports_compression(engine_edition: i64, edition: &str) -> bool {
    match engine_edition {
        3 | 8 => true,
        2 => !edition.to_ascii_lowercase().starts_with("web"),
        _ => false,
    }
}

/// How a failed call left its connection.
enum Failure {
    /// The server answered with an error; the connection is still usable.
    Server(tiberius::error::TokenError),
    /// Anything else (I/O, protocol, TLS): the connection is dropped.
    Broken(tiberius::error::Error),
    /// Our deadline passed and the server did not acknowledge the cancel
    /// (TDS attention) in time; the connection was closed.
    Deadline(Duration),
    /// Our deadline passed; uprun sent a TDS attention and the server
    /// acknowledged it: the request stopped, the connection is still usable
    /// (a transaction it had open may still be open: ask).
    Cancelled(Duration),
    /// The operator aborted the step (second Ctrl-C); uprun sent a TDS
    /// attention, which the server acknowledged (connection kept) or not
    /// (connection closed).
    Aborted { acknowledged: bool },
}

/// How long the server has to acknowledge a cancel (TDS attention) before the
/// connection is closed instead.
const ATTENTION_WAIT: Duration = Duration::from_secs(10);

pub struct MssqlDatabase {
    name: String,
    cfg: MssqlConfig,
    /// `Server=` of the connection string.
    server: ServerAddr,
    /// The TCP port connected to (given, default 1433, or from the Browser).
    port: u16,
    /// What the TCP connection is opened to: `host:port`, or the address the
    /// SQL Server Browser answered from with the instance's port.
    target: String,
    /// `host:port` or `host\INSTANCE at host:port`, for messages.
    addr: String,
    read_only: bool,
    rt: tokio::runtime::Runtime,
    conn: Option<Conn>,
    /// The connection holding the run lock (closing it releases the lock).
    lock: Option<Conn>,
    progress_interval: Duration,
}

impl MssqlDatabase {
    /// Connect to the site's database (the connection is checked here, so a
    /// wrong password or an unreachable server stops `plan` and `run` early).
    pub fn open(cfg: &DatabaseConfig, read_only: bool) -> Result<Self> {
        let m = cfg.mssql().cloned().ok_or_else(|| {
            Error::Config(format!(
                "database `{}`: `kind = \"mssql\"` without `connection`",
                cfg.name
            ))
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::db(&cfg.name, format!("cannot start the I/O runtime: {e}")))?;
        let pairs = ado::pairs(m.connection.expose()).map_err(|e| {
            Error::Config(format!(
                "database `{}`: `database.connection` is not a valid ADO.NET connection string: {e}",
                cfg.name
            ))
        })?;
        let server = ado::server(&pairs).map_err(|e| {
            Error::Config(format!(
                "database `{}`: `database.connection`: {e}",
                cfg.name
            ))
        })?;
        let mut db = MssqlDatabase {
            name: m.database.clone(),
            server,
            port: DEFAULT_PORT,
            target: String::new(),
            addr: String::new(),
            cfg: m,
            read_only,
            rt,
            conn: None,
            lock: None,
            progress_interval: Duration::from_secs(1),
        };
        db.locate()?;
        let conn = db.connect("uprun")?;
        db.conn = Some(conn);
        Ok(db)
    }

    /// Decide where connections go: the given port, 1433, or the port the SQL
    /// Server Browser reports for a named instance (asked once, here).
    fn locate(&mut self) -> Result<()> {
        let host = self.server.host.clone();
        let (port, target) = match (&self.server.instance, self.server.port) {
            (_, Some(port)) => (port, format!("{host}:{port}")),
            (None, None) => (DEFAULT_PORT, format!("{host}:{DEFAULT_PORT}")),
            (Some(instance), None) => {
                let limit = self.cfg.connect_timeout;
                let found = self
                    .rt
                    .block_on(browse(&host, browser_port(), instance, limit));
                let at = found.map_err(|m| Error::db(&self.name, self.scrub(&m)))?;
                (at.port(), at.to_string())
            }
        };
        self.port = port;
        self.target = target;
        self.addr = match &self.server.instance {
            Some(instance) => format!("{host}\\{instance} at {host}:{port}"),
            None => format!("{host}:{port}"),
        };
        Ok(())
    }

    /// How often the backup's progress is polled (default 1 s).
    pub fn set_progress_interval(&mut self, every: Duration) {
        self.progress_interval = every;
    }

    /// The driver's configuration for one connection.
    fn config(&self, application: &str) -> Result<Config> {
        // Built from uprun's own reading of the string (see `config::ado`):
        // the driver's parser differs from SqlClient's.
        let bad = |e: String| {
            Error::Config(format!(
                "database `{}`: `database.connection`: {e}",
                self.name
            ))
        };
        let pairs = ado::pairs(self.cfg.connection.expose()).map_err(bad)?;
        let mut c = Config::new();
        c.host(&self.server.host);
        c.port(self.port);
        if let Some(instance) = &self.server.instance {
            // Sent in the prelogin: a server that is another instance refuses.
            c.instance_name(instance);
        }
        c.database(&self.cfg.database);
        c.application_name(application);
        c.authentication(AuthMethod::sql_server(
            ado::get(&pairs, &["user id"]).unwrap_or_default(),
            ado::get(&pairs, &["password"]).unwrap_or_default(),
        ));
        c.encryption(match ado::encrypt(&pairs).map_err(bad)? {
            ado::Encrypt::Mandatory => EncryptionLevel::Required,
            ado::Encrypt::Optional => EncryptionLevel::Off,
            ado::Encrypt::Strict => EncryptionLevel::Strict,
            ado::Encrypt::Plaintext => EncryptionLevel::NotSupported,
        });
        if ado::flag(&pairs, "trustservercertificate").map_err(bad)? {
            c.trust_cert();
        }
        if let Some(h) = ado::get(&pairs, &["hostnameincertificate"]) {
            c.hostname_in_certificate(h);
        }
        if self.cfg.trust_server_certificate {
            c.trust_cert();
        }
        if let Some(ca) = &self.cfg.ca_file {
            c.trust_cert_ca(ca.display());
        }
        c.handshake_timeout(Some(self.cfg.connect_timeout));
        // Our own deadlines apply instead (see the module comment).
        c.command_timeout(None);
        Ok(c)
    }

    fn connect(&self, application: &str) -> Result<Conn> {
        let config = self.config(application)?;
        let addr = self.target.clone();
        let limit = self.cfg.connect_timeout;
        let outcome = self.rt.block_on(async move {
            tokio::time::timeout(limit, async move {
                let tcp =
                    TcpStream::connect(&addr)
                        .await
                        .map_err(|e| tiberius::error::Error::Io {
                            kind: e.kind(),
                            message: e.to_string(),
                        })?;
                let _ = tcp.set_nodelay(true);
                Client::connect(config, tcp.compat_write()).await
            })
            .await
        });
        match outcome {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(self.connect_error(e)),
            Err(_) => Err(Error::db(
                &self.name,
                format!(
                    "cannot connect to {}: no answer within {} s (`database.connect_timeout_secs`); check the server name and port in `database.connection`, and that the server accepts TCP connections",
                    self.addr,
                    limit.as_secs()
                ),
            )),
        }
    }

    fn connect_error(&self, e: tiberius::error::Error) -> Error {
        use tiberius::error::Error as T;
        let addr = &self.addr;
        let msg = match &e {
            T::Server(t) if t.code() == 18456 => format!(
                "login to {addr} failed: the server rejected the user name or password (SQL Server error 18456, severity {}: {}); check the user in `database.connection` and the password in the environment variable it names",
                t.class(),
                t.message()
            ),
            T::Server(t) if t.code() == 4060 => format!(
                "login to {addr} succeeded but the database cannot be opened (SQL Server error 4060, severity {}: {}); check that it exists and that the login has a user in it",
                t.class(),
                t.message()
            ),
            T::Server(t) => format!("login to {addr} failed: {}", server_text(t)),
            T::Io { message, .. } => format!("cannot connect to {addr}: {message}"),
            T::Tls(m) => format!(
                "TLS with {addr} failed: {m}; uprun checks the server's certificate whatever `Encrypt` says (the login carries the password): give the CA that signed it in `database.ca_file` (for SQL Server's self-generated certificate, export that certificate and give it there), add `HostNameInCertificate=<the name in the certificate>` to `database.connection` when the certificate names the server differently than `Server=`, or, for a test server only, set `database.trust_server_certificate = true`"
            ),
            T::Protocol(m) if m.contains("rejected the requested instance") => {
                let instance = self.server.instance.as_deref().unwrap_or_default();
                format!(
                    "the SQL Server at {}:{} is not instance `{instance}` (it refused the instance name at prelogin): the port in `Server=` of `database.connection` belongs to another instance; correct it, or leave the port out so that the SQL Server Browser finds the instance",
                    self.server.host, self.port
                )
            }
            T::Routing { host, port } => format!(
                "{addr} redirects clients to {host}:{port}; put that address in `Server=` of `database.connection`"
            ),
            other => format!("cannot connect to {addr}: {other}"),
        };
        Error::db(&self.name, self.scrub(&msg))
    }

    /// Remove the password from a driver message, should one ever echo it.
    fn scrub(&self, text: &str) -> String {
        let pairs = crate::config::ado::pairs(self.cfg.connection.expose()).unwrap_or_default();
        match crate::config::ado::get(&pairs, &["password"]) {
            Some(pw) if pw.len() >= 3 => text.replace(pw, "***"),
            _ => text.to_string(),
        }
    }

    /// The main connection (reconnecting if a failure closed it).
    fn take_conn(&mut self) -> Result<Conn> {
        match self.conn.take() {
            Some(c) => Ok(c),
            None => self.connect("uprun"),
        }
    }

    /// Run `f` on the main connection within `deadline`. A server error keeps
    /// the connection; anything else closes it.
    fn call<T>(
        &mut self,
        deadline: Duration,
        f: impl for<'c> FnOnce(&'c mut Conn) -> LocalBoxFuture<'c, tiberius::Result<T>>,
    ) -> Result<std::result::Result<T, Failure>> {
        self.call_with(deadline, false, f)
    }

    /// `call`; `abortable`: a second Ctrl-C cancels it. Only for the work an
    /// operator may want to stop (a migration's batches): short reads and the
    /// ROLLBACK that cleans up after an abort run to their end.
    fn call_with<T>(
        &mut self,
        deadline: Duration,
        abortable: bool,
        f: impl for<'c> FnOnce(&'c mut Conn) -> LocalBoxFuture<'c, tiberius::Result<T>>,
    ) -> Result<std::result::Result<T, Failure>> {
        let mut conn = self.take_conn()?;
        let outcome = self.rt.block_on(async {
            tokio::select! {
                r = tokio::time::timeout(deadline, f(&mut conn)) => Some(r),
                _ = operator_abort(), if abortable => None,
            }
        });
        let Some(outcome) = outcome else {
            let ack = self.rt.block_on(async {
                tokio::time::timeout(ATTENTION_WAIT, conn.cancel_query()).await
            });
            let acknowledged = matches!(ack, Ok(Ok(())));
            if acknowledged {
                self.conn = Some(conn);
            }
            return Ok(Err(Failure::Aborted { acknowledged }));
        };
        Ok(match outcome {
            Ok(Ok(v)) => {
                self.conn = Some(conn);
                Ok(v)
            }
            Ok(Err(tiberius::error::Error::Server(t))) => {
                // Severity 20 and above ends the session on the server.
                if t.class() < 20 {
                    self.conn = Some(conn);
                }
                Err(Failure::Server(t))
            }
            Ok(Err(e)) => Err(Failure::Broken(e)),
            Err(_) => {
                // Stop the work on the server: dropping the request does not.
                // The server answers the attention with DONE_ATTN once the
                // request has stopped; only then is the connection reusable.
                let ack = self.rt.block_on(async {
                    tokio::time::timeout(ATTENTION_WAIT, conn.cancel_query()).await
                });
                match ack {
                    Ok(Ok(())) => {
                        self.conn = Some(conn);
                        Err(Failure::Cancelled(deadline))
                    }
                    _ => Err(Failure::Deadline(deadline)),
                }
            }
        })
    }

    /// `call`, with failures turned into errors that say what was being done.
    fn run<T>(
        &mut self,
        what: &str,
        deadline: Duration,
        f: impl for<'c> FnOnce(&'c mut Conn) -> LocalBoxFuture<'c, tiberius::Result<T>>,
    ) -> Result<T> {
        self.call(deadline, f)?.map_err(|e| self.fail(what, e))
    }

    fn fail(&self, what: &str, f: Failure) -> Error {
        if let Failure::Aborted { acknowledged } = f {
            return Error::Interrupted(self.scrub(&format!(
                "database `{}`: {what}: {}",
                self.name,
                aborted_text(acknowledged)
            )));
        }
        let text = match f {
            Failure::Server(t) => format!("{what}: {}", server_text(&t)),
            Failure::Broken(e) => format!(
                "{what}: the connection to {} failed: {}",
                self.addr,
                broken_text(&e)
            ),
            Failure::Deadline(d) => format!(
                "{what}: no answer within {} s, and no acknowledgement of uprun's cancel within {} s; the connection was closed (SQL Server stops a request and rolls back what it had open when its session ends, but uprun has not seen it happen)",
                d.as_secs(),
                ATTENTION_WAIT.as_secs()
            ),
            Failure::Cancelled(d) => format!(
                "{what}: no answer within {} s; uprun cancelled it (TDS attention) and the server acknowledged that it stopped",
                d.as_secs()
            ),
            Failure::Aborted { acknowledged } => format!("{what}: {}", aborted_text(acknowledged)),
        };
        Error::db(&self.name, self.scrub(&text))
    }

    /// Roll back whatever transaction the main connection has open, and say
    /// whether the server confirmed it (`@@TRANCOUNT` 0 afterwards). Anything
    /// short of that closes the connection: SQL Server then rolls back when
    /// the session ends, but uprun has not seen it happen.
    fn roll_back(&mut self) -> Rolled {
        if self.conn.is_none() {
            return Rolled::Unconfirmed("the connection was already closed".into());
        }
        let t = self.cfg.query_timeout;
        let outcome = self.call_with(t, false, |c| {
            Box::pin(async move {
                let sets = batch(c, ROLLBACK_CHECKED_SQL).await?;
                Ok(sets.iter().flatten().find_map(|r| cell_i64(r, "trancount")))
            })
        });
        let rolled = match outcome {
            Ok(Ok(Some(0))) => return Rolled::Confirmed,
            Ok(Ok(Some(n))) => Rolled::Unconfirmed(format!(
                "the server still reports {n} open transaction(s) after ROLLBACK"
            )),
            Ok(Ok(None)) => Rolled::Unconfirmed(
                "the server did not report the transaction count after ROLLBACK".into(),
            ),
            Ok(Err(Failure::Server(t))) => {
                Rolled::Unconfirmed(format!("ROLLBACK failed: {}", server_text(&t)))
            }
            Ok(Err(Failure::Broken(e))) => Rolled::Unconfirmed(format!(
                "the connection was lost during ROLLBACK ({})",
                broken_text(&e)
            )),
            Ok(Err(Failure::Deadline(d) | Failure::Cancelled(d))) => {
                Rolled::Unconfirmed(format!("no answer to ROLLBACK within {} s", d.as_secs()))
            }
            Ok(Err(Failure::Aborted { .. })) => {
                Rolled::Unconfirmed("the ROLLBACK was aborted (Ctrl-C)".into())
            }
            Err(e) => Rolled::Unconfirmed(format!("no connection for ROLLBACK ({e})")),
        };
        self.conn = None;
        rolled
    }

    /// `SERVERPROPERTY('EngineEdition')` and `('Edition')`.
    fn edition(&mut self) -> Result<(i64, String)> {
        let q = self.cfg.query_timeout;
        self.run("read the server edition", q, |c| {
            Box::pin(async move {
                let r = rows(c, EDITION_SQL, &[]).await?;
                let row = r.first();
                Ok((
                    row.and_then(|r| cell_i64(r, "engine_edition")).unwrap_or(0),
                    row.and_then(|r| cell_str(r, "edition")).unwrap_or_default(),
                ))
            })
        })
    }

    /// `RESTORE HEADERONLY` of a backup file on the server: the first backup
    /// set's header, None when the file holds none.
    fn read_header(
        &mut self,
        file: &str,
    ) -> Result<std::result::Result<Option<BackupSetHeader>, Failure>> {
        let deadline = self.cfg.operation_timeout;
        let f = file.to_string();
        self.call(deadline, move |c| {
            Box::pin(async move {
                let r = rows(c, HEADERONLY_SQL, &[&f]).await?;
                Ok(r.first().map(BackupSetHeader::read))
            })
        })
    }

    fn refuse_read_only(&self, what: &str) -> Result<()> {
        if self.read_only {
            return Err(Error::db(
                &self.name,
                format!("{what}: the database was opened read-only (plan/status)"),
            ));
        }
        Ok(())
    }
}

/// Resolves once the operator has asked to abort the current step (second
/// Ctrl-C), polled while a request runs.
async fn operator_abort() {
    while !crate::interrupt::abort_requested() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What an operator's abort did on the server.
fn aborted_text(acknowledged: bool) -> &'static str {
    if acknowledged {
        "aborted by the operator (second Ctrl-C): uprun cancelled the request (TDS attention) and the server acknowledged that it stopped"
    } else {
        "aborted by the operator (second Ctrl-C): uprun cancelled the request (TDS attention) but the server did not acknowledge it, so the connection was closed (SQL Server rolls back what a session had open when it ends, unseen by uprun)"
    }
}

/// What uprun knows of a rollback of a migration's transaction.
enum Rolled {
    /// The server answered `@@TRANCOUNT` 0 after the ROLLBACK.
    Confirmed,
    /// Not seen to happen: why.
    Unconfirmed(String),
}

impl Rolled {
    /// What happened to the transaction.
    fn outcome(&self) -> String {
        match self {
            Rolled::Confirmed => {
                "it was rolled back (the server confirmed: no transaction open)".into()
            }
            Rolled::Unconfirmed(why) => format!(
                "uprun could not confirm a rollback ({why}); SQL Server rolls back a transaction left open when its session ends"
            ),
        }
    }

    /// What is true of the migration now, and what to do.
    fn aftermath(&self) -> String {
        match self {
            Rolled::Confirmed => "it was rolled back and is not recorded in the history (the server confirmed: no transaction open); fix the cause and run again".into(),
            Rolled::Unconfirmed(_) => format!(
                "{}; it is not recorded in the history: check the database before running again",
                self.outcome()
            ),
        }
    }
}

/// `SQL Server error N (severity S, state T, line L): message`.
fn server_text(t: &tiberius::error::TokenError) -> String {
    let mut s = format!(
        "SQL Server error {} (severity {}, state {}",
        t.code(),
        t.class(),
        t.state()
    );
    if t.line() > 0 {
        s.push_str(&format!(", line {}", t.line()));
    }
    s.push_str("): ");
    s.push_str(t.message().trim_end());
    s
}

fn broken_text(e: &tiberius::error::Error) -> String {
    match e {
        tiberius::error::Error::Io { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// All rows of the first result set of a parameterised query.
async fn rows(
    c: &mut Conn,
    sql: &str,
    params: &[&dyn ToSql],
) -> tiberius::Result<Vec<tiberius::Row>> {
    c.query(sql, params).await?.into_first_result().await
}

/// Send a batch as it is and read its whole response.
async fn batch(c: &mut Conn, sql: &str) -> tiberius::Result<Vec<Vec<tiberius::Row>>> {
    c.simple_query(sql).await?.into_results().await
}

fn cell_i64(row: &tiberius::Row, col: &str) -> Option<i64> {
    match row.get_column_data(col).ok()? {
        ColumnData::U8(v) => v.map(i64::from),
        ColumnData::I16(v) => v.map(i64::from),
        ColumnData::I32(v) => v.map(i64::from),
        ColumnData::I64(v) => *v,
        ColumnData::Numeric(v) => v.and_then(|n| i64::try_from(n.int_part()).ok()),
        _ => None,
    }
}

/// A cell of any scalar type as text: a GUID in upper case (as SQL Server
/// prints it), a numeric with scale 0 as its integer (LSNs are numeric(25,0)).
fn cell_text(row: &tiberius::Row, col: &str) -> Option<String> {
    match row.get_column_data(col).ok()? {
        ColumnData::Guid(v) => v.map(|g| g.to_string().to_ascii_uppercase()),
        ColumnData::Numeric(v) => v.map(|n| {
            if n.scale() == 0 {
                n.value().to_string()
            } else {
                n.to_string()
            }
        }),
        ColumnData::String(v) => v.as_ref().map(|s| s.trim().to_string()),
        ColumnData::Bit(v) => v.map(|b| if b { "1" } else { "0" }.to_string()),
        _ => cell_i64(row, col).map(|n| n.to_string()),
    }
}

fn cell_bool(row: &tiberius::Row, col: &str) -> Option<bool> {
    match row.get_column_data(col).ok()? {
        ColumnData::Bit(v) => *v,
        _ => cell_text(row, col).map(|t| t == "1" || t.eq_ignore_ascii_case("true")),
    }
}

/// The identity of a backup set, from `RESTORE HEADERONLY` (see `HEADERONLY_SQL`).
#[derive(Debug, Clone, PartialEq)]
struct BackupSetHeader {
    guid: String,
    first_lsn: String,
    last_lsn: String,
    has_checksums: bool,
    damaged: bool,
    /// Bytes on disk: `CompressedBackupSize`, else `BackupSize`.
    size: Option<u64>,
}

impl BackupSetHeader {
    fn read(row: &tiberius::Row) -> BackupSetHeader {
        let text = |c: &str| cell_text(row, c).unwrap_or_default();
        BackupSetHeader {
            guid: text("BackupSetGUID").to_ascii_uppercase(),
            first_lsn: text("FirstLSN"),
            last_lsn: text("LastLSN"),
            has_checksums: cell_bool(row, "HasBackupChecksums").unwrap_or(false),
            damaged: cell_bool(row, "IsDamaged").unwrap_or(false),
            size: ["CompressedBackupSize", "BackupSize"]
                .iter()
                .find_map(|c| cell_i64(row, c))
                .and_then(|n| u64::try_from(n).ok()),
        }
    }

    /// How this header differs from what the receipt recorded (None: same set).
    fn differs_from(&self, r: &BackupReceipt) -> Option<String> {
        if !self.guid.eq_ignore_ascii_case(&r.backup_set_guid) {
            return Some(format!(
                "holds backup set {} (LSN {}..{}), not the set {} (LSN {}..{}) taken by this run",
                or_none(&self.guid),
                self.first_lsn,
                self.last_lsn,
                r.backup_set_guid,
                r.first_lsn,
                r.last_lsn
            ));
        }
        if self.first_lsn != r.first_lsn || self.last_lsn != r.last_lsn {
            return Some(format!(
                "holds backup set {} with LSN {}..{}, recorded as {}..{} when taken",
                self.guid, self.first_lsn, self.last_lsn, r.first_lsn, r.last_lsn
            ));
        }
        if r.checksum && !self.has_checksums {
            return Some(
                "no longer carries the page checksums it was written with (HasBackupChecksums = 0)"
                    .into(),
            );
        }
        if self.damaged {
            return Some("is marked damaged by the server (IsDamaged = 1)".into());
        }
        None
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "(none)"
    } else {
        s
    }
}

fn cell_str(row: &tiberius::Row, col: &str) -> Option<String> {
    match row.get_column_data(col).ok()? {
        ColumnData::String(v) => v.as_ref().map(|s| s.to_string()),
        _ => None,
    }
}

/// A value of any type as JSON (dates as ISO 8601 text).
fn value_to_json(v: &ColumnData<'static>) -> serde_json::Value {
    use serde_json::Value;
    let text = |s: Option<String>| s.map(Value::from).unwrap_or(Value::Null);
    match v {
        ColumnData::U8(v) => v.map(Value::from).unwrap_or(Value::Null),
        ColumnData::I16(v) => v.map(Value::from).unwrap_or(Value::Null),
        ColumnData::I32(v) => v.map(Value::from).unwrap_or(Value::Null),
        ColumnData::I64(v) => v.map(Value::from).unwrap_or(Value::Null),
        ColumnData::F32(v) => v.map(|f| Value::from(f as f64)).unwrap_or(Value::Null),
        ColumnData::F64(v) => v.map(Value::from).unwrap_or(Value::Null),
        ColumnData::Bit(v) => v.map(Value::from).unwrap_or(Value::Null),
        ColumnData::String(v) => text(v.as_ref().map(|s| s.to_string())),
        ColumnData::Guid(v) => text(v.map(|g| g.to_string())),
        ColumnData::Binary(v) => text(v.as_ref().map(|b| format!("<{} bytes>", b.len()))),
        ColumnData::Numeric(v) => match v {
            Some(n) if n.scale() == 0 => i64::try_from(n.value())
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(n.to_string())),
            Some(n) => Value::from(f64::from(*n)),
            None => Value::Null,
        },
        ColumnData::Xml(v) => text(v.as_ref().map(|x| x.to_string())),
        ColumnData::DateTime(_) | ColumnData::SmallDateTime(_) | ColumnData::DateTime2(_) => text(
            time::PrimitiveDateTime::from_sql(v)
                .ok()
                .flatten()
                .map(|d| d.to_string()),
        ),
        ColumnData::Date(_) => text(
            time::Date::from_sql(v)
                .ok()
                .flatten()
                .map(|d| d.to_string()),
        ),
        ColumnData::Time(_) => text(
            time::Time::from_sql(v)
                .ok()
                .flatten()
                .map(|d| d.to_string()),
        ),
        ColumnData::DateTimeOffset(_) => text(
            time::OffsetDateTime::from_sql(v)
                .ok()
                .flatten()
                .and_then(|d| {
                    d.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                }),
        ),
    }
}

/// A file name part made of safe characters only.
fn file_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Join a server folder and a file name with the server's separator.
fn server_path(dir: &str, file: &str) -> String {
    let windows = dir.contains('\\') || dir.as_bytes().get(1) == Some(&b':');
    let sep = if windows { '\\' } else { '/' };
    let dir = dir.trim_end_matches(['/', '\\']);
    format!("{dir}{sep}{file}")
}

/// SQL Server's TCP port when `Server=` names neither a port nor an instance.
const DEFAULT_PORT: u16 = 1433;

/// The SQL Server Browser's UDP port (MS-SQLR).
pub const BROWSER_PORT: u16 = 1434;
/// SSRP messages (MS-SQLR 2.2): the ports of one instance, of all instances,
/// and the server's answer.
const CLNT_UCAST_EX: u8 = 0x03;
const CLNT_UCAST_INST: u8 = 0x04;
const SVR_RESP: u8 = 0x05;
/// UDP may lose a request: the Browser is asked again this often (and, from
/// the second time, also for its list of instances, since it does not answer
/// for an instance it does not know).
const BROWSER_RETRY: Duration = Duration::from_secs(1);

/// Test builds only (the `failpoints` feature): moves the SQL Server Browser
/// to another UDP port, so that tests can run one on a free loopback port.
pub const BROWSER_PORT_ENV: &str = "UPRUN_TEST_SQL_BROWSER_PORT";

/// Where the SQL Server Browser listens: always 1434, except in test builds
/// where `UPRUN_TEST_SQL_BROWSER_PORT` may say otherwise.
fn browser_port() -> u16 {
    #[cfg(feature = "failpoints")]
    if let Some(port) = std::env::var(BROWSER_PORT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u16>().ok())
    {
        return port;
    }
    BROWSER_PORT
}

/// One instance as the SQL Server Browser describes it.
#[derive(Debug, Clone, PartialEq)]
struct BrowsedInstance {
    name: String,
    /// Its TCP port, if it listens on TCP.
    tcp: Option<u16>,
    /// Every protocol reported (`tcp`, `np`, `via`...), for messages.
    protocols: Vec<String>,
}

/// The instances in an SVR_RESP datagram: `0x05`, the size (u16 LE), then
/// `ServerName;H;InstanceName;I;IsClustered;No;Version;V;tcp;PORT;np;PIPE;;`
/// once per instance. None if the datagram is not an SVR_RESP.
fn parse_svr_resp(datagram: &[u8]) -> Option<Vec<BrowsedInstance>> {
    let (&kind, rest) = datagram.split_first()?;
    if kind != SVR_RESP || rest.len() < 2 {
        return None;
    }
    let size = u16::from_le_bytes([rest[0], rest[1]]) as usize;
    let data = &rest[2..];
    let text = String::from_utf8_lossy(&data[..size.min(data.len())]);
    let mut out = Vec::new();
    for record in text.split(";;") {
        let tokens: Vec<&str> = record.split(';').collect();
        let (mut name, mut tcp, mut protocols) = (None, None, Vec::new());
        for pair in tokens.chunks(2) {
            let [key, value] = pair else { break };
            let key = key.trim().to_ascii_lowercase();
            match key.as_str() {
                "instancename" => name = Some(value.trim().to_string()),
                "servername" | "isclustered" | "version" => {}
                // Banyan VINES carries a list: nothing known follows it.
                "bv" => {
                    protocols.push(key);
                    break;
                }
                _ => {
                    if key == "tcp" {
                        tcp = value.trim().parse::<u16>().ok().filter(|p| *p > 0);
                    }
                    protocols.push(key);
                }
            }
        }
        if let Some(name) = name {
            out.push(BrowsedInstance {
                name,
                tcp,
                protocols,
            });
        }
    }
    Some(out)
}

/// What one address of the Browser's host said.
enum Heard {
    /// The instances it reported: the one asked for, or, when it does not know
    /// that one, its whole list.
    Instances(Vec<BrowsedInstance>),
    /// Nothing listens there (ICMP port unreachable).
    Refused,
    /// No answer in time; `garbage` if datagrams that are not SSRP came back.
    Silent {
        garbage: bool,
    },
    Failed(String),
}

/// Ask the Browser at `at` for `instance` until `until`: `CLNT_UCAST_INST`
/// at once, then every `BROWSER_RETRY` again together with `CLNT_UCAST_EX`
/// (the list of all instances). A list without the instance is taken as the
/// answer if the instance's own request stays unanswered one retry longer.
async fn ask_browser(at: SocketAddr, instance: &str, until: tokio::time::Instant) -> Heard {
    use std::io::ErrorKind;
    use tokio::time::{timeout_at, Instant};
    let local: SocketAddr = if at.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = match tokio::net::UdpSocket::bind(local).await {
        Ok(s) => s,
        Err(e) => return Heard::Failed(format!("cannot open a UDP socket: {e}")),
    };
    // Connected: only datagrams from `at` are received, and a closed port is
    // reported (ECONNREFUSED) instead of looking like silence.
    if let Err(e) = socket.connect(at).await {
        return Heard::Failed(e.to_string());
    }
    let mut one = vec![CLNT_UCAST_INST];
    one.extend_from_slice(instance.as_bytes());
    one.push(0);
    let io_error = |e: std::io::Error| match e.kind() {
        ErrorKind::ConnectionRefused => Heard::Refused,
        _ => Heard::Failed(e.to_string()),
    };
    if let Err(e) = socket.send(&one).await {
        return io_error(e);
    }
    let mut next = Instant::now() + BROWSER_RETRY;
    let mut garbage = false;
    // A list without the instance, and when to settle for it.
    let mut list: Option<(Vec<BrowsedInstance>, Instant)> = None;
    let mut buf = vec![0u8; 65_536];
    loop {
        let wake = match &list {
            Some((_, settle)) => next.min(until).min(*settle),
            None => next.min(until),
        };
        match timeout_at(wake, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => match parse_svr_resp(&buf[..n]) {
                Some(found) if found.iter().any(|i| i.name.eq_ignore_ascii_case(instance)) => {
                    return Heard::Instances(found)
                }
                Some(found) => {
                    if list.is_none() {
                        list = Some((found, (Instant::now() + BROWSER_RETRY).min(until)));
                    }
                }
                None => garbage = true,
            },
            Ok(Err(e)) => return io_error(e),
            Err(_) => {
                let now = Instant::now();
                if let Some((found, settle)) = &list {
                    if now >= *settle {
                        return Heard::Instances(found.clone());
                    }
                }
                if now >= until {
                    return Heard::Silent { garbage };
                }
                if now >= next {
                    next = now + BROWSER_RETRY;
                    for request in [&one[..], &[CLNT_UCAST_EX][..]] {
                        if let Err(e) = socket.send(request).await {
                            return io_error(e);
                        }
                    }
                }
            }
        }
    }
}

/// Find the TCP address of a named instance through the SQL Server Browser
/// on `host`:`port`, within `limit`. Errors are whole sentences that name the
/// host, the instance and what to do.
async fn browse(
    host: &str,
    port: u16,
    instance: &str,
    limit: Duration,
) -> std::result::Result<SocketAddr, String> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let until = tokio::time::Instant::now() + limit;
    let secs = limit.as_secs();
    let browser = format!("SQL Server Browser on {host}:{port}");
    let give_port = format!(
        "or give the instance's TCP port in `database.connection` (`Server=tcp:{host}\\{instance},<port>`)"
    );
    let name = host.trim_start_matches('[').trim_end_matches(']');
    let mut addrs: Vec<SocketAddr> =
        match tokio::time::timeout_at(until, tokio::net::lookup_host((name, port))).await {
            Ok(Ok(found)) => found.collect(),
            Ok(Err(e)) => {
                return Err(format!(
                    "cannot resolve host `{host}` to find instance `{instance}`: {e}; check the host name in `Server=` of `database.connection`"
                ))
            }
            Err(_) => {
                return Err(format!(
                    "cannot resolve host `{host}` to find instance `{instance}` within {secs} s (`database.connect_timeout_secs`)"
                ))
            }
        };
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!(
            "host `{host}` has no address; check the host name in `Server=` of `database.connection`"
        ));
    }
    let mut asks: FuturesUnordered<_> = addrs
        .iter()
        .map(|&at| async move { (at, ask_browser(at, instance, until).await) })
        .collect();
    let (mut refused, mut garbage, mut failed) = (0, false, None);
    while let Some((at, heard)) = asks.next().await {
        match heard {
            Heard::Instances(found) => {
                let Some(me) = found.iter().find(|i| i.name.eq_ignore_ascii_case(instance)) else {
                    let names = if found.is_empty() {
                        "no instances".to_string()
                    } else {
                        found
                            .iter()
                            .map(|i| format!("`{}`", i.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    return Err(format!(
                        "{browser} knows no instance `{instance}`; it reported {names}: correct the instance name in `Server=` of `database.connection`"
                    ));
                };
                return match me.tcp {
                    Some(tcp) => Ok(SocketAddr::new(at.ip(), tcp)),
                    None => Err(format!(
                        "instance `{instance}` on {host} does not accept TCP connections ({browser} reports only: {}): enable TCP/IP for the instance (SQL Server Configuration Manager) and restart it",
                        if me.protocols.is_empty() { "none".to_string() } else { me.protocols.join(", ") }
                    )),
                };
            }
            Heard::Refused => refused += 1,
            Heard::Silent { garbage: g } => garbage |= g,
            Heard::Failed(e) => failed = Some(e),
        }
    }
    if refused == addrs.len() {
        return Err(format!(
            "{browser} is not running (UDP port {port} is closed), so instance `{instance}` cannot be found: start the SQL Server Browser service on {host}, {give_port}"
        ));
    }
    if let Some(e) = failed {
        return Err(format!(
            "{browser} could not be asked for instance `{instance}`: {e}; {give_port}"
        ));
    }
    let odd = if garbage {
        " (what came back was not an SSRP answer)"
    } else {
        ""
    };
    Err(format!(
        "{browser} did not answer for instance `{instance}` within {secs} s (`database.connect_timeout_secs`){odd}: start the SQL Server Browser service on {host} and let UDP port {port} through its firewall, {give_port}"
    ))
}

impl Database for MssqlDatabase {
    fn name(&self) -> &str {
        &self.name
    }

    fn version(&mut self) -> Result<Version> {
        let t = self.cfg.query_timeout;
        let found = self.call(t, |c| {
            Box::pin(async move {
                let r = rows(c, VERSION_SQL, &[&VERSION_KEY]).await?;
                Ok(r.first().and_then(|row| cell_str(row, "value")))
            })
        })?;
        let value = match found {
            Ok(v) => v,
            Err(Failure::Server(t)) if t.code() == 208 => {
                return Err(Error::db(
                    &self.name,
                    format!(
                        "no `dbo.app_meta` table in database `{}` on {}: this does not look like the application's database; check `Database=` in `database.connection`",
                        self.name, self.addr
                    ),
                ))
            }
            Err(f) => return Err(self.fail("read the schema version", f)),
        };
        let v = value.ok_or_else(|| {
            Error::db(
                &self.name,
                format!("`dbo.app_meta` has no `{VERSION_KEY}` row"),
            )
        })?;
        Version::parse(v.trim()).map_err(|e| {
            Error::db(
                &self.name,
                format!("recorded version {v:?} is not a version: {e}"),
            )
        })
    }

    fn query_readonly(&mut self, sql: &str) -> Result<Vec<Row>> {
        // SQL Server has no read-only session, so two guards: the text must be
        // a single SELECT (checked on code, not strings or comments), and it
        // runs inside a transaction that is always rolled back, so even a
        // statement the check missed cannot leave a change behind.
        if let Err(why) = batches::check_single_select(sql) {
            return Err(Error::db(
                &self.name,
                format!("check query `{sql}` refused: {why}; check queries must only read"),
            ));
        }
        let t = self.cfg.query_timeout;
        let text = sql.to_string();
        let outcome = self.call(t, move |c| {
            Box::pin(async move {
                batch(c, READ_BEGIN_SQL).await?;
                let result = async {
                    let sets = batch(c, &text).await?;
                    Ok::<_, tiberius::error::Error>(sets.into_iter().next().unwrap_or_default())
                }
                .await;
                let rolled_back = batch(c, ROLLBACK_SQL).await;
                let rows = result?;
                rolled_back?;
                Ok(rows)
            })
        })?;
        let rows = outcome.map_err(|f| self.fail(&format!("check query `{sql}`"), f))?;
        Ok(rows
            .iter()
            .map(|row| {
                row.cells()
                    .map(|(col, v)| (col.name().to_string(), value_to_json(v)))
                    .collect::<Row>()
            })
            .collect())
    }

    fn preflight_upgrade(&mut self) -> Result<Vec<String>> {
        let q = self.cfg.query_timeout;
        let updateability = self.run("check that the database is writable", q, |c| {
            Box::pin(async move {
                let r = rows(c, UPDATEABILITY_SQL, &[]).await?;
                Ok(r.first().and_then(|row| cell_str(row, "updateability")))
            })
        })?;
        if let Some(u) = updateability.filter(|u| !u.eq_ignore_ascii_case("READ_WRITE")) {
            return Err(Error::Refused(format!(
                "database `{}` on {} cannot be upgraded: it is {u} (DATABASEPROPERTYEX Updateability): a read-only database, or a readable secondary of an availability group; connect to the primary replica (the listener, without `ApplicationIntent=ReadOnly`) or make the database read-write; nothing was changed",
                self.name, self.addr
            )));
        }
        let others = self.run("list the other sessions in the database", q, |c| {
            Box::pin(async move {
                let r = rows(c, OTHER_SESSIONS_SQL, &[]).await?;
                Ok(r.iter()
                    .map(|row| {
                        format!(
                            "#{} {}@{} ({})",
                            cell_i64(row, "session_id").unwrap_or(0),
                            cell_str(row, "login_name").unwrap_or_default(),
                            cell_str(row, "host_name").unwrap_or_default(),
                            cell_str(row, "program_name").unwrap_or_default()
                        )
                    })
                    .collect::<Vec<_>>())
            })
        })?;
        if others.is_empty() {
            return Ok(Vec::new());
        }
        if self.cfg.refuse_other_sessions {
            return Err(Error::Refused(format!(
                "{} other session(s) are connected to database `{}`: {}; the site refuses to upgrade while they are (`database.refuse_other_sessions = true`): stop the application's services and disconnect them, then run again; nothing was changed",
                others.len(),
                self.name,
                others.join(", ")
            )));
        }
        Ok(vec![format!(
            "{} other session(s) are connected to database `{}`: {}; a migration waits for locks they hold (stop the application's services first)",
            others.len(),
            self.name,
            others.join(", ")
        )])
    }

    fn check_backup_possible(&mut self) -> Result<()> {
        let (engine, edition) = self.edition()?;
        match no_backup_to_disk(engine, &edition, &self.name) {
            Some(why) => Err(Error::Refused(why)),
            None => Ok(()),
        }
    }

    fn backup(&mut self, dir: &Path, progress: Progress<'_>) -> Result<BackupReceipt> {
        self.refuse_read_only("backup")?;
        let version = self.version()?;
        let q = self.cfg.query_timeout;
        let (edition_no, edition) = self.edition()?;
        if let Some(why) = no_backup_to_disk(edition_no, &edition, &self.name) {
            return Err(Error::Refused(why));
        }
        let compress = supports_compression(edition_no, &edition);
        let spid = self.run("read the session id", q, |c| {
            Box::pin(async move {
                let r = rows(c, SPID_SQL, &[]).await?;
                Ok(r.first().and_then(|r| cell_i64(r, "spid")).unwrap_or(0))
            })
        })?;
        // `INIT, FORMAT` overwrite a file of the same name without a word, and
        // the folder may be shared (several servers, several runs): the name
        // carries the time to the millisecond and a tag of this process, so
        // that no backup ever lands on another.
        let now = time::OffsetDateTime::now_utc();
        let stamp = now
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second][subsecond digits:3]Z"
            ))
            .unwrap_or_default();
        let tag = (std::process::id() ^ now.nanosecond()) & 0xffff;
        let file = server_path(
            &dir.to_string_lossy(),
            &format!(
                "{}-{}-{stamp}-{tag:04x}.bak",
                file_part(&self.name),
                version
            ),
        );
        let sql = if compress {
            format!("{BACKUP_SQL}, COMPRESSION")
        } else {
            BACKUP_SQL.to_string()
        };
        let started = now_rfc3339();
        progress(0, 100);

        // The backup runs on the main connection; a monitor connection polls
        // its progress. If the monitor cannot connect or see the session (no
        // VIEW SERVER STATE), the bar simply does not move.
        let monitor = self.connect("uprun progress").ok();
        let mut conn = self.take_conn()?;
        let deadline = self.cfg.operation_timeout;
        let every = self.progress_interval;
        let name = self.name.clone();
        let outcome = self.rt.block_on(async {
            let work = async {
                let params: [&dyn ToSql; 2] = [&name, &file];
                conn.execute(sql.as_str(), &params).await
            };
            let watch = async {
                let Some(mut m) = monitor else {
                    return std::future::pending::<()>().await;
                };
                let mut last = 0;
                loop {
                    tokio::time::sleep(every).await;
                    let pct = match rows(&mut m, PROGRESS_SQL, &[&(spid as i32)]).await {
                        Ok(r) => r.first().and_then(|r| cell_i64(r, "percent_complete")),
                        Err(_) => return std::future::pending::<()>().await,
                    };
                    if let Some(p) = pct {
                        let p = p.clamp(0, 100) as u64;
                        if p > last {
                            last = p;
                            progress(p, 100);
                        }
                    }
                }
            };
            tokio::time::timeout(deadline, async {
                tokio::select! {
                    r = work => r,
                    // The watch only ever waits; this arm cannot complete first.
                    _ = watch => Err(tiberius::error::Error::Protocol("progress watch ended".into())),
                }
            })
            .await
        });
        let what = format!("backup to `{file}` on the server");
        match outcome {
            Ok(Ok(_)) => self.conn = Some(conn),
            Ok(Err(tiberius::error::Error::Server(t))) => {
                if t.class() < 20 {
                    self.conn = Some(conn);
                }
                let hint = match t.code() {
                    3201 => "; check that `database.backup_dir` is a folder on the SQL Server machine and that the SQL Server service account may write to it",
                    262 | 3110 => "; the login needs the BACKUP DATABASE permission (db_backupoperator)",
                    _ => "",
                };
                return Err(Error::db(
                    &self.name,
                    format!("{what} failed: {}{hint}", server_text(&t)),
                ));
            }
            Ok(Err(e)) => return Err(self.fail(&what, Failure::Broken(e))),
            Err(_) => {
                // Stop the BACKUP on the server (see `call`).
                let ack = self.rt.block_on(async {
                    tokio::time::timeout(ATTENTION_WAIT, conn.cancel_query()).await
                });
                let failure = match ack {
                    Ok(Ok(())) => {
                        self.conn = Some(conn);
                        Failure::Cancelled(deadline)
                    }
                    _ => Failure::Deadline(deadline),
                };
                return Err(self.fail(&what, failure));
            }
        }
        progress(100, 100);
        // uprun's clock (UTC), like `started`: the server's dates are in its
        // local time, and the receipt mixes nothing.
        let finished = now_rfc3339();

        // The backup set's identity, from the file's own header: what the
        // upgrade proves again.
        let header = match self.read_header(&file)? {
            Ok(Some(h)) if !h.guid.is_empty() => h,
            Ok(_) => {
                return Err(Error::db(
                    &self.name,
                    format!("backup to `{file}` on the server: RESTORE HEADERONLY shows no backup set (no `BackupSetGUID`) in the file just written"),
                ))
            }
            Err(Failure::Server(t)) if t.code() == 3032 || t.code() == 262 => {
                return Err(Error::db(
                    &self.name,
                    format!("read the header of backup `{file}`: {}; RESTORE HEADERONLY needs the CREATE DATABASE permission (as RESTORE VERIFYONLY does)", server_text(&t)),
                ))
            }
            Err(f) => return Err(self.fail(&format!("read the header of backup `{file}`"), f)),
        };
        // The size is the file's own (no msdb: a login that cannot read it
        // still backs up), and never a silent 0.
        let Some(size) = header.size else {
            return Err(Error::db(
                &self.name,
                format!("backup to `{file}` on the server: RESTORE HEADERONLY reports no `BackupSize` for the backup set just written"),
            ));
        };
        Ok(BackupReceipt {
            database: self.name.clone(),
            file,
            size,
            version: version.to_string(),
            started,
            finished,
            verified: false,
            verification: String::new(),
            checksum: header.has_checksums,
            sha256: String::new(),
            backup_set_guid: header.guid,
            first_lsn: header.first_lsn,
            last_lsn: header.last_lsn,
        })
    }

    fn verify_backup(&mut self, receipt: &mut BackupReceipt) -> Result<()> {
        let file = receipt.file.clone();
        let deadline = self.cfg.operation_timeout;
        let f = file.clone();
        let outcome = self.call(deadline, move |c| {
            Box::pin(async move { c.execute(VERIFY_SQL, &[&f]).await.map(|_| ()) })
        })?;
        match outcome {
            Ok(()) => {}
            Err(Failure::Server(t)) => {
                let hint = if t.code() == 3032 || t.code() == 262 {
                    "; RESTORE VERIFYONLY needs the CREATE DATABASE permission"
                } else {
                    ""
                };
                return Err(Error::db(
                    &self.name,
                    format!(
                        "verification of backup `{file}` failed: {}{hint}",
                        server_text(&t)
                    ),
                ));
            }
            Err(f) => return Err(self.fail(&format!("verification of backup `{file}`"), f)),
        }
        receipt.verified = true;
        receipt.verification = if receipt.checksum {
            "RESTORE VERIFYONLY WITH CHECKSUM: backup set valid, page checksums checked".into()
        } else {
            "RESTORE VERIFYONLY WITH CHECKSUM: backup set valid".into()
        };
        Ok(())
    }

    fn prove_backup(&mut self, receipt: &BackupReceipt) -> Result<()> {
        // The file is on the SQL Server machine: only the server can look at
        // it (never this machine's file system).
        let file = receipt.file.clone();
        let name = self.name.clone();
        let refuse = |what: String| {
            Error::Refused(format!(
                "database `{name}`: the backup `{file}` on the server {what}; the database was not touched; take a new backup: re-run `backup_db()` before `upgrade_db()`, or start a new run"
            ))
        };
        if receipt.backup_set_guid.is_empty() {
            return Err(refuse(
                "was recorded without its backup set GUID (by an older uprun), so it cannot be proved"
                    .into(),
            ));
        }
        let header = match self.read_header(&file)? {
            Ok(Some(h)) => h,
            Ok(None) => {
                return Err(refuse(
                    "holds no backup set (RESTORE HEADERONLY returned no row)".into(),
                ))
            }
            Err(Failure::Server(t)) => {
                return Err(refuse(format!(
                    "cannot be read (RESTORE HEADERONLY: {}): it is missing or not a backup",
                    server_text(&t)
                )))
            }
            Err(f) => return Err(self.fail(&format!("prove backup `{file}`"), f)),
        };
        if let Some(diff) = header.differs_from(receipt) {
            return Err(refuse(diff));
        }
        let deadline = self.cfg.operation_timeout;
        let f = file.clone();
        let verified = self.call(deadline, move |c| {
            Box::pin(async move { c.execute(VERIFY_SQL, &[&f]).await.map(|_| ()) })
        })?;
        match verified {
            Ok(()) => Ok(()),
            Err(Failure::Server(t)) => Err(refuse(format!(
                "failed RESTORE VERIFYONLY WITH CHECKSUM: {}",
                server_text(&t)
            ))),
            Err(f) => Err(self.fail(&format!("prove backup `{file}`"), f)),
        }
    }

    fn history(&mut self) -> Result<Vec<AppliedMigration>> {
        let t = self.cfg.query_timeout;
        self.run("read the migration history", t, |c| {
            Box::pin(async move {
                let r = rows(c, HISTORY_SQL, &[]).await?;
                Ok(r.iter()
                    .map(|row| AppliedMigration {
                        name: cell_str(row, "name").unwrap_or_default(),
                        version: cell_str(row, "version").unwrap_or_default(),
                        checksum: cell_str(row, "checksum")
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                        applied_at: cell_str(row, "applied_at").unwrap_or_default(),
                        duration_ms: cell_i64(row, "duration_ms").unwrap_or(0),
                        applied_by: cell_str(row, "applied_by").unwrap_or_default(),
                    })
                    .collect())
            })
        })
    }

    fn check_migration(&self, m: &Migration) -> Result<()> {
        let file = m.path.display().to_string();
        batches::split(&m.sql, &file)
            .map_err(|e| Error::Config(format!("{e}; fix the release (nothing was applied)")))?;
        // A `USE` of another database would run the rest of the migration
        // there. The site's own database (SSMS writes `USE [db]` at the top
        // of generated scripts) changes nothing.
        for (line, db) in batches::databases_used(&m.sql) {
            if db.to_lowercase() != self.cfg.database.to_lowercase() {
                return Err(Error::Config(format!(
                    "{file} line {line}: `USE` switches to database `{db}`, but uprun applies this release's migrations to database `{}` (the site's) and records them there; remove the `USE` (or name `{}`) in the migration; fix the release (nothing was applied)",
                    self.cfg.database, self.cfg.database
                )));
            }
        }
        Ok(())
    }

    fn apply(&mut self, m: &Migration, applied_by: &str) -> Result<()> {
        self.refuse_read_only(&format!("migration `{}`", m.name))?;
        self.check_migration(m)?;
        let file = m.path.display().to_string();
        let script = batches::split(&m.sql, &file).map_err(|e| {
            Error::Config(format!(
                "{e}; the migration was not started (nothing was changed)"
            ))
        })?;
        let start = Instant::now();
        let until = start + self.cfg.operation_timeout;
        let left = |until: Instant| until.saturating_duration_since(Instant::now());
        let q = self.cfg.query_timeout;
        self.run("create the migration history table", q, |c| {
            Box::pin(async move { batch(c, HISTORY_TABLE_SQL).await.map(|_| ()) })
        })?;
        let total = script.batches.len();
        let tx = script.transactional;
        // A forgotten session holding a lock fails the migration after
        // `lock_timeout_secs` instead of stalling it until the deadline.
        let lock_ms = self.cfg.lock_timeout.as_millis().min(i32::MAX as u128);
        let lock_sql = format!("SET LOCK_TIMEOUT {lock_ms};");
        self.run(
            &format!("migration `{}`: set the lock timeout", m.name),
            q,
            move |c| Box::pin(async move { batch(c, &lock_sql).await.map(|_| ()) }),
        )?;
        // What is true of a `-- uprun: no-transaction` migration that fails at batch `i`.
        let partial = |i: usize| -> String {
            if i == 0 {
                "nothing of it was applied (it is `-- uprun: no-transaction`); fix the cause and run again".to_string()
            } else {
                format!(
                    "it is `-- uprun: no-transaction`: batches 1 to {i} stay applied and it is not recorded in the history; complete it by hand before running again"
                )
            }
        };
        if tx {
            self.run(
                &format!("migration `{}`: begin", m.name),
                left(until),
                |c| Box::pin(async move { batch(c, BEGIN_SQL).await.map(|_| ()) }),
            )?;
        }
        for (i, b) in script.batches.iter().enumerate() {
            for _ in 0..b.count {
                let sql = b.sql.clone();
                let outcome = self.call_with(left(until), true, move |c| {
                    Box::pin(async move { batch(c, &sql).await.map(|_| ()) })
                })?;
                let Err(f) = outcome else { continue };
                let place = format!(
                    "migration `{}` failed in batch {} of {total} (line {} of `{file}`)",
                    m.name,
                    i + 1,
                    b.line
                );
                let text = match f {
                    Failure::Server(t) => {
                        let after = if tx {
                            self.roll_back().aftermath()
                        } else {
                            partial(i)
                        };
                        let at = if !t.procedure().is_empty() {
                            // The line is the procedure's or trigger's, not the file's.
                            format!(
                                " at line {} of `{}` (a procedure, function or trigger the batch called)",
                                t.line(),
                                t.procedure()
                            )
                        } else if t.line() > 0 {
                            format!(" at line {} of `{file}`", b.line + t.line() as usize - 1)
                        } else {
                            String::new()
                        };
                        let hint = if t.code() == 1222 {
                            format!(
                                " (another session held a lock it needed for more than {} s, `database.lock_timeout_secs`: stop the application's services, or find the session in sys.dm_exec_requests.blocking_session_id)",
                                self.cfg.lock_timeout.as_secs()
                            )
                        } else {
                            String::new()
                        };
                        format!("{place}: {}{at}{hint}; {after}", server_text(&t))
                    }
                    Failure::Broken(e) => {
                        let why = format!(
                            "the connection to {} was lost ({})",
                            self.addr,
                            broken_text(&e)
                        );
                        let after = if tx {
                            Rolled::Unconfirmed(why.clone()).aftermath()
                        } else {
                            partial(i)
                        };
                        format!("{place}: {why}: {after}")
                    }
                    Failure::Aborted { acknowledged } => {
                        let after = match (tx, acknowledged) {
                            (true, true) => self.roll_back().aftermath(),
                            (true, false) => {
                                Rolled::Unconfirmed("the connection was closed".into()).aftermath()
                            }
                            (false, _) => format!(
                                "what batch {} did before it stopped stays applied; {}",
                                i + 1,
                                partial(i)
                            ),
                        };
                        self.conn = None;
                        return Err(Error::Interrupted(self.scrub(&format!(
                            "database `{}`: {place}: {}: {after}",
                            self.name,
                            aborted_text(acknowledged)
                        ))));
                    }
                    Failure::Cancelled(_) => {
                        let why = format!(
                            "not finished within {} s (`database.operation_timeout_secs`), so uprun cancelled it (TDS attention) and the server acknowledged that it stopped",
                            self.cfg.operation_timeout.as_secs()
                        );
                        let after = if tx {
                            self.roll_back().aftermath()
                        } else {
                            format!(
                                "what batch {} did before it stopped stays applied; {}",
                                i + 1,
                                partial(i)
                            )
                        };
                        format!("{place}: {why}: {after}")
                    }
                    Failure::Deadline(_) => {
                        let why = format!(
                            "not finished within {} s (`database.operation_timeout_secs`), and the server did not acknowledge uprun's cancel within {} s, so uprun closed the connection",
                            self.cfg.operation_timeout.as_secs(),
                            ATTENTION_WAIT.as_secs()
                        );
                        let after = if tx {
                            Rolled::Unconfirmed("the connection was closed".into()).aftermath()
                        } else {
                            partial(i)
                        };
                        format!("{place}: {why}: {after}")
                    }
                };
                self.conn = None;
                return Err(Error::db(&self.name, self.scrub(&text)));
            }
        }
        let row = AppliedMigration {
            name: m.name.clone(),
            version: m.version.to_string(),
            checksum: m.checksum.clone(),
            applied_at: String::new(),
            duration_ms: start.elapsed().as_millis() as i64,
            applied_by: applied_by.to_string(),
        };
        let sql = record_batch(&self.cfg.database, tx, &row)
            .map_err(|e| Error::Config(format!("database `{}`: {e}", self.name)))?;
        let recorded = self.call(left(until), move |c| {
            Box::pin(async move {
                let sets = batch(c, &sql).await?;
                Ok(sets.iter().flatten().find_map(|r| cell_i64(r, "trancount")))
            })
        })?;
        let what = format!("migration `{}`", m.name);
        let text = match recorded {
            Ok(Some(0)) => {
                // A fresh session for whatever comes next: nothing the
                // migration set (NOCOUNT, a database, isolation level...) stays.
                self.conn = None;
                return Ok(());
            }
            Ok(open) => {
                let rolled = self.roll_back();
                format!(
                    "{what}: after recording it{} the server reports {} transaction(s) still open, so it is not committed; {}",
                    if tx { " and committing" } else { "" },
                    open.map(|n| n.to_string()).unwrap_or_else(|| "an unknown number of".into()),
                    rolled.aftermath()
                )
            }
            Err(Failure::Server(t)) if t.code() == TRANSACTION_STATE_ERROR => {
                let state = transaction_state(t.message());
                let rolled = self.roll_back();
                let cause = match state {
                    Some((0, _)) if tx => "ended the transaction uprun opened for it (a COMMIT or ROLLBACK in the migration, such as a CATCH block that rolls back without THROW): what it changed is committed or lost, uprun cannot tell which, and it is NOT recorded in the history; check the database, make the migration leave transactions to uprun (rethrow in CATCH blocks), and restore the backup if its changes are half there".to_string(),
                    Some((n, _)) if tx && n > 1 => format!(
                        "left {} transaction(s) open (a BEGIN TRANSACTION without its COMMIT): {}; end every BEGIN TRANSACTION in it with a COMMIT and run again",
                        n - 1,
                        rolled.outcome()
                    ),
                    Some((_, -1)) => format!(
                        "left the transaction uncommittable (XACT_STATE() = -1: an error was caught and not rethrown): {}; rethrow errors in its CATCH blocks and run again",
                        rolled.outcome()
                    ),
                    Some((n, _)) if !tx => format!(
                        "is `-- uprun: no-transaction` but left {n} transaction(s) open: {}; what ran outside them stays applied and it is not recorded in the history; complete it by hand before running again",
                        rolled.outcome()
                    ),
                    _ => format!("{}; {}", server_text(&t), rolled.aftermath()),
                };
                format!(
                    "{what} {cause} (transaction state checked before recording it: {})",
                    t.message().trim_start_matches("uprun: ").trim_end()
                )
            }
            Err(Failure::Server(t)) => {
                let rolled = self.roll_back();
                format!(
                    "{what}: recording it in the history{} failed: {}; {}",
                    if tx { " and committing" } else { "" },
                    server_text(&t),
                    rolled.aftermath()
                )
            }
            Err(Failure::Broken(e)) => format!(
                "{what}: the connection to {} was lost while recording it in the history{} ({}): uprun cannot tell whether the server committed it; look for `{}` in `dbo.uprun_migration_history` before running again",
                self.addr,
                if tx { " and committing" } else { "" },
                broken_text(&e),
                m.name
            ),
            Err(Failure::Aborted { acknowledged }) => {
                self.conn = None;
                return Err(Error::Interrupted(self.scrub(&format!(
                    "database `{}`: {what}: while recording it in the history: {}; uprun cannot tell whether the server committed it; look for `{}` in `dbo.uprun_migration_history` before resuming",
                    self.name,
                    aborted_text(acknowledged),
                    m.name
                ))));
            }
            Err(Failure::Deadline(d) | Failure::Cancelled(d)) => format!(
                "{what}: no answer within {} s while recording it in the history{}; uprun cannot tell whether the server committed it; look for `{}` in `dbo.uprun_migration_history` before running again",
                d.as_secs(),
                if tx { " and committing" } else { "" },
                m.name
            ),
        };
        self.conn = None;
        Err(Error::db(&self.name, self.scrub(&text)))
    }

    fn set_version(&mut self, version: &Version) -> Result<()> {
        self.refuse_read_only("record the version")?;
        let t = self.cfg.query_timeout;
        let v = version.to_string();
        let changed = self.run("record the schema version", t, move |c| {
            Box::pin(async move {
                let r = rows(c, SET_VERSION_SQL, &[&v, &VERSION_KEY]).await?;
                Ok(r.first().and_then(|row| cell_i64(row, "changed")))
            })
        })?;
        if changed != Some(1) {
            return Err(Error::db(
                &self.name,
                format!("recording version {version}: `dbo.app_meta` has no `{VERSION_KEY}` row"),
            ));
        }
        Ok(())
    }

    fn latest_full_backup(&mut self) -> Result<Option<String>> {
        let t = self.cfg.query_timeout;
        let db = self.name.clone();
        self.run("read the latest full backup from msdb", t, move |c| {
            Box::pin(async move {
                let r = rows(c, LATEST_FULL_SQL, &[&db]).await?;
                Ok(r.first().map(|row| {
                    let file = cell_str(row, "file_name").unwrap_or_default();
                    let finished = cell_str(row, "finished").unwrap_or_default();
                    let copy = if cell_i64(row, "copy_only") == Some(1) {
                        ", copy-only"
                    } else {
                        ""
                    };
                    format!("`{file}` (finished {finished}{copy})")
                }))
            })
        })
    }

    fn lock_for_run(&mut self, run_id: &str) -> Result<()> {
        self.refuse_read_only("lock the database for the run")?;
        if self.lock.is_some() {
            return Ok(());
        }
        let mut conn = self.connect(&format!("uprun run {run_id}"))?;
        let t = self.cfg.query_timeout;
        let outcome = self.rt.block_on(async {
            tokio::time::timeout(t, async {
                let sets = batch(&mut conn, LOCK_SQL).await?;
                Ok::<_, tiberius::error::Error>(
                    sets.iter()
                        .flatten()
                        .find_map(|row| cell_i64(row, "result")),
                )
            })
            .await
        });
        let code = match outcome {
            Ok(Ok(code)) => code,
            Ok(Err(tiberius::error::Error::Server(e))) => {
                return Err(self.fail("take the run lock (sp_getapplock)", Failure::Server(e)))
            }
            Ok(Err(e)) => return Err(self.fail("take the run lock", Failure::Broken(e))),
            Err(_) => return Err(self.fail("take the run lock", Failure::Deadline(t))),
        };
        match code {
            Some(0) | Some(1) => {
                self.lock = Some(conn);
                Ok(())
            }
            Some(-1) => Err(Error::Refused(format!(
                "another uprun run holds the lock on database `{}` on {} (sp_getapplock on resource `uprun` returned -1); wait for it to finish (its session's program name is `uprun run <id>` in sys.dm_exec_sessions), then run again. Nothing was changed.",
                self.name, self.addr
            ))),
            other => Err(Error::db(
                &self.name,
                format!(
                    "take the run lock: sp_getapplock returned {} (-2 cancelled, -3 deadlock victim, -999 parameter error); nothing was changed",
                    other.map(|c| c.to_string()).unwrap_or_else(|| "nothing".into())
                ),
            )),
        }
    }
}

impl std::fmt::Debug for MssqlDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MssqlDatabase({} on {})", self.name, self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_names() {
        assert_eq!(quote_name("FastApp").as_deref(), Ok("[FastApp]"));
        assert_eq!(quote_name("a]b").as_deref(), Ok("[a]]b]"));
        assert_eq!(quote_name("x; DROP").as_deref(), Ok("[x; DROP]"));
        assert!(quote_name(&"n".repeat(128)).is_ok());
        assert!(quote_name(&"n".repeat(129)).is_err());
        assert!(quote_name("a\0b").is_err());
        assert!(quote_name("").is_err());
    }

    #[test]
    fn compression_by_edition() {
        assert!(supports_compression(3, "Developer Edition (64-bit)"));
        assert!(supports_compression(2, "Standard Edition (64-bit)"));
        assert!(!supports_compression(2, "Web Edition (64-bit)"));
        assert!(!supports_compression(4, "Express Edition (64-bit)"));
        assert!(supports_compression(8, "SQL Azure"));
    }

    fn svr_resp(text: &str) -> Vec<u8> {
        let mut d = vec![SVR_RESP];
        d.extend_from_slice(&(text.len() as u16).to_le_bytes());
        d.extend_from_slice(text.as_bytes());
        d
    }

    #[test]
    fn browser_answers_are_read() {
        let one = svr_resp("ServerName;DB01;InstanceName;SQL2019;IsClustered;No;Version;15.0.2000.5;tcp;49731;np;\\\\DB01\\pipe\\MSSQL$SQL2019\\sql\\query;;");
        assert_eq!(
            parse_svr_resp(&one),
            Some(vec![BrowsedInstance {
                name: "SQL2019".into(),
                tcp: Some(49731),
                protocols: vec!["tcp".into(), "np".into()],
            }])
        );
        let all = svr_resp("ServerName;DB01;InstanceName;MSSQLSERVER;IsClustered;No;Version;16.0.1000.6;tcp;1433;;ServerName;DB01;InstanceName;PIPES;IsClustered;No;Version;16.0.1000.6;np;\\\\DB01\\pipe\\sql\\query;;");
        let found = parse_svr_resp(&all).expect("answer");
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].tcp, Some(1433));
        assert_eq!((found[1].name.as_str(), found[1].tcp), ("PIPES", None));
        assert_eq!(found[1].protocols, ["np"]);
        // Not SVR_RESP, truncated, or a size larger than what came.
        assert_eq!(parse_svr_resp(b""), None);
        assert_eq!(parse_svr_resp(&[SVR_RESP, 9]), None);
        assert_eq!(parse_svr_resp(b"\x04SQL2019"), None);
        let mut short = svr_resp("ServerName;H;InstanceName;A;tcp;1500;;");
        short[1] = 0xff;
        assert_eq!(parse_svr_resp(&short).expect("answer")[0].tcp, Some(1500));
        assert_eq!(
            parse_svr_resp(&svr_resp("")).expect("answer"),
            Vec::<BrowsedInstance>::new()
        );
        let bad_port = svr_resp("InstanceName;A;tcp;99999;;");
        assert_eq!(parse_svr_resp(&bad_port).expect("answer")[0].tcp, None);
    }

    #[test]
    fn server_paths_use_the_server_separator() {
        assert_eq!(
            server_path("/var/opt/mssql/backup/", "a.bak"),
            "/var/opt/mssql/backup/a.bak"
        );
        assert_eq!(server_path("D:\\Backups", "a.bak"), "D:\\Backups\\a.bak");
        assert_eq!(server_path("\\\\nas\\sql", "a.bak"), "\\\\nas\\sql\\a.bak");
        assert_eq!(file_part("Fast App]"), "Fast_App_");
    }
}
