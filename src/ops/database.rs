//! Database operations: the verified backup and the (irreversible) upgrade.

use semver::Version;
use serde::{Deserialize, Serialize};

use super::{lock, Mode, Ops, StepKind};
use crate::config::Migration;
use crate::db::BackupReceipt;
use crate::{Error, Result};

/// Options of `backup_db`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupOptions {
    /// Read the backup back and check it (default true). An unverified backup
    /// does not satisfy `upgrade_db`.
    #[serde(default = "yes")]
    pub verify: bool,
}

fn yes() -> bool {
    true
}

impl Default for BackupOptions {
    fn default() -> Self {
        BackupOptions { verify: true }
    }
}

/// Options of `upgrade_db` (none yet; the map is still checked for typos).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeOptions {}

/// What `upgrade_db` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpgradeReport {
    pub database: String,
    pub from: String,
    pub to: String,
    /// False when the database was already at the release's version.
    pub upgraded: bool,
    /// Names of the migrations applied (or to be applied, in plan mode).
    pub migrations: Vec<String>,
    /// The backup that allowed the upgrade, or the site's external-backup reason.
    pub backup: String,
}

impl Ops {
    /// Take a full backup of the site's database into its backup folder, and verify it.
    pub fn backup_db(&self, opts: BackupOptions) -> Result<BackupReceipt> {
        let key = self.call_key(StepKind::BackupDb, None);
        if let Some(r) = self.replayed::<BackupReceipt>(&key, StepKind::BackupDb, None)? {
            // A backup taken by an earlier attempt of this run counts for the
            // upgrade rail only once proved unchanged, through the database
            // (a SQL Server backup is on the server, not on this machine).
            // Run mode only: the proof reads the whole backup, and the upgrade
            // proves it again anyway before its first change.
            if self.mode == Mode::Run && r.verified {
                lock(&self.db).prove_backup(&r).map_err(|e| match e {
                    Error::Refused(m) => Error::Refused(format!(
                        "{m} (the backup was taken by an earlier attempt of this run)"
                    )),
                    other => other,
                })?;
            }
            lock(&self.state).backups.push(r.clone());
            return Ok(r);
        }
        if self.in_flight(&key).is_some() {
            self.log(
                "warn",
                "an earlier attempt stopped during the backup: taking it again",
            );
        }
        let name = self.site.database.name.clone();
        let dir = self.site.database.backup_dir.clone();
        let version = self.db_version()?;
        for note in lock(&self.db).check_backup_possible(&dir)? {
            self.log("warn", &note);
        }
        let verify = if opts.verify {
            " and verify it"
        } else {
            " (not verified)"
        };
        let description = format!(
            "back up database `{name}` ({} {version}) into `{}`{verify}",
            self.site.database.kind().as_str(),
            dir.display()
        );
        let intent = serde_json::json!({ "backup_dir": dir.display().to_string(), "version": version.to_string() });
        self.step(
            &key,
            StepKind::BackupDb,
            description.clone(),
            None,
            false,
            intent,
            || {
                let receipt = if self.mode == Mode::Plan {
                    BackupReceipt {
                        database: name.clone(),
                        file: format!("(planned) into `{}`", dir.display()),
                        size: 0,
                        version: version.to_string(),
                        started: String::new(),
                        finished: String::new(),
                        verified: opts.verify,
                        verification: "planned".into(),
                        checksum: false,
                        sha256: String::new(),
                        backup_set_guid: String::new(),
                        first_lsn: String::new(),
                        last_lsn: String::new(),
                    }
                } else {
                    let bar = self.reporter.bar(&format!("backup {name}"));
                    let mut db = lock(&self.db);
                    let mut receipt = db.backup(&dir, &mut |done, total| bar.set(done, total))?;
                    bar.finish();
                    if opts.verify {
                        db.verify_backup(&mut receipt)?;
                    }
                    receipt
                };
                let text = if self.mode == Mode::Plan {
                    description.clone()
                } else {
                    format!(
                        "backup of `{name}` at {version}: `{}` ({} bytes{})",
                        receipt.file,
                        receipt.size,
                        if receipt.verified {
                            ", verified"
                        } else {
                            ", NOT verified"
                        }
                    )
                };
                lock(&self.state).backups.push(receipt.clone());
                Ok((receipt, text))
            },
        )
    }

