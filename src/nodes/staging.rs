//! Staging a release's payload on a node before the downtime window opens.
//!
//! The files go to `<root>/.uprun-staging/<digest>/payload`, outside any
//! instance folder, and are checked by SHA-256 computed on the node (a
//! partial or tampered staging is found, and only what differs is sent
//! again). Inside the window, the new instance's folder is that tree renamed
//! on the node's own filesystem, checked again by hash right before: a
//! create costs a rename, not a copy. A staging area is never an instance
//! folder: its name starts with `.uprun` (refused by the folder rails), and
//! it is removed once used, when another release is staged, and on abandon.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{payload_entries, DirState, NodeInstances, PayloadEntry, TreeEntry, TreeHashes};
use crate::config::release::{hex, sha256_file};
use crate::{Error, Result};

/// The staging area's folder in a node's root.
pub const STAGING_DIR: &str = ".uprun-staging";
/// The payload tree inside one release's staging folder.
const TREE: &str = "payload";

/// A release's payload with the SHA-256 of every file, computed once per
/// process.
#[derive(Debug)]
pub struct PayloadDigest {
    /// Names this payload (its files, contents and modes): 16 hex digits.
    pub digest: String,
    pub entries: Vec<PayloadEntry>,
    /// What a verified staging holds, exactly.
    pub expected: BTreeMap<String, TreeEntry>,
    pub files: usize,
    pub bytes: u64,
    /// Why this payload is not staged (copied inside the window instead).
    pub unstageable: Option<String>,
}

/// The payload of `src`, checked (as `upload_tree` checks it) and hashed.
pub fn payload_digest(node: &str, src: &Path) -> Result<Arc<PayloadDigest>> {
    type Cache = Mutex<HashMap<PathBuf, Arc<PayloadDigest>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let key = std::fs::canonicalize(src).unwrap_or_else(|_| src.to_path_buf());
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(d) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(d.clone());
    }
    let entries = payload_entries(node, src)?;
    let mut expected = BTreeMap::new();
    let mut summary = String::new();
    let (mut files, mut bytes) = (0, 0);
    let mut unstageable = None;
    for e in &entries {
        if e.rel.chars().any(char::is_control) {
            unstageable = Some(format!(
                "payload entry {:?} has a control character in its name, which the node's listing cannot carry",
                e.rel
            ));
        }
        if e.is_dir {
            expected.insert(e.rel.clone(), TreeEntry::Dir);
            summary.push_str(&format!("d {:o} {}\n", e.mode, e.rel));
        } else {
            let (size, sum) = sha256_file(&e.source)
                .map_err(|err| Error::io("read payload file", &e.source, err))?;
            bytes += size;
            files += 1;
            summary.push_str(&format!("f {:o} {sum} {}\n", e.mode, e.rel));
            expected.insert(e.rel.clone(), TreeEntry::File(sum));
        }
    }
    let digest = hex(&Sha256::digest(summary.as_bytes()))[..16].to_string();
    let d = Arc::new(PayloadDigest {
        digest,
        entries,
        expected,
        files,
        bytes,
        unstageable,
    });
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, d.clone());
    Ok(d)
}

type Fingerprints = Mutex<HashMap<(String, String), String>>;

fn fingerprints() -> &'static Fingerprints {
    static F: OnceLock<Fingerprints> = OnceLock::new();
    F.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The fingerprint of a staged tree this process verified by hash.
fn remember(node: &str, tree: &str, fp: Option<String>) {
    let mut map = fingerprints().lock().unwrap_or_else(|e| e.into_inner());
    let key = (node.to_string(), tree.to_string());
    match fp {
        Some(f) => map.insert(key, f),
        None => map.remove(&key),
    };
}

fn remembered(node: &str, tree: &str) -> Option<String> {
    fingerprints()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&(node.to_string(), tree.to_string()))
        .cloned()
}

/// What `stage_release` did on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageReport {
    pub node: String,
    /// The staging folder, relative to the root.
    pub folder: String,
    /// The payload is staged and verified on the node.
    pub staged: bool,
    pub files: usize,
    pub bytes: u64,
    /// Files sent by this call (missing, partial or changed ones).
    pub sent_files: usize,
    pub sent_bytes: u64,
    /// Files already staged and verified, kept.
    pub kept_files: usize,
    /// Why nothing was staged (the create copies the payload instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl StageReport {
    /// Nothing staged yet (or nothing to stage: `reason` says why) of the
    /// payload `pd` on `node`.
    pub fn nothing(node: &str, pd: &PayloadDigest, reason: Option<String>) -> StageReport {
        StageReport {
            node: node.to_string(),
            folder: format!("{STAGING_DIR}/{}", pd.digest),
            staged: false,
            files: pd.files,
            bytes: pd.bytes,
            sent_files: 0,
            sent_bytes: 0,
            kept_files: 0,
            reason,
        }
    }
}

