//! Nodes over SSH, against a real OpenSSH server on 127.0.0.1 started by the
//! test (see `support::sshd`). The three sandbox nodes become three `ssh://`
//! nodes of that one server, each with its own root folder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::sshd::{self, Sshd};
use crate::support::{fifo, uprun, Sandbox};

/// Write `site-ssh.toml` beside the sandbox's site: the same site, with every
/// node at `address(node)` and its root as an absolute path, plus `extra`.
fn ssh_site(sb: &Sandbox, sshd: &Sshd, extra: &str, address: impl Fn(&str) -> String) -> PathBuf {
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

#[test]
fn stock_procedure_over_ssh_ends_like_a_local_run() {
    let Some(sshd) = Sshd::start() else { return };
    let local = Sandbox::new();
    set_payload_modes(&local);
    let out = local
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "local run failed: {}",
        text(&out.stderr)
    );

    let remote = Sandbox::new();
    set_payload_modes(&remote);
    let site = ssh_site(&remote, &sshd, "", |_| sshd.address());
    let out = run(&remote, &site, "in-place-upgrade");
    assert!(
        out.status.success(),
        "ssh run failed:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(remote.db_version(), "2.0.0");
    assert_eq!(local.db_version(), "2.0.0");
    for node in ["app01", "app02", "app03"] {
        let (l, r) = (node_state(&local, node), node_state(&remote, node));
        assert_eq!(r.0, l.0, "manifest of {node} differs from the local run");
        assert_eq!(r.1, l.1, "files of {node} differ from the local run");
        assert_eq!(r.0["current"][1], "2.0.0");
        let folder = remote.dir.join("nodes").join(node).join("FastApp-2.0.0");
        assert_eq!(
            mode(&folder.join("bin/fastapp.txt")),
            0o755,
            "mode kept over SFTP"
        );
        assert_eq!(
            mode(&folder.join("web/index.html")),
            0o640,
            "mode kept over SFTP"
        );
        assert_eq!(
            mode(&folder.join("subscribers")),
            0o750,
            "folder mode kept over SFTP"
        );
        let state = std::fs::read_to_string(folder.join("service.state")).expect("service ran");
        assert_eq!(state.trim(), format!("running FastApp 2.0.0 on {node}"));
    }
    // No temporary file is left behind by the atomic writes.
    for (path, _) in remote.snapshot() {
        assert!(
            !path.display().to_string().contains("uprun-tmp"),
            "left over: {}",
            path.display()
        );
    }
    // Runs again: already at the release, nothing to do.
    let again = run(&remote, &site, "in-place-upgrade");
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("nothing to do"),
        "{}",
        text(&again.stdout)
    );
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

#[test]
fn unknown_host_key_is_refused_before_any_change() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let empty = sb.dir.join("empty_known_hosts");
    std::fs::write(&empty, "").expect("known_hosts");
    let site = ssh_site(&sb, &sshd, "", |_| sshd.address());
    let site_text = std::fs::read_to_string(&site).expect("site").replace(
        &sshd.known_hosts.display().to_string(),
        &empty.display().to_string(),
    );
    std::fs::write(&site, site_text).expect("site");
    let err = refused_before_any_change(
        &sb,
        &site,
        &[
            "node `app01`",
            "host key not known",
            "accept_new_host_keys",
            "ssh-keyscan",
        ],
    );
    assert!(err.contains("SHA256:"), "fingerprint shown: {err}");
    assert_eq!(
        std::fs::read_to_string(&empty).expect("kh"),
        "",
        "known_hosts untouched"
    );
}

