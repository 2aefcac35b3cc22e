//! T-SQL text: the statements uprun sends, and the builders of the ones it composes.

use crate::config::check_sql_name;
use crate::db::AppliedMigration;

/// The application's version table (schema `dbo`), as on SQLite.
pub const VERSION_SQL: &str = "SELECT value FROM dbo.app_meta WHERE [key] = @P1";
/// The row count is read with `@@ROWCOUNT`, not from the DONE token, which a
/// `SET NOCOUNT ON` left by anyone would turn to 0.
pub const SET_VERSION_SQL: &str = "SET NOCOUNT OFF; UPDATE dbo.app_meta SET value = @P1 WHERE [key] = @P2; SELECT CAST(@@ROWCOUNT AS int) AS changed;";
pub const VERSION_KEY: &str = "schema_version";

/// uprun's migration history, created on first use.
pub const HISTORY_TABLE_SQL: &str = "IF OBJECT_ID(N'dbo.uprun_migration_history', N'U') IS NULL
CREATE TABLE dbo.uprun_migration_history (
    id int IDENTITY(1,1) NOT NULL,
    name nvarchar(255) NOT NULL CONSTRAINT PK_uprun_migration_history PRIMARY KEY,
    version nvarchar(64) NOT NULL,
    checksum char(64) NOT NULL,
    applied_at datetime2(3) NOT NULL,
    duration_ms bigint NOT NULL,
    applied_by nvarchar(256) NOT NULL
)";
pub const HISTORY_SQL: &str = "IF OBJECT_ID(N'dbo.uprun_migration_history', N'U') IS NOT NULL
SELECT name, version, checksum, CONVERT(nvarchar(33), applied_at, 127) AS applied_at, duration_ms, applied_by
FROM dbo.uprun_migration_history ORDER BY id";
/// XACT_ABORT: any error dooms the transaction, so nothing half-done can be committed.
pub const BEGIN_SQL: &str = "SET XACT_ABORT ON; BEGIN TRANSACTION;";
pub const ROLLBACK_SQL: &str = "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION;";
/// After a failed migration: roll back, and say what is left open (0 proves
/// the rollback).
pub const ROLLBACK_CHECKED_SQL: &str =
    "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION; SELECT CAST(@@TRANCOUNT AS int) AS trancount;";
/// The error number the history batch throws when the migration left the
/// transaction in another state than the one uprun opened.
pub const TRANSACTION_STATE_ERROR: u32 = 50001;
/// What starts the statement that records a migration (for tests and logs).
pub const RECORD_INSERT: &str = "INSERT INTO ";

/// `N'...'`: a T-SQL Unicode string literal.
pub(super) fn n_literal(s: &str) -> String {
    format!("N'{}'", s.replace('\'', "''"))
}

/// The one batch that ends a migration: check the transaction state the
/// migration left, record it in the history, commit, and prove the commit.
///
/// - A plain batch, not `sp_executesql`: a COMMIT inside a procedure call
///   that changes `@@TRANCOUNT` raises error 266 after committing.
/// - The check and the COMMIT are in the same request, so nothing can run
///   between them: `@@TRANCOUNT` must be 1 and `XACT_STATE()` 1 (the
///   transaction uprun opened, still committable), or 0 for a
///   `-- uprun: no-transaction` migration. Anything else (an unmatched
///   BEGIN TRANSACTION, a CATCH block that rolled back without rethrowing, a
///   doomed transaction) throws `TRANSACTION_STATE_ERROR` before the history
///   row is written, so a migration is never recorded without its changes.
/// - The history table is named with its database: a migration's `USE` (or
///   other session settings) cannot send the row elsewhere. `SET XACT_ABORT
///   ON` again, since a migration may have turned it off.
/// - The last result is `@@TRANCOUNT` after the commit: 0, or nothing was
///   committed.
pub fn record_batch(
    database: &str,
    transactional: bool,
    m: &AppliedMigration,
) -> std::result::Result<String, String> {
    let db = quote_name(database)?;
    let (guard, expected) = if transactional {
        ("@trancount <> 1 OR @xact_state <> 1", "1, XACT_STATE() 1")
    } else {
        ("@trancount <> 0", "0")
    };
    let commit = if transactional {
        "COMMIT TRANSACTION;\n"
    } else {
        ""
    };
    Ok(format!(
        "SET XACT_ABORT ON;
DECLARE @trancount int = @@TRANCOUNT, @xact_state int = XACT_STATE();
IF {guard}
BEGIN
    DECLARE @state nvarchar(200) = CONCAT(N'uprun: after the migration @@TRANCOUNT = ', @trancount, N', XACT_STATE() = ', @xact_state, N' (expected @@TRANCOUNT {expected})');
    THROW {TRANSACTION_STATE_ERROR}, @state, 1;
END;
{RECORD_INSERT}{db}.dbo.uprun_migration_history (name, version, checksum, applied_at, duration_ms, applied_by) VALUES ({}, {}, {}, SYSUTCDATETIME(), {}, {});
{commit}SELECT CAST(@@TRANCOUNT AS int) AS trancount;",
        n_literal(&m.name),
        n_literal(&m.version),
        n_literal(&m.checksum),
        m.duration_ms,
        n_literal(&m.applied_by),
    ))
}

