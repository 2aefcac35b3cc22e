//! Loading and validating the two inputs of a run: the site file and the release.
//! Owns parsing (serde, `deny_unknown_fields`), `${env:NAME}` expansion and path
//! resolution; it must not touch databases or nodes.
//!
//! The site file: `raw` (what serde reads) -> `site` (`Site::parse`, step by
//! step) with one module per section: `database` (one variant per backend;
//! SQL Server in `mssql`), `node` (addresses, roots) fed by `inventory` or
//! `[[node]]`, `ssh`. `secret` holds values that must never be printed.

mod database;
mod env;
mod inventory;
pub(crate) mod mssql;
mod node;
mod raw;
pub mod release;
mod secret;
mod site;
mod source;
mod ssh;
#[cfg(test)]
mod tests;

pub use database::{DatabaseBackend, DatabaseConfig, SqliteConfig};
pub use mssql::{check_sql_name, MssqlConfig};
pub use node::{overlap, path_components, NodeAddress, NodeConfig, Overlap};
pub use raw::{DbKind, Role, ServiceConfig, Shell};
pub use release::{Migration, Release};
pub use site::Site;
pub use ssh::SshSettings;

/// Render a TOML deserialisation error with the file name in front.
pub(crate) fn toml_error(path: &std::path::Path, err: toml::de::Error) -> crate::Error {
    crate::Error::Config(format!(
        "{}: {}",
        path.display(),
        err.to_string().trim_end()
    ))
}

/// The entries of `dir` whose name ends with `suffix`, as (name, path), in
/// the order the file system lists them; a folder that does not exist holds
/// none. `what` says what is being listed, for the error.
pub(crate) fn files_ending(
    dir: &std::path::Path,
    suffix: &str,
    what: &'static str,
) -> crate::Result<Vec<(String, std::path::PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(crate::Error::io(what, dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| crate::Error::io(what, dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(suffix) {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}
