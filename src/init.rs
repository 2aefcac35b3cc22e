//! What `uprun init DIR` lays out: a fully commented site file and a custom procedure (with a
//! local module) to start from, and beside them a sample database, sample node
//! folders and a sample release, so that `plan`, `run` and `test` work on the
//! result as it is. Never overwrites a file.

use std::path::Path;

use crate::{Error, Result};

pub const FILES: &[(&str, &str)] = &[
    ("site.toml", include_str!("templates/site.toml")),
    ("upgrade.rhai", include_str!("templates/upgrade.rhai")),
    ("lb.rhai", include_str!("templates/lb.rhai")),
];

/// The samples laid out beside the files: where they come from in the demo
/// sandbox, and where they go.
const SAMPLES: &[(&str, &str)] = &[
    ("db", "db"),
    ("nodes", "nodes"),
    ("release", "sample-release"),
];

/// Write the files and samples into `dir`; `say` gets each line to show.
pub fn lay_out(dir: &Path, say: &mut dyn FnMut(&str)) -> Result<()> {
    let existing: Vec<String> = FILES
        .iter()
        .map(|(name, _)| *name)
        .chain(SAMPLES.iter().map(|(_, to)| *to))
        .filter(|name| dir.join(name).exists())
        .map(|name| format!("`{}`", dir.join(name).display()))
        .collect();
    match existing.len() {
        0 => {}
        1 => {
            return Err(Error::Config(format!(
                "{} already exists; uprun init never overwrites anything: choose an empty folder",
                existing[0]
            )))
        }
        _ => {
            return Err(Error::Config(format!(
                "{} already exist; uprun init never overwrites anything: choose an empty folder",
                existing.join(", ")
            )))
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::io("create folder", dir, e))?;
    for (name, text) in FILES {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
        say(&format!("wrote {}", path.display()));
    }
    lay_out_samples(dir)?;
    let d = dir.display();
    let lines = [
        format!("wrote {d}/db/app.sqlite, {d}/nodes/app01..app03 and {d}/sample-release: these are SAMPLES"),
        "(a SQLite database at 1.0.0, three local nodes running FastApp 1.0.0, a 2.0.0 release),".to_string(),
        "so that the procedure can be tried as it is. Next:".to_string(),
        format!("  uprun check {d}/upgrade.rhai"),
        format!("  uprun plan  {d}/upgrade.rhai --site {d}/site.toml --release {d}/sample-release"),
        format!("  uprun test  {d}/upgrade.rhai --site {d}/site.toml --release {d}/sample-release"),
        format!("  uprun run   {d}/upgrade.rhai --site {d}/site.toml --release {d}/sample-release --yes"),
        format!("For a real site, edit {d}/site.toml: `[application] name` (your instances' name), `[database]`"),
        "(your existing database: `path`, or `kind = \"mssql\"` and `connection`), `[service]` (your start,".to_string(),
        "stop and health commands) and every `[[node]]` (`address`, `root`); replace the commands in".to_string(),
        format!("{d}/lb.rhai with your load balancer's; pass your release folder to --release; then delete"),
        format!("the samples: {d}/db, {d}/nodes, {d}/sample-release."),
    ];
    say(&lines.join("\n"));
    Ok(())
}

/// The demo sandbox's database, nodes and release, moved beside the site
/// file (whose paths name them).
fn lay_out_samples(dir: &Path) -> Result<()> {
    let scratch = dir.join(".uprun-init-samples");
    let sandbox = crate::sandbox::lay_out(&scratch, false)?;
    for (from, to) in SAMPLES {
        let (from, to) = (sandbox.dir.join(from), dir.join(to));
        std::fs::rename(&from, &to).map_err(|e| Error::io("move sample into place", &to, e))?;
    }
    // Only the sandbox's marker and site file are left in it.
    std::fs::remove_dir_all(&scratch).map_err(|e| Error::io("remove", &scratch, e))
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
