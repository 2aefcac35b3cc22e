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

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const PACKET_SQL_BATCH: u8 = 0x01;
const PACKET_RPC: u8 = 0x03;
const PACKET_REPLY: u8 = 0x04;
const PACKET_ATTENTION: u8 = 0x06;
const PACKET_LOGIN7: u8 = 0x10;
const PACKET_PRELOGIN: u8 = 0x12;

const DONE_MORE: u16 = 0x01;
const DONE_ERROR: u16 = 0x02;
const DONE_COUNT: u16 = 0x10;
const DONE_ATTENTION: u16 = 0x20;

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

fn read_packet(stream: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; 8];
        stream.read_exact(&mut header)?;
        let len = u16::from_be_bytes([header[2], header[3]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(8)];
        stream.read_exact(&mut body)?;
        payload.extend_from_slice(&body);
        if header[1] & 0x01 == 0x01 {
            return Ok((header[0], payload));
        }
    }
}

fn write_message(stream: &mut impl Write, ty: u8, payload: &[u8]) -> std::io::Result<()> {
    const MAX: usize = 4096 - 8;
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![&[][..]]
    } else {
        payload.chunks(MAX).collect()
    };
    let last = chunks.len() - 1;
    for (n, chunk) in chunks.iter().enumerate() {
        let mut packet = Vec::with_capacity(chunk.len() + 8);
        packet.push(ty);
        packet.push(if n == last { 0x01 } else { 0x00 });
        packet.extend_from_slice(&((chunk.len() + 8) as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0, (n + 1) as u8, 0]);
        packet.extend_from_slice(chunk);
        stream.write_all(&packet)?;
    }
    stream.flush()
}

/// Packets that do not end the message (status 0x00): the client reads
/// what is in them and waits for more.
fn write_partial(stream: &mut impl Write, ty: u8, payload: &[u8]) -> std::io::Result<()> {
    for (n, chunk) in payload.chunks(4096 - 8).enumerate() {
        let mut packet = Vec::with_capacity(chunk.len() + 8);
        packet.push(ty);
        packet.push(0x00);
        packet.extend_from_slice(&((chunk.len() + 8) as u16).to_be_bytes());
        packet.extend_from_slice(&[0, 0, (n + 1) as u8, 0]);
        packet.extend_from_slice(chunk);
        stream.write_all(&packet)?;
    }
    stream.flush()
}

/// The INFO and ERROR tokens of `replies` (the rest is left out).
fn messages(out: &mut Vec<u8>, replies: &[Reply]) {
    for r in replies {
        match r {
            Reply::Info { number, message: m } => message(out, 0xAB, *number, 0, m, 1),
            Reply::Error {
                number,
                class,
                message: m,
                line,
            } => message(out, 0xAA, *number, *class, m, *line),
            _ => {}
        }
    }
}

fn utf16(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16_lossy(&units)
}

fn put_utf16(out: &mut Vec<u8>, s: &str) {
    for u in s.encode_utf16() {
        out.extend_from_slice(&u.to_le_bytes());
    }
}

fn b_varchar(out: &mut Vec<u8>, s: &str) {
    out.push(s.encode_utf16().count() as u8);
    put_utf16(out, s);
}

fn us_varchar(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.encode_utf16().count() as u16).to_le_bytes());
    put_utf16(out, s);
}

/// A Login7 string field: offset and length (in characters) at `at`.
fn login_field(p: &[u8], at: usize) -> String {
    let off = u16::from_le_bytes([p[at], p[at + 1]]) as usize;
    let len = u16::from_le_bytes([p[at + 2], p[at + 3]]) as usize * 2;
    p.get(off..off + len).map(utf16).unwrap_or_default()
}

/// The Login7 password (offset at 44): each byte XOR 0xA5, nibbles swapped.
fn login_password(p: &[u8]) -> String {
    let off = u16::from_le_bytes([p[44], p[45]]) as usize;
    let len = u16::from_le_bytes([p[46], p[47]]) as usize * 2;
    let bytes: Vec<u8> = p
        .get(off..off + len)
        .unwrap_or_default()
        .iter()
        .map(|b| (b ^ 0xA5).rotate_left(4))
        .collect();
    utf16(&bytes)
}