#[test]
fn changed_host_key_is_refused_even_when_new_keys_are_accepted() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let forged = sb.dir.join("forged_known_hosts");
    std::fs::write(
        &forged,
        format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.other_host_key()),
    )
    .expect("kh");
    let site = ssh_site(&sb, &sshd, "", |_| sshd.address());
    let site_text = std::fs::read_to_string(&site)
        .expect("site")
        .replace(
            &sshd.known_hosts.display().to_string(),
            &forged.display().to_string(),
        )
        .replace("[ssh]\n", "[ssh]\naccept_new_host_keys = true\n");
    std::fs::write(&site, site_text).expect("site");
    refused_before_any_change(
        &sb,
        &site,
        &[
            "node `app01`",
            "HOST KEY CHANGED",
            "line 1",
            "ssh-keygen -R",
        ],
    );
}

#[test]
fn new_host_key_is_recorded_by_run_not_by_plan() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let kh = sb.dir.join("fresh_known_hosts");
    let site = ssh_site(&sb, &sshd, "", |_| sshd.address());
    let site_text = std::fs::read_to_string(&site)
        .expect("site")
        .replace(
            &sshd.known_hosts.display().to_string(),
            &kh.display().to_string(),
        )
        .replace("[ssh]\n", "[ssh]\naccept_new_host_keys = true\n");
    std::fs::write(&site, site_text).expect("site");

    let plan = uprun()
        .args(["plan", "in-place-upgrade", "--site"])
        .arg(&site)
        .arg("--release")
        .arg(sb.release())
        .output()
        .expect("plan");
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    assert!(!kh.exists(), "plan must not write known_hosts");

    let out = run(&sb, &site, "in-place-upgrade");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let recorded = std::fs::read_to_string(&kh).expect("known_hosts written by run");
    assert_eq!(
        recorded.trim(),
        format!("[127.0.0.1]:{} {}", sshd.port, sshd.host_key)
    );
}

#[test]
fn unreachable_node_is_named_and_nothing_changes() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let closed = sshd::free_port();
    let site = ssh_site(&sb, &sshd, "", |node| {
        if node == "app02" {
            format!("ssh://{}@127.0.0.1:{closed}", sshd.user)
        } else {
            sshd.address()
        }
    });
    refused_before_any_change(
        &sb,
        &site,
        &[
            "node `app02`",
            &format!("127.0.0.1:{closed}"),
            "cannot reach the node",
        ],
    );
}

#[test]
fn continue_on_error_finishes_the_other_nodes_and_reports_the_failed_one() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let site = ssh_site(&sb, &sshd, "", |_| sshd.address());
    // A drain command fails on app02, on the node, with a message on stderr.
    let script = sb.script(
        "drain-secondaries.rhai",
        r#"
let results = for_each_node(nodes(), #{ parallel: 3, continue_on_error: true }, |n| {
    if n.role == "primary" { return "kept"; }
    node_command(n, "if [ " + n.name + " = app02 ]; then echo 'service will not stop' >&2; exit 7; fi; touch drained", #{ cwd: "FastApp-1.0.0" });
    "drained"
});
for r in results {
    if r.ok { log(`RESULT ${r.node} ok ${r.value}`); } else { log(`RESULT ${r.node} failed ${r.kind}: ${r.error}`); }
}
"#,
    );
    let out = run(&sb, &site, script.to_str().expect("path"));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("RESULT app01 ok kept"), "{stdout}");
    assert!(stdout.contains("RESULT app03 ok drained"), "{stdout}");
    let failed = stdout
        .lines()
        .find(|l| l.contains("RESULT app02 failed"))
        .unwrap_or_else(|| panic!("app02 not reported as failed: {stdout}"));
    assert!(
        failed.contains("service will not stop") && failed.contains("exit 7"),
        "{failed}"
    );
    // Each node's own lines are prefixed with its name.
    assert!(
        stdout.lines().any(|l| l.starts_with("[app03] ")),
        "{stdout}"
    );
    // The real state: app03 drained, app02 not.
    let drained = |n: &str| {
        sb.dir
            .join("nodes")
            .join(n)
            .join("FastApp-1.0.0/drained")
            .exists()
    };
    assert!(drained("app03") && !drained("app02"));
}

