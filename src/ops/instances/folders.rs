//! The rails on a new instance's folder: its spelling (one plain name
//! directly under the root) and its identity as the node resolves it (never
//! one that is, holds or sits in a folder an instance used, never a link).

use super::super::{lock, Ops};
use crate::config::{overlap, path_components, Overlap};
use crate::nodes::staging::STAGING_DIR;
use crate::nodes::{DirState, NodeInstances};
use crate::{Error, Result};

impl Ops {
    /// Every folder used on a node, including planned ones: the manifest's
    /// record of used folders and the folders of its current and removed
    /// instances.
    pub(super) fn used_folders(&self, node: &str) -> Result<Vec<String>> {
        let m = self.manifest_now(node)?;
        let mut used = m.used_folders;
        used.extend(m.current.iter().chain(&m.removed).map(|r| r.folder.clone()));
        {
            let st = lock(&self.state);
            if let Some(p) = st.planned_used.get(node) {
                used.extend(p.iter().cloned());
            }
            if let Some(Some(r)) = st.planned_current.get(node) {
                used.push(r.folder.clone());
            }
        }
        let mut seen = std::collections::HashSet::new();
        used.retain(|f| seen.insert(f.clone()));
        Ok(used)
    }

    /// A folder (relative to the root) as the node resolves it; a folder
    /// that does not exist is placed lexically under the resolved root.
    pub(super) fn resolve_folder(
        &self,
        n: &NodeInstances,
        rel: &str,
        root: &Resolved,
    ) -> Result<Resolved> {
        let ignore_case = n.transport.paths_ignore_case();
        Ok(match n.transport.identity(&n.folder_path(rel))? {
            Some(id) => Resolved {
                parts: path_components(&id.canonical, ignore_case),
                file_id: id.file_id,
                link: id.link,
                shown: id.canonical,
            },
            None => {
                let mut parts = root.parts.clone();
                for c in path_components(rel, ignore_case) {
                    parts.push(c);
                }
                Resolved {
                    parts,
                    file_id: None,
                    link: false,
                    shown: n.transport.join(&root.shown, rel),
                }
            }
        })
    }

    /// The node's root as the node resolves it.
    pub(super) fn resolve_root(&self, n: &NodeInstances) -> Result<Resolved> {
        let Some(id) = n.transport.identity(&n.root)? else {
            return Err(Error::node(
                n.node(),
                format!(
                    "the root folder `{}` does not exist; create it or correct `root` in the site file",
                    n.root
                ),
            ));
        };
        Ok(Resolved {
            parts: path_components(&id.canonical, n.transport.paths_ignore_case()),
            file_id: id.file_id,
            link: id.link,
            shown: id.canonical,
        })
    }

    /// Rail: pick or check the new instance's folder. It must be one plain
    /// name directly under the root, not a link, and, as the node resolves
    /// it, neither be nor hold nor sit inside any folder an instance used;
    /// and it must be missing or empty.
    pub(super) fn choose_folder(
        &self,
        node: &str,
        requested: Option<String>,
        base: &str,
    ) -> Result<String> {
        let n = self.node(node)?;
        let root = self.resolve_root(n)?;
        let mut used = Vec::new();
        for f in self.used_folders(node)? {
            let r = self.resolve_folder(n, &f, &root)?;
            used.push((f, r));
        }
        // The staging area holds payloads, never an instance: a folder that
        // is, holds or sits in it (however spelled) is refused.
        let staging = self.resolve_folder(n, STAGING_DIR, &root)?;
        if let Some(f) = requested {
            check_folder_name(node, &f)?;
            let candidate = self.resolve_folder(n, &f, &root)?;
            judge_not_staging(&f, &candidate, &staging)
                .and_then(|()| judge_folder(&f, &candidate, &root, &used))
                .map_err(|why| Error::Refused(format!("node `{node}`: {why}")))?;
            if n.folder_state(&f)? == DirState::NotEmpty {
                return Err(Error::Refused(format!(
                    "node `{node}`: folder `{}` exists and is not empty; choose a new, empty folder",
                    n.folder_path(&f)
                )));
            }
            return Ok(f);
        }
        check_folder_name(node, base).map_err(|_| {
            Error::Config(format!(
                "create_instance on `{node}`: the default folder name {base:?} (`<app>-<version>`) is not a plain folder name; give one with the `folder` option"
            ))
        })?;
        for i in 1..=MAX_SUFFIX {
            let candidate = if i == 1 {
                base.to_string()
            } else {
                format!("{base}-{i}")
            };
            let resolved = self.resolve_folder(n, &candidate, &root)?;
            if judge_not_staging(&candidate, &resolved, &staging).is_ok()
                && judge_folder(&candidate, &resolved, &root, &used).is_ok()
                && n.folder_state(&candidate)? != DirState::NotEmpty
            {
                return Ok(candidate);
            }
        }
        Err(Error::Refused(format!(
            "node `{node}`: `{base}` and its {MAX_SUFFIX} suffixed variants are all taken under `{}`; give a new folder with the `folder` option",
            n.root
        )))
    }
}

