//! Host keys: unknown and changed keys are refused before any change, a new
//! key is recorded by `run` only, and a reconnection checks the key again.

use super::*;

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
