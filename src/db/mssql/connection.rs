//! Connections, and the deadline and cancel (TDS attention) around every call.

use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use tiberius::{AuthMethod, Client, Config, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::compat::TokioAsyncWriteCompatExt;

use super::browser::{browse, browser_port, DEFAULT_PORT};
use super::sql::*;
use super::values::*;
use super::{Conn, MssqlDatabase};
use crate::config::mssql::ado;
use crate::config::DatabaseConfig;
use crate::{Error, Result};

/// How a failed call left its connection.
pub(super) enum Failure {
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
pub(super) const ATTENTION_WAIT: Duration = Duration::from_secs(10);

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
    pub(super) fn locate(&mut self) -> Result<()> {
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
    pub(super) fn config(&self, application: &str) -> Result<Config> {
        // Built from uprun's own reading of the string (see `config::mssql::ado`):
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

    pub(super) fn connect(&self, application: &str) -> Result<Conn> {
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

    pub(super) fn connect_error(&self, e: tiberius::error::Error) -> Error {
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
            T::Tls(m) => self.tls_error(m),
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

    /// A failed TLS handshake: why the driver refused, what certificate the
    /// server offered (asked again, see `tls`), and which setting trusts it.
    fn tls_error(&self, driver: &str) -> String {
        // The driver's message goes on with advice in its own API's terms.
        let why = driver
            .split(" To connect anyway")
            .next()
            .unwrap_or(driver)
            .trim()
            .trim_end_matches('.');
        let optional = ado::pairs(self.cfg.connection.expose())
            .ok()
            .and_then(|p| ado::encrypt(&p).ok())
            .is_some_and(|e| matches!(e, ado::Encrypt::Optional));
        let checked = if optional {
            "uprun checks the server's certificate with `Encrypt=Optional` too, unlike SqlClient (which then accepts any certificate): the login carries the password"
        } else {
            "uprun checks the server's certificate whatever `Encrypt` says (the login carries the password)"
        };
        let target = self.target.clone();
        let limit = self.cfg.connect_timeout;
        let offered = self
            .rt
            .block_on(async move { super::tls::offered_chain(&target, limit).await });
        match offered {
            Ok(chain) => format!(
                "TLS with {} failed: {why}. The server offered {}. {checked}: {}",
                self.addr,
                super::tls::describe(&chain),
                super::tls::remedy(&chain)
            ),
            Err(e) => format!(
                "TLS with {} failed: {why} (uprun could not see which certificate the server offered: {e}). {checked}: give the CA that signed its certificate in `database.ca_file`, add `HostNameInCertificate=<the DNS name in the certificate>` to `database.connection` when it names the server differently than `Server=`, or, for a test server only, set `database.trust_server_certificate = true`",
                self.addr
            ),
        }
    }

    /// Remove the password from a driver message, should one ever echo it.
    pub(super) fn scrub(&self, text: &str) -> String {
        let pairs = ado::pairs(self.cfg.connection.expose()).unwrap_or_default();
        match ado::get(&pairs, &["password"]) {
            Some(pw) if pw.len() >= 3 => text.replace(pw, "***"),
            _ => text.to_string(),
        }
    }

    /// The main connection (reconnecting if a failure closed it).
    pub(super) fn take_conn(&mut self) -> Result<Conn> {
        match self.conn.take() {
            Some(c) => Ok(c),
            None => self.connect("uprun"),
        }
    }

    /// Run `f` on the main connection within `deadline`. A server error keeps
    /// the connection; anything else closes it.
    pub(super) fn call<T>(
        &mut self,
        deadline: Duration,
        f: impl for<'c> FnOnce(&'c mut Conn) -> LocalBoxFuture<'c, tiberius::Result<T>>,
    ) -> Result<std::result::Result<T, Failure>> {
        self.call_with(deadline, false, f)
    }

    /// `call`; `abortable`: a second Ctrl-C cancels it. Only for the work an
    /// operator may want to stop (a migration's batches, the verification and
    /// proof of a backup; the BACKUP itself does the same in `take_backup`):
    /// short reads and the ROLLBACK that cleans up after an abort run to their
    /// end.
    pub(super) fn call_with<T>(
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
            let acknowledged = self.cancel(conn);
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
                if self.cancel(conn) {
                    Err(Failure::Cancelled(deadline))
                } else {
                    Err(Failure::Deadline(deadline))
                }
            }
        })
    }

    /// Stop the work in flight on `conn`: dropping the request does not. The
    /// server answers the attention with DONE_ATTN once the request has
    /// stopped; only then is the connection reusable, and it is kept. Whether
    /// the server acknowledged within `ATTENTION_WAIT`.
    pub(super) fn cancel(&mut self, mut conn: Conn) -> bool {
        let ack = self
            .rt
            .block_on(async { tokio::time::timeout(ATTENTION_WAIT, conn.cancel_query()).await });
        let acknowledged = matches!(ack, Ok(Ok(())));
        if acknowledged {
            self.conn = Some(conn);
        }
        acknowledged
    }

    /// `call`, with failures turned into errors that say what was being done.
    pub(super) fn run<T>(
        &mut self,
        what: &str,
        deadline: Duration,
        f: impl for<'c> FnOnce(&'c mut Conn) -> LocalBoxFuture<'c, tiberius::Result<T>>,
    ) -> Result<T> {
        self.call(deadline, f)?.map_err(|e| self.fail(what, e))
    }

    pub(super) fn fail(&self, what: &str, f: Failure) -> Error {
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
    pub(super) fn roll_back(&mut self) -> Rolled {
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
    pub(super) fn edition(&mut self) -> Result<(i64, String)> {
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

    pub(super) fn refuse_read_only(&self, what: &str) -> Result<()> {
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
pub(super) async fn operator_abort() {
    while !crate::interrupt::abort_requested() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What an operator's abort did on the server.
pub(super) fn aborted_text(acknowledged: bool) -> &'static str {
    if acknowledged {
        "aborted by the operator (second Ctrl-C): uprun cancelled the request (TDS attention) and the server acknowledged that it stopped"
    } else {
        "aborted by the operator (second Ctrl-C): uprun cancelled the request (TDS attention) but the server did not acknowledge it, so the connection was closed (SQL Server rolls back what a session had open when it ends, unseen by uprun)"
    }
}

/// What uprun knows of a rollback of a migration's transaction.
pub(super) enum Rolled {
    /// The server answered `@@TRANCOUNT` 0 after the ROLLBACK.
    Confirmed,
    /// Not seen to happen: why.
    Unconfirmed(String),
}

impl Rolled {
    /// What happened to the transaction.
    pub(super) fn outcome(&self) -> String {
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
    pub(super) fn aftermath(&self) -> String {
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
pub(super) fn server_text(t: &tiberius::error::TokenError) -> String {
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

pub(super) fn broken_text(e: &tiberius::error::Error) -> String {
    match e {
        tiberius::error::Error::Io { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
