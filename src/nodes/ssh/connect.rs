//! Opening a connection: TCP, the SSH handshake with the host key checked
//! against known_hosts, authentication (an explicit identity, the agent, the
//! default key files), the SFTP session, and the root's existence.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::StatusCode;

use super::is_status;
use super::shell::sftp_path;
use crate::config::{NodeAddress, Shell, SshSettings};
use crate::{Error, Result};

/// What the host key check decided, kept for the error message (russh only
/// reports "unknown key").
#[derive(Debug, Clone)]
pub(super) enum HostKeyVerdict {
    Known,
    /// Not in known_hosts and accepted by `accept_new_host_keys`; recorded
    /// in known_hosts once a read-write connection uses it.
    New(PublicKey),
    Unknown {
        key: String,
    },
    Changed {
        key: String,
        line: usize,
    },
    Unreadable(String),
    Certificate,
}

pub(super) struct HostKeyCheck {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) known_hosts: PathBuf,
    pub(super) accept_new: bool,
    pub(super) verdict: Arc<Mutex<Option<HostKeyVerdict>>>,
}

pub(super) fn describe_key(key: &PublicKey) -> String {
    format!(
        "{} key {}",
        key.algorithm().as_str(),
        key.fingerprint(HashAlg::Sha256)
    )
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> std::result::Result<bool, Self::Error> {
        let verdict = match server_key {
            PublicKeyOrCertificate::Certificate(_) => HostKeyVerdict::Certificate,
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                match russh::keys::check_known_hosts_path(
                    &self.host,
                    self.port,
                    key,
                    &self.known_hosts,
                ) {
                    Ok(true) => HostKeyVerdict::Known,
                    Ok(false) if self.accept_new => HostKeyVerdict::New(key.clone()),
                    Ok(false) => HostKeyVerdict::Unknown {
                        key: describe_key(key),
                    },
                    Err(russh::keys::Error::KeyChanged { line }) => HostKeyVerdict::Changed {
                        key: describe_key(key),
                        line,
                    },
                    Err(e) => HostKeyVerdict::Unreadable(e.to_string()),
                }
            }
        };
        let accept = matches!(verdict, HostKeyVerdict::Known | HostKeyVerdict::New(_));
        *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) = Some(verdict);
        Ok(accept)
    }
}

pub(super) fn known_hosts_file(settings: &SshSettings) -> Result<PathBuf> {
    if let Some(p) = &settings.known_hosts {
        return Ok(p.clone());
    }
    home_dir()
        .map(|h| h.join(".ssh").join("known_hosts"))
        .ok_or_else(|| {
            Error::Config(
                "cannot find the home folder for `~/.ssh/known_hosts`; set `known_hosts` in the site file's `[ssh]` section".into(),
            )
        })
}

pub(super) fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

pub(super) struct ConnectSpec {
    pub(super) node: String,
    pub(super) user: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) root: String,
    pub(super) shell: Shell,
    pub(super) settings: SshSettings,
    pub(super) known_hosts: PathBuf,
    /// Permits for handshakes in flight: this node's sshd's (shared with
    /// every node at the same address) and the site's overall ones.
    pub(super) handshakes: super::handshakes::HandshakePermits,
}

impl ConnectSpec {
    pub(super) fn target(&self) -> String {
        NodeAddress::Ssh {
            user: self.user.clone(),
            host: self.host.clone(),
            port: self.port,
        }
        .to_string()
    }

    pub(super) fn err(&self, message: String) -> Error {
        Error::node(&self.node, format!("{}: {message}", self.target()))
    }

