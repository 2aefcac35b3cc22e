//! The node seam: how uprun reaches a node (`NodeTransport`: local, ssh)
//! and what an instance is on a node (`instances`: manifest, payload, service
//! commands). Owns node I/O; it must not decide ordering or safety rules
//! (those are in `ops`).

pub mod instances;
mod local;
pub mod plan_reads;
mod ssh;
pub mod staging;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{NodeAddress, NodeConfig, Site};
use crate::{Error, Result};

pub use instances::{InstanceRecord, InstanceState, Manifest, NodeInstances};
pub(crate) use local::is_contained as local_is_contained;
pub use local::LocalTransport;

/// What a folder on a node looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    Missing,
    Empty,
    NotEmpty,
}

/// What a path on a node is, as the node resolves it: the same folder spelled
/// differently, reached through a link or a mount has the same identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathIdentity {
    /// The path with links, `.` and `..` resolved (the node's canonical spelling).
    pub canonical: String,
    /// Device and inode of what the path resolves to, where the transport can
    /// tell (local nodes; SFTP does not report inodes).
    pub file_id: Option<(u64, u64)>,
    /// The path itself is a symbolic link (`canonical` is where it leads; for
    /// a dangling link, the link's own path).
    pub link: bool,
}

/// The result of a command run on a node.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
}

/// How uprun does things on one node. Paths are node paths (strings), because a
/// remote node may not share this machine's path syntax.
pub trait NodeTransport: Send + Sync {
    fn node(&self) -> &str;
    /// Read a whole file; `None` when it does not exist.
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>>;
    /// Replace a file atomically and durably (write beside it, sync, rename).
    fn write_file(&self, path: &str, data: &[u8]) -> Result<()>;
    fn dir_state(&self, path: &str) -> Result<DirState>;
    fn create_dir_all(&self, path: &str) -> Result<()>;
    /// Delete a folder and everything in it (links are removed, not followed).
    /// A missing folder is not an error.
    fn remove_tree(&self, path: &str) -> Result<()>;
    /// Copy the local folder `src` into `dest` on the node (which must exist).
    /// Returns the number of bytes copied. Refuses entries that would escape `dest`.
    fn upload_tree(&self, src: &Path, dest: &str) -> Result<u64> {
        // Every entry is checked before anything is written on the node.
        let entries = payload_entries(self.node(), src)?;
        self.upload_entries(&entries, dest)
    }
    /// Copy checked payload entries (from [`payload_entries`], parents before
    /// children) into `dest` on the node (an existing real folder). Folders
    /// may exist already (real folders only); files must not.
    fn upload_entries(&self, entries: &[PayloadEntry], dest: &str) -> Result<u64>;
    /// Rename `from` to `to` on the node's own filesystem; fails when `to`
    /// exists (a folder is never merged into or replaced).
    fn rename(&self, from: &str, to: &str) -> Result<()>;
    /// Delete one file (not a folder); a missing file is not an error.
    fn remove_file(&self, path: &str) -> Result<()>;
    /// Delete `path` when it is an empty folder (never a link, never what
    /// is in it); whether it went.
    fn remove_empty_dir(&self, path: &str) -> Result<bool> {
        if self.identity(path)?.is_some_and(|id| id.link)
            || self.dir_state(path)? != DirState::Empty
        {
            return Ok(false);
        }
        self.remove_tree(path)?;
        Ok(true)
    }
    /// The names in a folder (not `.` and `..`); `None` when it does not exist.
    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>>;
    /// Every entry under `dir` with the SHA-256 of each plain file, computed
    /// on the node (not read back).
    /// A digest of what `stat` says about every entry under `dir` (name,
    /// type, size, modification and change times to the nanosecond, inode):
    /// any write, rename or mode change alters it. `None` when the node
    /// cannot tell (then only `tree_hashes` proves a tree unchanged).
    fn tree_fingerprint(&self, dir: &str) -> Result<Option<String>> {
        let _ = dir;
        Ok(None)
    }
    fn tree_hashes(&self, dir: &str) -> Result<TreeHashes> {
        let _ = dir;
        Ok(TreeHashes::Unsupported(
            "this node's transport cannot hash files on the node".into(),
        ))
    }
    /// Run a shell command with `cwd` as working folder. Past `timeout`, or
    /// once the operator aborts (second Ctrl-C: `Error::Interrupted`), the
    /// command is killed with everything it started.
    fn exec(&self, command: &str, cwd: &str, timeout: Duration) -> Result<ExecOutput>;
    /// What `path` is on the node (canonical path, device and inode where
    /// known, whether it is a link); `None` when nothing is there.
    fn identity(&self, path: &str) -> Result<Option<PathIdentity>>;
    /// For each path, whether it is a symbolic link (`None`: nothing there);
    /// the node may be asked about all of them at once.
    fn link_states(&self, paths: &[&str]) -> Result<Vec<Option<bool>>> {
        paths
            .iter()
            .map(|p| Ok(self.identity(p)?.map(|id| id.link)))
            .collect()
    }
    /// Whether the node's file names ignore case (Windows nodes), so that
    /// paths that differ only in case name the same folder.
    fn paths_ignore_case(&self) -> bool {
        false
    }
    /// Join a relative path (with `/`) onto a node path.
    fn join(&self, base: &str, rel: &str) -> String {
        format!("{}/{}", base.trim_end_matches(['/', '\\']), rel)
    }
}

/// What a folder on a node holds, with the SHA-256 of every plain file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeHashes {
    Missing,
    /// The node cannot hash its files (why).
    Unsupported(String),
    /// Relative `/`-separated path -> what is there.
    Entries(std::collections::BTreeMap<String, TreeEntry>),
}

