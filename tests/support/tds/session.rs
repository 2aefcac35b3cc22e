//! One connection served: the loop that reads requests and writes replies,
//! and the session's own state (transactions, the applock, attentions).

use super::*;

pub(super) fn serve(
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

    pub(super) fn commit(&mut self) -> Control {
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

    pub(super) fn rollback(&mut self) -> Control {
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