/// The first difference between what a staging holds and what it must.
fn first_difference(
    expected: &BTreeMap<String, TreeEntry>,
    found: &BTreeMap<String, TreeEntry>,
) -> Option<String> {
    for (rel, want) in expected {
        match found.get(rel) {
            None => return Some(format!("`{rel}` is missing")),
            Some(got) if got != want => return Some(format!("`{rel}` differs")),
            _ => {}
        }
    }
    found
        .keys()
        .find(|k| !expected.contains_key(*k))
        .map(|k| format!("`{k}` is not part of the payload"))
}

impl NodeInstances {
    /// `<root>/.uprun-staging`.
    pub fn staging_root(&self) -> String {
        self.transport.join(&self.root, STAGING_DIR)
    }

    fn staged_tree(&self, digest: &str) -> String {
        let dir = self.transport.join(&self.staging_root(), digest);
        self.transport.join(&dir, TREE)
    }

    /// Whether the root holds anything but the staging area (a node uprun
    /// has no record of, when it has no manifest).
    pub fn root_holds_files(&self) -> Result<bool> {
        Ok(self
            .transport
            .list_dir(&self.root)?
            .is_some_and(|names| names.iter().any(|n| n != STAGING_DIR)))
    }

    /// Remove `path`, whatever it is; a link is removed, never followed.
    fn remove_any(&self, path: &str) -> Result<()> {
        match self.transport.identity(path)? {
            None => Ok(()),
            Some(id) if id.link => self.transport.remove_file(path),
            Some(_) => {
                if self.transport.remove_file(path).is_err() {
                    self.transport.remove_tree(path)?;
                }
                Ok(())
            }
        }
    }

    /// Remove every staging folder but `keep`'s (all of them with `None`),
    /// and the staging area itself once empty. Returns how many went.
    pub fn clean_staging(&self, keep: Option<&str>) -> Result<usize> {
        let root = self.staging_root();
        match self.transport.identity(&root)? {
            None => return Ok(0),
            Some(id) if id.link => {
                self.transport.remove_file(&root)?;
                return Ok(1);
            }
            Some(_) => {}
        }
        let Some(names) = self.transport.list_dir(&root)? else {
            self.remove_any(&root)?;
            return Ok(1);
        };
        let mut removed = 0;
        for name in names.iter().filter(|n| Some(n.as_str()) != keep) {
            self.remove_any(&self.transport.join(&root, name))?;
            removed += 1;
        }
        if self.transport.dir_state(&root)? == DirState::Empty {
            self.transport.remove_tree(&root)?;
        }
        Ok(removed)
    }

    /// After the staged tree of `digest` was renamed into its folder: its
    /// emptied staging folder and the staging area go by one `rmdir` each
    /// (inside the window, nothing is listed). `false` when anything else
    /// is there, for `clean_staging` to remove.
    pub(super) fn drop_used_staging(&self, digest: &str) -> Result<bool> {
        let root = self.staging_root();
        Ok(self
            .transport
            .remove_empty_dir(&self.transport.join(&root, digest))?
            && self.transport.remove_empty_dir(&root)?)
    }

