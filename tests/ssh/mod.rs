//! Nodes over SSH, against a real OpenSSH server on 127.0.0.1 started by the
//! test (see `support::sshd`). The three sandbox nodes become three `ssh://`
//! nodes of that one server, each with its own root folder.
//!
//! The tests are grouped by concern: whole runs, host keys, lost
//! connections and timeouts, and Ctrl-C.

mod connections;
mod host_keys;
mod interrupt;
mod runs;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::sshd::{self, Sshd};
use crate::support::{fifo, run_id, uprun, Sandbox};

/// Write `site-ssh.toml` beside the sandbox's site: the same site, with every
/// node at `address(node)` and its root as an absolute path, plus `extra`.
pub(crate) fn ssh_site(
    sb: &Sandbox,
    sshd: &Sshd,
    extra: &str,
    address: impl Fn(&str) -> String,
) -> PathBuf {
    let mut text = std::fs::read_to_string(sb.site()).expect("site.toml");
    for node in ["app01", "app02", "app03"] {
        let root = sb.dir.join("nodes").join(node);
        text = text.replace(
            &format!("address = \"local\"\nroot = \"nodes/{node}\""),
            &format!(
                "address = \"{}\"\nroot = {:?}",
                address(node),
                root.display().to_string()
            ),
        );
    }
    assert!(!text.contains("\"local\""), "every node is remote");
    text.push('\n');
    text.push_str(&sshd.ssh_section());
    text.push_str(extra);
    let path = sb.dir.join("site-ssh.toml");
    std::fs::write(&path, text).expect("write site");
    path
}

fn run(sb: &Sandbox, site: &Path, script: &str) -> std::process::Output {
    uprun()
        .arg("run")
        .arg(script)
        .arg("--site")
        .arg(site)
        .arg("--release")
        .arg(sb.release())
        .arg("--yes")
        .output()
        .expect("run uprun")
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
}

/// What a node looks like after a run, without times and run ids.
fn node_state(sb: &Sandbox, node: &str) -> (serde_json::Value, Vec<(String, u32, Vec<u8>)>) {
    let m = sb.manifest(node);
    let current = m["current"].clone();
    let summary = serde_json::json!({
        "current": [current["app_name"], current["version"], current["folder"]],
        "used_folders": m["used_folders"],
        "removed": m["removed"].as_array().map(|r| r.len()),
    });
    let mut files = Vec::new();
    let root = sb.dir.join("nodes").join(node);
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, u32, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).expect("prefix").display().to_string();
            if p.is_dir() {
                out.push((rel, mode(&p), Vec::new()));
                walk(&p, root, out);
            } else if rel.ends_with(".uprun-node.json") || rel.ends_with("uprun-instance.toml") {
                // Hold times and run ids: compared through the manifest summary.
                out.push((rel, 0, Vec::new()));
            } else {
                out.push((rel, mode(&p), std::fs::read(&p).expect("read")));
            }
        }
    }
    walk(&root, &root, &mut files);
    (summary, files)
}

/// Give the release's payload distinctive modes, to see them preserved, and
/// a file larger than one SFTP request.
fn set_payload_modes(sb: &Sandbox) {
    use std::os::unix::fs::PermissionsExt;
    let payload = sb.release().join("payload");
    let set = |rel: &str, m: u32| {
        std::fs::set_permissions(payload.join(rel), std::fs::Permissions::from_mode(m))
            .expect("chmod")
    };
    // Larger than one SFTP request: written in chunks, several in flight.
    let big: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(payload.join("bin/big.dat"), big).expect("big file");
    set("bin/fastapp.txt", 0o755);
    set("web/index.html", 0o640);
    set("subscribers", 0o750);
}

/// Refused before anything changes: exit non-zero, the node named, the
/// database and every node folder byte-identical, no backup taken.
fn refused_before_any_change(sb: &Sandbox, site: &Path, needles: &[&str]) -> String {
    let before = sb.snapshot();
    let out = run(sb, site, "in-place-upgrade");
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "run should fail; stdout: {}",
        text(&out.stdout)
    );
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
    assert_eq!(
        sb.snapshot(),
        before,
        "a refused connection changed something"
    );
    assert!(sb.backups().is_empty(), "a backup was taken");
    err
}

fn run_ids(sb: &Sandbox) -> Vec<String> {
    sb.journals().iter().map(|j| run_id(j)).collect()
}

/// The site with every node on `sshd` except app01, which stays on this
/// machine (it holds the test's gate while sshd restarts).
fn ssh_site_local_app01(sb: &Sandbox, sshd: &Sshd) -> PathBuf {
    let site = ssh_site(sb, sshd, "", |_| sshd.address());
    let root = sb.dir.join("nodes/app01").display().to_string();
    let text = std::fs::read_to_string(&site).expect("site");
    let remote = format!("address = \"{}\"\nroot = {root:?}", sshd.address());
    assert!(text.contains(&remote), "{text}");
    std::fs::write(
        &site,
        text.replace(&remote, &format!("address = \"local\"\nroot = {root:?}")),
    )
    .expect("site");
    site
}
