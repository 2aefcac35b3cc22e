//! A scripted TDS responder on 127.0.0.1: just enough of SQL Server's wire
//! protocol for uprun's driver (tiberius) to log in, send SQL batches and
//! `sp_executesql` calls, and read back rows, INFO and ERROR messages and
//! DONE tokens. Without a certificate the prelogin answers "encryption not
//! supported"; with one (`start_tls`) it encrypts as SQL Server 2016-2022
//! does with TDS 7.x: the TLS handshake travels in PRELOGIN packets, then TLS
//! runs directly on the connection, for all of it, or for the login only when
//! the client asks for encryption off (`Encrypt=Optional`).
//!
//! Started with an instance name (`start_instance`), it answers the prelogin's
//! instance option as SQL Server does: valid when the client names no
//! instance or this one, invalid otherwise.
//!
//! Every request is logged (connection number, application name, SQL,
//! parameters) so tests can assert the exact SQL sent; a handler chosen by the
//! test decides the replies. The handler runs on the connection's own thread
//! and may block (on a channel) to hold a request open while another
//! connection is served.
//!
//! `packets` frames and parses the wire, `tls` is the prelogin and the
//! encryption, `tokens` encodes the replies, and `session` serves one
//! connection over the state of `Session`.

#![allow(dead_code)]

mod packets;
mod session;
mod tls;
mod tokens;

use packets::*;
use session::*;
pub use session::{statements, Control, Session};
use tls::*;
use tokens::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A parameter or a cell value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Str(String),
    /// A uniqueidentifier, written `6F9619FF-8B86-D011-B42D-00C04FC964FF`.
    Guid(String),
    /// A numeric(25,0), as `RESTORE HEADERONLY` returns LSNs.
    Numeric(i128),
    /// A bit.
    Bit(bool),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

pub fn s(v: &str) -> Value {
    Value::Str(v.to_string())
}

pub fn i(v: i64) -> Value {
    Value::Int(v)
}

pub fn guid(v: &str) -> Value {
    Value::Guid(v.to_string())
}

pub fn numeric(v: i128) -> Value {
    Value::Numeric(v)
}

pub fn bit(v: bool) -> Value {
    Value::Bit(v)
}

/// What a client sent.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// A login: user, application name, database, and the password as the
    /// client sent it (unscrambled).
    Login {
        user: String,
        app: String,
        database: String,
        password: String,
    },
    /// A plain SQL batch.
    Batch(String),
    /// `sp_executesql`: the statement, its parameter declaration and values.
    Rpc {
        sql: String,
        declaration: String,
        params: Vec<Value>,
    },
    /// The client cancelled the running request.
    Attention,
}

impl Request {
    /// The SQL text of a batch or an `sp_executesql` call.
    pub fn sql(&self) -> Option<&str> {
        match self {
            Request::Batch(s) => Some(s),
            Request::Rpc { sql, .. } => Some(sql),
            _ => None,
        }
    }
}

/// One logged request.
#[derive(Debug, Clone)]
pub struct Logged {
    /// Connection number, from 1 in accept order.
    pub conn: usize,
    /// Application name the connection logged in with.
    pub app: String,
    pub request: Request,
}

/// One part of a reply.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A result set; column types follow the first non-null value
    /// (integers as bigint, GUIDs as uniqueidentifier, numerics as
    /// numeric(25,0), bits as bit, everything else as nvarchar).
    Rows {
        columns: Vec<String>,
        rows: Vec<Vec<Value>>,
    },
    /// An informational message (like BACKUP's "10 percent processed.").
    Info { number: u32, message: String },
    /// A server error.
    Error {
        number: u32,
        class: u8,
        message: String,
        line: u32,
    },
    /// A server error raised inside a procedure, function or trigger (its
    /// name; the line is the procedure's).
    ErrorIn {
        number: u32,
        class: u8,
        message: String,
        line: u32,
        procedure: String,
    },
    /// A statement done, with a row count.
    Count(u64),
    /// Close the connection without answering (a dropped connection).
    Disconnect,
    /// Answer nothing more: the request runs until the client cancels it (an
    /// attention, answered with DONE_ATTN) or goes away. What comes before it
    /// in the reply is sent at once in a packet that does not end the message
    /// (as SQL Server streams a long BACKUP's "N percent processed." INFO
    /// messages); to an attention, the handler's INFO and ERROR replies go
    /// before the DONE_ATTN (as the server reports error 3204 "The backup or
    /// restore was aborted.").
    Hang,
}