    /// Stage `pd` under the staging area, resuming what is there: files
    /// already staged with the right hash are kept, anything else there is
    /// removed, missing files are sent; then the whole tree is hashed on the
    /// node and must be exactly the payload. Another release's staging is
    /// removed first.
    pub fn stage_release(&self, pd: &PayloadDigest) -> Result<StageReport> {
        let mut report = StageReport::nothing(self.node(), pd, None);
        if let Some(why) = &pd.unstageable {
            report.reason = Some(why.clone());
            return Ok(report);
        }
        self.clean_staging(Some(&pd.digest))?;
        let root = self.staging_root();
        let dir = self.transport.join(&root, &pd.digest);
        let tree = self.staged_tree(&pd.digest);
        remember(self.node(), &tree, None);
        // Links are removed, never written through.
        for p in [&root, &dir, &tree] {
            if self.transport.identity(p)?.is_some_and(|id| id.link) {
                self.transport.remove_file(p)?;
            }
        }
        let found = match self.transport.tree_hashes(&tree)? {
            TreeHashes::Unsupported(why) => {
                self.clean_staging(None)?;
                report.reason = Some(why);
                return Ok(report);
            }
            TreeHashes::Missing => BTreeMap::new(),
            TreeHashes::Entries(e) if e.get("") == Some(&TreeEntry::Other) => {
                self.remove_any(&tree)?;
                BTreeMap::new()
            }
            TreeHashes::Entries(e) => e,
        };
        self.transport.create_dir_all(&tree)?;
        // Children before parents: what is there and should not be goes.
        for (rel, got) in found.iter().rev() {
            let want = pd.expected.get(rel);
            if want == Some(got) {
                continue;
            }
            let path = self.transport.join(&tree, rel);
            match got {
                TreeEntry::Dir if want.is_none() => self.transport.remove_tree(&path)?,
                TreeEntry::Dir => self.remove_any(&path)?,
                _ => self.transport.remove_file(&path)?,
            }
        }
        let send: Vec<PayloadEntry> = pd
            .entries
            .iter()
            .filter(|e| e.is_dir || found.get(&e.rel) != pd.expected.get(&e.rel))
            .cloned()
            .collect();
        report.sent_files = send.iter().filter(|e| !e.is_dir).count();
        report.kept_files = pd.files - report.sent_files;
        report.sent_bytes = self.transport.upload_entries(&send, &tree)?;
        crate::failpoint::inner();
        let before = self.transport.tree_fingerprint(&tree)?;
        match self.transport.tree_hashes(&tree)? {
            TreeHashes::Entries(e) => {
                if let Some(diff) = first_difference(&pd.expected, &e) {
                    return Err(Error::node(
                        self.node(),
                        format!(
                            "the payload staged in `{tree}` does not match the release after it was sent ({diff}); something else writes there. Check the node, then run again"
                        ),
                    ));
                }
            }
            other => {
                return Err(Error::node(
                    self.node(),
                    format!("the payload staged in `{tree}` cannot be read back ({other:?})"),
                ))
            }
        }
        // Nothing changed while it was hashed: the create may prove the tree
        // unchanged since by its fingerprint instead of hashing it again
        // inside the window.
        let after = self.transport.tree_fingerprint(&tree)?;
        if let (Some(a), Some(b)) = (before, after) {
            if a == b {
                remember(self.node(), &tree, Some(a));
            }
        }
        report.staged = true;
        Ok(report)
    }

    /// The staged tree of `pd` when it is there and verifies by hash now
    /// (a real folder, exactly the payload), else `None`.
    pub fn verified_staging(&self, pd: &PayloadDigest) -> Result<Option<String>> {
        if pd.unstageable.is_some() {
            return Ok(None);
        }
        let root = self.staging_root();
        let dir = self.transport.join(&root, &pd.digest);
        let tree = self.staged_tree(&pd.digest);
        let states = self.transport.link_states(&[&root, &dir, &tree])?;
        if states.iter().any(|s| *s != Some(false)) {
            return Ok(None);
        }
        // Verified by hash in this process and unchanged since (every write,
        // rename or mode change alters the fingerprint): no second hashing
        // inside the window. Otherwise the hashes are checked now.
        if let Some(fp) = remembered(self.node(), &tree) {
            if self.transport.tree_fingerprint(&tree)? == Some(fp) {
                return Ok(Some(tree));
            }
        }
        Ok(match self.transport.tree_hashes(&tree)? {
            TreeHashes::Entries(e) if first_difference(&pd.expected, &e).is_none() => Some(tree),
            _ => None,
        })
    }
}

/// Remove every node's staging area (an abandoned run's staged payloads).
/// Returns, per node where something was removed or could not be, a line
/// for the operator. Unreachable nodes are reported, not fatal: the next
/// run that stages removes what is left.
pub fn clean_site(site: &crate::config::Site) -> Vec<String> {
    let transports = match super::connect_all(site, super::ConnectMode::ReadWrite) {
        Ok(t) => t,
        Err(e) => {
            return vec![format!(
                "staged payloads were not removed (the next run that stages removes them): {e}"
            )]
        }
    };
    let mut out = Vec::new();
    for (n, transport) in site.nodes.iter().zip(transports) {
        let inst = NodeInstances::new(n, transport, false);
        match inst.clean_staging(None) {
            Ok(0) => {}
            Ok(k) => out.push(format!(
                "node `{}`: removed {k} staged payload(s) from `{}`",
                n.name,
                inst.staging_root()
            )),
            Err(e) => out.push(format!(
                "node `{}`: staged payloads were not removed ({e}); the next run that stages removes them",
                n.name
            )),
        }
    }
    out
}
