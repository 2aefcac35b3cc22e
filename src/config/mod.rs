//! Loading and validating the two inputs of a run: the site file and the release.
//! Owns parsing (serde, `deny_unknown_fields`), `${env:NAME}` expansion and path
//! resolution; it must not touch databases or nodes.

pub(crate) mod ado;
mod env;
mod inventory;
pub mod release;
pub mod site;

pub use release::{Migration, Release};
pub use site::{
    DbKind, MssqlConfig, NodeAddress, NodeConfig, Role, Secret, Shell, Site, SshSettings,
};

/// Render a TOML deserialisation error with the file name in front.
pub(crate) fn toml_error(path: &std::path::Path, err: toml::de::Error) -> crate::Error {
    crate::Error::Config(format!(
        "{}: {}",
        path.display(),
        err.to_string().trim_end()
    ))
}