#[test]
fn payload_link_escaping_the_instance_folder_is_refused() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let outside = tempfile::tempdir().expect("outside");
    std::os::unix::fs::symlink(outside.path(), sb.release().join("payload/web/evil"))
        .expect("symlink");
    let site = ssh_site(&sb, &sshd, "", |_| sshd.address());
    let out = run(&sb, &site, "in-place-upgrade");
    let err = text(&out.stderr);
    assert!(!out.status.success(), "must fail");
    assert!(
        err.contains("node `app01`") && err.contains("web/evil") && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(outside.path()).expect("outside").count(),
        0,
        "something was written outside the instance folder"
    );
    // Refused before anything was copied into the new folder.
    let folder = sb.dir.join("nodes/app01/FastApp-2.0.0");
    let copied = std::fs::read_dir(&folder).map(|d| d.count()).unwrap_or(0);
    assert_eq!(copied, 0, "payload partly copied into {}", folder.display());
    assert_eq!(sb.db_version(), "1.0.0", "database not upgraded");
}

#[test]
fn nodes_from_an_ansible_inventory_over_ssh() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let nodes = sb.dir.join("nodes");
    std::fs::write(
        sb.dir.join("inventory.yml"),
        format!(
            "all:\n  vars:\n    ansible_host: 127.0.0.1\n    ansible_port: {port}\n  children:\n    primary:\n      hosts:\n        app01:\n          uprun_root: {n}/app01\n    secondaries:\n      hosts:\n        app02: {{ uprun_root: {n}/app02 }}\n        app03: {{ uprun_root: {n}/app03 }}\n",
            port = sshd.port,
            n = nodes.display()
        ),
    )
    .expect("inventory");
    let base = std::fs::read_to_string(sb.site()).expect("site");
    let head = &base[..base.find("[[node]]").expect("nodes")];
    let site = sb.dir.join("site-inventory.toml");
    std::fs::write(
        &site,
        format!(
            "{head}[inventory]\nfile = \"inventory.yml\"\nuser = \"{}\"\n\n{}",
            sshd.user,
            sshd.ssh_section()
        ),
    )
    .expect("site");
    let out = run(&sb, &site, "in-place-upgrade");
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    for node in ["app01", "app02", "app03"] {
        assert_eq!(sb.manifest(node)["current"]["version"], "2.0.0");
    }
}

#[test]
fn silent_node_times_out_with_its_name() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    // Accepts TCP connections (the kernel does) but never speaks SSH.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let site = ssh_site(&sb, &sshd, "", |node| {
        if node == "app03" {
            format!("ssh://{}@127.0.0.1:{port}", sshd.user)
        } else {
            sshd.address()
        }
    });
    let site_text = std::fs::read_to_string(&site)
        .expect("site")
        .replace("connect_timeout_secs = 5", "connect_timeout_secs = 1");
    std::fs::write(&site, site_text).expect("site");
    let started = std::time::Instant::now();
    refused_before_any_change(&sb, &site, &["node `app03`", "did not finish within 1 s"]);
    assert!(started.elapsed().as_secs() < 10, "timeout not applied");
}

#[test]
fn slow_service_command_is_stopped_at_its_timeout() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let site = ssh_site(&sb, &sshd, "", |_| sshd.address());
    let site_text = std::fs::read_to_string(&site)
        .expect("site")
        .replace(
            "stop = \"rm -f service.state\"",
            "stop = \"sleep 30; rm -f service.state\"",
        )
        .replace("timeout_secs = 30", "timeout_secs = 1");
    std::fs::write(&site, site_text).expect("site");
    let started = std::time::Instant::now();
    let out = run(&sb, &site, "in-place-upgrade");
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("node `app02`") && err.contains("did not finish within 1 s"),
        "{err}"
    );
    assert!(started.elapsed().as_secs() < 10, "timeout not applied");
    // The stop command never completed: the instance is still registered.
    assert_eq!(sb.manifest("app02")["current"]["version"], "1.0.0");
}

