//! The local transport: the node is this machine.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::{
    DirState, ExecOutput, NodeTransport, PathIdentity, PayloadEntry, TreeEntry, TreeHashes,
};
use crate::config::release::{hex, sha256_file};
use crate::{Error, Result};

pub struct LocalTransport {
    node: String,
}

impl LocalTransport {
    pub fn new(node: &str) -> Self {
        LocalTransport {
            node: node.to_string(),
        }
    }

    fn err(&self, what: String, e: std::io::Error) -> Error {
        Error::node(&self.node, format!("{what}: {e}"))
    }
}

/// Sync a folder so a rename inside it survives a crash.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A relative path that stays inside its base: no root, no `..`, no prefix.
pub(crate) fn is_contained(rel: &Path) -> bool {
    rel.components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

impl NodeTransport for LocalTransport {
    fn node(&self) -> &str {
        &self.node
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err(format!("cannot read `{path}`"), e)),
        }
    }

    fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let target = Path::new(path);
        let tmp = PathBuf::from(format!("{path}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, target)
        };
        write().map_err(|e| self.err(format!("cannot write `{path}`"), e))?;
        if let Some(parent) = target.parent() {
            sync_dir(parent);
        }
        Ok(())
    }

    fn dir_state(&self, path: &str) -> Result<DirState> {
        match std::fs::read_dir(path) {
            Ok(mut it) => Ok(if it.next().is_some() {
                DirState::NotEmpty
            } else {
                DirState::Empty
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DirState::Missing),
            Err(e) => Err(self.err(format!("cannot list `{path}`"), e)),
        }
    }

    fn create_dir_all(&self, path: &str) -> Result<()> {
        std::fs::create_dir_all(path).map_err(|e| self.err(format!("cannot create `{path}`"), e))
    }

    fn upload_entries(&self, entries: &[PayloadEntry], dest: &str) -> Result<u64> {
        let dest = Path::new(dest);
        let mut total = 0;
        for e in entries {
            let to = dest.join(&e.rel);
            if e.is_dir {
                std::fs::create_dir_all(&to).map_err(|err| Error::io("create folder", &to, err))?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(e.mode))
                        .map_err(|err| Error::io("set the mode of", &to, err))?;
                }
            } else {
                // `copy` keeps the permission bits.
                total += std::fs::copy(&e.source, &to)
                    .map_err(|err| Error::io("copy payload file to", &to, err))?;
            }
        }
        Ok(total)
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        // rename(2) would replace an empty folder or a file: refuse anything there.
        if std::fs::symlink_metadata(to).is_ok() {
            return Err(Error::node(
                &self.node,
                format!("cannot rename `{from}` to `{to}`: `{to}` exists"),
            ));
        }
        std::fs::rename(from, to)
            .map_err(|e| self.err(format!("cannot rename `{from}` to `{to}`"), e))?;
        if let Some(parent) = Path::new(to).parent() {
            sync_dir(parent);
        }
        Ok(())
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(format!("cannot remove `{path}`"), e)),
        }
    }

    fn remove_empty_dir(&self, path: &str) -> Result<bool> {
        Ok(std::fs::remove_dir(path).is_ok())
    }

    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        let it = match std::fs::read_dir(path) {
            Ok(it) => it,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(format!("cannot list `{path}`"), e)),
        };
        let mut names = Vec::new();
        for entry in it {
            let entry = entry.map_err(|e| self.err(format!("cannot list `{path}`"), e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(Some(names))
    }

    #[cfg(unix)]
    fn tree_fingerprint(&self, dir: &str) -> Result<Option<String>> {
        use std::os::unix::fs::MetadataExt;
        fn walk(base: &Path, rel: &str, out: &mut Vec<String>) -> std::io::Result<()> {
            let here = if rel.is_empty() {
                base.to_path_buf()
            } else {
                base.join(rel)
            };
            for entry in std::fs::read_dir(&here)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let r = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let m = std::fs::symlink_metadata(entry.path())?;
                out.push(format!(
                    "{r} {:o} {} {}.{} {}.{} {}",
                    m.mode(),
                    m.size(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                    m.ino()
                ));
                if m.is_dir() {
                    walk(base, &r, out)?;
                }
            }
            Ok(())
        }
        let mut lines = Vec::new();
        if walk(Path::new(dir), "", &mut lines).is_err() {
            return Ok(None);
        }
        lines.sort();
        Ok(Some(hex(&Sha256::digest(lines.join("\n").as_bytes()))))
    }

    fn tree_hashes(&self, dir: &str) -> Result<TreeHashes> {
        fn walk(
            t: &LocalTransport,
            base: &Path,
            rel: &str,
            out: &mut BTreeMap<String, TreeEntry>,
        ) -> Result<()> {
            let here = if rel.is_empty() {
                base.to_path_buf()
            } else {
                base.join(rel)
            };
            let it = std::fs::read_dir(&here)
                .map_err(|e| t.err(format!("cannot list `{}`", here.display()), e))?;
            for entry in it {
                let entry =
                    entry.map_err(|e| t.err(format!("cannot list `{}`", here.display()), e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let r = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                let ft = entry
                    .file_type()
                    .map_err(|e| t.err(format!("cannot read `{r}`"), e))?;
                if ft.is_dir() {
                    out.insert(r.clone(), TreeEntry::Dir);
                    walk(t, base, &r, out)?;
                } else if ft.is_file() {
                    let path = entry.path();
                    let (_, sum) = sha256_file(&path)
                        .map_err(|e| t.err(format!("cannot read `{}`", path.display()), e))?;
                    out.insert(r, TreeEntry::File(sum));
                } else {
                    out.insert(r, TreeEntry::Other);
                }
            }
            Ok(())
        }
        let base = Path::new(dir);
        match std::fs::symlink_metadata(base) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Ok(TreeHashes::Entries(BTreeMap::from([(
                    String::new(),
                    TreeEntry::Other,
                )])))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TreeHashes::Missing),
            Err(e) => return Err(self.err(format!("cannot read `{dir}`"), e)),
        }
        let mut out = BTreeMap::new();
        walk(self, base, "", &mut out)?;
        Ok(TreeHashes::Entries(out))
    }

    fn remove_tree(&self, path: &str) -> Result<()> {
        match std::fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(format!("cannot remove `{path}`"), e)),
        }
    }

    fn identity(&self, path: &str) -> Result<Option<PathIdentity>> {
        let p = Path::new(path);
        let link = match std::fs::symlink_metadata(p) {
            Ok(m) => m.file_type().is_symlink(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(format!("cannot read `{path}`"), e)),
        };
        let canonical = match std::fs::canonicalize(p) {
            Ok(c) => c,
            // A dangling link: name the link itself (its folder resolved).
            Err(e) if link && e.kind() == std::io::ErrorKind::NotFound => {
                let parent = p.parent().unwrap_or(Path::new("."));
                let parent = std::fs::canonicalize(parent)
                    .map_err(|e| self.err(format!("cannot resolve `{}`", parent.display()), e))?;
                match p.file_name() {
                    Some(name) => parent.join(name),
                    None => parent,
                }
            }
            Err(e) => return Err(self.err(format!("cannot resolve `{path}`"), e)),
        };
        let file_id = file_id(&canonical);
        Ok(Some(PathIdentity {
            canonical: canonical.to_string_lossy().into_owned(),
            file_id,
            link,
        }))
    }

    fn exec(&self, command: &str, cwd: &str, timeout: Duration) -> Result<ExecOutput> {
        if crate::interrupt::abort_requested() {
            return Err(Error::Interrupted(format!(
                "interrupted: `{command}` was not started on node `{}`: the operator aborted the run (second Ctrl-C)",
                self.node
            )));
        }
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group, as a remote command has: the terminal's
        // Ctrl-C reaches uprun only (the first one lets the step finish), and
        // a timeout or an abort kills the command with everything it started.
        #[cfg(unix)]
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| self.err(format!("cannot start `{command}` in `{cwd}`"), e))?;
        let out = child.stdout.take();
        let err = child.stderr.take();
        let read = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_string(&mut s);
                }
                s
            })
        };
        let out_reader = read(out.map(|p| Box::new(p) as Box<dyn Read + Send>));
        let err_reader = read(err.map(|p| Box::new(p) as Box<dyn Read + Send>));
        let started = Instant::now();
        // The abort flag is set by the Ctrl-C handler thread: polled between
        // short waits.
        let status = loop {
            let left = timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                kill_group(&mut child);
                return Err(Error::node(
                    &self.node,
                    format!(
                        "`{command}` did not finish within {} s and was killed",
                        timeout.as_secs()
                    ),
                ));
            }
            match child.wait_timeout(left.min(ABORT_POLL)) {
                Ok(Some(status)) => break status,
                Ok(None) if crate::interrupt::abort_requested() => {
                    kill_group(&mut child);
                    return Err(Error::Interrupted(format!(
                        "interrupted: `{command}` on node `{}` was aborted by the operator (second Ctrl-C) and killed",
                        self.node
                    )));
                }
                Ok(None) => {}
                Err(e) => return Err(self.err(format!("waiting for `{command}`"), e)),
            }
        };
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        Ok(ExecOutput {
            status: status.code(),
            stdout,
            stderr,
        })
    }
}

/// Device and inode of what `path` resolves to.
#[cfg(unix)]
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(_path: &Path) -> Option<(u64, u64)> {
    None
}

/// How often a running command checks whether the operator aborted it.
const ABORT_POLL: Duration = Duration::from_millis(100);

/// Kill a command and whatever it started (its process group), and reap it.
fn kill_group(child: &mut Child) {
    #[cfg(unix)]
    {
        // `-s KILL --`: the form dash, bash and busybox all accept.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -s KILL -- -{} 2>/dev/null", child.id()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.kill();
    let _ = child.wait();
}