/// `@@TRANCOUNT` and `XACT_STATE()` from a `TRANSACTION_STATE_ERROR` message.
pub(super) fn transaction_state(message: &str) -> Option<(i64, i64)> {
    let number_after = |key: &str| -> Option<i64> {
        let rest = &message[message.find(key)? + key.len()..];
        let n: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        n.parse().ok()
    };
    Some((
        number_after("@@TRANCOUNT = ")?,
        number_after("XACT_STATE() = ")?,
    ))
}
/// Check queries run inside a transaction that is always rolled back.
pub const READ_BEGIN_SQL: &str = "BEGIN TRANSACTION;";

pub const EDITION_SQL: &str = "SELECT CAST(SERVERPROPERTY('EngineEdition') AS int) AS engine_edition, CAST(SERVERPROPERTY('Edition') AS nvarchar(128)) AS edition";
/// Can the database be written to (not read-only, not a readable secondary)?
pub const UPDATEABILITY_SQL: &str =
    "SELECT CAST(DATABASEPROPERTYEX(DB_NAME(), 'Updateability') AS nvarchar(20)) AS updateability";
/// Other user sessions in the database (all of them only with VIEW SERVER
/// STATE; without it a login sees its own), uprun's own left out.
pub const OTHER_SESSIONS_SQL: &str = "SELECT CAST(session_id AS int) AS session_id, CAST(login_name AS nvarchar(128)) AS login_name, CAST(host_name AS nvarchar(128)) AS host_name, CAST(program_name AS nvarchar(128)) AS program_name FROM sys.dm_exec_sessions WHERE database_id = DB_ID() AND session_id <> @@SPID AND is_user_process = 1 AND program_name NOT LIKE N'uprun%' ORDER BY session_id";
pub const SPID_SQL: &str = "SELECT CAST(@@SPID AS int) AS spid";
pub const PROGRESS_SQL: &str = "SELECT CAST(percent_complete AS int) AS percent_complete FROM sys.dm_exec_requests WHERE session_id = @P1";
/// `@P1` is the database name, `@P2` the file on the server.
pub const BACKUP_SQL: &str =
    "BACKUP DATABASE @P1 TO DISK = @P2 WITH COPY_ONLY, CHECKSUM, INIT, FORMAT, STATS = 5";
