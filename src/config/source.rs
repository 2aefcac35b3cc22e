//! Where a setting being read comes from (the site file and its folder), for
//! resolving relative paths, `${env:NAME}` references and error messages that
//! name the file. Shared by the steps of `Site::parse`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::env::expand;
use crate::{Error, Result};

pub(crate) struct Source {
    /// The site file as shown in messages.
    pub file: String,
    /// The site file's folder: relative paths are resolved against it.
    pub dir: PathBuf,
}

impl Source {
    pub fn new(file: &Path) -> Source {
        let dir = file
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Source {
            file: file.display().to_string(),
            dir,
        }
    }

    /// A configuration error that names the site file.
    pub fn error(&self, message: impl fmt::Display) -> Error {
        Error::Config(format!("{}: {message}", self.file))
    }

    /// `value` with `${env:...}` expanded, relative to the site file's folder.
    pub fn resolve(&self, value: &str, key: &str) -> Result<PathBuf> {
        let v = expand(value, &format!("{}: `{key}`", self.file))?;
        Ok(self.dir.join(v))
    }

    /// A number of seconds, at least 1, `default` when not given.
    pub fn secs(&self, v: Option<u64>, default: u64, key: &str) -> Result<Duration> {
        match v {
            None => Ok(Duration::from_secs(default)),
            Some(0) => Err(self.error(format_args!("`{key}` must be at least 1 (seconds)"))),
            Some(s) => Ok(Duration::from_secs(s)),
        }
    }
}