/// How many suffixed variants of the default folder name are tried.
const MAX_SUFFIX: usize = 1000;

/// A folder as its node resolves it, for comparing by identity.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// Components of the canonical path (placed lexically when missing).
    pub parts: Vec<String>,
    /// Device and inode, where the node can tell.
    pub file_id: Option<(u64, u64)>,
    /// The name itself is a symbolic link.
    pub link: bool,
    /// The canonical path, for messages.
    pub shown: String,
}

/// Rail (spelling): a new instance folder is one plain name directly under
/// the node's root. Anything else is a configuration error.
pub fn check_folder_name(node: &str, folder: &str) -> Result<()> {
    let why = if folder.is_empty() {
        Some("it is empty")
    } else if folder == "." || folder == ".." {
        Some("it names the root or its parent")
    } else if folder.contains(['/', '\\']) {
        Some("it is a path, not one folder name")
    } else if folder.contains('\0') {
        Some("it contains a NUL character")
    } else if folder.contains(':') {
        Some("it contains `:` (a drive or stream on Windows nodes)")
    } else if folder.to_ascii_lowercase().starts_with(".uprun") {
        Some("names starting with `.uprun` are uprun's own files in the root (the manifest)")
    } else if folder.ends_with(['.', ' ']) || folder.starts_with(' ') {
        Some("it starts with a space or ends with `.` or a space (Windows nodes drop those, so it would name another folder)")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(Error::Config(format!(
            "create_instance on `{node}`: `folder` {folder:?} is not allowed: {why}. Give one plain folder name, without `/`, `\\`, `:`, `.` or `..`, created directly under the node's root, e.g. \"FastApp-2.0.0\""
        ))),
    }
}

/// Rail (identity): a new instance never goes in uprun's staging area
/// (`staging`, as the node resolves it), nor holds it, nor sits inside it.
pub(crate) fn judge_not_staging(
    folder: &str,
    candidate: &Resolved,
    staging: &Resolved,
) -> std::result::Result<(), String> {
    let same_file = matches!((candidate.file_id, staging.file_id), (Some(a), Some(b)) if a == b);
    if same_file || overlap(&candidate.parts, &staging.parts).is_some() {
        return Err(format!(
            "folder `{folder}` (`{}`) is, holds or sits in uprun's staging area `{}` (payloads staged before the window), which is never an instance folder",
            candidate.shown, staging.shown
        ));
    }
    Ok(())
}

