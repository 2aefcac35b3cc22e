//! `[ssh]` in the site file: how uprun reaches `ssh://` nodes.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::SshSection;
use super::source::Source;
use crate::Result;

/// How uprun reaches `ssh://` nodes (`[ssh]` in the site file).
#[derive(Debug, Clone)]
pub struct SshSettings {
    /// Private key file; when absent, the SSH agent and then the usual
    /// `~/.ssh/id_*` files are tried.
    pub identity: Option<PathBuf>,
    /// Known-hosts file; when absent, `~/.ssh/known_hosts`.
    pub known_hosts: Option<PathBuf>,
    /// Record the key of a host that is not in known_hosts yet instead of
    /// refusing it. A changed key is always refused.
    pub accept_new_host_keys: bool,
    pub connect_timeout: Duration,
    /// Limit for one file operation on a node (service commands use
    /// `[service] timeout_secs`).
    pub command_timeout: Duration,
    /// SSH handshakes in flight at once per sshd (`host:port`). Below
    /// OpenSSH's default `MaxStartups 10:30:100`, past which sshd drops new
    /// connections.
    pub max_parallel_handshakes: usize,
}

/// Default of `[ssh] max_parallel_handshakes`: well under sshd's default
/// `MaxStartups` start (10), which sshd counts with a lag under load (8
/// measured one drop in 200 connections on a loaded machine).
pub const DEFAULT_MAX_PARALLEL_HANDSHAKES: usize = 6;

impl Default for SshSettings {
    fn default() -> Self {
        SshSettings {
            identity: None,
            known_hosts: None,
            accept_new_host_keys: false,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(60),
            max_parallel_handshakes: DEFAULT_MAX_PARALLEL_HANDSHAKES,
        }
    }
}

impl SshSettings {
    pub(crate) fn from_section(raw: &SshSection, src: &Source) -> Result<SshSettings> {
        Ok(SshSettings {
            identity: match &raw.identity {
                Some(p) => Some(src.resolve(p, "ssh.identity")?),
                None => None,
            },
            known_hosts: match &raw.known_hosts {
                Some(p) => Some(src.resolve(p, "ssh.known_hosts")?),
                None => None,
            },
            accept_new_host_keys: raw.accept_new_host_keys,
            connect_timeout: src.secs(raw.connect_timeout_secs, 10, "ssh.connect_timeout_secs")?,
            command_timeout: src.secs(raw.command_timeout_secs, 60, "ssh.command_timeout_secs")?,
            max_parallel_handshakes: match raw.max_parallel_handshakes {
                None => DEFAULT_MAX_PARALLEL_HANDSHAKES,
                Some(n @ 1..=1000) => n as usize,
                Some(n) => {
                    return Err(src.error(format!(
                        "`ssh.max_parallel_handshakes` = {n}: must be between 1 and 1000 (handshakes in flight per sshd); keep it below the nodes' sshd `MaxStartups` (10 by default), past which sshd drops connections"
                    )))
                }
            },
        })
    }
}
