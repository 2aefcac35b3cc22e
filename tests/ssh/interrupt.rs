//! Ctrl-C twice kills the running command where it runs, over SSH and
//! locally.

use super::*;

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