const PRELOGIN_INSTOPT: u8 = 0x02;

/// The bytes of option `option` of a client prelogin (empty when absent).
fn prelogin_option(p: &[u8], option: u8) -> &[u8] {
    let mut at = 0;
    while let Some(&token) = p.get(at) {
        if token == 0xff || at + 5 > p.len() {
            break;
        }
        let offset = u16::from_be_bytes([p[at + 1], p[at + 2]]) as usize;
        let len = u16::from_be_bytes([p[at + 3], p[at + 4]]) as usize;
        if token == option {
            return p.get(offset..offset + len).unwrap_or_default();
        }
        at += 5;
    }
    &[]
}

/// The instance name of a client prelogin ("" when none).
fn prelogin_instance(p: &[u8]) -> String {
    let bytes = prelogin_option(p, PRELOGIN_INSTOPT);
    let name = bytes.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(name).into_owned()
}

const ENCRYPT_OFF: u8 = 0x00;
const ENCRYPT_ON: u8 = 0x01;
const ENCRYPT_NOT_SUP: u8 = 0x02;

/// The connection as it stands: plain TCP, or TLS (after the handshake that
/// travelled in PRELOGIN packets).
enum Wire {
    Raw(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Wire {
    /// Back to plain TCP (after the login, when only the login was to be
    /// encrypted).
    fn into_raw(self) -> Wire {
        match self {
            Wire::Tls(s) => Wire::Raw(s.sock),
            raw => raw,
        }
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Wire::Raw(s) => s.read(buf),
            Wire::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Wire::Raw(s) => s.write(buf),
            Wire::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Wire::Raw(s) => s.flush(),
            Wire::Tls(s) => s.flush(),
        }
    }
}

/// The server side of the TLS handshake as SQL Server (TDS 7.x) runs it: the
/// TLS records travel inside PRELOGIN packets until the handshake is done.
/// Fails when the client gives up (it rejected the certificate).
fn tls_handshake(mut tcp: TcpStream, config: &Arc<rustls::ServerConfig>) -> std::io::Result<Wire> {
    let other = |e: rustls::Error| std::io::Error::other(e.to_string());
    let mut conn = rustls::ServerConnection::new(config.clone()).map_err(other)?;
    while conn.is_handshaking() {
        let (_, payload) = read_packet(&mut tcp)?;
        let mut at = &payload[..];
        while !at.is_empty() {
            conn.read_tls(&mut at)?;
        }
        let processed = conn.process_new_packets();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out)?;
        }
        if !out.is_empty() {
            write_message(&mut tcp, PACKET_PRELOGIN, &out)?;
        }
        processed.map_err(other)?;
    }
    Ok(Wire::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
}

/// Version and encryption (`ENCRYPT_NOT_SUP` without TLS); for a named instance also the
/// instance check (0x00 valid, 0x01 not this instance), the thread id and
/// MARS, in the order and layout SQL Server uses.
fn prelogin_reply(instance_check: Option<bool>, encryption: u8) -> Vec<u8> {
    let version = [16, 0, 0x10, 0x00, 0, 0]; // 16.0.4096
    match instance_check {
        None => {
            // Two options + terminator = 11 bytes of table.
            let mut p = vec![0x00, 0, 11, 0, 6, 0x01, 0, 17, 0, 1, 0xff];
            p.extend_from_slice(&version);
            p.push(encryption);
            p
        }
        Some(valid) => {
            // Five options + terminator = 26 bytes of table.
            let mut p = vec![
                0x00,
                0,
                26,
                0,
                6, // version
                0x01,
                0,
                32,
                0,
                1, // encryption
                PRELOGIN_INSTOPT,
                0,
                33,
                0,
                1, // instance check
                0x03,
                0,
                34,
                0,
                0, // thread id (empty from a server)
                0x04,
                0,
                34,
                0,
                1, // MARS
                0xff,
            ];
            p.extend_from_slice(&version);
            p.push(encryption);
            p.push(if valid { 0x00 } else { 0x01 });
            p.push(0x00); // MARS off
            p
        }
    }
}