#[test]
fn node_command_over_ssh_returns_output_and_status() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let site = ssh_site(&sb, &sshd, "", |_| sshd.address());
    let script = sb.script(
        "command.rhai",
        r#"
let r = node_command("app02", "pwd; echo oops >&2; exit 3", #{ allow_failure: true, changes: false });
log(`STATUS ${r.status}`);
log(`STDOUT ${r.stdout}`);
log(`STDERR [${r.stderr}]`);
"#,
    );
    let out = run(&sb, &site, script.to_str().expect("path"));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    let root = sb.dir.join("nodes/app02");
    assert!(stdout.contains("STATUS 3"), "{stdout}");
    assert!(
        stdout.contains(&format!("STDOUT {}", root.display())),
        "{stdout}"
    );
    // The shell's pid line uprun uses for timeouts is not part of the output
    // (node output is printed with its line breaks escaped).
    assert!(stdout.contains("STDERR [oops\\n]"), "{stdout}");
}

#[test]
fn json_events_of_parallel_nodes_name_their_node() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let site = ssh_site(&sb, &sshd, "", |_| sshd.address());
    let script = sb.script(
        "touch.rhai",
        "for_each_node(nodes(), #{ parallel: 3 }, |n| node_command(n, \"touch touched\"));\n",
    );
    let out = uprun()
        .arg("run")
        .arg(&script)
        .arg("--site")
        .arg(&site)
        .arg("--release")
        .arg(sb.release())
        .args(["--yes", "--json"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = crate::support::events(&out.stdout);
    for node in ["app01", "app02", "app03"] {
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "node_finished" && e["node"] == node && e["ok"] == true),
            "no node_finished for {node}: {events:?}"
        );
        assert!(
            events
                .iter()
                .any(|e| e["event"] == "step_done" && e["node"] == node),
            "no step_done tagged {node}: {events:?}"
        );
        assert!(sb.dir.join("nodes").join(node).join("touched").is_file());
    }
}

#[test]
fn a_run_killed_mid_step_over_ssh_resumes_to_the_local_end_state() {
    use std::os::unix::process::ExitStatusExt;
    let Some(sshd) = Sshd::start() else { return };
    let local = Sandbox::new();
    let out = local
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "local run failed: {}",
        text(&out.stderr)
    );

    // Inside the primary's create (payload copied over SFTP, not yet
    // registered), and after a secondary's create (done, not yet journaled).
    for point in ["step8:inner", "step10:after"] {
        let remote = Sandbox::new();
        let site = ssh_site(&remote, &sshd, "", |_| sshd.address());
        let killed = uprun()
            .arg("run")
            .arg("in-place-upgrade")
            .arg("--site")
            .arg(&site)
            .arg("--release")
            .arg(remote.release())
            .arg("--yes")
            .env("UPRUN_FAILPOINT", point)
            .output()
            .expect("run");
        assert_eq!(
            killed.status.signal(),
            Some(9),
            "{point}: not killed: {}",
            text(&killed.stderr)
        );
        let runs = std::fs::read_dir(remote.dir.join(".uprun/runs"))
            .expect("journal")
            .count();
        assert_eq!(runs, 1);
        let id = std::fs::read_dir(remote.dir.join(".uprun/runs"))
            .expect("journal")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .file_stem()
                    .expect("stem")
                    .to_string_lossy()
                    .into_owned()
            })
            .next()
            .expect("run id");
        let out = uprun()
            .arg("run")
            .arg("in-place-upgrade")
            .arg("--site")
            .arg(&site)
            .arg("--release")
            .arg(remote.release())
            .args(["--yes", "--resume", &id])
            .output()
            .expect("resume");
        assert!(
            out.status.success(),
            "{point}: resume failed: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        assert_eq!(remote.db_version(), "2.0.0");
        for node in ["app01", "app02", "app03"] {
            let (l, r) = (node_state(&local, node), node_state(&remote, node));
            assert_eq!(
                r.0, l.0,
                "{point}: manifest of {node} differs from the local run"
            );
            assert_eq!(
                r.1, l.1,
                "{point}: files of {node} differ from the local run"
            );
        }
    }
}