pub const VERIFY_SQL: &str = "RESTORE VERIFYONLY FROM DISK = @P1 WITH CHECKSUM";
/// The header of the backup set in a backup file on the server (`@P1`), for
/// its identity: taken right after the backup, and again (with `VERIFY_SQL`)
/// before the upgrade. The column set varies by version, so columns are read
/// by name: `BackupSetGUID` (uniqueidentifier), `FirstLSN` and `LastLSN`
/// (numeric(25,0)), `HasBackupChecksums` and `IsDamaged` (bit), of the first
/// row (position 1: the set `RESTORE VERIFYONLY`
/// checks; `INIT, FORMAT` leaves only that one in the file).
pub const HEADERONLY_SQL: &str = "RESTORE HEADERONLY FROM DISK = @P1";
/// The newest full backup of a database (`@P1`), whoever took it.
pub const LATEST_FULL_SQL: &str = "SELECT TOP (1) mf.physical_device_name AS file_name, CONVERT(nvarchar(33), bs.backup_finish_date, 126) AS finished, CAST(bs.is_copy_only AS int) AS copy_only
FROM msdb.dbo.backupset AS bs JOIN msdb.dbo.backupmediafamily AS mf ON mf.media_set_id = bs.media_set_id
WHERE bs.database_name = @P1 AND bs.type = 'D' ORDER BY bs.backup_finish_date DESC";
/// What the database uses, for the size of a full backup: data pages in use
/// (8 KiB each) and log in use (VIEW DATABASE STATE).
pub const SPACE_USED_SQL: &str = "SELECT (SELECT CAST(SUM(CAST(FILEPROPERTY(name, 'SpaceUsed') AS bigint)) * 8192 AS bigint) FROM sys.database_files WHERE type = 0) AS data_bytes, (SELECT CAST(used_log_space_in_bytes AS bigint) FROM sys.dm_db_log_space_usage) AS log_bytes";
/// The volumes of the server's database files and their free space (VIEW
/// SERVER STATE).
pub const VOLUMES_SQL: &str = "SELECT DISTINCT CAST(vs.volume_mount_point AS nvarchar(512)) AS mount_point, CAST(vs.available_bytes AS bigint) AS available_bytes FROM sys.master_files AS mf CROSS APPLY sys.dm_os_volume_stats(mf.database_id, mf.file_id) AS vs";
/// Windows, SQL Server 2017 and later: every fixed drive's free space.
pub const FIXED_DRIVES_SQL: &str = "SELECT CAST(fixed_drive_path AS nvarchar(512)) AS mount_point, CAST(free_space_in_bytes AS bigint) AS available_bytes FROM sys.dm_os_enumerate_fixed_drives";
/// The run lock: session-owned, so it lives exactly as long as its connection.
pub const LOCK_SQL: &str = "DECLARE @result int;
EXEC @result = sys.sp_getapplock @Resource = N'uprun', @LockMode = N'Exclusive', @LockOwner = N'Session', @LockTimeout = 0;
SELECT @result AS result;";

/// Quote a name for T-SQL: `[` + name with `]` doubled + `]`. Names longer than
/// 128 characters or containing NUL are refused.
pub fn quote_name(name: &str) -> std::result::Result<String, String> {
    check_sql_name(name)?;
    Ok(format!("[{}]", name.replace(']', "]]")))
}

/// Why `BACKUP DATABASE ... TO DISK` cannot work on this engine edition
/// (`SERVERPROPERTY('EngineEdition')`), with what to do; None where it can.
pub(super) fn no_backup_to_disk(
    engine_edition: i64,
    edition: &str,
    database: &str,
) -> Option<String> {
    let what_to_do = "take the backup by the platform's means before the window, say how in `database.external_backup` in the site file, and run a procedure that does not call `backup_db` (`upgrade_db` then accepts the site's external backup); nothing was changed";
    match engine_edition {
        5 => Some(format!(
            "backup_db cannot back up database `{database}`: the server is Azure SQL Database (SERVERPROPERTY('EngineEdition') = 5, edition `{edition}`), which has no BACKUP DATABASE statement (Azure takes its backups; restore is point-in-time or from a database copy); {what_to_do}"
        )),
        8 => Some(format!(
            "backup_db cannot back up database `{database}`: the server is Azure SQL Managed Instance (SERVERPROPERTY('EngineEdition') = 8), which only writes copy-only backups TO URL (Azure Blob Storage with a credential), not to a folder; uprun does not take backups to URL: run `BACKUP DATABASE ... TO URL = '...' WITH COPY_ONLY, CHECKSUM` yourself, then {what_to_do}"
        )),
        _ => None,
    }
}

/// Editions with backup compression: Enterprise/Developer/Evaluation (3),
/// Managed Instance (8), Standard (2, but not Web, which shares the number).
pub(super) fn supports_compression(engine_edition: i64, edition: &str) -> bool {
    match engine_edition {
        3 | 8 => true,
        2 => !edition.to_ascii_lowercase().starts_with("web"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_names() {
        assert_eq!(quote_name("FastApp").as_deref(), Ok("[FastApp]"));
        assert_eq!(quote_name("a]b").as_deref(), Ok("[a]]b]"));
        assert_eq!(quote_name("x; DROP").as_deref(), Ok("[x; DROP]"));
        assert!(quote_name(&"n".repeat(128)).is_ok());
        assert!(quote_name(&"n".repeat(129)).is_err());
        assert!(quote_name("a\0b").is_err());
        assert!(quote_name("").is_err());
    }

    #[test]
    fn compression_by_edition() {
        assert!(supports_compression(3, "Developer Edition (64-bit)"));
        assert!(supports_compression(2, "Standard Edition (64-bit)"));
        assert!(!supports_compression(2, "Web Edition (64-bit)"));
        assert!(!supports_compression(4, "Express Edition (64-bit)"));
        assert!(supports_compression(8, "SQL Azure"));
    }
}