/// What a connection's thread serves with.
struct Served<'a> {
    log: &'a Mutex<Vec<Logged>>,
    prelogins: &'a Mutex<Vec<String>>,
    instance: Option<&'a str>,
    handler: &'a Handler,
    /// Present: the server has a certificate and encrypts as SQL Server does
    /// (the whole connection, or only the login when the client asks for
    /// encryption off).
    tls: Option<&'a Arc<rustls::ServerConfig>>,
    encrypted: &'a Mutex<Vec<(usize, Encryption)>>,
}

fn done(out: &mut Vec<u8>, status: u16, rows: u64) {
    out.push(0xFD);
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&rows.to_le_bytes());
}

fn message(out: &mut Vec<u8>, token: u8, number: u32, class: u8, text: &str, line: u32) {
    message_in(out, token, number, class, text, line, "");
}

fn message_in(
    out: &mut Vec<u8>,
    token: u8,
    number: u32,
    class: u8,
    text: &str,
    line: u32,
    procedure: &str,
) {
    let mut body = Vec::new();
    body.extend_from_slice(&number.to_le_bytes());
    body.push(1); // state
    body.push(class);
    us_varchar(&mut body, text);
    b_varchar(&mut body, "mock");
    b_varchar(&mut body, procedure);
    body.extend_from_slice(&line.to_le_bytes());
    out.push(token);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
}

fn login_ack(out: &mut Vec<u8>) {
    let mut body = vec![1u8];
    body.extend_from_slice(&0x7400_0004u32.to_be_bytes());
    b_varchar(&mut body, "Microsoft SQL Server");
    body.extend_from_slice(&[16, 0, 0x10, 0x00]);
    out.push(0xAD);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
}

const COLLATION: [u8; 5] = [0x09, 0x04, 0xd0, 0x00, 0x34];

/// The wire type of a result column.
#[derive(Clone, Copy, PartialEq)]
enum ColType {
    Int,
    Guid,
    Numeric,
    Bit,
    Text,
}

const GUIDTYPE: u8 = 0x24;
const NUMERICNTYPE: u8 = 0x6C;
const BITNTYPE: u8 = 0x68;
/// numeric(25,0): 13 bytes on the wire (sign + 12 bytes of magnitude).
const NUMERIC_PRECISION: u8 = 25;
const NUMERIC_LEN: u8 = 13;

/// A GUID's 16 bytes as SQL Server sends them (first three groups little-endian).
fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    assert_eq!(hex.len(), 32, "tds mock: bad GUID {text:?}");
    let mut b = [0u8; 16];
    for (n, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * n..2 * n + 2], 16).expect("tds mock: GUID hex");
    }
    b.swap(0, 3);
    b.swap(1, 2);
    b.swap(4, 5);
    b.swap(6, 7);
    b
}