fn run_ids(sb: &Sandbox) -> Vec<String> {
    std::fs::read_dir(sb.dir.join(".uprun/runs"))
        .expect("journal folder")
        .map(|e| {
            e.expect("entry")
                .path()
                .file_stem()
                .expect("stem")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
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

#[test]
fn a_dropped_connection_is_reopened_for_the_next_operation() {
    let Some(mut sshd) = Sshd::start() else {
        return;
    };
    let sb = Sandbox::new();
    let site = ssh_site_local_app01(&sb, &sshd);
    let ready = fifo::make(&sb.dir, "ready.fifo");
    let gate = fifo::OpenOnDrop(fifo::make(&sb.dir, "gate.fifo"));
    // app02 and app03 are connected (and used) before the gate; sshd is
    // killed with their sessions and started again while app01 waits; then a
    // command on app02 (a new channel) and a removal on app03 (SFTP first).
    let script = sb.script(
        "reconnect.rhai",
        &format!(
            "backup_db();\n\
             node_command(\"app02\", \"echo one > one.txt\");\n\
             node_command(\"app01\", \"echo up > '{}'; cat '{}' > /dev/null\");\n\
             node_command(\"app02\", \"echo two > two.txt\");\n\
             remove_instance(\"app03\");\n\
             remove_instance(\"app02\");\n\
             remove_instance(\"app01\");\n\
             create_instance(\"app01\", #{{ start: false }});\n\
             upgrade_db();\n\
             start_instance(\"app01\");\n\
             create_instance(\"app02\");\n\
             create_instance(\"app03\");\n",
            ready.display(),
            gate.0.display()
        ),
    );
    let mut run = sb.spawn_run(&site, script.to_str().expect("path"), &[]);
    fifo::wait_ready(&ready, &mut run, "app01's gate");
    assert_eq!(
        std::fs::read_to_string(sb.dir.join("nodes/app02/one.txt")).expect("one.txt"),
        "one\n"
    );
    sshd.restart();
    gate.open();
    let out = fifo::finish(run);
    assert!(
        out.status.success(),
        "the run did not survive the restart:\nstdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(sb.dir.join("nodes/app02/two.txt")).expect("two.txt"),
        "two\n"
    );
    let removed = &sb.manifest("app03")["removed"];
    assert_eq!(removed[0]["version"], "1.0.0", "app03 removed");
    assert_eq!(sb.manifest("app03")["current"]["version"], "2.0.0");
}

#[test]
fn a_reconnection_checks_the_host_key_again() {
    let Some(mut sshd) = Sshd::start() else {
        return;
    };
    let sb = Sandbox::new();
    let site = ssh_site_local_app01(&sb, &sshd);
    let ready = fifo::make(&sb.dir, "ready.fifo");
    let gate = fifo::OpenOnDrop(fifo::make(&sb.dir, "gate.fifo"));
    let script = sb.script(
        "reconnect.rhai",
        &format!(
            "node_command(\"app02\", \"echo one > one.txt\");\n\
             node_command(\"app01\", \"echo up > '{}'; cat '{}' > /dev/null\");\n\
             node_command(\"app02\", \"echo two > two.txt\");\n",
            ready.display(),
            gate.0.display()
        ),
    );
    let mut run = sb.spawn_run(&site, script.to_str().expect("path"), &[]);
    fifo::wait_ready(&ready, &mut run, "app01's gate");
    sshd.restart_as_another_host();
    gate.open();
    let out = fifo::finish(run);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("node `app02`")
            && err.contains("could not be reopened")
            && err.contains("HOST KEY CHANGED"),
        "{err}"
    );
    assert!(!sb.dir.join("nodes/app02/two.txt").exists());
}

#[test]
fn a_command_cut_off_by_a_dropped_connection_is_reported_not_run_again() {
    let Some(mut sshd) = Sshd::start() else {
        return;
    };
    let sb = Sandbox::new();
    let site = ssh_site(&sb, &sshd, "", |_| sshd.address());
    let ready = fifo::make(&sb.dir, "ready.fifo");
    let gate = fifo::OpenOnDrop(fifo::make(&sb.dir, "gate.fifo"));
    // Counts its runs; only the first waits at the gate.
    let command = format!(
        "echo ran >> runs.txt; if [ $(wc -l < runs.txt) -eq 1 ]; then echo up > '{}'; cat '{}' > /dev/null; fi",
        ready.display(),
        gate.0.display()
    );
    let script = sb.script(
        "cut.rhai",
        &format!(
            "node_command(\"app02\", {command:?});\nnode_command(\"app02\", \"echo after > after.txt\");\n"
        ),
    );
    let mut run = sb.spawn_run(&site, script.to_str().expect("path"), &[]);
    fifo::wait_ready(&ready, &mut run, "the command on app02");
    // Kills the command's session (and the command) under it.
    sshd.restart();
    let out = fifo::finish(run);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}\n{}", text(&out.stdout));
    assert!(
        err.contains("node `app02`")
            && err.contains("echo ran >> runs.txt")
            && err.contains("does not run it again on its own"),
        "{err}"
    );
    let runs = sb.dir.join("nodes/app02/runs.txt");
    assert_eq!(
        std::fs::read_to_string(&runs).expect("runs.txt"),
        "ran\n",
        "run again"
    );
    assert!(!sb.dir.join("nodes/app02/after.txt").exists());
    // Resuming (the operator's decision) runs the step in flight again.
    let ids = run_ids(&sb);
    assert_eq!(ids.len(), 1);
    let out = uprun()
        .arg("run")
        .arg(&script)
        .arg("--site")
        .arg(&site)
        .arg("--release")
        .arg(sb.release())
        .args(["--yes", "--resume", &ids[0]])
        .output()
        .expect("resume");
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(&runs).expect("runs.txt"),
        "ran\nran\n"
    );
    assert!(sb.dir.join("nodes/app02/after.txt").is_file());
}

