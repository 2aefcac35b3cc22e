//! What a run read (script, site file, release), as digests recorded in the
//! journal's header, so a resume can tell what changed since.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{absolute, Inputs};
use crate::config::release::sha256_hex;
use crate::config::{DbKind, Release, Site};
use crate::{Error, Result};

fn hash_tree(h: &mut Sha256, root: &Path, dir: &Path) -> Result<()> {
    let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(it) => it
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| Error::io("read", dir, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("read", dir, e)),
    };
    names.sort();
    for p in names {
        let rel = p
            .strip_prefix(root)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        if p.is_dir() {
            hash_tree(h, root, &p)?;
        } else {
            let bytes = std::fs::read(&p).map_err(|e| Error::io("read", &p, e))?;
            h.update(rel.as_bytes());
            h.update([0]);
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
    }
    Ok(())
}

/// Digests of the script, the site file and everything a run reads from the
/// release: the release file, the payload folder wherever it lives, and the
/// migrations folder of each database kind (names and contents). Paths are
/// recorded absolute. `script` is the procedure as the journal records it (a
/// bundled name or the file's absolute path, `Procedure::recorded_name`),
/// `text` its source.
pub fn digest_inputs(script: &str, text: &str, site: &Site, release: &Release) -> Result<Inputs> {
    let site_bytes =
        std::fs::read(&site.file).map_err(|e| Error::io("read site file", &site.file, e))?;
    let mut h = Sha256::new();
    if release.present {
        let file = std::fs::read(&release.file).map_err(|e| Error::io("read", &release.file, e))?;
        h.update(b"release file\0");
        h.update((file.len() as u64).to_le_bytes());
        h.update(&file);
        h.update(b"payload\0");
        hash_tree(&mut h, &release.payload, &release.payload)?;
        for kind in [DbKind::Sqlite, DbKind::Mssql] {
            if let Some(dir) = release.migrations_dir(kind) {
                h.update(format!("migrations {}\0", kind.as_str()).as_bytes());
                hash_tree(&mut h, &dir, &dir)?;
            }
        }
    }
    Ok(Inputs {
        script: script.to_string(),
        script_sha256: sha256_hex(text.as_bytes()),
        site: absolute(&site.file).display().to_string(),
        site_sha256: sha256_hex(&site_bytes),
        release: if release.present {
            absolute(&release.dir).display().to_string()
        } else {
            String::new()
        },
        release_version: release.version.to_string(),
        release_sha256: crate::config::release::hex(&h.finalize()),
    })
}

/// What differs between the inputs of the original run and now.
pub fn changed_inputs(before: &Inputs, now: &Inputs) -> Vec<String> {
    let mut out = Vec::new();
    if before.script_sha256 != now.script_sha256 {
        out.push(format!("the script `{}` changed", now.script));
    }
    if before.site_sha256 != now.site_sha256 {
        out.push(format!("the site file `{}` changed", now.site));
    }
    if before.release_sha256 != now.release_sha256 {
        out.push(format!(
            "the release changed (was {} at `{}`, now {} at `{}`)",
            before.release_version, before.release, now.release_version, now.release
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            script: "s.rhai".into(),
            script_sha256: "s1".into(),
            site: "site.toml".into(),
            site_sha256: "t1".into(),
            release: "rel".into(),
            release_version: "2.0.0".into(),
            release_sha256: "r1".into(),
        }
    }

    #[test]
    fn changed_inputs_names_each_input_that_differs() {
        let before = inputs();
        assert!(changed_inputs(&before, &before).is_empty());
        // A path alone is not a change: only the digests count.
        let moved = Inputs {
            script: "elsewhere/s.rhai".into(),
            ..inputs()
        };
        assert!(changed_inputs(&before, &moved).is_empty());
        let now = Inputs {
            script_sha256: "s2".into(),
            release: "rel2".into(),
            release_version: "2.1.0".into(),
            release_sha256: "r2".into(),
            ..inputs()
        };
        assert_eq!(
            changed_inputs(&before, &now),
            vec![
                "the script `s.rhai` changed".to_string(),
                "the release changed (was 2.0.0 at `rel`, now 2.1.0 at `rel2`)".to_string(),
            ]
        );
        let site = Inputs {
            site_sha256: "t2".into(),
            ..inputs()
        };
        assert_eq!(
            changed_inputs(&before, &site),
            vec!["the site file `site.toml` changed".to_string()]
        );
    }
}