/// Rail (identity): may a new instance go in `candidate` (spelled `folder`)?
/// It must resolve to a folder directly under `root`, must not be, hold or
/// sit inside any `used` folder (same device and inode, or same canonical
/// path), and must not be a link. Returns why not.
pub(crate) fn judge_folder(
    folder: &str,
    candidate: &Resolved,
    root: &Resolved,
    used: &[(String, Resolved)],
) -> std::result::Result<(), String> {
    let stale = "an old instance's folder may hold stale subscriber DLLs of an older version; use a new folder";
    if !candidate.parts.starts_with(&root.parts) || candidate.parts.len() <= root.parts.len() {
        return Err(format!(
            "folder `{folder}` resolves to `{}`, outside the node's root `{}`; an instance folder is created directly under the root",
            candidate.shown, root.shown
        ));
    }
    for (spelled, u) in used {
        let same_file = matches!((candidate.file_id, u.file_id), (Some(a), Some(b)) if a == b);
        let relation = if same_file {
            Some(Overlap::Same)
        } else {
            overlap(&candidate.parts, &u.parts)
        };
        let what = match relation {
            None => continue,
            Some(Overlap::Same) => "is",
            Some(Overlap::Inside) => "is inside",
            Some(Overlap::Contains) => "contains",
        };
        return Err(format!(
            "folder `{folder}` (`{}`) {what} `{spelled}` (`{}`), which was used by an earlier instance; {stale}",
            candidate.shown, u.shown
        ));
    }
    if candidate.parts.len() != root.parts.len() + 1 {
        return Err(format!(
            "folder `{folder}` resolves to `{}`, not a folder directly under the node's root `{}`",
            candidate.shown, root.shown
        ));
    }
    if candidate.link {
        return Err(format!(
            "folder `{folder}` is a symbolic link (to `{}`); a new instance goes in a real folder that uprun creates",
            candidate.shown
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(path: &str, id: Option<(u64, u64)>, link: bool) -> Resolved {
        Resolved {
            parts: path_components(path, false),
            file_id: id,
            link,
            shown: path.into(),
        }
    }

    #[test]
    fn folders_are_compared_by_identity() {
        let root = at("/n/app01", Some((1, 1)), false);
        let used = vec![(
            "FastApp-1.0.0".to_string(),
            at("/n/app01/FastApp-1.0.0", Some((1, 2)), false),
        )];
        let judge = |c: &Resolved| judge_folder("x", c, &root, &used);
        assert!(judge(&at("/n/app01/FastApp-2.0.0", None, false)).is_ok());
        // Each candidate (path, file id, link) is refused saying the text.
        let refused = [
            // Same canonical path, or same inode under another path (a mount).
            (
                "/n/app01/FastApp-1.0.0",
                None,
                false,
                ") is `FastApp-1.0.0`",
            ),
            (
                "/n/app01/mnt",
                Some((1, 2)),
                false,
                "which was used by an earlier instance",
            ),
            // A link to the old folder, inside it, or to its parent.
            ("/n/app01/FastApp-1.0.0", Some((1, 2)), true, ""),
            ("/n/app01/FastApp-1.0.0/next", None, false, "is inside"),
            ("/n/app01", Some((1, 1)), true, "outside the node's root"),
            // Outside the root, or a link at all.
            (
                "/elsewhere/x",
                Some((2, 2)),
                true,
                "outside the node's root",
            ),
            ("/n/app01/fresh", Some((1, 9)), true, "symbolic link"),
        ];
        for (path, id, link, needle) in refused {
            let e = judge(&at(path, id, link)).expect_err(path);
            assert!(e.contains(needle), "{path}: {e}");
        }
        // An old nested folder is held by the candidate.
        let nested = vec![("a/b".to_string(), at("/n/app01/a/b", None, false))];
        assert!(
            judge_folder("a", &at("/n/app01/a", None, false), &root, &nested)
                .unwrap_err()
                .contains("contains")
        );
    }

    #[test]
    fn folder_names_are_one_plain_component() {
        for bad in [
            "",
            ".",
            "..",
            "./FastApp-1.0.0",
            "FastApp-1.0.0/",
            "FastApp-1.0.0/next",
            "a\\b",
            "/abs",
            "C:x",
            "a\0b",
            "trailing.",
            "trailing ",
            ".uprun-node.json",
        ] {
            let e = check_folder_name("app01", bad).unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{bad:?}");
            assert!(e.to_string().contains("app01"), "{e}");
        }
        for good in ["FastApp-2.0.0", "fresh", ".hidden", "FastApp-2.0.0+build.1"] {
            assert!(check_folder_name("app01", good).is_ok(), "{good:?}");
        }
    }
}