/// Run a command on app02 that blocks, press Ctrl-C twice (the second once
/// the first is acknowledged), and check the command was killed where it ran.
fn ctrl_c_twice_kills_the_running_command(sb: &Sandbox, site: &Path) {
    use std::io::BufRead;
    let ready = fifo::make(&sb.dir, "ready.fifo");
    let gate = fifo::OpenOnDrop(fifo::make(&sb.dir, "gate.fifo"));
    // `exec`: the blocked process is the shell itself, whose pid it records.
    let script = sb.script(
        "blocked.rhai",
        &format!(
            "node_command(\"app02\", \"echo $$ > cmd.pid; echo up > '{}'; exec cat '{}' > /dev/null\");\nnode_command(\"app02\", \"echo after > after.txt\");\n",
            ready.display(),
            gate.0.display()
        ),
    );
    let mut run = sb.spawn_run(site, script.to_str().expect("path"), &[]);
    let pid = run.id() as i32;
    let stderr = run.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            all.push_str(&line);
            all.push('\n');
            let _ = tx.send(line);
        }
        all
    });
    fifo::wait_ready(&ready, &mut run, "the command on app02");
    let sigint = || {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
    };
    sigint();
    // Two signals sent at once may merge into one: wait for the first to be
    // acknowledged before the second.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("stopping after the current step") => break,
            Ok(_) => {}
            Err(_) => {
                let _ = run.kill();
                panic!("the first Ctrl-C was not acknowledged");
            }
        }
    }
    sigint();
    let out = fifo::finish(run);
    let err = reader.join().expect("stderr reader");
    assert_eq!(out.status.code(), Some(130), "{err}\n{}", text(&out.stdout));
    assert!(
        err.contains("interrupted: `echo $$ > cmd.pid")
            && err.contains("node `app02`")
            && err.contains("aborted by the operator"),
        "{err}"
    );
    assert!(
        text(&out.stdout).contains("--resume"),
        "{}",
        text(&out.stdout)
    );
    let cmd_pid: u32 = std::fs::read_to_string(sb.dir.join("nodes/app02/cmd.pid"))
        .expect("cmd.pid")
        .trim()
        .parse()
        .expect("pid");
    // uprun waited for the kill to be reported, so the process is normally
    // gone already; SIGKILL still takes effect asynchronously and it is not
    // our child (nothing to wait on), hence a short bounded yielding poll.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sshd::alive(cmd_pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the command (pid {cmd_pid}) still runs after the abort: {err}"
        );
        std::thread::yield_now();
    }
    assert!(!sb.dir.join("nodes/app02/after.txt").exists());
    drop(gate);
}

