//! Will the backup fit? Before a backup is planned or taken, its size is
//! estimated from what the database uses (data pages in use and log in use,
//! as the server reports them: an upper bound of an uncompressed full
//! backup), and compared with the free space of the volume that holds the
//! backup folder, where the server can tell: `sys.dm_os_volume_stats` for the
//! volumes of its database files (VIEW SERVER STATE), and on Windows
//! `sys.dm_os_enumerate_fixed_drives` (SQL Server 2017 and later). A folder
//! on no such volume, a network share, or a Linux folder only the root
//! volume `/` contains (another file system may be mounted there) cannot be
//! told: the plan says so instead of guessing.

use std::path::Path;

use super::connection::Failure;
use super::sql::{FIXED_DRIVES_SQL, SPACE_USED_SQL, VOLUMES_SQL};
use super::values::{cell_i64, cell_str, rows};
use super::MssqlDatabase;
use crate::Result;

/// What the server says of the backup's size and the folder's free space.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Fit {
    /// It fits, or no check applies.
    Fits,
    /// Clearly not enough space: refuse, with why.
    Refuse(String),
    /// A note for the operator (cannot tell, or may not fit).
    Note(String),
}

/// Bytes, with a readable size.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = "";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if unit.is_empty() {
        format!("{n} bytes")
    } else {
        format!("{n} bytes ({v:.1} {unit})")
    }
}

/// The volume (mount point, free bytes) holding `dir`: the longest mount
/// point that contains it. None when none does, `dir` is a network share, or
/// only the Linux root `/` does.
pub(super) fn volume_for<'a>(dir: &str, volumes: &'a [(String, u64)]) -> Option<&'a (String, u64)> {
    let windows = dir.contains('\\') || dir.as_bytes().get(1) == Some(&b':');
    if dir.starts_with("\\\\") || dir.starts_with("//") {
        return None;
    }
    let norm = |p: &str| -> String {
        let p = if windows {
            p.replace('/', "\\").to_lowercase()
        } else {
            p.to_string()
        };
        let sep = if windows { '\\' } else { '/' };
        let mut p = p.trim_end_matches(sep).to_string();
        p.push(sep);
        p
    };
    let d = norm(dir);
    volumes
        .iter()
        .filter(|(mount, _)| {
            let m = norm(mount);
            m != "/" && d.starts_with(&m)
        })
        .max_by_key(|(mount, _)| norm(mount).len())
}

/// Decide from the estimate (None: unknown), the volumes, and compression.
pub(super) fn judge(
    database: &str,
    dir: &str,
    estimate: Option<u64>,
    volumes: &[(String, u64)],
    compressed: bool,
) -> Fit {
    let Some(estimate) = estimate else {
        return Fit::Note(format!(
            "uprun cannot tell whether the backup of database `{database}` fits in `{dir}`: the server did not report the space the database uses (the login needs VIEW DATABASE STATE); check the free space there"
        ));
    };
    let Some((mount, free)) = volume_for(dir, volumes) else {
        return Fit::Note(format!(
            "uprun cannot tell whether the backup of database `{database}` (up to {}) fits in `{dir}`: the server reports no free space for that folder's volume (it reports only the volumes of its database files, with VIEW SERVER STATE; a network share or a folder on another volume is not among them); check the free space there",
            bytes(estimate)
        ));
    };
    if *free >= estimate {
        return Fit::Fits;
    }
    if compressed {
        return Fit::Note(format!(
            "the backup of database `{database}` may not fit in `{dir}`: the database uses {} (data and log in use), and volume `{mount}` has {} free; the backup is compressed, so it fits only if compression saves enough",
            bytes(estimate),
            bytes(*free)
        ));
    }
    Fit::Refuse(format!(
        "the backup of database `{database}` does not fit in `{dir}`: it needs about {} (data and log in use, as the server reports them; this edition does not compress backups) and volume `{mount}` holding that folder has {} free (sys.dm_os_volume_stats); free space there or point `database.backup_dir` at a folder with room; nothing was changed",
        bytes(estimate),
        bytes(*free)
    ))
}

