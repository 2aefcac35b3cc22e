//! The `Database` trait on SQL Server.

use std::path::Path;
use std::time::Instant;

use semver::Version;

use super::connection::{aborted_text, broken_text, server_text, Failure, Rolled, ATTENTION_WAIT};
use super::space::Fit;
use super::sql::*;
use super::values::*;
use super::MssqlDatabase;
use crate::config::Migration;
use crate::db::{batches, AppliedMigration, BackupReceipt, Database, Progress, Row};
use crate::{Error, Result};

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

    fn check_backup_possible(&mut self, dir: &Path) -> Result<Vec<String>> {
        let (engine, edition) = self.edition()?;
        if let Some(why) = no_backup_to_disk(engine, &edition, &self.name) {
            return Err(Error::Refused(why));
        }
        match self.backup_fit(dir, supports_compression(engine, &edition))? {
            Fit::Fits => Ok(Vec::new()),
            Fit::Note(n) => Ok(vec![n]),
            Fit::Refuse(why) => Err(Error::Refused(why)),
        }
    }

    fn backup(&mut self, dir: &Path, progress: Progress<'_>) -> Result<BackupReceipt> {
        self.take_backup(dir, progress)
    }

    fn verify_backup(&mut self, receipt: &mut BackupReceipt) -> Result<()> {
        self.verify_backup_file(receipt)
    }

    fn prove_backup(&mut self, receipt: &BackupReceipt) -> Result<()> {
        self.prove_backup_file(receipt)
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
