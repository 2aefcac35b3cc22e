//! Reading values out of rows, and naming backup files.

use tiberius::{ColumnData, FromSql, ToSql};

use super::Conn;
use crate::db::BackupReceipt;

/// All rows of the first result set of a parameterised query.
pub(super) async fn rows(
    c: &mut Conn,
    sql: &str,
    params: &[&dyn ToSql],
) -> tiberius::Result<Vec<tiberius::Row>> {
    c.query(sql, params).await?.into_first_result().await
}

/// Send a batch as it is and read its whole response.
pub(super) async fn batch(c: &mut Conn, sql: &str) -> tiberius::Result<Vec<Vec<tiberius::Row>>> {
    c.simple_query(sql).await?.into_results().await
}

pub(super) fn cell_i64(row: &tiberius::Row, col: &str) -> Option<i64> {
    match row.get_column_data(col).ok()? {
        ColumnData::U8(v) => v.map(i64::from),
        ColumnData::I16(v) => v.map(i64::from),
        ColumnData::I32(v) => v.map(i64::from),
        ColumnData::I64(v) => *v,
        ColumnData::Numeric(v) => v.and_then(|n| i64::try_from(n.int_part()).ok()),
        _ => None,
    }
}

/// A cell of any scalar type as text: a GUID in upper case (as SQL Server
/// prints it), a numeric with scale 0 as its integer (LSNs are numeric(25,0)).
pub(super) fn cell_text(row: &tiberius::Row, col: &str) -> Option<String> {
    match row.get_column_data(col).ok()? {
        ColumnData::Guid(v) => v.map(|g| g.to_string().to_ascii_uppercase()),
        ColumnData::Numeric(v) => v.map(|n| {
            if n.scale() == 0 {
                n.value().to_string()
            } else {
                n.to_string()
            }
        }),
        ColumnData::String(v) => v.as_ref().map(|s| s.trim().to_string()),
        ColumnData::Bit(v) => v.map(|b| if b { "1" } else { "0" }.to_string()),
        _ => cell_i64(row, col).map(|n| n.to_string()),
    }
}

pub(super) fn cell_bool(row: &tiberius::Row, col: &str) -> Option<bool> {
    match row.get_column_data(col).ok()? {
        ColumnData::Bit(v) => *v,
        _ => cell_text(row, col).map(|t| t == "1" || t.eq_ignore_ascii_case("true")),
    }
}

/// The identity of a backup set, from `RESTORE HEADERONLY` (see `HEADERONLY_SQL`).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct BackupSetHeader {
    pub(super) guid: String,
    pub(super) first_lsn: String,
    pub(super) last_lsn: String,
    pub(super) has_checksums: bool,
    pub(super) damaged: bool,
    /// Bytes on disk: `CompressedBackupSize`, else `BackupSize`.
    pub(super) size: Option<u64>,
}

impl BackupSetHeader {
    pub(super) fn read(row: &tiberius::Row) -> BackupSetHeader {
        let text = |c: &str| cell_text(row, c).unwrap_or_default();
        BackupSetHeader {
            guid: text("BackupSetGUID").to_ascii_uppercase(),
            first_lsn: text("FirstLSN"),
            last_lsn: text("LastLSN"),
            has_checksums: cell_bool(row, "HasBackupChecksums").unwrap_or(false),
            damaged: cell_bool(row, "IsDamaged").unwrap_or(false),
            size: ["CompressedBackupSize", "BackupSize"]
                .iter()
                .find_map(|c| cell_i64(row, c))
                .and_then(|n| u64::try_from(n).ok()),
        }
    }

    /// How this header differs from what the receipt recorded (None: same set).
    pub(super) fn differs_from(&self, r: &BackupReceipt) -> Option<String> {
        if !self.guid.eq_ignore_ascii_case(&r.backup_set_guid) {
            return Some(format!(
                "holds backup set {} (LSN {}..{}), not the set {} (LSN {}..{}) taken by this run",
                or_none(&self.guid),
                self.first_lsn,
                self.last_lsn,
                r.backup_set_guid,
                r.first_lsn,
                r.last_lsn
            ));
        }
        if self.first_lsn != r.first_lsn || self.last_lsn != r.last_lsn {
            return Some(format!(
                "holds backup set {} with LSN {}..{}, recorded as {}..{} when taken",
                self.guid, self.first_lsn, self.last_lsn, r.first_lsn, r.last_lsn
            ));
        }
        if r.checksum && !self.has_checksums {
            return Some(
                "no longer carries the page checksums it was written with (HasBackupChecksums = 0)"
                    .into(),
            );
        }
        if self.damaged {
            return Some("is marked damaged by the server (IsDamaged = 1)".into());
        }
        None
    }
}

