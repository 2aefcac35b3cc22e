//! The fake node: its files, folders and instance records, and a
//! `NodeTransport` over them that records every change and command.

use super::*;

/// What a fake node holds, and every call that changed it or ran a command.
#[derive(Debug, Default)]
pub struct NodeState {
    pub files: BTreeMap<String, Vec<u8>>,
    pub dirs: BTreeSet<String>,
    /// Symbolic links: path -> absolute target.
    pub links: BTreeMap<String, String>,
    /// Commands run, in order.
    pub execs: Vec<String>,
    /// Outcome of commands that contain the key (others succeed silently).
    pub outcomes: Vec<(String, ExecOutput)>,
    /// Changes made: `write <path>`, `mkdir <path>`, `rm <path>`, `upload <dest>`.
    pub changes: Vec<String>,
    /// The node says its file names ignore case (a Windows node).
    pub ignore_case: bool,
    /// Files read (`read_file`), resolved, in order.
    pub reads: Vec<String>,
}

impl NodeState {
    /// The node's manifest as stored (default when there is none).
    pub fn manifest(&self, root: &str) -> Manifest {
        self.files
            .get(&format!("{root}/{}", crate::nodes::instances::MANIFEST))
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default()
    }

    pub fn set_manifest(&mut self, root: &str, m: &Manifest) {
        let bytes = serde_json::to_vec_pretty(m).unwrap_or_default();
        self.files.insert(
            format!("{root}/{}", crate::nodes::instances::MANIFEST),
            bytes,
        );
    }

    /// Make commands containing `needle` fail with `stderr`.
    pub fn fail_on(&mut self, needle: &str, stderr: &str) {
        self.outcomes.push((
            needle.to_string(),
            ExecOutput {
                status: Some(1),
                stdout: String::new(),
                stderr: stderr.to_string(),
            },
        ));
    }

    /// Lexically normalised, with links followed (prefix by prefix).
    pub(super) fn resolve(&self, path: &str) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut pending: Vec<String> = path
            .split('/')
            .rev()
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            match c.as_str() {
                "." => {}
                ".." => {
                    parts.pop();
                }
                _ => {
                    parts.push(c);
                    let here = format!("/{}", parts.join("/"));
                    if let Some(target) = self.links.get(&here) {
                        hops += 1;
                        if hops > 40 {
                            return here;
                        }
                        parts.clear();
                        pending.extend(
                            target
                                .split('/')
                                .rev()
                                .filter(|c| !c.is_empty())
                                .map(str::to_string),
                        );
                    }
                }
            }
        }
        format!("/{}", parts.join("/"))
    }

    pub(super) fn exists(&self, canonical: &str) -> bool {
        self.dirs.contains(canonical) || self.files.contains_key(canonical)
    }
}

/// An in-memory `NodeTransport` over a shared `NodeState`. Paths are POSIX.
pub struct FakeNode {
    pub(super) name: String,
    pub state: Arc<Mutex<NodeState>>,
}

impl FakeNode {
    pub fn new(name: &str) -> FakeNode {
        FakeNode {
            name: name.to_string(),
            state: Arc::new(Mutex::new(NodeState::default())),
        }
    }

    pub fn handle(&self) -> FakeNode {
        FakeNode {
            name: self.name.clone(),
            state: self.state.clone(),
        }
    }
}

impl NodeTransport for FakeNode {
    fn node(&self) -> &str {
        &self.name
    }

    fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let mut st = lock(&self.state);
        let p = st.resolve(path);
        st.reads.push(p.clone());
        Ok(st.files.get(&p).cloned())
    }

    fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let mut st = lock(&self.state);
        let p = st.resolve(path);
        st.changes.push(format!("write {p}"));
        st.files.insert(p, data.to_vec());
        Ok(())
    }

    fn dir_state(&self, path: &str) -> Result<DirState> {
        let st = lock(&self.state);
        let p = st.resolve(path);
        if !st.dirs.contains(&p) {
            return Ok(DirState::Missing);
        }
        let inside = format!("{p}/");
        let full = st.dirs.iter().any(|d| d.starts_with(&inside))
            || st.files.keys().any(|f| f.starts_with(&inside))
            || st.links.keys().any(|l| l.starts_with(&inside));
        Ok(if full {
            DirState::NotEmpty
        } else {
            DirState::Empty
        })
    }

    fn create_dir_all(&self, path: &str) -> Result<()> {
        let mut st = lock(&self.state);
        let p = st.resolve(path);
        st.changes.push(format!("mkdir {p}"));
        for a in ancestors(&p) {
            st.dirs.insert(a);
        }
        Ok(())
    }

    fn remove_tree(&self, path: &str) -> Result<()> {
        let mut st = lock(&self.state);
        let p = path.trim_end_matches('/').to_string();
        st.changes.push(format!("rm {p}"));
        let inside = format!("{p}/");
        st.dirs.retain(|d| *d != p && !d.starts_with(&inside));
        st.files.retain(|f, _| *f != p && !f.starts_with(&inside));
        st.links.retain(|l, _| *l != p && !l.starts_with(&inside));
        Ok(())
    }

    fn upload_entries(&self, entries: &[PayloadEntry], dest: &str) -> Result<u64> {
        let mut st = lock(&self.state);
        let dest = st.resolve(dest);
        if !st.dirs.contains(&dest) {
            return Err(Error::node(&self.name, format!("`{dest}` does not exist")));
        }
        st.changes.push(format!("upload {dest}"));
        let mut total = 0;
        for e in entries {
            let to = format!("{dest}/{}", e.rel);
            if e.is_dir {
                st.dirs.insert(to);
            } else {
                let bytes =
                    std::fs::read(&e.source).map_err(|err| Error::io("read", &e.source, err))?;
                total += bytes.len() as u64;
                st.files.insert(to, bytes);
            }
        }
        Ok(total)
    }

    fn rename(&self, from: &str, to: &str) -> Result<()> {
        let mut st = lock(&self.state);
        let (f, t) = (st.resolve(from), st.resolve(to));
        if st.exists(&t) {
            return Err(Error::node(&self.name, format!("`{t}` exists")));
        }
        st.changes.push(format!("rename {f} {t}"));
        let inside = format!("{f}/");
        let moved = |p: &String| -> Option<String> {
            if *p == f {
                Some(t.clone())
            } else {
                p.strip_prefix(&inside).map(|rest| format!("{t}/{rest}"))
            }
        };
        st.dirs = st
            .dirs
            .iter()
            .map(|d| moved(d).unwrap_or_else(|| d.clone()))
            .collect();
        st.files = std::mem::take(&mut st.files)
            .into_iter()
            .map(|(k, v)| (moved(&k).unwrap_or(k), v))
            .collect();
        Ok(())
    }

    fn remove_file(&self, path: &str) -> Result<()> {
        let mut st = lock(&self.state);
        let p = st.resolve(path);
        st.changes.push(format!("rm {p}"));
        st.files.remove(&p);
        Ok(())
    }

    fn list_dir(&self, path: &str) -> Result<Option<Vec<String>>> {
        let st = lock(&self.state);
        let p = st.resolve(path);
        if !st.dirs.contains(&p) {
            return Ok(None);
        }
        let inside = format!("{}/", p.trim_end_matches('/'));
        let mut names: BTreeSet<String> = BTreeSet::new();
        for k in st.dirs.iter().chain(st.files.keys()).chain(st.links.keys()) {
            if let Some(rest) = k.strip_prefix(&inside) {
                if let Some(first) = rest.split('/').next().filter(|f| !f.is_empty()) {
                    names.insert(first.to_string());
                }
            }
        }
        Ok(Some(names.into_iter().collect()))
    }

    fn exec(&self, command: &str, _cwd: &str, _timeout: Duration) -> Result<ExecOutput> {
        let mut st = lock(&self.state);
        st.execs.push(command.to_string());
        Ok(st
            .outcomes
            .iter()
            .find(|(k, _)| command.contains(k.as_str()))
            .map(|(_, o)| o.clone())
            .unwrap_or(ExecOutput {
                status: Some(0),
                stdout: String::new(),
                stderr: String::new(),
            }))
    }

    fn identity(&self, path: &str) -> Result<Option<PathIdentity>> {
        let st = lock(&self.state);
        let trimmed = path.trim_end_matches('/');
        let (parent, own) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
        let link_path = match own {
            "" | "." | ".." => None,
            name => Some(format!(
                "{}/{name}",
                st.resolve(parent).trim_end_matches('/')
            )),
        };
        let link = link_path.as_ref().is_some_and(|l| st.links.contains_key(l));
        let canonical = st.resolve(path);
        if !st.exists(&canonical) {
            return Ok(if link {
                // A dangling link: its own path.
                link_path.map(|l| PathIdentity {
                    canonical: l,
                    file_id: None,
                    link: true,
                })
            } else {
                None
            });
        }
        Ok(Some(PathIdentity {
            canonical,
            // Like SFTP: no inodes; identity is the canonical path.
            file_id: None,
            link,
        }))
    }

    fn paths_ignore_case(&self) -> bool {
        lock(&self.state).ignore_case
    }
}
