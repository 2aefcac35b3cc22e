//! The one error type of the library. Every message says what it is about
//! (file, key, node, database) and what to do; `main` renders it once and maps
//! it to an exit code.

use std::path::{Path, PathBuf};

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A site file, release or command-line input is wrong. Nothing was changed.
    #[error("{0}")]
    Config(String),
    /// A run journal cannot be read (damaged in the middle, or an entry this
    /// version of uprun cannot read back). Exit code 2, as bad input: the
    /// operator sets it aside (`uprun runs abandon`).
    #[error("{0}")]
    Journal(String),
    /// uprun itself could not work (the SSH runtime would not start, an
    /// operation started where it cannot run). Not bad input: exit code 1.
    #[error("{0}")]
    Internal(String),
    /// A file-system operation on this machine failed.
    #[error("cannot {action} `{}`: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The database refused or failed an operation.
    #[error("database `{database}`: {message}")]
    Database { database: String, message: String },
    /// A node could not do what was asked.
    #[error("node `{node}`: {message}")]
    Node { node: String, message: String },
    /// A safety rail refused the operation. Nothing was changed by it.
    #[error("refused: {0}")]
    Refused(String),
    /// The operator stopped the run (Ctrl-C). The journal says where.
    #[error("{0}")]
    Interrupted(String),
    /// The procedure ended, but the run-end audit found the site not as the
    /// run must leave it (a node or the database left behind).
    #[error("{0}")]
    Incomplete(String),
    /// The procedure failed (script error, rendered with its position).
    #[error("{0}")]
    Script(String),
    /// A safety rail refused an operation ordered by the procedure (rendered
    /// with the script position). Nothing was changed by it.
    #[error("{0}")]
    ScriptRefused(String),
    /// Bad input found by a host function while the procedure ran (an unknown
    /// node, a bad option or folder), rendered with the script position.
    /// Exit code 2, like bad input found before the run.
    #[error("{0}")]
    ScriptConfig(String),
}

impl Error {
    pub fn io(action: &'static str, path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn db(database: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Database {
            database: database.into(),
            message: message.into(),
        }
    }

    pub fn node(node: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Node {
            node: node.into(),
            message: message.into(),
        }
    }

    /// A short machine-readable kind, used in script error maps and JSON events.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Config(_) => "config",
            // As before they had their own variant: what a script sees.
            Error::Journal(_) => "config",
            Error::Internal(_) => "internal",
            Error::Io { .. } => "io",
            Error::Database { .. } => "database",
            Error::Node { .. } => "node",
            Error::Refused(_) => "refused",
            Error::Interrupted(_) => "interrupted",
            Error::Incomplete(_) => "incomplete",
            Error::Script(_) => "script",
            Error::ScriptRefused(_) => "refused",
            Error::ScriptConfig(_) => "config",
        }
    }

    /// Whether the message is several lines by design (a site file's parse
    /// error with its snippet, a script error with its source line): its
    /// line breaks are kept when it is shown.
    pub fn keeps_lines(&self) -> bool {
        matches!(
            self,
            Error::Config(_)
                | Error::Io { .. }
                | Error::Journal(_)
                | Error::Script(_)
                | Error::ScriptRefused(_)
                | Error::ScriptConfig(_)
        )
    }

    /// Documented exit codes: 2 bad input, 3 refused by a safety rail, 1 anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::ScriptConfig(_) | Error::Journal(_) => 2,
            Error::Refused(_) | Error::ScriptRefused(_) => 3,
            Error::Interrupted(_) => 130,
            _ => 1,
        }
    }
}