#[test]
fn ctrl_c_twice_kills_a_command_running_over_ssh() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let site = ssh_site(&sb, &sshd, "", |_| sshd.address());
    ctrl_c_twice_kills_the_running_command(&sb, &site);
    assert!(
        text(
            &std::fs::read(
                sb.dir
                    .join(".uprun/runs")
                    .join(format!("{}.jsonl", run_ids(&sb)[0]))
            )
            .expect("journal")
        )
        .contains("\"interrupted\""),
        "journal outcome"
    );
}

/// The same on a local node (no sshd needed): the local transport honours
/// the abort too.
#[test]
fn ctrl_c_twice_kills_a_local_command() {
    let sb = Sandbox::new();
    ctrl_c_twice_kills_the_running_command(&sb, &sb.site());
}

#[cfg(unix)]
#[test]
fn a_link_to_the_old_folder_is_refused_over_ssh() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let site = ssh_site(&sb, &sshd, "", |_| sshd.address());
    // The old folder emptied: only its identity (SFTP realpath) tells.
    let old = sb.dir.join("nodes/app01/FastApp-1.0.0");
    std::fs::remove_dir_all(&old).expect("empty");
    std::fs::create_dir(&old).expect("mkdir");
    std::os::unix::fs::symlink("FastApp-1.0.0", sb.dir.join("nodes/app01/fresh")).expect("symlink");
    let script = sb.script(
        "custom.rhai",
        "for n in secondaries() { remove_instance(n); }\nremove_instance(primary());\ncreate_instance(primary(), #{ folder: \"fresh\" });\n",
    );
    let before = sb.snapshot();
    let out = run(&sb, &site, script.to_str().expect("path"));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("folder `fresh`") && err.contains("is `FastApp-1.0.0`"),
        "{err}"
    );
    assert_eq!(sb.snapshot(), before, "a refused run changed something");
}

