//! The process-wide runtime and the connection pool: one connection per node
//! for the whole process, opened ahead of need (`prefetch`) or on demand
//! (`connect_many`), reopened once by an operation that has not yet sent
//! anything that could change the node (`SshTransport::run`), and closed
//! cleanly at the end (`close_all`).

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use russh_sftp::client::RawSftpSession;
use tokio::runtime::Runtime;

use super::connect::{known_hosts_file, ConnectSpec, Connection};
use super::handshakes::HandshakeLimiter;
use super::SshTransport;
use crate::config::{NodeAddress, NodeConfig, SshSettings};
use crate::nodes::ConnectMode;
use crate::{Error, Result};

/// The runtime that drives every SSH connection of this process.
pub(super) fn runtime() -> Result<&'static Runtime> {
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
pub(super) fn block_on<F: Future>(f: F) -> Result<F::Output> {
    if tokio::runtime::Handle::try_current().is_ok() {
        // Blocking a runtime thread on itself would deadlock or panic.
        return Err(Error::Internal(
            "internal error: an SSH operation was started from inside the async runtime".into(),
        ));
    }
    Ok(runtime()?.block_on(f))
}

/// A node's connection and how to open it again: every transport of the node
/// shares it, so one reconnection serves them all.
pub(super) struct Link {
    pub(super) spec: ConnectSpec,
    pub(super) current: Mutex<Arc<Connection>>,
    /// One reconnection at a time.
    pub(super) reconnecting: tokio::sync::Mutex<()>,
}

impl Link {
    pub(super) fn new(spec: ConnectSpec, conn: Connection) -> Link {
        Link {
            spec,
            current: Mutex::new(Arc::new(conn)),
            reconnecting: tokio::sync::Mutex::new(()),
        }
    }

    pub(super) fn current(&self) -> Arc<Connection> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A new connection in place of `dead`, made exactly as the first one
    /// (host key check, authentication, settings), unless another operation
    /// has already replaced it.
    pub(super) async fn reconnect(&self, dead: &Arc<Connection>) -> Result<Arc<Connection>> {
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
pub(super) type Pool = Mutex<HashMap<String, Arc<Link>>>;

pub(super) fn pool() -> &'static Pool {
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

/// Connections being opened ahead of need by [`prefetch`], by pool key; the
/// first `connect_many` that wants one takes it (and its outcome, success or
/// error, exactly once).
pub(super) type Pending = Mutex<HashMap<String, tokio::task::JoinHandle<Result<Arc<Link>>>>>;

pub(super) fn pending() -> &'static Pending {
    static PENDING: OnceLock<Pending> = OnceLock::new();
    PENDING.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The pool key of a node and how to connect to it.
pub(super) fn spec_for(
    n: &NodeConfig,
    settings: &SshSettings,
    known_hosts: &Path,
    handshakes: &HandshakeLimiter,
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
        handshakes: handshakes.permits(host, *port),
    };
    Ok((key, spec))
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
    let handshakes = HandshakeLimiter::new(settings);
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
    let handshakes = HandshakeLimiter::new(settings);
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

/// One attempt of one operation on a node: the connection it uses, and
/// whether it has sent anything that may change the node.
pub(super) struct Op {
    pub(super) conn: Arc<Connection>,
    pub(super) changing: AtomicBool,
}

impl Op {
    pub(super) fn sftp(&self) -> &RawSftpSession {
        &self.conn.sftp
    }

    /// From here on the operation may change the node: if the connection is
    /// lost now, the operation is reported, not run again.
    pub(super) fn changes(&self) {
        self.changing.store(true, Ordering::SeqCst);
    }
}

impl SshTransport {
    /// Run one operation (`what`, for messages) on the node's connection.
    /// A connection found closed before the operation sent anything that
    /// could change the node is reopened once (same host key check,
    /// authentication and settings) and the operation run on the new one.
    /// One lost after that is reported naming the node, and never retried:
    /// the journal and `--resume` deal with a step left half-done.
    pub(super) fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
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

    pub(super) async fn reconnect(&self, dead: &Arc<Connection>) -> Result<Arc<Connection>> {
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
}
