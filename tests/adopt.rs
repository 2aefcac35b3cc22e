//! Adopting a site whose instances were installed without uprun: a node with
//! files but no manifest is never silently treated as empty, and `uprun adopt`
//! records what runs there after checking it on the node.

use crate::support::{uprun, Sandbox};

/// The demo sandbox as a site installed by hand: the instances are there,
/// running, but no node has a manifest.
fn hand_installed() -> Sandbox {
    let sb = Sandbox::new();
    for n in ["app01", "app02", "app03"] {
        std::fs::remove_file(sb.dir.join("nodes").join(n).join(".uprun-node.json")).expect("rm");
    }
    sb
}

fn adopt(sb: &Sandbox, extra: &[&str]) -> std::process::Output {
    uprun()
        .arg("adopt")
        .arg("--site")
        .arg(sb.site())
        .args(extra)
        .output()
        .expect("adopt")
}

#[test]
fn a_node_with_files_but_no_manifest_is_refused_not_ignored() {
    let sb = hand_installed();
    let before = sb.snapshot();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("no record of an instance") && err.contains("uprun adopt"),
        "{err}"
    );
    sb.assert_unchanged(&before, "a refused run changed something");
}

#[test]
fn adopt_checks_the_nodes_then_records_and_the_upgrade_runs() {
    let sb = hand_installed();
    // Without --yes: said, not written.
    let before = sb.snapshot();
    let out = adopt(&sb, &["--version", "1.0.0", "--folder", "FastApp-1.0.0"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(
        stdout.contains("would adopt `app02`: FastApp 1.0.0 in `FastApp-1.0.0`"),
        "{stdout}"
    );
    sb.assert_unchanged(&before, "adopt without --yes wrote something");
    // A folder that is not there is bad input, and nothing is written anywhere.
    let out = adopt(
        &sb,
        &["--version", "1.0.0", "--folder", "FastApp-0.9", "--yes"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    sb.assert_unchanged(&before, "a failed adopt wrote something");
    let out = adopt(
        &sb,
        &["--version", "1.0.0", "--folder", "../app01", "--yes"],
    );
    assert_eq!(out.status.code(), Some(2));
    // With --yes: recorded, and the stock procedure then upgrades the site.
    let out = adopt(
        &sb,
        &["--version", "1.0.0", "--folder", "FastApp-1.0.0", "--yes"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sb.manifest("app03")["current"]["folder"], "FastApp-1.0.0");
    // Never overwritten.
    let out = adopt(
        &sb,
        &["--version", "1.0.0", "--folder", "FastApp-1.0.0", "--yes"],
    );
    assert_eq!(out.status.code(), Some(3));
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sb.manifest("app02")["current"]["version"], "2.0.0");
    assert_eq!(
        sb.manifest("app02")["removed"][0]["folder"],
        "FastApp-1.0.0"
    );
}