/// More nodes than `[ssh] max_parallel_handshakes` and than sshd's default
/// `MaxStartups` start (10), all behind one server: every node connects
/// (handshakes in bounded batches), nothing is dropped or refused by the
/// server, and each node runs its command over its own connection.
#[test]
fn more_nodes_than_sshd_max_startups_connect_without_a_drop() {
    const EXTRA: usize = 37;
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let mut extra = String::new();
    for i in 0..EXTRA {
        let root = sb.dir.join("nodes").join(format!("extra{i:02}"));
        std::fs::create_dir_all(&root).expect("node root");
        extra.push_str(&format!(
            "\n[[node]]\nname = \"extra{i:02}\"\nrole = \"secondary\"\naddress = \"{}\"\nroot = {:?}\n",
            sshd.address(),
            root.display().to_string()
        ));
    }
    let site = ssh_site(&sb, &sshd, &extra, |_| sshd.address());
    let script = sb.script(
        "touch.rhai",
        "for_each_node(nodes(), #{ parallel: 40 }, |n| node_command(n, \"touch touched\"));\n",
    );
    let out = run(&sb, &site, script.to_str().expect("path"));
    let log = sshd.log();
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}\nsshd log:\n{log}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let mut roots: Vec<PathBuf> = ["app01", "app02", "app03"]
        .iter()
        .map(|n| sb.dir.join("nodes").join(n))
        .collect();
    roots.extend((0..EXTRA).map(|i| sb.dir.join("nodes").join(format!("extra{i:02}"))));
    for root in &roots {
        assert!(root.join("touched").is_file(), "{}", root.display());
    }
    assert!(
        !log.contains("drop connection") && !log.contains("MaxStartups"),
        "sshd dropped connections:\n{log}"
    );
    // Closed cleanly: sshd saw each client say goodbye, none reset.
    assert!(!log.contains("reset by"), "{log}");
    // sshd's session processes log the disconnect after uprun has exited,
    // so the log may not list all of them yet: at least one shows it is sent.
    assert!(
        log.contains("Received disconnect from"),
        "connections closed with a disconnect message:\n{log}"
    );
    assert_eq!(
        log.matches("Accepted publickey").count(),
        roots.len(),
        "one connection per node for the whole run (plan pass included):\n{log}"
    );
}

/// `--json` says where the time before the first change went (one `phase`
/// event per phase of the start, the planning pass and the run), and the run
/// summary and the journal give the downtime window and its parts.
#[test]
fn json_phase_events_and_the_downtime_window() {
    let Some(sshd) = Sshd::start() else { return };
    let sb = Sandbox::new();
    let site = ssh_site(&sb, &sshd, "", |_| sshd.address());
    let out = uprun()
        .arg("run")
        .arg("in-place-upgrade")
        .arg("--site")
        .arg(&site)
        .arg("--release")
        .arg(sb.release())
        .args(["--yes", "--json"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = crate::support::events(&out.stdout);
    let phases: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["event"] == "phase")
        .map(|e| {
            assert!(e["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{e}");
            assert!(e["at_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{e}");
            (
                e["pass"].as_str().unwrap_or("").to_string(),
                e["phase"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for (pass, phase) in [
        ("start", "load"),
        ("start", "digest"),
        ("start", "lock"),
        ("start", "recover"),
        ("plan", "database"),
        ("plan", "connect"),
        ("plan", "prefetch"),
        ("plan", "compile"),
        ("plan", "plan"),
        ("run", "journal"),
        ("run", "connect"),
    ] {
        assert!(
            phases.contains(&(pass.to_string(), phase.to_string())),
            "no {pass}/{phase} phase: {phases:?}"
        );
    }
    // Every phase is reported before the first change.
    let first_change = events
        .iter()
        .position(|e| e["event"] == "step_started" && e["kind"] == "remove_instance")
        .expect("a removal");
    let last_phase = events
        .iter()
        .rposition(|e| e["event"] == "phase")
        .expect("phases");
    assert!(last_phase < first_change);
    let summary = events
        .iter()
        .find(|e| e["event"] == "run_finished")
        .and_then(|e| e["summary"].as_array())
        .expect("summary");
    let window = summary
        .iter()
        .filter_map(|l| l.as_str())
        .find(|l| l.starts_with("downtime window: "))
        .unwrap_or_else(|| panic!("no downtime window in {summary:?}"));
    for part in [
        "removals",
        "creates",
        "database upgrade",
        "last node healthy",
    ] {
        assert!(window.contains(part), "{window}");
    }
    let journal = std::fs::read_dir(sb.dir.join(".uprun/runs"))
        .expect("runs")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .expect("journal");
    let text = std::fs::read_to_string(journal).expect("journal");
    assert!(
        text.lines()
            .any(|l| l.contains("\"type\":\"note\"") && l.contains("downtime window: ")),
        "{text}"
    );
}