fn rows_tokens(out: &mut Vec<u8>, columns: &[String], rows: &[Vec<Value>]) {
    let types: Vec<ColType> = (0..columns.len())
        .map(
            |c| match rows.iter().map(|r| &r[c]).find(|v| **v != Value::Null) {
                Some(Value::Int(_)) => ColType::Int,
                Some(Value::Guid(_)) => ColType::Guid,
                Some(Value::Numeric(_)) => ColType::Numeric,
                Some(Value::Bit(_)) => ColType::Bit,
                _ => ColType::Text,
            },
        )
        .collect();
    out.push(0x81);
    out.extend_from_slice(&(columns.len() as u16).to_le_bytes());
    for (c, name) in columns.iter().enumerate() {
        out.extend_from_slice(&0u32.to_le_bytes()); // user type
        out.extend_from_slice(&0x0001u16.to_le_bytes()); // nullable
        match types[c] {
            ColType::Int => out.extend_from_slice(&[0x26, 8]), // INTN(8): bigint
            ColType::Guid => out.extend_from_slice(&[GUIDTYPE, 16]),
            ColType::Numeric => {
                out.extend_from_slice(&[NUMERICNTYPE, NUMERIC_LEN, NUMERIC_PRECISION, 0])
            }
            ColType::Bit => out.extend_from_slice(&[BITNTYPE, 1]),
            ColType::Text => {
                out.push(0xE7); // NVARCHAR(4000)
                out.extend_from_slice(&8000u16.to_le_bytes());
                out.extend_from_slice(&COLLATION);
            }
        }
        b_varchar(out, name);
    }
    for row in rows {
        out.push(0xD1);
        for (c, v) in row.iter().enumerate() {
            match (types[c], v) {
                (ColType::Int, Value::Int(n)) => {
                    out.push(8);
                    out.extend_from_slice(&n.to_le_bytes());
                }
                (ColType::Guid, Value::Guid(g)) => {
                    out.push(16);
                    out.extend_from_slice(&guid_bytes(g));
                }
                (ColType::Numeric, Value::Numeric(n)) => {
                    out.push(NUMERIC_LEN);
                    out.push(if *n < 0 { 0 } else { 1 });
                    out.extend_from_slice(&n.unsigned_abs().to_le_bytes()[..12]);
                }
                (ColType::Bit, Value::Bit(b)) => out.extend_from_slice(&[1, u8::from(*b)]),
                (ColType::Text, Value::Null) => out.extend_from_slice(&0xffffu16.to_le_bytes()),
                (ColType::Text, v) => {
                    let text = match v {
                        Value::Str(s) | Value::Guid(s) => s.clone(),
                        Value::Int(n) => n.to_string(),
                        Value::Numeric(n) => n.to_string(),
                        Value::Bit(b) => u8::from(*b).to_string(),
                        Value::Null => String::new(),
                    };
                    let mut bytes = Vec::new();
                    put_utf16(&mut bytes, &text);
                    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
                    out.extend_from_slice(&bytes);
                }
                // NULL (or a value of another type) in a typed column.
                (_, _) => out.push(0),
            }
        }
    }
    done(out, DONE_MORE | DONE_COUNT, rows.len() as u64);
}

/// Encode replies; None when the connection is to be dropped.
fn encode(replies: &[Reply], nocount: bool) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut failed = false;
    for r in replies {
        match r {
            Reply::Rows { columns, rows } => rows_tokens(&mut out, columns, rows),
            Reply::Info { number, message: m } => message(&mut out, 0xAB, *number, 0, m, 1),
            Reply::Error {
                number,
                class,
                message: m,
                line,
            } => {
                failed = true;
                message(&mut out, 0xAA, *number, *class, m, *line);
            }
            // Under SET NOCOUNT ON the server sends no count (0, flag clear).
            Reply::ErrorIn {
                number,
                class,
                message: m,
                line,
                procedure,
            } => {
                failed = true;
                message_in(&mut out, 0xAA, *number, *class, m, *line, procedure);
            }
            Reply::Count(_) if nocount => done(&mut out, DONE_MORE, 0),
            Reply::Count(n) => done(&mut out, DONE_MORE | DONE_COUNT, *n),
            Reply::Disconnect => return None,
            Reply::Hang => {}
        }
    }
    done(&mut out, if failed { DONE_ERROR } else { 0 }, 0);
    Some(out)
}

/// Skip ALL_HEADERS at the start of a batch or RPC payload.
fn skip_headers(p: &[u8]) -> usize {
    let len = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as usize;
    len.min(p.len())
}