pub(super) fn or_none(s: &str) -> &str {
    if s.is_empty() {
        "(none)"
    } else {
        s
    }
}

pub(super) fn cell_str(row: &tiberius::Row, col: &str) -> Option<String> {
    match row.get_column_data(col).ok()? {
        ColumnData::String(v) => v.as_ref().map(|s| s.to_string()),
        _ => None,
    }
}

/// A value of any type as JSON (dates as ISO 8601 text).
pub(super) fn value_to_json(v: &ColumnData<'static>) -> serde_json::Value {
    use serde_json::Value;
    let text = |s: Option<String>| s.map(Value::from).unwrap_or(Value::Null);
    match v {
        ColumnData::U8(v) => v.map(Value::from).unwrap_or(Value::Null),
        ColumnData::I16(v) => v.map(Value::from).unwrap_or(Value::Null),
        ColumnData::I32(v) => v.map(Value::from).unwrap_or(Value::Null),
        ColumnData::I64(v) => v.map(Value::from).unwrap_or(Value::Null),
        ColumnData::F32(v) => v.map(|f| Value::from(f as f64)).unwrap_or(Value::Null),
        ColumnData::F64(v) => v.map(Value::from).unwrap_or(Value::Null),
        ColumnData::Bit(v) => v.map(Value::from).unwrap_or(Value::Null),
        ColumnData::String(v) => text(v.as_ref().map(|s| s.to_string())),
        ColumnData::Guid(v) => text(v.map(|g| g.to_string())),
        ColumnData::Binary(v) => text(v.as_ref().map(|b| format!("<{} bytes>", b.len()))),
        ColumnData::Numeric(v) => match v {
            Some(n) if n.scale() == 0 => i64::try_from(n.value())
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(n.to_string())),
            Some(n) => Value::from(f64::from(*n)),
            None => Value::Null,
        },
        ColumnData::Xml(v) => text(v.as_ref().map(|x| x.to_string())),
        ColumnData::DateTime(_) | ColumnData::SmallDateTime(_) | ColumnData::DateTime2(_) => {
            shown::<time::PrimitiveDateTime>(v)
        }
        ColumnData::Date(_) => shown::<time::Date>(v),
        ColumnData::Time(_) => shown::<time::Time>(v),
        ColumnData::DateTimeOffset(_) => text(
            time::OffsetDateTime::from_sql(v)
                .ok()
                .flatten()
                .and_then(|d| {
                    d.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                }),
        ),
    }
}

/// A column read as `T` and shown as its text, or null.
fn shown<'a, T: FromSql<'a> + std::fmt::Display>(v: &'a ColumnData<'static>) -> serde_json::Value {
    T::from_sql(v)
        .ok()
        .flatten()
        .map(|d| serde_json::Value::from(d.to_string()))
        .unwrap_or(serde_json::Value::Null)
}

/// A file name part made of safe characters only.
pub(super) fn file_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Join a server folder and a file name with the server's separator.
pub(super) fn server_path(dir: &str, file: &str) -> String {
    let windows = dir.contains('\\') || dir.as_bytes().get(1) == Some(&b':');
    let sep = if windows { '\\' } else { '/' };
    let dir = dir.trim_end_matches(['/', '\\']);
    format!("{dir}{sep}{file}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_paths_use_the_server_separator() {
        assert_eq!(
            server_path("/var/opt/mssql/backup/", "a.bak"),
            "/var/opt/mssql/backup/a.bak"
        );
        assert_eq!(server_path("D:\\Backups", "a.bak"), "D:\\Backups\\a.bak");
        assert_eq!(server_path("\\\\nas\\sql", "a.bak"), "\\\\nas\\sql\\a.bak");
        assert_eq!(file_part("Fast App]"), "Fast_App_");
    }
}
