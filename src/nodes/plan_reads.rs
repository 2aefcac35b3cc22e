//! The planning pass's reads, pipelined. A plan changes nothing on a node,
//! and its closures run one after the other, so its reads (manifests, the
//! root's listing, folder identities) used to go out one round trip at a
//! time, node after node. Here each node's transport is wrapped so that:
//!
//! - the reads every plan makes on every node (the manifest, the root's
//!   listing and identity, the staging area's identity) are issued for all
//!   nodes at once before the procedure starts ([`warm`]);
//! - a read repeated during the pass returns what the node said the first
//!   time in this pass (one consistent observation per planning pass).
//!
//! Only the planning pass uses it: the run observes every node again, step
//! by step. Anything that may change the node (a write, a command) empties
//! the node's cache first, so a later read goes to the node. Errors are
//! never cached.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::instances::{NodeInstances, MANIFEST};
use super::staging::STAGING_DIR;
use super::{DirState, ExecOutput, NodeTransport, PathIdentity, PayloadEntry, TreeHashes};
use crate::Result;

#[derive(Default)]
struct Seen {
    files: HashMap<String, Option<Vec<u8>>>,
    dirs: HashMap<String, DirState>,
    lists: HashMap<String, Option<Vec<String>>>,
    ids: HashMap<String, Option<PathIdentity>>,
}

/// A node's transport whose reads are remembered for one planning pass.
pub struct PlanReads {
    inner: Box<dyn NodeTransport>,
    seen: Mutex<Seen>,
}

impl PlanReads {
    pub fn new(inner: Box<dyn NodeTransport>) -> PlanReads {
        PlanReads {
            inner,
            seen: Mutex::new(Seen::default()),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Something may change the node: what was read is no longer known.
    fn forget(&self) {
        *self.seen() = Seen::default();
    }
}

/// Look `key` up in one of the maps, else read and remember a success.
macro_rules! remembered {
    ($self:ident, $map:ident, $key:expr, $read:expr) => {{
        if let Some(v) = $self.seen().$map.get($key) {
            return Ok(v.clone());
        }
        let v = $read?;
        $self.seen().$map.insert($key.to_string(), v.clone());
        Ok(v)
    }};
}

impl NodeTransport for PlanReads {
    fn node(&self) -> &str {
        self.inner.node()
    }
    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        remembered!(self, files, path, self.inner.read_file(path))
    }
    fn dir_state(&self, path: &str) -> Result<DirState> {
        remembered!(self, dirs, path, self.inner.dir_state(path))
    }
    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        remembered!(self, lists, path, self.inner.list_dir(path))
    }
    fn identity(&self, path: &str) -> Result<Option<PathIdentity>> {
        remembered!(self, ids, path, self.inner.identity(path))
    }
    fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        self.forget();
        self.inner.write_file(path, data)
    }
    fn create_dir_all(&self, path: &str) -> Result<()> {
        self.forget();
        self.inner.create_dir_all(path)
    }
    fn remove_tree(&self, path: &str) -> Result<()> {
        self.forget();
        self.inner.remove_tree(path)
    }
    fn upload_tree(&self, src: &Path, dest: &str) -> Result<u64> {
        self.forget();
        self.inner.upload_tree(src, dest)
    }
    fn upload_entries(&self, entries: &[PayloadEntry], dest: &str) -> Result<u64> {
        self.forget();
        self.inner.upload_entries(entries, dest)
    }
    fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.forget();
        self.inner.rename(from, to)
    }
    fn remove_file(&self, path: &str) -> Result<()> {
        self.forget();
        self.inner.remove_file(path)
    }
    fn tree_hashes(&self, dir: &str) -> Result<TreeHashes> {
        self.inner.tree_hashes(dir)
    }
    fn exec(&self, command: &str, cwd: &str, timeout: Duration) -> Result<ExecOutput> {
        // A command may change what a read would see.
        self.forget();
        self.inner.exec(command, cwd, timeout)
    }
    fn paths_ignore_case(&self) -> bool {
        self.inner.paths_ignore_case()
    }
    fn join(&self, base: &str, rel: &str) -> String {
        self.inner.join(base, rel)
    }
}