struct Cursor<'a> {
    p: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn u8(&mut self) -> u8 {
        let v = self.p[self.at];
        self.at += 1;
        v
    }
    fn u16(&mut self) -> u16 {
        let v = u16::from_le_bytes([self.p[self.at], self.p[self.at + 1]]);
        self.at += 2;
        v
    }
    fn u32(&mut self) -> u32 {
        let b = &self.p[self.at..self.at + 4];
        self.at += 4;
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn u64(&mut self) -> u64 {
        let lo = self.u32() as u64;
        let hi = self.u32() as u64;
        lo | (hi << 32)
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let b = &self.p[self.at..self.at + n];
        self.at += n;
        b
    }
    fn done(&self) -> bool {
        self.at >= self.p.len()
    }

    /// One RPC parameter value after its TYPE_INFO.
    fn value(&mut self) -> Value {
        let ty = self.u8();
        match ty {
            0x26 | 0x68 | 0x6D => {
                let _max = self.u8();
                let len = self.u8() as usize;
                let b = self.bytes(len).to_vec();
                match (ty, len) {
                    (_, 0) => Value::Null,
                    (0x26, _) | (0x68, _) => {
                        let mut buf = [0u8; 8];
                        buf[..len].copy_from_slice(&b);
                        // Sign-extend narrower integers.
                        let v = i64::from_le_bytes(buf);
                        let shift = 64 - 8 * len as u32;
                        Value::Int((v << shift) >> shift)
                    }
                    _ => Value::Str(format!("<float {len} bytes>")),
                }
            }
            0xE7 | 0xEF => {
                let max = self.u16();
                let _collation = self.bytes(5);
                if max == 0xffff {
                    let total = self.u64();
                    if total == u64::MAX {
                        return Value::Null;
                    }
                    let mut data = Vec::new();
                    loop {
                        let n = self.u32() as usize;
                        if n == 0 {
                            break;
                        }
                        data.extend_from_slice(self.bytes(n));
                    }
                    Value::Str(utf16(&data))
                } else {
                    let n = self.u16();
                    if n == 0xffff {
                        return Value::Null;
                    }
                    Value::Str(utf16(self.bytes(n as usize)))
                }
            }
            other => panic!("tds mock: parameter type 0x{other:02x} not supported"),
        }
    }
}

fn decode_rpc(p: &[u8]) -> Request {
    let mut c = Cursor {
        p,
        at: skip_headers(p),
    };
    let id_or_len = c.u16();
    if id_or_len == 0xffff {
        let id = c.u16();
        assert_eq!(id, 10, "tds mock: only sp_executesql (10) is supported");
    } else {
        let _name = c.bytes(id_or_len as usize * 2);
    }
    let _flags = c.u16();
    let mut values = Vec::new();
    while !c.done() {
        let name_len = c.u8() as usize;
        let _name = c.bytes(name_len * 2);
        let _status = c.u8();
        values.push(c.value());
    }
    let mut it = values.into_iter();
    let sql = it.next().and_then(|v| v.as_str().map(str::to_string));
    let declaration = it
        .next()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    Request::Rpc {
        sql: sql.unwrap_or_default(),
        declaration,
        params: it.collect(),
    }
}

