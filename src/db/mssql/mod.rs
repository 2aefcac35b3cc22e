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
//!
//! Files: `connection` (connecting, and the deadline and cancel around every
//! call), `browser` (SSRP), `sql` (the T-SQL text), `values` (reading rows),
//! `database` (the `Database` trait), `backup` (BACKUP, verification, proof),
//! `space` (will the backup fit), `tls` (what certificate the server offered
//! when the handshake fails).

mod backup;
mod browser;
mod connection;
mod database;
mod space;
mod sql;
mod tls;
mod values;

use std::time::Duration;

use tiberius::Client;
use tokio::net::TcpStream;
use tokio_util::compat::Compat;

use crate::config::mssql::ado::ServerAddr;
use crate::config::MssqlConfig;

pub use browser::{BROWSER_PORT, BROWSER_PORT_ENV};
pub use sql::*;

type Conn = Client<Compat<TcpStream>>;

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

impl std::fmt::Debug for MssqlDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MssqlDatabase({} on {})", self.name, self.addr)
    }
}
