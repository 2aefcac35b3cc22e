//! Nodes that cannot be reached, stay silent, run too long or drop the
//! connection, and a run killed mid-step that resumes.

use super::*;

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
        let id = run_id(&remote.only_journal());
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
