//! BACKUP DATABASE to the server's folder, its verification and its proof.

use std::path::Path;

use tiberius::ToSql;

use super::connection::{aborted_text, operator_abort, server_text, Failure};
use super::sql::*;
use super::values::*;
use super::MssqlDatabase;
use crate::db::{now_rfc3339, BackupReceipt, Database, Progress};
use crate::{Error, Result};

impl MssqlDatabase {
    /// `RESTORE HEADERONLY` of a backup file on the server: the first backup
    /// set's header, None when the file holds none.
    pub(super) fn read_header(
        &mut self,
        file: &str,
    ) -> Result<std::result::Result<Option<BackupSetHeader>, Failure>> {
        let deadline = self.cfg.operation_timeout;
        let f = file.to_string();
        self.call_with(deadline, true, move |c| {
            Box::pin(async move {
                let r = rows(c, HEADERONLY_SQL, &[&f]).await?;
                Ok(r.first().map(BackupSetHeader::read))
            })
        })
    }

    pub(super) fn take_backup(
        &mut self,
        dir: &Path,
        progress: Progress<'_>,
    ) -> Result<BackupReceipt> {
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
            tokio::select! {
                r = tokio::time::timeout(deadline, async {
                    tokio::select! {
                        r = work => r,
                        // The watch only ever waits; this arm cannot complete first.
                        _ = watch => Err(tiberius::error::Error::Protocol("progress watch ended".into())),
                    }
                }) => Some(r),
                // A second Ctrl-C stops the BACKUP, as it stops a migration.
                _ = operator_abort() => None,
            }
        });
        let what = format!("backup to `{file}` on the server");
        let Some(outcome) = outcome else {
            // Stop the BACKUP on the server and wait for its word.
            let acknowledged = self.cancel(conn);
            return Err(Error::Interrupted(self.scrub(&format!(
                "database `{}`: {what}: {}; uprun records no backup from this step (what the server wrote of the file before it stopped is not a backup to rely on)",
                self.name,
                aborted_text(acknowledged)
            ))));
        };
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
                // Stop the BACKUP on the server.
                let failure = if self.cancel(conn) {
                    Failure::Cancelled(deadline)
                } else {
                    Failure::Deadline(deadline)
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

    /// `RESTORE VERIFYONLY WITH CHECKSUM` of `file` on the server, within the
    /// operation timeout; a second Ctrl-C stops it.
    fn verify_only(&mut self, file: &str) -> Result<std::result::Result<(), Failure>> {
        let deadline = self.cfg.operation_timeout;
        let f = file.to_string();
        self.call_with(deadline, true, move |c| {
            Box::pin(async move { c.execute(VERIFY_SQL, &[&f]).await.map(|_| ()) })
        })
    }

    pub(super) fn verify_backup_file(&mut self, receipt: &mut BackupReceipt) -> Result<()> {
        let file = receipt.file.clone();
        match self.verify_only(&file)? {
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

    pub(super) fn prove_backup_file(&mut self, receipt: &BackupReceipt) -> Result<()> {
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
        match self.verify_only(&file)? {
            Ok(()) => Ok(()),
            Err(Failure::Server(t)) => Err(refuse(format!(
                "failed RESTORE VERIFYONLY WITH CHECKSUM: {}",
                server_text(&t)
            ))),
            Err(f) => Err(self.fail(&format!("prove backup `{file}`"), f)),
        }
    }
}