impl Reply {
    pub fn rows(columns: &[&str], rows: Vec<Vec<Value>>) -> Reply {
        Reply::Rows {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows,
        }
    }
    pub fn error(number: u32, class: u8, message: &str) -> Reply {
        Reply::Error {
            number,
            class,
            message: message.to_string(),
            line: 1,
        }
    }
    pub fn info(number: u32, message: &str) -> Reply {
        Reply::Info {
            number,
            message: message.to_string(),
        }
    }
}

/// Who is asking, for the handler.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub conn: usize,
    pub app: String,
    /// The connection's session state (see `Session`), which the handler
    /// reads and changes; the responder reads `nocount` from it.
    pub session: Arc<Mutex<Session>>,
}

pub type Handler = Arc<dyn Fn(&Ctx, &Request) -> Vec<Reply> + Send + Sync>;

/// The responder. It serves until the test process ends.
pub struct TdsServer {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Logged>>>,
    prelogins: Arc<Mutex<Vec<String>>>,
    encrypted: Encrypted,
    sessions: Sessions,
}

/// How each connection that completed a TLS handshake was encrypted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Encryption {
    /// TLS for the whole connection.
    All,
    /// TLS for the login only, then plain TCP (`Encrypt=Optional`).
    LoginOnly,
}

type Encrypted = Arc<Mutex<Vec<(usize, Encryption)>>>;

/// Every connection's session, by connection number.
type Sessions = Arc<Mutex<Vec<(usize, Arc<Mutex<Session>>)>>>;

impl TdsServer {
    pub fn start(handler: Handler) -> TdsServer {
        TdsServer::spawn(handler, None, None)
    }

    /// A server that is the named instance `instance`.
    pub fn start_instance(handler: Handler, instance: &str) -> TdsServer {
        TdsServer::spawn(handler, Some(instance.to_string()), None)
    }

    /// A server with a certificate (see `Served::tls`).
    pub fn start_tls(handler: Handler, tls: Arc<rustls::ServerConfig>) -> TdsServer {
        TdsServer::spawn(handler, None, Some(tls))
    }

    fn spawn(
        handler: Handler,
        instance: Option<String>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> TdsServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let prelogins = Arc::new(Mutex::new(Vec::new()));
        let counter = Arc::new(AtomicUsize::new(0));
        let sessions: Sessions = Arc::new(Mutex::new(Vec::new()));
        let sessions2 = sessions.clone();
        let (log2, prelogins2) = (log.clone(), prelogins.clone());
        let encrypted: Encrypted = Arc::new(Mutex::new(Vec::new()));
        let encrypted2 = encrypted.clone();
        let instance = Arc::new(instance);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let conn = counter.fetch_add(1, Ordering::SeqCst) + 1;
                let (log, handler) = (log2.clone(), handler.clone());
                let (prelogins, instance) = (prelogins2.clone(), instance.clone());
                let tls = tls.clone();
                let encrypted = encrypted2.clone();
                let session = Arc::new(Mutex::new(Session::default()));
                sessions2
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((conn, session.clone()));
                std::thread::spawn(move || {
                    let server = Served {
                        log: &log,
                        prelogins: &prelogins,
                        instance: instance.as_deref(),
                        handler: &handler,
                        tls: tls.as_ref(),
                        encrypted: &encrypted,
                    };
                    let _ = serve(stream, conn, &server, &session);
                    // As SQL Server does when a session ends: what is open is
                    // rolled back.
                    let mut s = session.lock().unwrap_or_else(|e| e.into_inner());
                    s.closed = true;
                    s.rolled_back_at_close = s.trancount > 0;
                    s.trancount = 0;
                    s.doomed = false;
                });
            }
        });
        TdsServer {
            addr,
            log,
            prelogins,
            encrypted,
            sessions,
        }
    }

    /// The session state of connection `conn` (None before it connected).
    pub fn session(&self, conn: usize) -> Option<Session> {
        let all = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        all.iter()
            .find(|(c, _)| *c == conn)
            .map(|(_, s)| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// The instance name of every prelogin received ("" when none was sent).
    pub fn prelogin_instances(&self) -> Vec<String> {
        self.prelogins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The connections that completed a TLS handshake, and how.
    pub fn encrypted(&self) -> Vec<(usize, Encryption)> {
        self.encrypted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Everything received so far, in order.
    pub fn log(&self) -> Vec<Logged> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The SQL of every batch and `sp_executesql` call, in order.
    pub fn sql(&self) -> Vec<String> {
        self.log()
            .iter()
            .filter_map(|l| l.request.sql().map(str::to_string))
            .collect()
    }
}
