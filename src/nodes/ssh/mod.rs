//! The SSH transport: a node reached with `ssh://user@host:port`.
//!
//! One connection per node for the whole process (the planning pass and the
//! run reuse it), files over SFTP on that connection, commands on a new
//! channel each. russh is async; the transport trait is not, so a small
//! process-wide tokio runtime owns the connections and the sync methods
//! block on it (never from inside it). Host keys are checked against
//! known_hosts: an unknown key is refused unless the site accepts new keys, a
//! changed key always is. Keys, passphrases and secrets never reach output.
//!
//! A connection found closed (sshd restarted, network dropped) is reopened
//! once, with the same checks, by an operation that has not yet sent anything
//! that could change the node; one lost after that is reported, never
//! repeated. A running command stops when the operator aborts (second Ctrl-C).

mod connect;
mod exec;
mod handshakes;
mod pool;
mod sftp;
mod shell;

use std::sync::Arc;
use std::time::Duration;

use super::{DirState, ExecOutput, NodeTransport, PathIdentity, PayloadEntry, TreeHashes};
use crate::config::Shell;
use crate::{Error, Result};

use pool::Link;
pub(crate) use pool::{close_all, connect_many, prefetch};
use shell::sftp_path;

/// A node reached over SSH.
pub struct SshTransport {
    node: String,
    shell: Shell,
    link: Arc<Link>,
    /// Limit for one SFTP request.
    file_timeout: Duration,
}

impl SshTransport {
    fn target(&self) -> String {
        self.link.spec.target()
    }

    fn err(&self, message: String) -> Error {
        Error::node(&self.node, format!("{}: {message}", self.target()))
    }

    fn path(&self, p: &str) -> String {
        sftp_path(self.shell, p)
    }
}

impl NodeTransport for SshTransport {
    fn node(&self) -> &str {
        &self.node
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.sftp_read_file(path)
    }

    fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        self.sftp_write_file(path, data)
    }

    fn remove_tree(&self, path: &str) -> Result<()> {
        self.sftp_remove_tree(path)
    }

    fn dir_state(&self, path: &str) -> Result<DirState> {
        self.sftp_dir_state(path)
    }

    fn create_dir_all(&self, path: &str) -> Result<()> {
        self.sftp_create_dir_all(path)
    }

    fn upload_entries(&self, entries: &[PayloadEntry], dest: &str) -> Result<u64> {
        self.sftp_upload_entries(entries, dest)
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.sftp_rename(from, to)
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        self.sftp_remove_file(path)
    }

    fn remove_empty_dir(&self, path: &str) -> Result<bool> {
        self.sftp_remove_empty_dir(path)
    }

    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        self.sftp_list_dir(path)
    }

    fn tree_hashes(&self, dir: &str) -> Result<TreeHashes> {
        self.hash_tree(dir)
    }

    fn tree_fingerprint(&self, dir: &str) -> Result<Option<String>> {
        self.fingerprint_tree(dir)
    }

    fn identity(&self, path: &str) -> Result<Option<PathIdentity>> {
        self.sftp_identity(path)
    }

    fn link_states(&self, paths: &[&str]) -> Result<Vec<Option<bool>>> {
        self.sftp_link_states(paths)
    }

    fn paths_ignore_case(&self) -> bool {
        self.shell == Shell::Powershell
    }

    fn exec(&self, command: &str, cwd: &str, timeout: Duration) -> Result<ExecOutput> {
        self.exec_command(command, cwd, timeout)
    }
}

/// Whether an SFTP error is the status `code`.
pub(super) fn is_status(
    e: &russh_sftp::client::error::Error,
    code: russh_sftp::protocol::StatusCode,
) -> bool {
    matches!(e, russh_sftp::client::error::Error::Status(s) if s.status_code == code)
}
