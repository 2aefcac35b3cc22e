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

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use russh::client::{self, Handle};
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Sig};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};
use tokio::runtime::Runtime;

use super::{ConnectMode, DirState, ExecOutput, NodeTransport, PathIdentity, PayloadEntry};
use crate::config::{NodeAddress, NodeConfig, Shell, SshSettings};
use crate::{Error, Result};

/// Largest SFTP read or write request (OpenSSH accepts 256 KiB; 32 KiB is
/// what every server accepts).
const CHUNK: usize = 32 * 1024;
/// SFTP write requests in flight for one file.
const IN_FLIGHT: usize = 16;
/// Payload files copied at once.
const FILES_IN_FLIGHT: usize = 8;
/// Output kept from one remote command (each of stdout and stderr).
const MAX_OUTPUT: usize = 4 * 1024 * 1024;
/// How often a running command checks whether the operator aborted it.
const ABORT_POLL: Duration = Duration::from_millis(100);

/// The runtime that drives every SSH connection of this process.
fn runtime() -> Result<&'static Runtime> {
    static RT: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("uprun-ssh")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| Error::Internal(format!("cannot start the SSH runtime: {e}")))
}

/// Run a future to completion from sync code.
fn block_on<F: Future>(f: F) -> Result<F::Output> {
    if tokio::runtime::Handle::try_current().is_ok() {
        // Blocking a runtime thread on itself would deadlock or panic.
        return Err(Error::Internal(
            "internal error: an SSH operation was started from inside the async runtime".into(),
        ));
    }
    Ok(runtime()?.block_on(f))
}

