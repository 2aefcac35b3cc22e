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
//! Secrets: the connection string is only handed to the driver; messages name
//! the database and `host:port`, never the string or the password.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::future::LocalBoxFuture;
use semver::Version;
use tiberius::{Client, ColumnData, Config, FromSql, ToSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::batches;
use super::{now_rfc3339, AppliedMigration, BackupReceipt, Database, Progress, Row};
use crate::config::site::{check_sql_name, DatabaseConfig, MssqlConfig};
use crate::config::Migration;
use crate::{Error, Result};

type Conn = Client<Compat<TcpStream>>;

/// The application's version table (schema `dbo`), as on SQLite.
pub const VERSION_SQL: &str = "SELECT value FROM dbo.app_meta WHERE [key] = @P1";
pub const SET_VERSION_SQL: &str = "UPDATE dbo.app_meta SET value = @P1 WHERE [key] = @P2";
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
pub const RECORD_SQL: &str = "INSERT INTO dbo.uprun_migration_history (name, version, checksum, applied_at, duration_ms, applied_by) VALUES (@P1, @P2, @P3, SYSUTCDATETIME(), @P4, @P5)";
/// XACT_ABORT: any error dooms the transaction, so nothing half-done can be committed.
pub const BEGIN_SQL: &str = "SET XACT_ABORT ON; BEGIN TRANSACTION;";
pub const COMMIT_SQL: &str = "COMMIT TRANSACTION;";
pub const ROLLBACK_SQL: &str = "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;";
/// Check queries run inside a transaction that is always rolled back.
pub const READ_BEGIN_SQL: &str = "BEGIN TRANSACTION;";

pub const EDITION_SQL: &str = "SELECT CAST(SERVERPROPERTY('EngineEdition') AS int) AS engine_edition, CAST(SERVERPROPERTY('Edition') AS nvarchar(128)) AS edition";
pub const SPID_SQL: &str = "SELECT CAST(@@SPID AS int) AS spid";
pub const PROGRESS_SQL: &str = "SELECT CAST(percent_complete AS int) AS percent_complete FROM sys.dm_exec_requests WHERE session_id = @P1";
/// `@P1` is the database name, `@P2` the file on the server.
pub const BACKUP_SQL: &str =
    "BACKUP DATABASE @P1 TO DISK = @P2 WITH COPY_ONLY, CHECKSUM, INIT, FORMAT, STATS = 5";
pub const VERIFY_SQL: &str = "RESTORE VERIFYONLY FROM DISK = @P1 WITH CHECKSUM";
/// What msdb recorded about the backup just taken (`@P1` database, `@P2` file).
pub const BACKUPSET_SQL: &str = "SELECT TOP (1) CAST(COALESCE(bs.compressed_backup_size, bs.backup_size) AS bigint) AS size, CONVERT(nvarchar(33), bs.backup_finish_date, 126) AS finished, CAST(bs.has_backup_checksums AS int) AS has_checksums
FROM msdb.dbo.backupset AS bs JOIN msdb.dbo.backupmediafamily AS mf ON mf.media_set_id = bs.media_set_id
WHERE bs.database_name = @P1 AND mf.physical_device_name = @P2 ORDER BY bs.backup_finish_date DESC";
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
    /// Our deadline passed; the connection was closed.
    Deadline(Duration),
}

pub struct MssqlDatabase {
    name: String,
    cfg: MssqlConfig,
    /// `host:port`, for messages.
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
        let m = cfg.mssql.clone().ok_or_else(|| {
            Error::Config(format!(
                "database `{}`: `kind = \"mssql\"` without `connection`",
                cfg.name
            ))
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::db(&cfg.name, format!("cannot start the I/O runtime: {e}")))?;
        let mut db = MssqlDatabase {
            name: m.database.clone(),
            addr: String::new(),
            cfg: m,
            read_only,
            rt,
            conn: None,
            lock: None,
            progress_interval: Duration::from_secs(1),
        };
        db.addr = db.config("uprun")?.get_addr();
        let conn = db.connect("uprun")?;
        db.conn = Some(conn);
        Ok(db)
    }

    /// How often the backup's progress is polled (default 1 s).
    pub fn set_progress_interval(&mut self, every: Duration) {
        self.progress_interval = every;
    }