impl MssqlDatabase {
    /// `judge` with what the server says now.
    pub(super) fn backup_fit(&mut self, dir: &Path, compressed: bool) -> Result<Fit> {
        let q = self.cfg.query_timeout;
        let used = self.call(q, |c| {
            Box::pin(async move {
                let r = rows(c, SPACE_USED_SQL, &[]).await?;
                let row = r.first();
                let data = row.and_then(|r| cell_i64(r, "data_bytes"));
                let log = row.and_then(|r| cell_i64(r, "log_bytes"));
                Ok(data.zip(log).map(|(d, l)| (d.max(0) + l.max(0)) as u64))
            })
        })?;
        let estimate = match used {
            Ok(e) => e,
            Err(Failure::Server(_)) => None,
            Err(f) => return Err(self.fail("read the space the database uses", f)),
        };
        let mut volumes = Vec::new();
        for sql in [VOLUMES_SQL, FIXED_DRIVES_SQL] {
            let found = self.call(q, move |c| {
                Box::pin(async move {
                    let r = rows(c, sql, &[]).await?;
                    Ok(r.iter()
                        .filter_map(|row| {
                            let mount = cell_str(row, "mount_point")?;
                            let free = cell_i64(row, "available_bytes")?;
                            Some((mount, u64::try_from(free).ok()?))
                        })
                        .collect::<Vec<_>>())
                })
            })?;
            match found {
                Ok(v) => volumes.extend(v),
                // No permission, or not this platform / version.
                Err(Failure::Server(_)) => {}
                Err(f) => return Err(self.fail("read the free space of the server's volumes", f)),
            }
        }
        Ok(judge(
            &self.name,
            &dir.to_string_lossy(),
            estimate,
            &volumes,
            compressed,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vols(v: &[(&str, u64)]) -> Vec<(String, u64)> {
        v.iter().map(|(m, f)| (m.to_string(), *f)).collect()
    }

    #[test]
    fn the_folders_volume_is_the_longest_mount_point_containing_it() {
        let v = vols(&[
            ("C:\\", 10),
            ("D:\\", 20),
            ("D:\\Mounts\\Big\\", 30),
            ("/", 1),
            ("/var/opt/mssql/", 5),
        ]);
        assert_eq!(volume_for("d:\\backups", &v).map(|x| x.1), Some(20));
        assert_eq!(volume_for("D:/Mounts/Big/sql", &v).map(|x| x.1), Some(30));
        assert_eq!(volume_for("D:\\Mounts\\Bigger", &v).map(|x| x.1), Some(20));
        assert_eq!(volume_for("E:\\Backups", &v), None);
        assert_eq!(volume_for("\\\\nas\\sql", &v), None);
        assert_eq!(
            volume_for("/var/opt/mssql/backup", &v).map(|x| x.1),
            Some(5)
        );
        assert_eq!(volume_for("/var/opt/mssqlx", &v), None);
        // Only `/` contains it: another file system may be mounted there.
        assert_eq!(volume_for("/srv/backup", &v), None);
    }

    #[test]
    fn refused_only_when_clearly_short() {
        let v = vols(&[("D:\\", 1000)]);
        assert_eq!(judge("A", "D:\\B", Some(1000), &v, false), Fit::Fits);
        assert!(
            matches!(judge("A", "D:\\B", Some(1001), &v, false), Fit::Refuse(m) if m.contains("1001 bytes") && m.contains("1000 bytes free") && m.contains("`D:\\B`"))
        );
        assert!(matches!(
            judge("A", "D:\\B", Some(5000), &v, true),
            Fit::Note(_)
        ));
        assert!(
            matches!(judge("A", "E:\\B", Some(5), &v, false), Fit::Note(m) if m.contains("cannot tell"))
        );
        assert!(
            matches!(judge("A", "D:\\B", None, &v, false), Fit::Note(m) if m.contains("cannot tell"))
        );
    }
}