fn serve(
    tcp: TcpStream,
    conn: usize,
    server: &Served,
    session: &Arc<Mutex<Session>>,
) -> std::io::Result<()> {
    let (log, handler) = (server.log, server.handler);
    let mut app = String::new();
    let mut stream = Wire::Raw(tcp);
    // Encryption for the login only: back to plain TCP once it is read.
    let mut login_only = false;
    loop {
        let (ty, payload) = read_packet(&mut stream)?;
        let request = match ty {
            PACKET_PRELOGIN => {
                let asked = prelogin_instance(&payload);
                let check = server
                    .instance
                    .map(|me| asked.is_empty() || asked.eq_ignore_ascii_case(me));
                server
                    .prelogins
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(asked);
                let wanted = prelogin_option(&payload, 0x01).first().copied();
                let encryption = match (server.tls, wanted) {
                    (None, _) | (Some(_), Some(ENCRYPT_NOT_SUP)) => ENCRYPT_NOT_SUP,
                    // As SQL Server without "Force Encryption": the client
                    // that asks for encryption off gets the login encrypted.
                    (Some(_), Some(ENCRYPT_OFF)) => ENCRYPT_OFF,
                    (Some(_), _) => ENCRYPT_ON,
                };
                write_message(
                    &mut stream,
                    PACKET_REPLY,
                    &prelogin_reply(check, encryption),
                )?;
                if let (Some(config), true) = (server.tls, encryption != ENCRYPT_NOT_SUP) {
                    let Wire::Raw(tcp) = stream else {
                        return Ok(()); // a second prelogin: not SQL Server's way
                    };
                    stream = tls_handshake(tcp, config)?;
                    login_only = encryption == ENCRYPT_OFF;
                    server
                        .encrypted
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((
                            conn,
                            if login_only {
                                Encryption::LoginOnly
                            } else {
                                Encryption::All
                            },
                        ));
                }
                continue;
            }
            PACKET_LOGIN7 => {
                if login_only {
                    stream = stream.into_raw();
                }
                app = login_field(&payload, 48);
                let database = login_field(&payload, 68);
                session
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .database
                    .clone_from(&database);
                Request::Login {
                    user: login_field(&payload, 40),
                    app: app.clone(),
                    database,
                    password: login_password(&payload),
                }
            }
            PACKET_SQL_BATCH => Request::Batch(utf16(&payload[skip_headers(&payload)..])),
            PACKET_RPC => decode_rpc(&payload),
            PACKET_ATTENTION => Request::Attention,
            other => panic!("tds mock: packet type 0x{other:02x} not supported"),
        };
        log.lock().unwrap_or_else(|e| e.into_inner()).push(Logged {
            conn,
            app: app.clone(),
            request: request.clone(),
        });
        let ctx = Ctx {
            conn,
            app: app.clone(),
            session: session.clone(),
        };
        let replies = match &request {
            Request::Attention => {
                {
                    // As SQL Server: the request stops; under XACT_ABORT its
                    // transaction is rolled back.
                    let mut s = session.lock().unwrap_or_else(|e| e.into_inner());
                    s.attentions += 1;
                    if s.xact_abort {
                        s.trancount = 0;
                        s.doomed = false;
                    }
                }
                // The handler hears of it too (to drop what was rolled back),
                // and may say what the server reports of the stopped request.
                let said = handler(&ctx, &request);
                let mut out = Vec::new();
                messages(&mut out, &said);
                done(&mut out, DONE_ATTENTION, 0);
                write_message(&mut stream, PACKET_REPLY, &out)?;
                continue;
            }
            _ => handler(&ctx, &request),
        };
        if let Some(at) = replies.iter().position(|r| matches!(r, Reply::Hang)) {
            // Still "running": what came so far goes out, the message stays
            // open, and the next packet may cancel it.
            let mut so_far = Vec::new();
            messages(&mut so_far, &replies[..at]);
            if !so_far.is_empty() {
                write_partial(&mut stream, PACKET_REPLY, &so_far)?;
            }
            continue;
        }
        let nocount = session.lock().unwrap_or_else(|e| e.into_inner()).nocount;
        let Some(mut body) = encode(&replies, nocount) else {
            return Ok(()); // dropped: the stream closes here
        };
        if let Request::Login { .. } = request {
            if replies
                .iter()
                .any(|r| matches!(r, Reply::Error { .. } | Reply::ErrorIn { .. }))
            {
                write_message(&mut stream, PACKET_REPLY, &body)?;
                return Ok(());
            }
            let mut out = Vec::new();
            login_ack(&mut out);
            out.append(&mut body);
            body = out;
        }
        write_message(&mut stream, PACKET_REPLY, &body)?;
    }
}

/// What SQL Server keeps per session that uprun's correctness depends on:
/// the transaction nesting and whether it can still commit, the SET options
/// that change what the server sends, and the current database. The handler
/// runs statements against it with `Session::control` (transactions, SET,
/// USE); the fake database behind the handler keeps what a session wrote
/// apart until `Control::Committed`, and drops it on `Control::RolledBack` or
/// when the session ends (`closed`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Session {
    /// `@@TRANCOUNT`.
    pub trancount: u32,
    /// The transaction can no longer commit (`XACT_STATE()` = -1).
    pub doomed: bool,
    /// `SET XACT_ABORT`: a runtime error rolls the whole transaction back.
    pub xact_abort: bool,
    /// `SET NOCOUNT`: DONE tokens carry no row count.
    pub nocount: bool,
    /// `DB_NAME()`: the login's database, then each `USE`.
    pub database: String,
    /// The connection has ended; anything open was rolled back.
    pub closed: bool,
    /// A transaction was open when the connection ended.
    pub rolled_back_at_close: bool,
    /// Attention (cancel) packets received.
    pub attentions: u32,
    /// `SET LOCK_TIMEOUT` (milliseconds), if set.
    pub lock_timeout_ms: Option<i64>,
}