    /// `[host]:port` as known_hosts and `ssh-keygen -R` write it.
    pub(super) fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }

    pub(super) async fn connect(&self) -> Result<Connection> {
        let timeout = self.settings.connect_timeout;
        let secs = timeout.as_secs();
        // Held from the TCP connection until the SFTP session is up: sshd
        // counts a connection against `MaxStartups` until its parent process
        // hears that authentication ended, which lags behind the client under
        // load; the extra round trips keep the count under the limit. The
        // connect timeout starts once the permit is had, so waiting in line
        // is no failure.
        let permit =
            self.handshakes.acquire().await.ok_or_else(|| {
                self.err("internal error: the handshake limiter was closed".into())
            })?;
        let tcp = match tokio::time::timeout(
            timeout,
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        {
            Err(_) => {
                return Err(self.err(format!(
                    "cannot reach the node: no answer within {secs} s (`[ssh] connect_timeout_secs`); check the address, the network and that sshd runs on port {}",
                    self.port
                )))
            }
            Ok(Err(e)) => {
                let hint = match e.kind() {
                    std::io::ErrorKind::ConnectionRefused => format!(
                        "nothing listens on port {}; check that sshd runs on the node and the port in the address",
                        self.port
                    ),
                    _ => "check the host name, the network and the node".to_string(),
                };
                return Err(self.err(format!("cannot reach the node: {e}; {hint}")));
            }
            Ok(Ok(s)) => s,
        };
        let _ = tcp.set_nodelay(true);
        let config = Arc::new(client::Config {
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(15)),
            keepalive_max: 4,
            nodelay: true,
            ..Default::default()
        });
        let verdict = Arc::new(Mutex::new(None));
        let check = HostKeyCheck {
            host: self.host.clone(),
            port: self.port,
            known_hosts: self.known_hosts.clone(),
            accept_new: self.settings.accept_new_host_keys,
            verdict: verdict.clone(),
        };
        let connected =
            tokio::time::timeout(timeout, client::connect_stream(config, tcp, check)).await;
        let verdict = verdict.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut handle = match connected {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => return Err(self.host_key_error(verdict, Some(e))),
            Err(_) => {
                return Err(self.err(format!(
                    "the SSH handshake did not finish within {secs} s; check that port {} is an SSH server",
                    self.port
                )))
            }
        };
        let unrecorded_key = match verdict {
            Some(HostKeyVerdict::New(k)) => Some(k),
            _ => None,
        };
        match tokio::time::timeout(timeout, self.authenticate(&mut handle)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(self.err(format!("authentication did not finish within {secs} s")))
            }
        }
        let sftp = tokio::time::timeout(timeout, self.open_sftp(&handle))
            .await
            .map_err(|_| self.err(format!("the SFTP subsystem did not start within {secs} s")))??;
        drop(permit);
        let conn = Connection {
            target: self.target(),
            host: self.host.clone(),
            port: self.port,
            known_hosts: self.known_hosts.clone(),
            handle,
            sftp: Arc::new(sftp.0),
            posix_rename: sftp.1,
            fsync: sftp.2,
            unrecorded_key: Mutex::new(unrecorded_key),
            sftp_lost: AtomicBool::new(false),
        };
        // The root must exist, as for local nodes; checked before any change.
        let root = sftp_path(self.shell, &self.root);
        match conn.sftp.stat(root.clone()).await {
            Ok(a) if a.attrs.is_dir() => {}
            Ok(_) => {
                return Err(self.err(format!(
                    "root `{}` is not a folder; correct `root` in the site file",
                    self.root
                )))
            }
            Err(e) if is_status(&e, StatusCode::NoSuchFile) => {
                return Err(self.err(format!(
                    "root folder `{}` does not exist on the node; create it or correct `root` in the site file",
                    self.root
                )))
            }
            Err(e) => return Err(self.err(format!("cannot read root `{}`: {e}", self.root))),
        }
        Ok(conn)
    }

    pub(super) fn host_key_error(
        &self,
        verdict: Option<HostKeyVerdict>,
        e: Option<russh::Error>,
    ) -> Error {
        let kh = self.known_hosts.display();
        let name = self.known_hosts_name();
        let nothing = "Nothing was done on this node.";
        match verdict {
            Some(HostKeyVerdict::Unknown { key }) => self.err(format!(
                "host key not known: the node offers {key}, which `{kh}` does not list. Check this fingerprint with the node's administrator, then add it (`ssh-keyscan -p {} {} >> {kh}`), or set `accept_new_host_keys = true` in the site file's `[ssh]` section to record it on first connection. {nothing}",
                self.port, self.host
            )),
            Some(HostKeyVerdict::Changed { key, line }) => self.err(format!(
                "HOST KEY CHANGED: the node offers {key}, which differs from line {line} of `{kh}`. Someone may be intercepting the connection; uprun always refuses a changed key. If the node was reinstalled, confirm the new fingerprint, remove the old key with `ssh-keygen -R '{name}' -f {kh}` and add the new one. {nothing}"
            )),
            Some(HostKeyVerdict::Unreadable(why)) => self.err(format!(
                "cannot check the host key against `{kh}`: {why}; fix or move that file (`[ssh] known_hosts`). {nothing}"
            )),
            Some(HostKeyVerdict::Certificate) => self.err(format!(
                "the node offers a host certificate, which uprun does not verify; configure the node's sshd with a plain host key listed in `{kh}`. {nothing}"
            )),
            _ => self.err(match e {
                Some(e) => format!("SSH handshake failed: {e}"),
                None => "SSH handshake failed".into(),
            }),
        }
    }

    pub(super) async fn authenticate(&self, handle: &mut Handle<HostKeyCheck>) -> Result<()> {
        let user = self.user.clone();
        let mut tried = Vec::new();
        if let Some(path) = &self.settings.identity {
            // An explicit identity is the only key offered (like IdentitiesOnly).
            let key = load_key(path).map_err(|why| {
                self.err(format!(
                    "cannot use `[ssh] identity` `{}`: {why}",
                    path.display()
                ))
            })?;
            if self.try_key(handle, &user, key).await? {
                return Ok(());
            }
            return Err(self.err(format!(
                "the node refused the key `{}` for user `{user}`: add its public key to `~{user}/.ssh/authorized_keys` on the node, or correct `[ssh] identity`",
                path.display()
            )));
        }
        #[cfg(unix)]
        if std::env::var_os("SSH_AUTH_SOCK").is_some() {
            if let Ok(mut agent) = russh::keys::agent::client::AgentClient::connect_env().await {
                let ids = agent.request_identities().await.unwrap_or_default();
                for id in ids {
                    let key = id.public_key().into_owned();
                    let hash = self.rsa_hash(handle, key.algorithm().is_rsa()).await;
                    if let Ok(r) = handle
                        .authenticate_publickey_with(&user, key, hash, &mut agent)
                        .await
                    {
                        if r.success() {
                            return Ok(());
                        }
                    }
                }
                tried.push("the keys of the SSH agent".to_string());
            }
        }
        if let Some(home) = home_dir() {
            for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                let path = home.join(".ssh").join(name);
                if !path.is_file() {
                    continue;
                }
                match load_key(&path) {
                    Ok(key) => {
                        if self.try_key(handle, &user, key).await? {
                            return Ok(());
                        }
                        tried.push(format!("`{}`", path.display()));
                    }
                    Err(_) => tried.push(format!(
                        "`{}` (not usable without a passphrase)",
                        path.display()
                    )),
                }
            }
        }
        Err(self.err(format!(
            "authentication as `{user}` failed ({}); set `identity` in the site file's `[ssh]` section to a key file the node accepts, or load the key into the SSH agent",
            if tried.is_empty() {
                "no key found: no `[ssh] identity`, no SSH agent, no ~/.ssh/id_* file".to_string()
            } else {
                format!("tried {}", tried.join(", "))
            }
        )))
    }

    pub(super) async fn rsa_hash(
        &self,
        handle: &Handle<HostKeyCheck>,
        rsa: bool,
    ) -> Option<HashAlg> {
        if !rsa {
            return None;
        }
        handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten()
    }

    pub(super) async fn try_key(
        &self,
        handle: &mut Handle<HostKeyCheck>,
        user: &str,
        key: PrivateKey,
    ) -> Result<bool> {
        let hash = self.rsa_hash(handle, key.algorithm().is_rsa()).await;
        let r = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
            .await
            .map_err(|e| self.err(format!("authentication failed: {e}")))?;
        Ok(r.success())
    }

    pub(super) async fn open_sftp(
        &self,
        handle: &Handle<HostKeyCheck>,
    ) -> Result<(RawSftpSession, bool, bool)> {
        let channel = handle
            .channel_open_session()
            .await
            .map_err(|e| self.err(format!("cannot open a channel: {e}")))?;
        channel
            .request_subsystem(true, "sftp")
            .await
            .map_err(|e| self.err(format!("cannot start the SFTP subsystem: {e}")))?;
        let sftp = RawSftpSession::new(channel.into_stream());
        sftp.set_timeout(self.settings.command_timeout.as_secs().max(1));
        let version = sftp.init().await.map_err(|e| {
            self.err(format!(
                "the SFTP subsystem did not answer: {e}; enable `Subsystem sftp` in the node's sshd_config"
            ))
        })?;
        let has = |name: &str| version.extensions.contains_key(name);
        Ok((
            sftp,
            has("posix-rename@openssh.com"),
            has("fsync@openssh.com"),
        ))
    }
}

