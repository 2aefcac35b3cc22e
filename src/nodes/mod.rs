//! The node seam: how uprun reaches a node (`NodeTransport`: local, later ssh)
//! and what an instance is on a node (`instances`: manifest, payload, service
//! commands). Owns node I/O; it must not decide ordering or safety rules
//! (those are in `ops`).

pub mod instances;
mod local;

use std::path::Path;
use std::time::Duration;

use crate::config::{NodeAddress, NodeConfig};
use crate::Result;

pub use instances::{InstanceRecord, Manifest, NodeInstances};
pub(crate) use local::is_contained as local_is_contained;
pub use local::LocalTransport;

/// What a folder on a node looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirState {
    Missing,
    Empty,
    NotEmpty,
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
    /// Copy the local folder `src` into `dest` on the node (which must exist).
    /// Returns the number of bytes copied. Refuses entries that would escape `dest`.
    fn upload_tree(&self, src: &Path, dest: &str) -> Result<u64>;
    /// Run a shell command with `cwd` as working folder.
    fn exec(&self, command: &str, cwd: &str, timeout: Duration) -> Result<ExecOutput>;
    /// Join a relative path (with `/`) onto a node path.
    fn join(&self, base: &str, rel: &str) -> String {
        format!("{}/{}", base.trim_end_matches(['/', '\\']), rel)
    }
}

/// Connect to a node as its address says.
pub fn connect(node: &NodeConfig) -> Result<Box<dyn NodeTransport>> {
    match node.address {
        NodeAddress::Local => Ok(Box::new(LocalTransport::new(&node.name))),
    }
}