/// One entry under a hashed folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeEntry {
    Dir,
    /// A plain file and its SHA-256 (hex).
    File(String),
    /// A link or anything else that is neither a plain file nor a folder.
    Other,
}

/// Whether a connection may change anything on this machine while it is set
/// up (recording a new host key). `uprun plan` connects read-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectMode {
    ReadOnly,
    ReadWrite,
}

/// Close every SSH connection of this process cleanly (end of a command).
pub fn close_all() {
    ssh::close_all();
}

/// Start connecting to the site's SSH nodes in the background, so that the
/// handshakes overlap with the command's other start-up work; `connect_all`
/// takes these connections (or their errors) later. Read-only.
pub fn prefetch(site: &Site) {
    let remote: Vec<&NodeConfig> = site
        .nodes
        .iter()
        .filter(|n| matches!(n.address, NodeAddress::Ssh { .. }))
        .collect();
    ssh::prefetch(&remote, &site.ssh);
}

/// Connect to one of the site's nodes as its address says.
pub fn connect(
    site: &Site,
    node: &NodeConfig,
    mode: ConnectMode,
) -> Result<Box<dyn NodeTransport>> {
    let mut all = connect_nodes(site, std::slice::from_ref(node), mode)?;
    all.pop()
        .ok_or_else(|| Error::node(&node.name, "no connection was made"))
}

/// Connect to every node of the site, SSH nodes concurrently, in site
/// order. Fails with the first node (in site order) that cannot be reached or
/// verified, before anything is done on any node.
pub fn connect_all(site: &Site, mode: ConnectMode) -> Result<Vec<Box<dyn NodeTransport>>> {
    connect_nodes(site, &site.nodes, mode)
}

/// [`connect_all`] for some of the site's nodes, in the order given.
pub fn connect_nodes(
    site: &Site,
    nodes: &[NodeConfig],
    mode: ConnectMode,
) -> Result<Vec<Box<dyn NodeTransport>>> {
    let remote: Vec<&NodeConfig> = nodes
        .iter()
        .filter(|n| matches!(n.address, NodeAddress::Ssh { .. }))
        .collect();
    let mut connected = ssh::connect_many(&remote, &site.ssh, mode)?.into_iter();
    let mut out: Vec<Box<dyn NodeTransport>> = Vec::with_capacity(nodes.len());
    for n in nodes {
        match n.address {
            NodeAddress::Local => out.push(Box::new(LocalTransport::new(&n.name))),
            NodeAddress::Ssh { .. } => match connected.next() {
                Some(t) => out.push(Box::new(t)),
                None => return Err(Error::node(&n.name, "no SSH connection was made")),
            },
        }
    }
    Ok(out)
}

/// One entry of a payload folder, checked before anything is copied.
#[derive(Debug, Clone)]
pub struct PayloadEntry {
    /// Path relative to the payload folder, `/`-separated.
    pub rel: String,
    pub source: PathBuf,
    pub is_dir: bool,
    /// Permission bits (`0o755`, ...).
    pub mode: u32,
}

/// List a payload folder, parents before children, in name order. Refuses,
/// before anything is copied anywhere, any entry that could land outside the
/// instance folder: symbolic links, names with `..`, `\` or a root, and
/// anything that is neither a plain file nor a folder.
pub(crate) fn payload_entries(node: &str, src: &Path) -> Result<Vec<PayloadEntry>> {
    fn walk(node: &str, src: &Path, rel: &Path, out: &mut Vec<PayloadEntry>) -> Result<()> {
        let dir = src.join(rel);
        let entries =
            std::fs::read_dir(&dir).map_err(|e| Error::io("read payload folder", &dir, e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("read payload folder", &dir, e))?;
            names.push(rel.join(entry.file_name()));
        }
        names.sort();
        for r in names {
            let shown = r.display().to_string();
            let escapes = |why: &str| {
                Error::node(
                    node,
                    format!("payload entry `{shown}` {why}; refusing to copy a payload that could write outside the instance folder (nothing was copied)"),
                )
            };
            let Some(text) = r.to_str() else {
                return Err(escapes("has a name that is not UTF-8"));
            };
            if !local::is_contained(&r) || text.contains('\\') {
                return Err(escapes("escapes the instance folder"));
            }
            let source = src.join(&r);
            let meta = std::fs::symlink_metadata(&source)
                .map_err(|e| Error::io("read payload entry", &source, e))?;
            let ft = meta.file_type();
            if ft.is_symlink() {
                let target = std::fs::read_link(&source)
                    .map(|t| format!(" (to `{}`)", t.display()))
                    .unwrap_or_default();
                return Err(escapes(&format!(
                    "is a symbolic link{target}; payloads must hold plain files and folders"
                )));
            }
            if !ft.is_dir() && !ft.is_file() {
                return Err(escapes("is neither a plain file nor a folder"));
            }
            out.push(PayloadEntry {
                rel: r
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/"),
                source: source.clone(),
                is_dir: ft.is_dir(),
                mode: mode_of(&meta),
            });
            if ft.is_dir() {
                walk(node, src, &r, out)?;
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(node, src, Path::new(""), &mut out)?;
    Ok(out)
}

#[cfg(unix)]
fn mode_of(meta: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn mode_of(meta: &std::fs::Metadata) -> u32 {
    match (meta.is_dir(), meta.permissions().readonly()) {
        (true, _) => 0o755,
        (false, true) => 0o444,
        (false, false) => 0o644,
    }
}