/// Load an unencrypted private key; the error never contains key material.
pub(super) fn load_key(path: &Path) -> std::result::Result<PrivateKey, String> {
    russh::keys::load_secret_key(path, None).map_err(|e| match e {
        russh::keys::Error::KeyIsEncrypted => {
            "the key is protected by a passphrase; load it into the SSH agent (`ssh-add`) and remove `identity`, so the agent is used".to_string()
        }
        russh::keys::Error::IO(io) => io.to_string(),
        _ => "not a private key uprun can read (OpenSSH or PEM format expected)".to_string(),
    })
}

impl Connection {
    /// Record a host key accepted by `accept_new_host_keys` in known_hosts,
    /// once something may change (not while planning).
    pub(super) fn record_accepted_key(&self, node: &str) -> Result<()> {
        let key = self
            .unrecorded_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(key) = key {
            // Several nodes may share a host (and so a key): record it once.
            if let Ok(true) =
                russh::keys::check_known_hosts_path(&self.host, self.port, &key, &self.known_hosts)
            {
                return Ok(());
            }
            russh::keys::known_hosts::learn_known_hosts_path(
                &self.host,
                self.port,
                &key,
                &self.known_hosts,
            )
            .map_err(|e| {
                Error::node(
                    node,
                    format!(
                        "{}: cannot record the new host key in `{}`: {e}",
                        self.target,
                        self.known_hosts.display()
                    ),
                )
            })?;
        }
        Ok(())
    }
}

/// One authenticated connection to a node, with its SFTP session.
pub(super) struct Connection {
    /// `ssh://user@host:port`, for messages.
    pub(super) target: String,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) known_hosts: PathBuf,
    pub(super) handle: Handle<HostKeyCheck>,
    pub(super) sftp: Arc<RawSftpSession>,
    pub(super) posix_rename: bool,
    pub(super) fsync: bool,
    /// A new host key accepted while connecting read-only, not yet recorded.
    pub(super) unrecorded_key: Mutex<Option<PublicKey>>,
    /// The SFTP session ended (its channel or the connection closed).
    pub(super) sftp_lost: AtomicBool,
}

impl Connection {
    /// Closed: nothing more can be sent on it.
    pub(super) fn is_closed(&self) -> bool {
        self.handle.is_closed() || self.sftp_lost.load(Ordering::SeqCst)
    }
}