/// What a session or transaction statement did, for the fake database.
#[derive(Debug, Clone)]
pub enum Control {
    /// Done; nothing for the data.
    Done,
    /// The outermost COMMIT: what the session wrote is now durable.
    Committed,
    /// ROLLBACK: what the session wrote in its transaction is gone.
    RolledBack,
    /// The server's error for the statement.
    Failed(Reply),
}

impl Session {
    /// `XACT_STATE()`: 1 committable, 0 none, -1 doomed.
    pub fn xact_state(&self) -> i64 {
        match (self.trancount, self.doomed) {
            (0, _) => 0,
            (_, true) => -1,
            _ => 1,
        }
    }

    /// Run `stmt` if it is a transaction, SET or USE statement (None for any
    /// other). Follows SQL Server: COMMIT only makes changes durable at the
    /// outermost level, ROLLBACK ends every level, COMMIT or ROLLBACK without
    /// a transaction is error 3902/3903.
    pub fn control(&mut self, stmt: &str) -> Option<Control> {
        let words: Vec<String> = stmt
            .split_whitespace()
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        let tran =
            |rest: &[&str]| rest.is_empty() || matches!(rest[0], "TRAN" | "TRANSACTION" | "WORK");
        match w.as_slice() {
            ["BEGIN", "TRAN" | "TRANSACTION", ..] => {
                self.trancount += 1;
                Some(Control::Done)
            }
            ["COMMIT", rest @ ..] if tran(rest) => Some(self.commit()),
            ["ROLLBACK", rest @ ..] if tran(rest) => Some(self.rollback()),
            ["IF", "@@TRANCOUNT", ">", "0", "ROLLBACK", rest @ ..] if tran(rest) => {
                Some(if self.trancount > 0 {
                    self.rollback()
                } else {
                    Control::Done
                })
            }
            ["SET", "LOCK_TIMEOUT", ms] => {
                self.lock_timeout_ms = ms.parse().ok();
                Some(Control::Done)
            }
            ["SET", option, value] if matches!(*value, "ON" | "OFF") => {
                let on = *value == "ON";
                match *option {
                    "NOCOUNT" => self.nocount = on,
                    "XACT_ABORT" => self.xact_abort = on,
                    _ => {}
                }
                Some(Control::Done)
            }
            ["USE", _] => {
                let raw = stmt.split_whitespace().nth(1).unwrap_or_default();
                let name = raw
                    .strip_prefix('[')
                    .and_then(|r| r.strip_suffix(']'))
                    .map(|r| r.replace("]]", "]"))
                    .unwrap_or_else(|| raw.to_string());
                self.database = name;
                Some(Control::Done)
            }
            _ => None,
        }
    }

    fn commit(&mut self) -> Control {
        if self.trancount == 0 {
            return Control::Failed(Reply::error(
                3902,
                16,
                "The COMMIT TRANSACTION request has no corresponding BEGIN TRANSACTION.",
            ));
        }
        if self.doomed {
            return Control::Failed(Reply::error(
                3930,
                16,
                "The current transaction cannot be committed and cannot support operations that write to the log file. Roll back the transaction.",
            ));
        }
        self.trancount -= 1;
        if self.trancount == 0 {
            Control::Committed
        } else {
            Control::Done
        }
    }

    fn rollback(&mut self) -> Control {
        if self.trancount == 0 {
            return Control::Failed(Reply::error(
                3903,
                16,
                "The ROLLBACK TRANSACTION request has no corresponding BEGIN TRANSACTION.",
            ));
        }
        self.trancount = 0;
        self.doomed = false;
        Control::RolledBack
    }

    /// A runtime error in a statement: under XACT_ABORT the transaction is
    /// rolled back (RolledBack), otherwise it stays as it was (Done).
    pub fn runtime_error(&mut self) -> Control {
        if self.xact_abort && self.trancount > 0 {
            self.trancount = 0;
            self.doomed = false;
            Control::RolledBack
        } else {
            Control::Done
        }
    }
}

/// The statements of a batch for the model: split on `;` (strings in the
/// scripts tests send hold none), comment lines dropped, blanks trimmed.
pub fn statements(batch: &str) -> Vec<String> {
    batch
        .split(';')
        .map(|st| {
            st.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
                .trim()
                .to_string()
        })
        .filter(|st| !st.is_empty())
        .collect()
}