/// How many nodes are read at once by [`warm`].
const WIDTH: usize = 32;

/// Issue the reads every plan makes on every node, all nodes at once (at
/// most [`WIDTH`] in flight), so that the pass finds them remembered.
/// Errors are left for the pass's own reads to report, in its order.
pub fn warm(nodes: &[NodeInstances]) {
    let warm_one = |n: &NodeInstances| {
        let t = &n.transport;
        let _ = t.read_file(&t.join(&n.root, MANIFEST));
        let _ = t.list_dir(&n.root);
        let _ = t.identity(&n.root);
        let _ = t.identity(&t.join(&n.root, STAGING_DIR));
    };
    if nodes.len() <= 1 {
        nodes.iter().for_each(warm_one);
        return;
    }
    std::thread::scope(|s| {
        for lane in 0..WIDTH.min(nodes.len()) {
            let warm_one = &warm_one;
            s.spawn(move || {
                nodes.iter().skip(lane).step_by(WIDTH).for_each(warm_one);
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Shell;
    use crate::ops::fakes::FakeNode;

    fn node(name: &str) -> (FakeNode, NodeInstances) {
        let fake = FakeNode::new(name);
        {
            let mut st = fake.state.lock().unwrap_or_else(|e| e.into_inner());
            st.dirs.insert(format!("/srv/{name}"));
            st.files
                .insert(format!("/srv/{name}/{MANIFEST}"), b"{}".to_vec());
        }
        let n = NodeInstances {
            transport: Box::new(PlanReads::new(Box::new(fake.handle()))),
            root: format!("/srv/{name}"),
            shell: Shell::Posix,
            run_service_commands: true,
        };
        (fake, n)
    }

    fn reads(fake: &FakeNode) -> usize {
        fake.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .reads
            .len()
    }

    #[test]
    fn warm_reads_every_node_once_and_the_pass_finds_it_remembered() {
        let made: Vec<(FakeNode, NodeInstances)> =
            (0..40).map(|i| node(&format!("app{i:02}"))).collect();
        let (fakes, nodes): (Vec<FakeNode>, Vec<NodeInstances>) = made.into_iter().unzip();
        warm(&nodes);
        for (f, n) in fakes.iter().zip(&nodes) {
            assert_eq!(reads(f), 1, "{}: the manifest read once by warm", n.node());
            // The pass's own reads: remembered, nothing goes to the node.
            assert!(n.has_manifest().is_ok_and(|b| b));
            assert!(n.manifest().is_ok());
            assert_eq!(reads(f), 1, "{}", n.node());
        }
    }

    #[test]
    fn a_change_or_a_command_forgets_what_was_read() {
        let (fake, n) = node("app01");
        let path = format!("/srv/app01/{MANIFEST}");
        assert_eq!(
            n.transport.read_file(&path).ok().flatten(),
            Some(b"{}".to_vec())
        );
        assert_eq!(
            n.transport.read_file(&path).ok().flatten(),
            Some(b"{}".to_vec())
        );
        assert_eq!(reads(&fake), 1);
        // Changed behind the cache: still the pass's first observation...
        fake.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .files
            .insert(path.clone(), b"[]".to_vec());
        assert_eq!(
            n.transport.read_file(&path).ok().flatten(),
            Some(b"{}".to_vec())
        );
        // ...until something that may change the node runs: read again.
        assert!(n
            .transport
            .exec("true", "/srv/app01", Duration::from_secs(5))
            .is_ok());
        assert_eq!(
            n.transport.read_file(&path).ok().flatten(),
            Some(b"[]".to_vec())
        );
        assert_eq!(reads(&fake), 2);
        assert!(n.transport.write_file(&path, b"{}").is_ok());
        assert_eq!(
            n.transport.read_file(&path).ok().flatten(),
            Some(b"{}".to_vec())
        );
        assert_eq!(reads(&fake), 3);
    }
}
