//! `uprun init DIR`: a fully commented site file and a custom procedure (with a
//! local module) to start from. Never overwrites a file.

use std::path::PathBuf;

use crate::{Error, Result};

pub const FILES: &[(&str, &str)] = &[
    ("site.toml", include_str!("../templates/site.toml")),
    ("upgrade.rhai", include_str!("../templates/upgrade.rhai")),
    ("lb.rhai", include_str!("../templates/lb.rhai")),
];

pub fn exec(dir: PathBuf) -> Result<i32> {
    let existing: Vec<String> = FILES
        .iter()
        .filter(|(name, _)| dir.join(name).exists())
        .map(|(name, _)| format!("`{}`", dir.join(name).display()))
        .collect();
    if !existing.is_empty() {
        return Err(Error::Config(format!(
            "{} already exist(s); uprun init never overwrites a file: choose an empty folder",
            existing.join(", ")
        )));
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create folder", &dir, e))?;
    for (name, text) in FILES {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
        crate::outln!("wrote {}", path.display());
    }
    crate::outln!(
        "Next: edit {0}/site.toml (nodes, database, service commands), then\n  uprun check {0}/upgrade.rhai\n  uprun plan {0}/upgrade.rhai --site {0}/site.toml --release RELEASE",
        dir.display()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_site_template_parses_once_its_node_roots_exist() {
        let tmp = tempfile::tempdir().expect("tmp");
        for n in ["app01", "app02", "app03"] {
            std::fs::create_dir_all(tmp.path().join("nodes").join(n)).expect("mkdir");
        }
        let file = tmp.path().join("site.toml");
        std::fs::write(&file, FILES[0].1).expect("write");
        let site = crate::config::Site::load(&file).expect("template parses");
        assert_eq!(site.nodes.len(), 3);
        assert_eq!(site.primary().name, "app01");
        assert!(site.checks.contains_key("strategies"));
    }
}
