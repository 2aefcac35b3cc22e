//! The reply tokens: DONE, INFO and ERROR messages, LOGINACK, and rows with
//! their column metadata.

use super::*;

pub(super) const DONE_MORE: u16 = 0x01;
pub(super) const DONE_ERROR: u16 = 0x02;
pub(super) const DONE_COUNT: u16 = 0x10;
pub(super) const DONE_ATTENTION: u16 = 0x20;

/// What a connection's thread serves with.
pub(super) struct Served<'a> {
    pub(super) log: &'a Mutex<Vec<Logged>>,
    pub(super) prelogins: &'a Mutex<Vec<String>>,
    pub(super) instance: Option<&'a str>,
    pub(super) handler: &'a Handler,
    /// Present: the server has a certificate and encrypts as SQL Server does
    /// (the whole connection, or only the login when the client asks for
    /// encryption off).
    pub(super) tls: Option<&'a Arc<rustls::ServerConfig>>,
    pub(super) encrypted: &'a Mutex<Vec<(usize, Encryption)>>,
}

pub(super) fn done(out: &mut Vec<u8>, status: u16, rows: u64) {
    out.push(0xFD);
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&rows.to_le_bytes());
}

pub(super) fn message(out: &mut Vec<u8>, token: u8, number: u32, class: u8, text: &str, line: u32) {
    message_in(out, token, number, class, text, line, "");
}

pub(super) fn message_in(
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

pub(super) fn login_ack(out: &mut Vec<u8>) {
    let mut body = vec![1u8];
    body.extend_from_slice(&0x7400_0004u32.to_be_bytes());
    b_varchar(&mut body, "Microsoft SQL Server");
    body.extend_from_slice(&[16, 0, 0x10, 0x00]);
    out.push(0xAD);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&body);
}

pub(super) const COLLATION: [u8; 5] = [0x09, 0x04, 0xd0, 0x00, 0x34];

/// The wire type of a result column.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum ColType {
    Int,
    Guid,
    Numeric,
    Bit,
    Text,
}

pub(super) const GUIDTYPE: u8 = 0x24;
pub(super) const NUMERICNTYPE: u8 = 0x6C;
pub(super) const BITNTYPE: u8 = 0x68;
/// numeric(25,0): 13 bytes on the wire (sign + 12 bytes of magnitude).
pub(super) const NUMERIC_PRECISION: u8 = 25;
pub(super) const NUMERIC_LEN: u8 = 13;

/// A GUID's 16 bytes as SQL Server sends them (first three groups little-endian).
pub(super) fn guid_bytes(text: &str) -> [u8; 16] {
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

pub(super) fn rows_tokens(out: &mut Vec<u8>, columns: &[String], rows: &[Vec<Value>]) {
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
pub(super) fn encode(replies: &[Reply], nocount: bool) -> Option<Vec<u8>> {
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
