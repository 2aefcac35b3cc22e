//! What the fake SQL Server answers: the scripted replies to each batch and
//! RPC the driver sends, over the state in `fake`.

use super::*;

pub(super) fn rows(cols: &[&str], rows: Vec<Vec<Value>>) -> Vec<Reply> {
    vec![Reply::rows(cols, rows)]
}

pub(super) fn param_str(params: &[Value], n: usize) -> String {
    params
        .get(n)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_string()
}

/// The fake server's answer to one request.
pub(super) fn answer(
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
pub(super) fn no_object(name: &str) -> Reply {
    Reply::error(208, 16, &format!("Invalid object name '{name}'."))
}

/// A batch of statements (transaction control, checks, migrations), run one
/// by one against the session and the fake data as SQL Server would.
pub(super) fn run_batch(fake: &Mutex<Fake>, ctx: &Ctx, sql: &str) -> Vec<Reply> {
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
pub(super) fn literals(values: &str) -> Vec<Value> {
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
pub(super) fn record(
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