    /// Upgrade the database to the release's version by applying the release's
    /// pending migrations, after checking the rails.
    pub fn upgrade_db(&self, _opts: UpgradeOptions) -> Result<UpgradeReport> {
        self.release.require("upgrade_db")?;
        let key = self.call_key(StepKind::UpgradeDb, None);
        if let Some(r) = self.replayed::<UpgradeReport>(&key, StepKind::UpgradeDb, None)? {
            return Ok(r);
        }
        let name = self.site.database.name.clone();
        let from = self.db_version()?;
        let to = self.release.version.clone();
        if let Some(intent) = self.in_flight(&key) {
            let intended: UpgradeReport = serde_json::from_value(intent.clone()).map_err(|e| {
                Error::Config(format!("journal entry `{key}` cannot be read back: {e}"))
            })?;
            if from.to_string() == intended.to {
                // The upgrade finished before the earlier attempt died.
                let text = format!(
                    "database `{name}` reached {} before the earlier attempt stopped (reconciled)",
                    intended.to
                );
                return self.step(
                    &key,
                    StepKind::UpgradeDb,
                    text.clone(),
                    None,
                    false,
                    intent.clone(),
                    || Ok((intended, text)),
                );
            }
            self.log(
                "warn",
                &format!("an earlier attempt stopped during the upgrade of `{name}`: the migration history shows what was applied; going on from there"),
            );
        }
        if from > to {
            return Err(Error::Refused(format!(
                "database `{name}` is at {from}, newer than the release ({to}); downgrades are not supported"
            )));
        }
        if from == to {
            self.noted_step(
                StepKind::UpgradeDb,
                None,
                format!("database `{name}` is already at {to}: nothing to upgrade"),
            );
            return Ok(UpgradeReport {
                database: name,
                from: from.to_string(),
                to: to.to_string(),
                upgraded: false,
                migrations: Vec::new(),
                backup: String::new(),
            });
        }
        if from < self.release.min_upgrade_from {
            return Err(Error::Refused(format!(
                "database `{name}` is at {from}; release {to} upgrades from {} or later: install an intermediate release first",
                self.release.min_upgrade_from
            )));
        }
        let (backup, receipt) = self.backup_for_upgrade(&from)?;
        let pending = self.pending_migrations(&from, &to)?;
        // Every pending file is read and parsed before the first is applied.
        for m in &pending {
            lock(&self.db).check_migration(m)?;
        }
        let notes = lock(&self.db).preflight_upgrade()?;
        for note in notes {
            self.log("warn", &note);
        }
        let names: Vec<String> = pending.iter().map(|m| m.name.clone()).collect();
        let description = format!(
            "upgrade database `{name}` from {from} to {to} ({} migration(s): {})",
            names.len(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
        self.ensure_confirmed(&description, true)?;
        let report = UpgradeReport {
            database: name.clone(),
            from: from.to_string(),
            to: to.to_string(),
            upgraded: true,
            migrations: names.clone(),
            backup: backup.clone(),
        };
        let intent = serde_json::to_value(&report).unwrap_or_default();
        self.step(
            &key,
            StepKind::UpgradeDb,
            description.clone(),
            None,
            true,
            intent,
            || {
                // Rule "no invalid strategies": the site's checks, on the
                // connection that migrates, right before the first change.
                self.enforce_checks(&mut **lock(&self.db))?;
                if self.mode == Mode::Plan {
                    lock(&self.state).planned_version = Some(to.clone());
                } else {
                    let applied_by = applied_by(&self.run_id);
                    let mut db = lock(&self.db);
                    // Prove, don't trust the receipt: the backup is still there
                    // and unchanged, right before the first change.
                    if let Some(r) = &receipt {
                        if let Err(e) = db.prove_backup(r) {
                            drop(db);
                            if matches!(e, Error::Refused(_)) {
                                self.distrust_backup(r, &e);
                            }
                            return Err(e);
                        }
                    }
                    let bar = self.reporter.bar(&format!("migrate {name}"));
                    for (i, m) in pending.iter().enumerate() {
                        bar.set(i as u64, pending.len() as u64);
                        db.apply(m, &applied_by)?;
                        if i == 0 {
                            crate::failpoint::inner();
                        }
                    }
                    db.set_version(&to)?;
                    bar.set(pending.len() as u64, pending.len() as u64);
                    bar.finish();
                }
                Ok((report, description.clone()))
            },
        )
    }

    /// Rail: a verified backup of this database at its current version, taken in
    /// this run (its receipt, proved again right before the upgrade), or the
    /// site's recorded external-backup reason.
    fn backup_for_upgrade(&self, version: &Version) -> Result<(String, Option<BackupReceipt>)> {
        let name = &self.site.database.name;
        let st = lock(&self.state);
        if let Some(b) = st
            .backups
            .iter()
            .rev()
            .find(|b| b.verified && &b.database == name && b.version == version.to_string())
        {
            return Ok((b.file.clone(), Some(b.clone())));
        }
        drop(st);
        if let Some(reason) = &self.site.database.external_backup {
            self.log(
                "warn",
                &format!("upgrading `{name}` without a backup taken by uprun: the site says `external_backup = {reason:?}`"),
            );
            return Ok((format!("external: {reason}"), None));
        }
        Err(Error::Refused(format!(
            "upgrade of database `{name}` needs a verified backup taken in this run: call `backup_db(#{{ verify: true }})` first (the upgrade cannot be undone); sites that back up by other means set `database.external_backup` in `{}`",
            self.site.file.display()
        )))
    }

    /// Rail: every query of the site's `[checks]` returns no row (rows are
    /// problems: invalid strategies and the like). Refused, listing them.
    fn enforce_checks(&self, db: &mut dyn crate::db::Database) -> Result<()> {
        if self.site.checks.is_empty() {
            self.log(
                "warn",
                &format!(
                    "the site has no `[checks]`: the vendor's rule that no matching or address-verification strategy is invalid cannot be checked before this upgrade; add the query to `{}`",
                    self.site.file.display()
                ),
            );
        }
        let mut problems = Vec::new();
        for (check, sql) in &self.site.checks {
            let rows = db.query_readonly(sql)?;
            if !rows.is_empty() {
                let listed: Vec<String> = rows.iter().take(20).map(describe_row).collect();
                problems.push(format!(
                    "check `{check}` returned {} row(s): {}{}",
                    rows.len(),
                    listed.join("; "),
                    if rows.len() > 20 { "; ..." } else { "" }
                ));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(Error::Refused(format!(
            "upgrade of database `{}`: {} (rows are problems, such as matching or address-verification strategies in an invalid state: correct or delete them, then run again; the checks are `[checks]` in `{}`)",
            self.site.database.name,
            problems.join(" / "),
            self.site.file.display()
        )))
    }

    /// A backup found missing or altered no longer counts as verified in this
    /// run (so a later `upgrade_db` cannot use it either). Not for a proof that
    /// could not be made (server unreachable): that says nothing of the backup.
    fn distrust_backup(&self, receipt: &BackupReceipt, why: &Error) {
        let mut st = lock(&self.state);
        for b in st
            .backups
            .iter_mut()
            .filter(|b| b.file == receipt.file && b.database == receipt.database)
        {
            b.verified = false;
            b.verification = format!("failed its proof before the upgrade: {why}");
        }
    }

    /// The release's migrations newer than `from`, minus those already recorded
    /// as applied (a resumed upgrade). A recorded migration whose file changed
    /// since it was applied is an error. A release that changes the version
    /// must bring at least one migration for it, unless it declares
    /// `schema_change = false`.
    fn pending_migrations(&self, from: &Version, to: &Version) -> Result<Vec<Migration>> {
        let kind = self.site.database.kind();
        let all = self.release.migrations(kind)?;
        let declared = all.iter().any(|m| &m.version > from && &m.version <= to);
        if !declared && self.release.schema_change && from < to {
            let folder = self
                .release
                .migrations_dir(kind)
                .map(|d| format!("folder `{}`", d.display()))
                .unwrap_or_else(|| format!("no folder declared for `{}`", kind.as_str()));
            return Err(Error::Refused(format!(
                "release {to} has no {} migration newer than {from} ({folder} is missing or holds none): the database would be marked {to} with its schema unchanged. Fix `migrations` in `{}`; a release that changes nothing in the database declares `schema_change = false` there",
                kind.as_str(),
                self.release.file.display()
            )));
        }
        let history = lock(&self.db).history()?;
        let mut pending = Vec::new();
        for m in all {
            if let Some(h) = history.iter().find(|h| h.name == m.name) {
                if h.checksum != m.checksum {
                    return Err(Error::db(
                        &self.site.database.name,
                        format!(
                            "migration `{}` was applied on {} with checksum {} but the release's file now has checksum {}: the release was changed after it was applied; restore the original file",
                            m.name, h.applied_at, h.checksum, m.checksum
                        ),
                    ));
                }
                continue;
            }
            if &m.version > from && &m.version <= to {
                pending.push(m);
            }
        }
        Ok(pending)
    }
}

/// A row as `key=value` pairs, control characters escaped (the values come
/// from the database and end up on a terminal).
pub(crate) fn describe_row(row: &crate::db::Row) -> String {
    row.iter()
        .map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let e = crate::output::escape_controls;
            format!("{}={}", e(k), e(&v))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn applied_by(run_id: &str) -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user} (uprun {} run {run_id})", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use semver::Version;

    use super::super::fakes::{World, SITE};
    use super::super::Mode;
    use crate::db::AppliedMigration;
    use crate::Error;

    const MIGRATIONS: [(&str, &str); 4] = [
        ("1.0.0_01_base.sql", "CREATE TABLE t (a INTEGER);\n"),
        ("1.5.0_01_mid.sql", "ALTER TABLE t ADD b INTEGER;\n"),
        ("2.0.0_02_index.sql", "CREATE INDEX t_b ON t (b);\n"),
        ("2.0.0_01_priority.sql", "ALTER TABLE t ADD c INTEGER;\n"),
    ];
    const RELEASE_2: &str = "version = \"2.0.0\"\nmin_upgrade_from = \"1.0.0\"\n";

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    /// The names `pending_migrations(from, to)` returns, or its error.
    fn pending(world: &World, from: &str, to: &str) -> crate::Result<Vec<String>> {
        let ops = world.ops(Mode::Run);
        let pending = ops.pending_migrations(&v(from), &v(to))?;
        Ok(pending.into_iter().map(|m| m.name).collect())
    }

    /// Record `name` as applied, with the release file's checksum or `checksum`.
    fn applied(world: &World, name: &str, checksum: Option<&str>) {
        let kind = world.site.database.kind();
        let all = world.release.migrations(kind).expect("migrations");
        let m = all.iter().find(|m| m.name == name).expect("migration");
        world.db().history.push(AppliedMigration {
            name: name.into(),
            version: m.version.to_string(),
            checksum: checksum.map_or_else(|| m.checksum.clone(), String::from),
            applied_at: "2026-01-01T00:00:00Z".into(),
            duration_ms: 1,
            applied_by: "test".into(),
        });
    }

    #[test]
    fn pending_are_those_after_from_up_to_to_in_version_then_name_order() {
        let w = World::build(SITE, RELEASE_2, &MIGRATIONS);
        let all = ["1.5.0_01_mid", "2.0.0_01_priority", "2.0.0_02_index"];
        let all: Vec<String> = all.iter().map(|n| format!("{n}.sql")).collect();
        assert_eq!(pending(&w, "1.0.0", "2.0.0").expect("pending"), all);
        assert_eq!(pending(&w, "1.5.0", "2.0.0").expect("pending"), all[1..]);
        assert_eq!(pending(&w, "1.0.0", "1.5.0").expect("pending"), all[..1]);
        // Nothing is pending at the target, nor above it (a downgrade is
        // refused by `upgrade_db` before it asks).
        assert!(pending(&w, "2.0.0", "2.0.0").expect("same").is_empty());
        assert!(pending(&w, "2.1.0", "2.0.0").expect("above").is_empty());
    }

    #[test]
    fn applied_migrations_are_not_pending_again() {
        let w = World::build(SITE, RELEASE_2, &MIGRATIONS);
        applied(&w, "2.0.0_01_priority.sql", None);
        assert_eq!(
            pending(&w, "1.5.0", "2.0.0").expect("pending"),
            ["2.0.0_02_index.sql"]
        );
    }

    #[test]
    fn an_applied_migration_whose_file_changed_is_an_error_even_out_of_range() {
        let w = World::build(SITE, RELEASE_2, &MIGRATIONS);
        applied(&w, "1.0.0_01_base.sql", Some("0badc0de"));
        let e = pending(&w, "1.5.0", "2.0.0").expect_err("changed file");
        let text = e.to_string();
        assert!(
            text.contains("`1.0.0_01_base.sql` was applied")
                && text.contains("0badc0de")
                && text.contains("restore the original file"),
            "{text}"
        );
    }

    #[test]
    fn a_version_change_without_a_migration_for_it_is_refused() {
        // Only a migration at or below the database's version: none declared
        // for 1.5.0..2.0.0.
        let w = World::build(SITE, RELEASE_2, &MIGRATIONS[..2]);
        match pending(&w, "1.5.0", "2.0.0") {
            Err(Error::Refused(why)) => assert!(
                why.contains("release 2.0.0 has no sqlite migration newer than 1.5.0")
                    && why.contains("schema_change = false"),
                "{why}"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // No folder at all.
        let w = World::build(SITE, RELEASE_2, &[]);
        assert!(matches!(
            pending(&w, "1.0.0", "2.0.0"),
            Err(Error::Refused(_))
        ));
        // The same range with a migration in it is fine.
        let w = World::build(SITE, RELEASE_2, &MIGRATIONS);
        assert!(pending(&w, "1.5.0", "2.0.0").is_ok());
    }

    #[test]
    fn schema_change_false_allows_a_version_change_without_migrations() {
        let release = format!("{RELEASE_2}schema_change = false\n");
        let w = World::build(SITE, &release, &[]);
        assert!(pending(&w, "1.0.0", "2.0.0").expect("allowed").is_empty());
        // It does not hide the migrations a release does bring.
        let w = World::build(SITE, &release, &MIGRATIONS);
        assert_eq!(pending(&w, "1.5.0", "2.0.0").expect("pending").len(), 2);
    }
}
