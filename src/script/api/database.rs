//! Host functions about the database: `db_version`, `run_check`, `query`,
//! `backup_db`, `upgrade_db`.

use std::sync::Arc;

use rhai::ImmutableString;

use super::{fail, reg_ops, reg_ops_arg, reg_opts, to_dyn, Registrar};
use crate::ops::{BackupOptions, Ops, UpgradeOptions};

pub(super) fn register(r: &mut Registrar, o: &Option<Arc<Ops>>) {
    reg_ops(r, o, "db_version", "String",
        "The application's schema version as the database records it (after planned upgrades, in plan mode).",
        |ops, pos| ops.db_version().map(|v| v.to_string()).map_err(|e| fail(ops, e, pos)));
    reg_ops_arg(r, o, "run_check", &["name: &str", "Array"],
        "Run the read-only check query `name` from the site's `[checks]`; returns its rows as maps.\nRows are problems: an empty array means the check passed. Listed as a step in `plan`.",
        |ops, name: ImmutableString, pos| to_dyn(&ops.run_check(&name).map_err(|e| fail(ops, e, pos))?, pos));
    reg_ops_arg(r, o, "query", &["sql: &str", "Array"],
        "Run a read-only SQL query and return its rows as maps. A statement that would change the database is refused.",
        |ops, sql: ImmutableString, pos| to_dyn(&ops.query(&sql).map_err(|e| fail(ops, e, pos))?, pos));
    let backup_doc = "Take a full backup of the site's database into its backup folder and verify it.\nOptions: `verify` (bool, default true).\nReturns `#{ database, file, size, version, started, finished, verified, verification, checksum, sha256, backup_set_guid, first_lsn, last_lsn }`\n(`checksum`: the backup carries page checksums, SQL Server `WITH CHECKSUM`; the backup's identity, proved again before\n`upgrade_db`: `sha256` of the file for SQLite, whose `file` is an absolute path; `backup_set_guid`, `first_lsn`, `last_lsn`\nfrom `RESTORE HEADERONLY` for SQL Server, whose `file` is on the server).\nOnly a verified backup taken in the same run allows `upgrade_db`.\nErrors: `database` (the backup or its verification failed: the server's message), `refused` (on resume: the backup taken\nby the earlier attempt is missing or changed), `config` (a bad option).";
    reg_opts(r, o, "backup_db", backup_doc, |ops, opts: BackupOptions| {
        ops.backup_db(opts)
    });
    let upgrade_doc = "Upgrade the existing database to the release's version: apply the release's pending migrations\n(each in its own transaction, recorded in the history table), then record the version.\nIrreversible. Refused without a verified backup of this database taken in this run (unless the site sets\n`database.external_backup`), refused for a database newer than the release (no downgrades) or older than\nthe release's `min_upgrade_from`. A database already at the release's version is left alone.\nOptions: none. Returns `#{ database, from, to, upgraded, migrations, backup }`.\nRight before its first change it proves the backup again (same size and SHA-256, or the same backup set by `RESTORE\nHEADERONLY` and `RESTORE VERIFYONLY` on the server).\nErrors: `refused` (no verified backup, the backup missing or changed since it was taken, downgrade, below `min_upgrade_from`, not confirmed), `database` (a migration\nfailed and was rolled back; the history shows which were applied), `config` (no release, changed migration file).";
    reg_opts(
        r,
        o,
        "upgrade_db",
        upgrade_doc,
        |ops, opts: UpgradeOptions| ops.upgrade_db(opts),
    );
}
