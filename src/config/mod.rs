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