    /// The driver's configuration for one connection.
    fn config(&self, application: &str) -> Result<Config> {
        let mut c = Config::from_ado_string(self.cfg.connection.expose()).map_err(|e| {
            Error::Config(format!(
                "database `{}`: `database.connection` is not a connection string the driver accepts: {}",
                self.name,
                self.scrub(&e.to_string())
            ))
        })?;
        c.database(&self.cfg.database);
        c.application_name(application);
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
        let addr = self.addr.clone();
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
                "TLS with {addr} failed: {m}; give the server's CA in `database.ca_file` (or, for a test server only, set `database.trust_server_certificate = true`)"
            ),
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
        match crate::config::ado::get(&pairs, &["password", "pwd"]) {
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
        let mut conn = self.take_conn()?;
        let outcome = self
            .rt
            .block_on(async { tokio::time::timeout(deadline, f(&mut conn)).await });
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
            Err(_) => Err(Failure::Deadline(deadline)),
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
        let text = match f {
            Failure::Server(t) => format!("{what}: {}", server_text(&t)),
            Failure::Broken(e) => format!(
                "{what}: the connection to {} failed: {}",
                self.addr,
                broken_text(&e)
            ),
            Failure::Deadline(d) => format!(
                "{what}: no answer within {} s; the connection was closed, so the server stops and rolls back the statement",
                d.as_secs()
            ),
        };
        Error::db(&self.name, self.scrub(&text))
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

    fn backup(&mut self, dir: &Path, progress: Progress<'_>) -> Result<BackupReceipt> {
        self.refuse_read_only("backup")?;
        let version = self.version()?;
        let q = self.cfg.query_timeout;
        let (edition_no, edition) = self.run("read the server edition", q, |c| {
            Box::pin(async move {
                let r = rows(c, EDITION_SQL, &[]).await?;
                let row = r.first();
                Ok((
                    row.and_then(|r| cell_i64(r, "engine_edition")).unwrap_or(0),
                    row.and_then(|r| cell_str(r, "edition")).unwrap_or_default(),
                ))
            })
        })?;
        let compress = supports_compression(edition_no, &edition);
        let spid = self.run("read the session id", q, |c| {
            Box::pin(async move {
                let r = rows(c, SPID_SQL, &[]).await?;
                Ok(r.first().and_then(|r| cell_i64(r, "spid")).unwrap_or(0))
            })
        })?;
        let stamp = time::OffsetDateTime::now_utc()
            .format(time::macros::format_description!(
                "[year][month][day]T[hour][minute][second]Z"
            ))
            .unwrap_or_default();
        let file = server_path(
            &dir.to_string_lossy(),
            &format!("{}-{}-{stamp}.bak", file_part(&self.name), version),
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
            Err(_) => return Err(self.fail(&what, Failure::Deadline(deadline))),
        }
        progress(100, 100);

        // What msdb recorded: size on disk (compressed if it was), finish time,
        // whether page checksums were written.
        let (db, f) = (self.name.clone(), file.clone());
        let recorded = self.run("read the backup record in msdb", q, move |c| {
            Box::pin(async move {
                let r = rows(c, BACKUPSET_SQL, &[&db, &f]).await?;
                Ok(r.first().map(|row| {
                    (
                        cell_i64(row, "size").unwrap_or(0),
                        cell_str(row, "finished"),
                        cell_i64(row, "has_checksums").unwrap_or(0) == 1,
                    )
                }))
            })
        })?;
        let (size, finished, checksum) = match recorded {
            Some((size, finished, checksum)) => (
                size.max(0) as u64,
                finished.unwrap_or_else(now_rfc3339),
                checksum,
            ),
            None => (0, now_rfc3339(), false),
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
            checksum,
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

    fn apply(&mut self, m: &Migration, applied_by: &str) -> Result<()> {
        self.refuse_read_only(&format!("migration `{}`", m.name))?;
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
        // What is true of the database when this migration fails at batch `i`.
        let aftermath = |i: usize| -> String {
            if tx {
                "it was rolled back and is not recorded in the history; fix the cause and run again"
                    .to_string()
            } else if i == 0 {
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
                let outcome = self.call(left(until), move |c| {
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
                        if tx && self.conn.is_some() {
                            let _ = self.call(q, |c| {
                                Box::pin(async move { batch(c, ROLLBACK_SQL).await.map(|_| ()) })
                            });
                        }
                        let at = if t.line() > 0 {
                            format!(" at line {} of `{file}`", b.line + t.line() as usize - 1)
                        } else {
                            String::new()
                        };
                        format!("{place}: {}{at}; {}", server_text(&t), aftermath(i))
                    }
                    Failure::Broken(e) => format!(
                        "{place}: the connection to {} was lost ({}); the server rolls back an open transaction when the session ends: {}",
                        self.addr,
                        broken_text(&e),
                        aftermath(i)
                    ),
                    Failure::Deadline(_) => format!(
                        "{place}: not finished within {} s (`database.operation_timeout_secs`); the connection was closed: {}",
                        self.cfg.operation_timeout.as_secs(),
                        aftermath(i)
                    ),
                };
                return Err(Error::db(&self.name, self.scrub(&text)));
            }
        }
        let duration = start.elapsed().as_millis() as i64;
        let (name, version, checksum, by) = (
            m.name.clone(),
            m.version.to_string(),
            m.checksum.clone(),
            applied_by.to_string(),
        );
        let recorded = self.call(left(until), move |c| {
            Box::pin(async move {
                let params: [&dyn ToSql; 5] = [&name, &version, &checksum, &duration, &by];
                c.execute(RECORD_SQL, &params).await?;
                if tx {
                    batch(c, COMMIT_SQL).await?;
                }
                Ok(())
            })
        })?;
        recorded.map_err(|f| {
            self.fail(
                &format!(
                    "migration `{}`: recording it in the history{}",
                    m.name,
                    if tx { " and committing" } else { "" }
                ),
                f,
            )
        })
    }

    fn set_version(&mut self, version: &Version) -> Result<()> {
        self.refuse_read_only("record the version")?;
        let t = self.cfg.query_timeout;
        let v = version.to_string();
        let changed = self.run("record the schema version", t, move |c| {
            Box::pin(async move {
                let r = c.execute(SET_VERSION_SQL, &[&v, &VERSION_KEY]).await?;
                Ok(r.total())
            })
        })?;
        if changed != 1 {
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
