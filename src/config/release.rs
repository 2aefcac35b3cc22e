//! The release being installed: `release.toml`, the payload folder and the
//! migrations for each database kind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use semver::Version;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::DbKind;
use crate::{Error, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseFile {
    version: Version,
    min_upgrade_from: Version,
    #[serde(default = "default_payload")]
    payload: String,
    #[serde(default)]
    migrations: MigrationsSection,
    /// `false` declares that this version changes nothing in the database
    /// schema: an upgrade then records the version with no migration.
    #[serde(default = "default_true")]
    schema_change: bool,
}

/// `migrations = "folder"` (one subfolder per database kind, the short form)
/// or `[migrations]` with one folder per kind (`sqlite = "db/sqlite"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum MigrationsSection {
    Base(String),
    PerKind(BTreeMap<String, String>),
}

impl Default for MigrationsSection {
    fn default() -> Self {
        MigrationsSection::Base("migrations".into())
    }
}

fn default_true() -> bool {
    true
}

fn default_payload() -> String {
    "payload".into()
}

#[derive(Debug, Clone)]
pub struct Release {
    /// False for procedures run without `--release` (backup, verify-cluster):
    /// operations that install something refuse to run.
    pub present: bool,
    pub dir: PathBuf,
    pub version: Version,
    pub min_upgrade_from: Version,
    pub payload: PathBuf,
    /// The release file, for messages.
    pub file: PathBuf,
    /// Where the migrations of each database kind are, as declared.
    migrations: Migrations,
    /// False when the release declares that it changes no schema.
    pub schema_change: bool,
}

#[derive(Debug, Clone)]
enum Migrations {
    /// `<base>/<kind>/`.
    Base(PathBuf),
    /// Declared per kind; a kind that is not listed has no folder.
    PerKind(BTreeMap<String, PathBuf>),
}

/// One migration file: `<version>_<name>.sql`, applied when upgrading a database
/// from a version older than `<version>`.
#[derive(Debug, Clone)]
pub struct Migration {
    pub version: Version,
    /// The file name, which is also the migration's identity in the history table.
    pub name: String,
    pub path: PathBuf,
    pub sql: String,
    /// Hex SHA-256 of the file's bytes.
    pub checksum: String,
}

impl Release {
    /// Load a release from its folder or from the path of its `release.toml`.
    pub fn load(path: &Path) -> Result<Release> {
        let (dir, file) = if path.is_dir() {
            (path.to_path_buf(), path.join("release.toml"))
        } else {
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (dir, path.to_path_buf())
        };
        let text =
            std::fs::read_to_string(&file).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::Config(format!(
                    "no release at `{}`: give --release the release folder (holding release.toml) or its release.toml",
                    path.display()
                )),
                _ => Error::io("read release file", &file, e),
            })?;
        let raw: ReleaseFile = toml::from_str(&text).map_err(|e| super::toml_error(&file, e))?;
        if raw.min_upgrade_from > raw.version {
            return Err(Error::Config(format!(
                "{}: `min_upgrade_from` ({}) is newer than `version` ({})",
                file.display(),
                raw.min_upgrade_from,
                raw.version
            )));
        }
        let payload = dir.join(&raw.payload);
        if !payload.is_dir() {
            return Err(Error::Config(format!(
                "{}: `payload`: folder `{}` does not exist",
                file.display(),
                payload.display()
            )));
        }
        let migrations = match raw.migrations {
            MigrationsSection::Base(base) => Migrations::Base(dir.join(base)),
            MigrationsSection::PerKind(map) => {
                let mut out = BTreeMap::new();
                for (kind, folder) in map {
                    if !["sqlite", "mssql"].contains(&kind.as_str()) {
                        return Err(Error::Config(format!(
                            "{}: `[migrations]` names unknown database kind `{kind}`; kinds are `sqlite` and `mssql`",
                            file.display()
                        )));
                    }
                    out.insert(kind, dir.join(folder));
                }
                Migrations::PerKind(out)
            }
        };
        Ok(Release {
            present: true,
            version: raw.version,
            min_upgrade_from: raw.min_upgrade_from,
            payload,
            file,
            migrations,
            schema_change: raw.schema_change,
            dir,
        })
    }

    /// No release: for procedures that install nothing.
    pub fn absent() -> Release {
        Release {
            present: false,
            dir: PathBuf::new(),
            version: Version::new(0, 0, 0),
            min_upgrade_from: Version::new(0, 0, 0),
            payload: PathBuf::new(),
            file: PathBuf::new(),
            migrations: Migrations::PerKind(BTreeMap::new()),
            schema_change: false,
        }
    }

    /// Load `path`, or no release when `None`.
    pub fn load_opt(path: Option<&Path>) -> Result<Release> {
        path.map(Release::load)
            .unwrap_or_else(|| Ok(Release::absent()))
    }

    /// Fail with a clear message when there is no release.
    pub fn require(&self, what: &str) -> Result<()> {
        if self.present {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "{what} needs a release: pass --release PATH"
            )))
        }
    }

    /// How to name this release in a command line.
    pub fn arg(&self) -> String {
        if self.present {
            format!(" --release {}", self.dir.display())
        } else {
            String::new()
        }
    }

    /// The folder of `kind`'s migrations, as declared (it may not exist).
    pub fn migrations_dir(&self, kind: DbKind) -> Option<PathBuf> {
        match &self.migrations {
            Migrations::Base(base) => Some(base.join(kind.as_str())),
            Migrations::PerKind(map) => map.get(kind.as_str()).cloned(),
        }
    }

    /// Every migration for `kind`, sorted by version then name. A kind with no
    /// declared or existing folder has none: whether that is allowed is the
    /// upgrade rail's decision (`schema_change`).
    pub fn migrations(&self, kind: DbKind) -> Result<Vec<Migration>> {
        let Some(dir) = self.migrations_dir(kind) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (name, path) in super::files_ending(&dir, ".sql", "list migrations in")? {
            let version = name
                .split_once('_')
                .and_then(|(v, _)| Version::parse(v).ok())
                .ok_or_else(|| {
                    Error::Config(format!(
                        "migration `{}`: name must be `<version>_<description>.sql`, e.g. `2.0.0_01_add_priority.sql`",
                        path.display()
                    ))
                })?;
            if version > self.version {
                return Err(Error::Config(format!(
                    "migration `{}` is for version {version}, newer than the release ({})",
                    path.display(),
                    self.version
                )));
            }
            let bytes = std::fs::read(&path).map_err(|e| Error::io("read migration", &path, e))?;
            let checksum = sha256_hex(&bytes);
            let sql = String::from_utf8(bytes).map_err(|_| {
                Error::Config(format!("migration `{}` is not valid UTF-8", path.display()))
            })?;
            out.push(Migration {
                version,
                name,
                path,
                sql,
                checksum,
            });
        }
        out.sort_by(|a, b| a.version.cmp(&b.version).then_with(|| a.name.cmp(&b.name)));
        Ok(out)
    }
}

/// Hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Size and SHA-256 (hex) of a file, read once in 1 MiB chunks (a backup's
/// identity, a staged payload file; SHA-256 uses the CPU's SHA extensions
/// where it has them).
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&h.finalize())))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
