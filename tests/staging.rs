//! Payloads staged on every node before the downtime window, outside any
//! instance folder, checked by hash on the node and resumable; inside the
//! window a create renames the staged tree into its new folder.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::ssh::ssh_site;
use crate::support::sshd::Sshd;
use crate::support::{journal_entries, uprun, Sandbox};

const NODES: [&str; 3] = ["app01", "app02", "app03"];

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// The staging area of `node`.
fn staging(sb: &Sandbox, node: &str) -> PathBuf {
    sb.dir.join("nodes").join(node).join(".uprun-staging")
}

/// The one staged payload tree of `node`.
fn staged_tree(sb: &Sandbox, node: &str) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(staging(sb, node))
        .expect("staging area")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(dirs.len(), 1, "one staged release: {dirs:?}");
    dirs[0].join("payload")
}

/// Every file under `dir`, relative, with its contents.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).expect("under base");
                out.push((
                    rel.display().to_string(),
                    std::fs::read(&p).expect("read file"),
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Run `script` and return its output and the entries of the journal it wrote.
fn run_journaled(
    sb: &Sandbox,
    site: &Path,
    script: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Output, PathBuf, Vec<Value>) {
    let before: BTreeSet<PathBuf> = sb.journals().into_iter().collect();
    let mut cmd = uprun();
    cmd.arg("run")
        .arg(script)
        .arg("--site")
        .arg(site)
        .arg("--release")
        .arg(sb.release())
        .arg("--yes")
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run uprun");
    let journal = sb
        .journals()
        .into_iter()
        .find(|j| !before.contains(j))
        .or_else(|| sb.journals().into_iter().next())
        .expect("a journal");
    let entries = journal_entries(&journal);
    (out, journal, entries)
}

/// The results of the `stage_release` steps done in `entries`, by node.
fn stage_results(entries: &[Value]) -> Vec<(String, Value)> {
    entries
        .iter()
        .filter(|e| {
            e["type"] == "done"
                && e["key"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("stage_release:")
        })
        .map(|e| {
            (
                e["result"]["node"].as_str().unwrap_or("").to_string(),
                e["result"].clone(),
            )
        })
        .collect()
}

/// The stock procedure staged every node, each staging done before the first
/// removal started, renamed the staged trees into the new folders, and left
/// no staging area behind.
fn assert_staged_then_renamed(sb: &Sandbox, out: &std::process::Output, entries: &[Value]) {
    assert!(
        out.status.success(),
        "run failed:\n{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let first_removal = entries
        .iter()
        .position(|e| e["type"] == "started" && e["call"] == "remove_instance")
        .expect("a removal");
    let staged_at: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| {
            e["type"] == "done"
                && e["key"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("stage_release:")
        })
        .map(|(i, _)| i)
        .collect();
    assert_eq!(staged_at.len(), 3, "every node staged: {entries:#?}");
    assert!(
        staged_at.iter().all(|i| *i < first_removal),
        "staging done before the window opened: {entries:#?}"
    );
    for (node, r) in stage_results(entries) {
        assert_eq!(r["staged"], true, "{node}: {r}");
        assert_eq!(r["sent_files"], 3, "{node}: {r}");
    }
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.matches("verified and renamed into place").count(),
        // Each create's line and its line in the summary.
        6,
        "{stdout}"
    );
    let payload = files(&sb.release().join("payload"));
    for node in NODES {
        assert!(!staging(sb, node).exists(), "{node}: staging left behind");
        let folder = sb.dir.join("nodes").join(node).join("FastApp-2.0.0");
        let mut got = files(&folder);
        got.retain(|(n, _)| n != "uprun-instance.toml" && n != "service.state");
        assert_eq!(got, payload, "{node}: the instance holds the payload");
        assert_eq!(sb.manifest(node)["current"]["version"], "2.0.0");
    }
}

#[test]
fn the_stock_run_stages_every_node_before_the_window_then_renames() {
    let sb = Sandbox::new();
    let (out, _, entries) = run_journaled(&sb, &sb.site(), "in-place-upgrade", &[], &[]);
    assert_staged_then_renamed(&sb, &out, &entries);
}

#[test]
fn the_stock_run_over_ssh_stages_every_node_before_the_window_then_renames() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let site = ssh_site(&sb, &sshd, "", |_| sshd.address());
    let (out, _, entries) = run_journaled(&sb, &site, "in-place-upgrade", &[], &[]);
    assert_staged_then_renamed(&sb, &out, &entries);
}

/// The stock procedure with `tamper` run on app02 right after the stagings
/// were verified: app02's create does not take its staging (it copies the
/// release), the other nodes' stagings are renamed, every instance holds
/// the release and every staging goes.
fn tampered_inside_the_run(sb: &Sandbox, site: &Path, tamper: &str) {
    let stock = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/in-place-upgrade.rhai"),
    )
    .expect("stock procedure");
    let line = "stage_release(primary());\nfor_each_node(secondaries(), #{ parallel: 4 }, |node| stage_release(node));\n";
    assert!(stock.contains(line));
    let tamper = format!("{line}node_command(\"app02\", {tamper:?});\n");
    let script = sb.script("tampered.rhai", &stock.replace(line, &tamper));
    let (out, _, _) = run_journaled(sb, site, script.to_str().expect("path"), &[], &[]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let created = |node: &str| -> String {
        stdout
            .lines()
            .find(|l| {
                l.contains("] done:")
                    && l.contains("instance FastApp 2.0.0")
                    && l.contains(&format!("`{node}`"))
            })
            .unwrap_or_else(|| panic!("no create line for {node}: {stdout}"))
            .to_string()
    };
    assert!(created("app02").contains("bytes of payload"), "{stdout}");
    assert!(created("app03").contains("renamed into place"), "{stdout}");
    let payload = files(&sb.release().join("payload"));
    for node in NODES {
        let mut got = files(&sb.dir.join("nodes").join(node).join("FastApp-2.0.0"));
        got.retain(|(n, _)| n != "uprun-instance.toml" && n != "service.state");
        assert_eq!(got, payload, "{node}: the instance holds the release");
        assert!(
            !staging(sb, node).exists(),
            "{node}: the staging is removed"
        );
    }
}

/// Over SSH the create proves a staging unchanged by a fingerprint of what
/// `stat` says (not by hashing it again): a change that keeps every file's
/// size and modification time is still seen (its change time moved).
#[test]
fn over_ssh_a_staging_changed_in_place_keeping_size_and_mtime_is_not_taken() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let site = ssh_site(&sb, &sshd, "", |_| sshd.address());
    let (victim, content) = &files(&sb.release().join("payload"))[0];
    assert_ne!(content.first(), Some(&b'x'), "the change changes a byte");
    let tamper = format!(
        "for f in .uprun-staging/*/payload/{victim}; do m=$(stat -c %y \"$f\"); printf x | dd of=\"$f\" bs=1 count=1 conv=notrunc 2>/dev/null; touch -d \"$m\" \"$f\"; done"
    );
    tampered_inside_the_run(&sb, &site, &tamper);
}

#[test]
fn a_tampered_staging_is_found_and_only_what_differs_is_sent_again() {
    let sb = Sandbox::new();
    let stage = sb.script("stage.rhai", "stage_release(\"app02\");\n");
    let stage = stage.to_str().expect("path");
    let (out, _, entries) = run_journaled(&sb, &sb.site(), stage, &[], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(stage_results(&entries)[0].1["sent_files"], 3);
    let tree = staged_tree(&sb, "app02");
    let payload = files(&sb.release().join("payload"));
    assert_eq!(files(&tree), payload);

    // A changed file and a stray one: found by hash, the file sent again,
    // the stray removed, the rest kept.
    let (victim, _) = &payload[0];
    std::fs::write(tree.join(victim), b"tampered").expect("tamper");
    std::fs::write(tree.join("stray.dll"), b"stale").expect("stray");
    let (out, _, entries) = run_journaled(&sb, &sb.site(), stage, &[], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = &stage_results(&entries)[0].1;
    assert_eq!(
        (&r["sent_files"], &r["kept_files"]),
        (&Value::from(1), &Value::from(2)),
        "{r}"
    );
    assert_eq!(files(&staged_tree(&sb, "app02")), payload);

    // Tampered inside the run, after its staging was verified and before
    // the create.
    let (victim, _) = &payload[0];
    tampered_inside_the_run(
        &sb,
        &sb.site(),
        &format!("for f in .uprun-staging/*/payload/{victim}; do printf x >> \"$f\"; done"),
    );
}

#[test]
fn another_release_replaces_an_older_staging() {
    let sb = Sandbox::new();
    let stage = sb.script("stage.rhai", "stage_release(\"app02\");\n");
    let stage = stage.to_str().expect("path");
    let (out, _, _) = run_journaled(&sb, &sb.site(), stage, &[], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let old = staged_tree(&sb, "app02");
    std::fs::write(sb.release().join("payload/extra.txt"), b"new file").expect("payload");
    let (out, _, _) = run_journaled(&sb, &sb.site(), stage, &[], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let new = staged_tree(&sb, "app02");
    assert_ne!(old, new, "another payload, another staging folder");
    assert!(!old.exists(), "the older release's staging is removed");
    assert!(new.join("extra.txt").exists());
}

#[cfg(unix)]
#[test]
fn a_staging_killed_midway_resumes_without_sending_what_verifies() {
    use std::os::unix::process::ExitStatusExt;
    let sb = Sandbox::new();
    let stage = sb.script("stage.rhai", "stage_release(\"app02\");\n");
    let stage = stage.to_str().expect("path");
    // Killed inside the step, after the copy and before the check.
    let (out, journal, _) = run_journaled(
        &sb,
        &sb.site(),
        stage,
        &[],
        &[("UPRUN_FAILPOINT", "step1:inner")],
    );
    assert_eq!(out.status.signal(), Some(9), "{out:?}");
    // As a copy cut off midway leaves it: one file missing, one partial.
    let tree = staged_tree(&sb, "app02");
    let payload = files(&sb.release().join("payload"));
    std::fs::remove_file(tree.join(&payload[0].0)).expect("remove");
    std::fs::write(tree.join(&payload[1].0), b"par").expect("truncate");
    let id = journal
        .file_stem()
        .expect("id")
        .to_string_lossy()
        .into_owned();
    let out = sb
        .cmd("run", stage, &["--yes", "--resume", &id])
        .output()
        .expect("resume");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r = &stage_results(&journal_entries(&journal))[0].1;
    assert_eq!(
        (&r["sent_files"], &r["kept_files"], &r["staged"]),
        (&Value::from(2), &Value::from(1), &Value::from(true)),
        "{r}"
    );
    assert_eq!(files(&staged_tree(&sb, "app02")), payload);
}

#[test]
fn a_procedure_cannot_create_an_instance_in_the_staging_area() {
    let sb = Sandbox::new();
    let stage = sb.script("stage.rhai", "stage_release(\"app03\");\n");
    let (out, _, _) = run_journaled(&sb, &sb.site(), stage.to_str().expect("path"), &[], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for folder in [".uprun-staging", ".UPRUN-STAGING"] {
        let s = sb.script(
            "in-staging.rhai",
            &format!("create_instance(\"app03\", #{{ folder: \"{folder}\", start: false }});\n"),
        );
        let out = sb
            .cmd("run", s.to_str().expect("path"), &["--yes"])
            .output()
            .expect("run");
        assert_eq!(
            out.status.code(),
            Some(2),
            "{folder}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("`.uprun`"),
            "{}",
            text(&out.stderr)
        );
    }
    // Another name for it (a link into the staged tree) is refused as the
    // node resolves it, before anything changes.
    let tree = staged_tree(&sb, "app03");
    std::os::unix::fs::symlink(&tree, sb.dir.join("nodes/app03/FastApp-2.0.0-x")).expect("symlink");
    let before_link = sb.snapshot();
    let s = sb.script(
        "via-link.rhai",
        "remove_instance(\"app03\");\ncreate_instance(\"app03\", #{ folder: \"FastApp-2.0.0-x\", start: false });\n",
    );
    let out = sb
        .cmd("run", s.to_str().expect("path"), &["--yes"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("staging area"),
        "{}",
        text(&out.stderr)
    );
    sb.assert_unchanged(&before_link, "a refused create changed the site");
}