/// What the host key check decided, kept for the error message (russh only
/// reports "unknown key").
#[derive(Debug, Clone)]
enum HostKeyVerdict {
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

struct HostKeyCheck {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    accept_new: bool,
    verdict: Arc<Mutex<Option<HostKeyVerdict>>>,
}

fn describe_key(key: &PublicKey) -> String {
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

/// One authenticated connection to a node, with its SFTP session.
struct Connection {
    /// `ssh://user@host:port`, for messages.
    target: String,
    host: String,
    port: u16,
    known_hosts: PathBuf,
    handle: Handle<HostKeyCheck>,
    sftp: Arc<RawSftpSession>,
    posix_rename: bool,
    fsync: bool,
    /// A new host key accepted while connecting read-only, not yet recorded.
    unrecorded_key: Mutex<Option<PublicKey>>,
    /// The SFTP session ended (its channel or the connection closed).
    sftp_lost: AtomicBool,
}

impl Connection {
    /// Closed: nothing more can be sent on it.
    fn is_closed(&self) -> bool {
        self.handle.is_closed() || self.sftp_lost.load(Ordering::SeqCst)
    }
}

/// A node's connection and how to open it again: every transport of the node
/// shares it, so one reconnection serves them all.
struct Link {
    spec: ConnectSpec,
    current: Mutex<Arc<Connection>>,
    /// One reconnection at a time.
    reconnecting: tokio::sync::Mutex<()>,
}

impl Link {
    fn new(spec: ConnectSpec, conn: Connection) -> Link {
        Link {
            spec,
            current: Mutex::new(Arc::new(conn)),
            reconnecting: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Arc<Connection> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A new connection in place of `dead`, made exactly as the first one
    /// (host key check, authentication, settings), unless another operation
    /// has already replaced it.
    async fn reconnect(&self, dead: &Arc<Connection>) -> Result<Arc<Connection>> {
        let _one = self.reconnecting.lock().await;
        let now = self.current();
        if !Arc::ptr_eq(&now, dead) && !now.is_closed() {
            return Ok(now);
        }
        let fresh = Arc::new(self.spec.connect().await?);
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        Ok(fresh)
    }
}

/// Connections of this process, by node and everything that chose them.
type Pool = Mutex<HashMap<String, Arc<Link>>>;

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Close every connection of this process cleanly (an SSH disconnect
/// message, then the socket), all at once, bounded by one second: called once
/// the command is done, so sshd sees an orderly goodbye instead of a reset.
pub fn close_all() {
    let links: Vec<Arc<Link>> = pool()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .drain()
        .map(|(_, l)| l)
        .collect();
    if links.is_empty() {
        return;
    }
    let _ = block_on(async move {
        let closing = links.into_iter().map(|l| async move {
            let conn = l.current();
            if conn.handle.is_closed() {
                return;
            }
            let _ = conn
                .handle
                .disconnect(russh::Disconnect::ByApplication, "", "en")
                .await;
            // Wait for the session to have sent it and closed, when nothing
            // else holds the connection (the handle is the session's end).
            drop(conn);
            let Ok(link) = Arc::try_unwrap(l) else { return };
            let conn = link.current.into_inner().unwrap_or_else(|e| e.into_inner());
            if let Ok(conn) = Arc::try_unwrap(conn) {
                let _ = conn.handle.await;
            }
        });
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            futures_util::future::join_all(closing),
        )
        .await;
    });
}

/// A node reached over SSH.
pub struct SshTransport {
    node: String,
    shell: Shell,
    link: Arc<Link>,
    /// Limit for one SFTP request.
    file_timeout: Duration,
}

fn known_hosts_file(settings: &SshSettings) -> Result<PathBuf> {
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

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Connections being opened ahead of need by [`prefetch`], by pool key; the
/// first `connect_many` that wants one takes it (and its outcome, success or
/// error, exactly once).
type Pending = Mutex<HashMap<String, tokio::task::JoinHandle<Result<Arc<Link>>>>>;

fn pending() -> &'static Pending {
    static PENDING: OnceLock<Pending> = OnceLock::new();
    PENDING.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The pool key of a node and how to connect to it.
fn spec_for(
    n: &NodeConfig,
    settings: &SshSettings,
    known_hosts: &Path,
    handshakes: &Arc<tokio::sync::Semaphore>,
) -> Result<(String, ConnectSpec)> {
    let NodeAddress::Ssh { user, host, port } = &n.address else {
        return Err(Error::node(&n.name, "is not an ssh:// node"));
    };
    let key = format!(
        "{}|{}|{:?}|{}",
        n.name,
        n.address,
        settings.identity,
        known_hosts.display()
    );
    let spec = ConnectSpec {
        node: n.name.clone(),
        user: user.clone(),
        host: host.clone(),
        port: *port,
        root: n.root.clone(),
        shell: n.shell,
        settings: settings.clone(),
        known_hosts: known_hosts.to_path_buf(),
        handshakes: handshakes.clone(),
    };
    Ok((key, spec))
}

fn handshake_limiter(settings: &SshSettings) -> Arc<tokio::sync::Semaphore> {
    // Never more handshakes in flight than this (reconnections included):
    // sshd drops unauthenticated connections past `MaxStartups`.
    Arc::new(tokio::sync::Semaphore::new(
        settings.max_parallel_handshakes.max(1),
    ))
}

/// Start connecting to `nodes` in the background (read-only: nothing is
/// recorded), so that the handshakes overlap with whatever the command does
/// before it needs the nodes (reading and hashing the release, compiling the
/// procedure). `connect_many` then takes these connections, or their errors,
/// in its own order; nothing is reported here.
pub(crate) fn prefetch(nodes: &[&NodeConfig], settings: &SshSettings) {
    if nodes.is_empty() {
        return;
    }
    let (Ok(known_hosts), Ok(rt)) = (known_hosts_file(settings), runtime()) else {
        return;
    };
    let handshakes = handshake_limiter(settings);
    let mut pending = pending().lock().unwrap_or_else(|e| e.into_inner());
    for n in nodes {
        let Ok((key, spec)) = spec_for(n, settings, &known_hosts, &handshakes) else {
            continue;
        };
        if pending.contains_key(&key) {
            continue;
        }
        let task = rt.spawn(async move {
            let conn = spec.connect().await?;
            Ok(Arc::new(Link::new(spec, conn)))
        });
        pending.insert(key, task);
    }
}

/// Connect to several nodes at once (one task each), in input order.
pub(crate) fn connect_many(
    nodes: &[&NodeConfig],
    settings: &SshSettings,
    mode: ConnectMode,
) -> Result<Vec<SshTransport>> {
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let known_hosts = known_hosts_file(settings)?;
    let rt = runtime()?;
    let handshakes = handshake_limiter(settings);
    let mut tasks = Vec::with_capacity(nodes.len());
    for n in nodes {
        let (key, spec) = spec_for(n, settings, &known_hosts, &handshakes)?;
        let pooled = pool()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|l| !l.current().is_closed())
            .cloned();
        let early = match pooled {
            Some(_) => None,
            None => pending()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key),
        };
        tasks.push((
            key,
            n.name.clone(),
            n.shell,
            rt.spawn(async move {
                if let Some(l) = pooled {
                    return Ok(l);
                }
                if let Some(task) = early {
                    match task.await {
                        Ok(Ok(l)) if !l.current().is_closed() => return Ok(l),
                        Ok(Ok(_)) => {} // closed meanwhile: connect again
                        Ok(Err(e)) => return Err(e),
                        Err(e) => {
                            return Err(Error::node(
                                &spec.node,
                                format!("connection task failed: {e}"),
                            ))
                        }
                    }
                }
                let conn = spec.connect().await?;
                Ok(Arc::new(Link::new(spec, conn)))
            }),
        ));
    }
    let mut out = Vec::with_capacity(tasks.len());
    let mut first_err = None;
    for (key, node, shell, task) in tasks {
        let result = match block_on(task)? {
            Ok(r) => r,
            Err(e) => Err(Error::node(&node, format!("connection task failed: {e}"))),
        };
        match result {
            Ok(link) => {
                if mode == ConnectMode::ReadWrite {
                    link.current().record_accepted_key(&node)?;
                }
                pool()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, link.clone());
                out.push(SshTransport {
                    node,
                    shell,
                    link,
                    file_timeout: settings.command_timeout,
                });
            }
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

struct ConnectSpec {
    node: String,
    user: String,
    host: String,
    port: u16,
    root: String,
    shell: Shell,
    settings: SshSettings,
    known_hosts: PathBuf,
    /// Permits for handshakes in flight, shared by every node of the site.
    handshakes: Arc<tokio::sync::Semaphore>,
}

impl ConnectSpec {
    fn target(&self) -> String {
        NodeAddress::Ssh {
            user: self.user.clone(),
            host: self.host.clone(),
            port: self.port,
        }
        .to_string()
    }

    fn err(&self, message: String) -> Error {
        Error::node(&self.node, format!("{}: {message}", self.target()))
    }

    /// `[host]:port` as known_hosts and `ssh-keygen -R` write it.
    fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }

    async fn connect(&self) -> Result<Connection> {
        let timeout = self.settings.connect_timeout;
        let secs = timeout.as_secs();
        // Held from the TCP connection until the SFTP session is up: sshd
        // counts a connection against `MaxStartups` until its parent process
        // hears that authentication ended, which lags behind the client under
        // load; the extra round trips keep the count under the limit. The
        // connect timeout starts once the permit is had, so waiting in line
        // is no failure.
        let permit = self
            .handshakes
            .acquire()
            .await
            .map_err(|_| self.err("internal error: the handshake limiter was closed".into()))?;
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

    fn host_key_error(&self, verdict: Option<HostKeyVerdict>, e: Option<russh::Error>) -> Error {
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

    async fn authenticate(&self, handle: &mut Handle<HostKeyCheck>) -> Result<()> {
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

    async fn rsa_hash(&self, handle: &Handle<HostKeyCheck>, rsa: bool) -> Option<HashAlg> {
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

    async fn try_key(
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

    async fn open_sftp(
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
fn load_key(path: &Path) -> std::result::Result<PrivateKey, String> {
    russh::keys::load_secret_key(path, None).map_err(|e| match e {
        russh::keys::Error::KeyIsEncrypted => {
            "the key is protected by a passphrase; load it into the SSH agent (`ssh-add`) and remove `identity`, so the agent is used".to_string()
        }
        russh::keys::Error::IO(io) => io.to_string(),
        _ => "not a private key uprun can read (OpenSSH or PEM format expected)".to_string(),
    })
}

fn is_status(e: &SftpError, code: StatusCode) -> bool {
    matches!(e, SftpError::Status(s) if s.status_code == code)
}

/// A node path as the node's SFTP server wants it: `/`-separated, and on
/// Windows `/C:/x` for `C:\x`.
fn sftp_path(shell: Shell, path: &str) -> String {
    match shell {
        Shell::Posix => path.to_string(),
        Shell::Powershell => {
            let p = path.replace('\\', "/");
            let b = p.as_bytes();
            if b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':' {
                format!("/{p}")
            } else {
                p
            }
        }
    }
}

/// Marks the line with the remote shell's pid on stderr (posix nodes).
const PID_MARK: &str = "uprun-pid:";

/// Split the pid line written by `command_line` off the start of stderr.
fn take_pid(stderr: &[u8]) -> (Option<u32>, &[u8]) {
    let Some(rest) = stderr.strip_prefix(PID_MARK.as_bytes()) else {
        return (None, stderr);
    };
    let end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
    let pid = std::str::from_utf8(&rest[..end])
        .ok()
        .and_then(|p| p.trim().parse().ok());
    (pid, rest.get(end + 1..).unwrap_or(&[]))
}

/// Single-quote for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The command line sent for `command` run in `cwd`.
fn command_line(shell: Shell, command: &str, cwd: &str) -> String {
    match shell {
        // The shell's pid (its process group: sshd starts it with setsid)
        // comes first on stderr, so a command past its timeout can be killed.
        Shell::Posix => format!(
            "printf '{PID_MARK}%s\\n' $$ >&2\ncd {} || exit 125\n{command}",
            sh_quote(cwd)
        ),
        Shell::Powershell => {
            // PowerShell also ends a single-quoted string at typographic quotes.
            let cwd: String = cwd
                .replace('/', "\\")
                .chars()
                .flat_map(|c| match c {
                    '\'' | '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}' => vec![c, c],
                    c => vec![c],
                })
                .collect();
            let script = format!(
                "$ErrorActionPreference = 'Stop'\nSet-Location -LiteralPath '{cwd}'\n{command}\nif ($LASTEXITCODE) {{ exit $LASTEXITCODE }}\n"
            );
            format!(
                "powershell.exe -NoProfile -NonInteractive -EncodedCommand {}",
                powershell_encode(&script)
            )
        }
    }
}

/// Base64 of the UTF-16LE bytes of `script`, as `-EncodedCommand` wants.
fn powershell_encode(script: &str) -> String {
    let bytes: Vec<u8> = script
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    base64(&bytes)
}

fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// SSH wire string: length then bytes.
fn ssh_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn perms(mode: u32) -> FileAttributes {
    FileAttributes {
        permissions: Some(mode & 0o7777),
        ..FileAttributes::empty()
    }
}

impl Connection {
    /// Record a host key accepted by `accept_new_host_keys` in known_hosts,
    /// once something may change (not while planning).
    fn record_accepted_key(&self, node: &str) -> Result<()> {
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

/// One attempt of one operation on a node: the connection it uses, and
/// whether it has sent anything that may change the node.
struct Op {
    conn: Arc<Connection>,
    changing: AtomicBool,
}

impl Op {
    fn sftp(&self) -> &RawSftpSession {
        &self.conn.sftp
    }

    /// From here on the operation may change the node: if the connection is
    /// lost now, the operation is reported, not run again.
    fn changes(&self) {
        self.changing.store(true, Ordering::SeqCst);
    }
}

/// How a remote command's wait ended.
enum End {
    /// The channel closed, or the connection did after the exit status came.
    Finished,
    /// The channel went away before the command reported how it exited.
    Lost,
    TimedOut,
    Aborted,
}

/// An SFTP error that means the session (or the whole connection) is gone,
/// as russh-sftp =3.0.1 words it: no request can be sent, or the session
/// ended with requests pending.
fn sftp_session_lost(e: &SftpError) -> bool {
    matches!(e, SftpError::UnexpectedBehavior(m)
        if m == "session closed" || m == "sender dropped" || m.starts_with("SendError"))
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

    fn sftp_err(&self, op: &Op, what: &str, path: &str, e: SftpError) -> Error {
        if sftp_session_lost(&e) {
            op.conn.sftp_lost.store(true, Ordering::SeqCst);
        }
        match e {
            SftpError::Timeout => self.err(format!(
                "{what} `{path}`: no answer within {} s (`[ssh] command_timeout_secs`)",
                self.file_timeout.as_secs()
            )),
            e => self.err(format!("{what} `{path}`: {e}")),
        }
    }

    /// Run one operation (`what`, for messages) on the node's connection.
    /// A connection found closed before the operation sent anything that
    /// could change the node is reopened once (same host key check,
    /// authentication and settings) and the operation run on the new one.
    /// One lost after that is reported naming the node, and never retried:
    /// the journal and `--resume` deal with a step left half-done.
    fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(Arc<Op>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        block_on(async {
            let mut conn = self.link.current();
            let mut reconnected = false;
            if conn.is_closed() {
                conn = self.reconnect(&conn).await?;
                reconnected = true;
            }
            loop {
                let op = Arc::new(Op {
                    conn: conn.clone(),
                    changing: AtomicBool::new(false),
                });
                let e = match f(op.clone()).await {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                };
                if matches!(e, Error::Interrupted(_)) || !conn.is_closed() {
                    return Err(e);
                }
                if op.changing.load(Ordering::SeqCst) {
                    return Err(self.err(format!(
                        "the connection was lost while {what} (sshd restarted, or the network dropped it); it may have been done in part or in full on the node, and uprun does not run it again on its own. Check the node, then resume the run (`--resume`)"
                    )));
                }
                if reconnected {
                    return Err(self.err(format!(
                        "the connection closed again right after it was reopened, before {what} could start (nothing was changed by it); check sshd on the node and the network, then resume the run (`--resume`)"
                    )));
                }
                conn = self.reconnect(&conn).await?;
                reconnected = true;
            }
        })?
    }

    async fn reconnect(&self, dead: &Arc<Connection>) -> Result<Arc<Connection>> {
        self.link.reconnect(dead).await.map_err(|e| match e {
            Error::Node { node, message } => Error::node(
                node,
                format!(
                    "the SSH connection was lost (sshd restarted, or the network dropped it) and could not be reopened, so nothing more was done on this node: {message}"
                ),
            ),
            e => e,
        })
    }

    /// Write `data` at the start of an open file, several requests in flight.
    async fn write_all(
        &self,
        op: &Op,
        handle: &str,
        data: &[u8],
    ) -> std::result::Result<(), SftpError> {
        let sftp = op.sftp();
        stream::iter(
            data.chunks(CHUNK).enumerate().map(|(i, chunk)| {
                sftp.write(handle.to_string(), (i * CHUNK) as u64, chunk.to_vec())
            }),
        )
        .buffer_unordered(IN_FLIGHT)
        .try_for_each(|_| async { Ok(()) })
        .await
    }

    /// Copy one payload file to `to`, which must not exist yet.
    async fn upload_file(&self, op: &Op, e: &PayloadEntry, to: String) -> Result<u64> {
        let sftp = op.sftp();
        // block_on runs this future on the calling thread: plain I/O is fine.
        let data = std::fs::read(&e.source)
            .map_err(|err| Error::io("read payload file", &e.source, err))?;
        // EXCLUDE: never write through something already there (a link).
        let handle = sftp
            .open(
                to.clone(),
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::EXCLUDE,
                perms(e.mode),
            )
            .await
            .map_err(|err| self.sftp_err(op, "cannot create", &to, err))?
            .handle;
        let written = self.write_all(op, &handle, &data).await;
        // The server applies its umask at creation: set the exact mode.
        let moded = match written {
            Ok(()) => sftp
                .fsetstat(handle.clone(), perms(e.mode))
                .await
                .map(|_| ()),
            Err(err) => Err(err),
        };
        let closed = sftp.close(handle).await.map(|_| ());
        moded
            .and(closed)
            .map_err(|err| self.sftp_err(op, "cannot write", &to, err))?;
        Ok(data.len() as u64)
    }

    /// Stop a command (past its timeout, or aborted): the SSH `signal`
    /// request (sshd honours it for non-root logins only), then `kill` of
    /// the shell's process group on a second channel. True when the
    /// channel closed.
    async fn kill(
        &self,
        op: &Op,
        channel: &mut russh::Channel<client::Msg>,
        pid: Option<u32>,
    ) -> bool {
        let _ = channel.signal(Sig::KILL).await;
        if let (Some(pid), Shell::Posix) = (pid, self.shell) {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let ch = op.conn.handle.channel_open_session().await.ok()?;
                ch.exec(
                    true,
                    // `-s KILL --`: the form dash, bash and busybox all accept.
                    format!("kill -s KILL -- -{pid} 2>/dev/null || kill -s KILL {pid}"),
                )
                .await
                .ok()?;
                let mut ch = ch;
                while let Some(msg) = ch.wait().await {
                    if let ChannelMsg::Close = msg {
                        break;
                    }
                }
                Some(())
            })
            .await;
        }
        let stopped = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(msg) = channel.wait().await {
                if let ChannelMsg::ExitStatus { .. }
                | ChannelMsg::ExitSignal { .. }
                | ChannelMsg::Close = msg
                {
                    return true;
                }
            }
            true
        })
        .await
        .unwrap_or(false);
        let _ = channel.close().await;
        stopped
    }

    /// Is `path` a real folder (not a link to one)?
    async fn lstat_dir(&self, op: &Op, path: &str) -> std::result::Result<Option<bool>, SftpError> {
        match op.sftp().lstat(path.to_string()).await {
            Ok(a) => Ok(Some(a.attrs.is_dir() && !a.attrs.is_symlink())),
            Err(e) if is_status(&e, StatusCode::NoSuchFile) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl NodeTransport for SshTransport {
    fn node(&self) -> &str {
        &self.node
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let p = &self.path(path);
        self.run(&format!("reading `{path}`"), |op| async move {
            let sftp = op.sftp();
            let handle = match sftp
                .open(p.clone(), OpenFlags::READ, FileAttributes::empty())
                .await
            {
                Ok(h) => h.handle,
                Err(e) if is_status(&e, StatusCode::NoSuchFile) => return Ok(None),
                Err(e) => return Err(self.sftp_err(&op, "cannot read", path, e)),
            };
            let mut data = Vec::new();
            let result = loop {
                match sftp
                    .read(handle.clone(), data.len() as u64, CHUNK as u32)
                    .await
                {
                    Ok(d) if d.data.is_empty() => break Ok(()),
                    Ok(d) => data.extend_from_slice(&d.data),
                    Err(e) if is_status(&e, StatusCode::Eof) => break Ok(()),
                    Err(e) => break Err(self.sftp_err(&op, "cannot read", path, e)),
                }
            };
            let _ = sftp.close(handle).await;
            result.map(|()| Some(data))
        })
    }

    fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let target = &self.path(path);
        let tmp = &format!("{target}.uprun-tmp");
        self.run(&format!("writing `{path}`"), |op| async move {
            let sftp = op.sftp();
            let fail = |e| self.sftp_err(&op, "cannot write", path, e);
            op.changes();
            let handle = sftp
                .open(
                    tmp.clone(),
                    OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
                    perms(0o644),
                )
                .await
                .map_err(fail)?
                .handle;
            let written = self.write_all(&op, &handle, data).await;
            let synced = match (&written, op.conn.fsync) {
                (Ok(()), true) => sftp.fsync(handle.clone()).await.map(|_| ()),
                _ => Ok(()),
            };
            let closed = sftp.close(handle).await.map(|_| ());
            written.and(synced).and(closed).map_err(fail)?;
            if op.conn.posix_rename {
                let mut args = Vec::new();
                ssh_string(&mut args, tmp);
                ssh_string(&mut args, target);
                match sftp.extended("posix-rename@openssh.com", args).await {
                    Ok(Packet::Status(s)) if s.status_code == StatusCode::Ok => Ok(()),
                    Ok(Packet::Status(s)) => Err(fail(SftpError::Status(s))),
                    Ok(_) => Err(fail(SftpError::UnexpectedPacket)),
                    Err(e) => Err(fail(e)),
                }
            } else {
                // Plain SFTP rename does not replace: remove, then rename.
                match sftp.remove(target.clone()).await {
                    Ok(_) => {}
                    Err(e) if is_status(&e, StatusCode::NoSuchFile) => {}
                    Err(e) => return Err(fail(e)),
                }
                sftp.rename(tmp.clone(), target.clone())
                    .await
                    .map(|_| ())
                    .map_err(fail)
            }
        })
    }

    fn remove_tree(&self, path: &str) -> Result<()> {
        let root = &self.path(path);
        self.run(&format!("removing `{path}`"), |op| async move {
            let sftp = op.sftp();
            // Depth first: a folder is removed once its entries are.
            let mut stack = vec![(root.clone(), false)];
            while let Some((dir, emptied)) = stack.pop() {
                if emptied {
                    op.changes();
                    sftp.rmdir(dir.clone())
                        .await
                        .map_err(|e| self.sftp_err(&op, "cannot remove", &dir, e))?;
                    continue;
                }
                let handle = match sftp.opendir(dir.clone()).await {
                    Ok(h) => h.handle,
                    Err(e) if is_status(&e, StatusCode::NoSuchFile) => continue,
                    Err(e) => return Err(self.sftp_err(&op, "cannot list", &dir, e)),
                };
                let mut entries = Vec::new();
                let listed = loop {
                    match sftp.readdir(handle.clone()).await {
                        Ok(names) if names.files.is_empty() => break Ok(()),
                        Ok(names) => entries.extend(names.files),
                        Err(e) if is_status(&e, StatusCode::Eof) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                };
                let _ = sftp.close(handle).await;
                listed.map_err(|e| self.sftp_err(&op, "cannot list", &dir, e))?;
                stack.push((dir.clone(), true));
                for f in entries {
                    if f.filename == "." || f.filename == ".." {
                        continue;
                    }
                    let p = format!("{}/{}", dir.trim_end_matches('/'), f.filename);
                    if f.attrs.file_type().is_dir() {
                        stack.push((p, false));
                    } else {
                        op.changes();
                        sftp.remove(p.clone())
                            .await
                            .map_err(|e| self.sftp_err(&op, "cannot remove", &p, e))?;
                    }
                }
            }
            Ok(())
        })
    }

    fn dir_state(&self, path: &str) -> Result<DirState> {
        let p = &self.path(path);
        self.run(&format!("listing `{path}`"), |op| async move {
            let sftp = op.sftp();
            let handle = match sftp.opendir(p.clone()).await {
                Ok(h) => h.handle,
                Err(e) if is_status(&e, StatusCode::NoSuchFile) => return Ok(DirState::Missing),
                Err(e) => return Err(self.sftp_err(&op, "cannot list", path, e)),
            };
            let state = loop {
                match sftp.readdir(handle.clone()).await {
                    Ok(names) => {
                        if names
                            .files
                            .iter()
                            .any(|f| f.filename != "." && f.filename != "..")
                        {
                            break Ok(DirState::NotEmpty);
                        }
                        if names.files.is_empty() {
                            break Ok(DirState::Empty);
                        }
                    }
                    Err(e) if is_status(&e, StatusCode::Eof) => break Ok(DirState::Empty),
                    Err(e) => break Err(self.sftp_err(&op, "cannot list", path, e)),
                }
            };
            let _ = sftp.close(handle).await;
            state
        })
    }

    fn create_dir_all(&self, path: &str) -> Result<()> {
        let full = &self.path(path);
        self.run(&format!("creating `{path}`"), |op| async move {
            if self
                .lstat_dir(&op, full)
                .await
                .map_err(|e| self.sftp_err(&op, "cannot create", path, e))?
                == Some(true)
            {
                return Ok(());
            }
            let absolute = full.starts_with('/');
            let mut prefix = String::new();
            for part in full.split('/').filter(|p| !p.is_empty()) {
                if absolute || !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                match self
                    .lstat_dir(&op, &prefix)
                    .await
                    .map_err(|e| self.sftp_err(&op, "cannot create", path, e))?
                {
                    Some(true) => continue,
                    // A drive (`/C:`) or a link to a folder is walked through.
                    Some(false)
                        if op
                            .sftp()
                            .stat(prefix.clone())
                            .await
                            .is_ok_and(|a| a.attrs.is_dir()) =>
                    {
                        continue
                    }
                    Some(false) => {
                        return Err(self.err(format!(
                            "cannot create `{path}`: `{prefix}` exists and is not a folder"
                        )))
                    }
                    None => {
                        op.changes();
                        op.sftp()
                            .mkdir(prefix.clone(), FileAttributes::empty())
                            .await
                            .map_err(|e| self.sftp_err(&op, "cannot create", &prefix, e))?;
                    }
                }
            }
            Ok(())
        })
    }

    fn upload_tree(&self, src: &Path, dest: &str) -> Result<u64> {
        // Every entry is checked before anything is written on the node.
        let entries = &super::payload_entries(&self.node, src)?;
        let root = &self.path(dest);
        self.run(&format!("copying the payload into `{dest}`"), |op| async move {
            let sftp = op.sftp();
            match self.lstat_dir(&op, root).await {
                Ok(Some(true)) => {}
                Ok(_) => {
                    return Err(self.err(format!(
                        "instance folder `{dest}` is missing or is not a plain folder (a link?); refusing to copy into it"
                    )))
                }
                Err(e) => return Err(self.sftp_err(&op, "cannot read", dest, e)),
            }
            let target = |e: &PayloadEntry| format!("{}/{}", root.trim_end_matches('/'), e.rel);
            // Folders first (parents before children), writable by us until
            // the files are in; then the files, several at once; then the
            // folders' own modes, children before parents.
            op.changes();
            let dirs: Vec<&PayloadEntry> = entries.iter().filter(|e| e.is_dir).collect();
            for e in &dirs {
                let to = target(e);
                if let Err(err) = sftp.mkdir(to.clone(), perms(e.mode | 0o700)).await {
                    // Only an existing real folder is acceptable.
                    if self.lstat_dir(&op, &to).await.ok().flatten() != Some(true) {
                        return Err(self.sftp_err(&op, "cannot create folder", &to, err));
                    }
                }
            }
            let op = &op;
            let total = stream::iter(
                entries
                    .iter()
                    .filter(|e| !e.is_dir)
                    .map(|e| self.upload_file(op, e, target(e))),
            )
            .buffer_unordered(FILES_IN_FLIGHT)
            .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
            .await?;
            for e in dirs.iter().rev() {
                let to = target(e);
                sftp.setstat(to.clone(), perms(e.mode))
                    .await
                    .map_err(|err| self.sftp_err(op, "cannot set the mode of", &to, err))?;
            }
            Ok(total)
        })
    }

    fn identity(&self, path: &str) -> Result<Option<PathIdentity>> {
        let p = &self.path(path);
        self.run(&format!("resolving `{path}`"), |op| async move {
            let sftp = op.sftp();
            let link = match sftp.lstat(p.clone()).await {
                Ok(a) => a.attrs.is_symlink(),
                Err(e) if is_status(&e, StatusCode::NoSuchFile) => return Ok(None),
                Err(e) => return Err(self.sftp_err(&op, "cannot read", path, e)),
            };
            // SFTP reports no inode: the server's realpath is the identity.
            let canonical = match sftp.realpath(p.clone()).await {
                Ok(name) => name.files.into_iter().next().map(|f| f.filename),
                // A dangling link: name the link itself.
                Err(e) if link && is_status(&e, StatusCode::NoSuchFile) => None,
                Err(e) => return Err(self.sftp_err(&op, "cannot resolve", path, e)),
            };
            Ok(Some(PathIdentity {
                canonical: canonical.unwrap_or_else(|| p.clone()),
                file_id: None,
                link,
            }))
        })
    }

    fn paths_ignore_case(&self) -> bool {
        self.shell == Shell::Powershell
    }

    fn exec(&self, command: &str, cwd: &str, timeout: Duration) -> Result<ExecOutput> {
        if crate::interrupt::abort_requested() {
            return Err(Error::Interrupted(format!(
                "interrupted: `{command}` was not started on node `{}`: the operator aborted the run (second Ctrl-C)",
                self.node
            )));
        }
        let line = &command_line(self.shell, command, cwd);
        self.run(&format!("running `{command}`"), |op| async move {
            let mut channel = op
                .conn
                .handle
                .channel_open_session()
                .await
                .map_err(|e| self.err(format!("cannot open a channel for `{command}`: {e}")))?;
            op.changes();
            channel
                .exec(true, line.as_bytes())
                .await
                .map_err(|e| self.err(format!("cannot start `{command}`: {e}")))?;
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            let mut status = None;
            let mut exited = false;
            let keep = |buf: &mut Vec<u8>, data: &[u8]| {
                let room = MAX_OUTPUT.saturating_sub(buf.len());
                buf.extend_from_slice(&data[..data.len().min(room)]);
            };
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            // The abort flag is set by the Ctrl-C handler thread: polled.
            let mut tick = tokio::time::interval(ABORT_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let end = loop {
                tokio::select! {
                    msg = channel.wait() => match msg {
                        Some(ChannelMsg::Data { data }) => keep(&mut stdout, &data),
                        Some(ChannelMsg::ExtendedData { data, ext: 1 }) => keep(&mut stderr, &data),
                        Some(ChannelMsg::ExitStatus { exit_status }) => {
                            exited = true;
                            status = Some(exit_status as i32);
                        }
                        Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                            exited = true;
                            keep(
                                &mut stderr,
                                format!("killed by signal {signal_name:?}").as_bytes(),
                            );
                        }
                        Some(ChannelMsg::Close) => break End::Finished,
                        Some(_) => {}
                        None if exited => break End::Finished,
                        None => break End::Lost,
                    },
                    () = &mut deadline => break End::TimedOut,
                    _ = tick.tick() => {
                        if crate::interrupt::abort_requested() {
                            break End::Aborted;
                        }
                    }
                }
            };
            let (pid, rest) = take_pid(&stderr);
            let killed = |stopped: bool| {
                if stopped {
                    "it was killed on the node"
                } else {
                    "uprun asked the node to kill it, but it may still be running there: check the node"
                }
            };
            match end {
                End::Finished => {}
                End::TimedOut => {
                    let stopped = self.kill(&op, &mut channel, pid).await;
                    return Err(self.err(format!(
                        "`{command}` did not finish within {} s; {}",
                        timeout.as_secs(),
                        killed(stopped)
                    )));
                }
                End::Aborted => {
                    let stopped = self.kill(&op, &mut channel, pid).await;
                    return Err(Error::Interrupted(format!(
                        "interrupted: `{command}` on node `{}` ({}) was aborted by the operator (second Ctrl-C); {}",
                        self.node,
                        self.target(),
                        killed(stopped)
                    )));
                }
                End::Lost => {
                    return Err(self.err(format!(
                        "the channel of `{command}` closed before the command reported how it exited; it may or may not have finished on the node, and uprun does not run it again on its own. Check the node, then resume the run (`--resume`)"
                    )));
                }
            }
            let stderr = rest.to_vec();
            Ok(ExecOutput {
                status,
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn powershell_commands_are_encoded() {
        // `dir` in UTF-16LE, as `powershell -EncodedCommand` documents it.
        assert_eq!(powershell_encode("dir"), "ZABpAHIA");
        let line = command_line(
            Shell::Powershell,
            "appcmd start site 'x'",
            "C:/Apps/it's \u{2019}",
        );
        let b64 = line
            .strip_prefix("powershell.exe -NoProfile -NonInteractive -EncodedCommand ")
            .unwrap();
        assert!(b64
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c)));
        let bytes = decode_b64(b64);
        let units: Vec<u16> = bytes
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let script = String::from_utf16(&units).unwrap();
        assert!(
            script.contains("Set-Location -LiteralPath 'C:\\Apps\\it''s \u{2019}\u{2019}'"),
            "{script}"
        );
        assert!(script.contains("appcmd start site 'x'"));
    }

    fn decode_b64(s: &str) -> Vec<u8> {
        const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut bits = 0u32;
        let mut n = 0;
        let mut out = Vec::new();
        for c in s.bytes().filter(|c| *c != b'=') {
            bits = (bits << 6) | ABC.iter().position(|a| *a == c).unwrap() as u32;
            n += 6;
            if n >= 8 {
                n -= 8;
                out.push((bits >> n) as u8);
            }
        }
        out
    }

    #[test]
    fn posix_commands_change_folder_safely() {
        assert_eq!(
            command_line(Shell::Posix, "echo hi", "/opt/it's here"),
            "printf 'uprun-pid:%s\\n' $$ >&2\ncd '/opt/it'\\''s here' || exit 125\necho hi"
        );
        assert_eq!(take_pid(b"uprun-pid:42\nboom"), (Some(42), &b"boom"[..]));
        assert_eq!(take_pid(b"other"), (None, &b"other"[..]));
    }

    #[test]
    fn windows_paths_for_sftp() {
        assert_eq!(sftp_path(Shell::Powershell, "C:\\Apps\\x"), "/C:/Apps/x");
        assert_eq!(sftp_path(Shell::Posix, "/opt/x"), "/opt/x");
    }
}
