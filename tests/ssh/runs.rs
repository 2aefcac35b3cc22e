//! Whole runs over SSH: the stock procedure, errors on one node, payload
//! links, inventories, JSON events and many nodes on one server.

use super::*;

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
    let text = std::fs::read_to_string(sb.only_journal()).expect("journal");
    assert!(
        text.lines()
            .any(|l| l.contains("\"type\":\"note\"") && l.contains("downtime window: ")),
        "{text}"
    );
}
