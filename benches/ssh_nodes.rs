//! SSH nodes, against a real OpenSSH server on 127.0.0.1 (as in the tests):
//!
//! 1. The remove + create cycle on 5 nodes (secondaries removed first, the
//!    primary's instance created, then the secondaries'), as a uprun procedure
//!    and as the same steps in an Ansible playbook (forks=5, pipelining on),
//!    measured in the same run; the ratio is what counts.
//! 2. `for_each_node` with `parallel = N` over N nodes, each doing 200 ms of
//!    remote work (`node_command(n, "sleep 0.2")`), against one node.
//!
//!     PATH=/path/to/ansible/bin:$PATH cargo bench --bench ssh_nodes
//!
//! Skips with a message when sshd (openssh-server) is missing; skips part 1's
//! Ansible side when `ansible-playbook` is not on PATH.

#[path = "../tests/support/sshd.rs"]
#[allow(dead_code)]
mod sshd;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sshd::Sshd;

const UPRUN: &str = env!("CARGO_BIN_EXE_uprun");

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("not NaN"));
    v[v.len() / 2]
}

/// A demo sandbox with `nodes` nodes (app01 primary, the rest secondaries),
/// all at `sshd`, each with a FastApp 1.0.0 instance. Returns the site file.
fn lay_out(dir: &Path, nodes: usize, sshd: &Sshd, stop: &str) -> PathBuf {
    let sb = dir.join("sb");
    let st = Command::new(UPRUN)
        .args(["demo", "--setup-only", "--dir"])
        .arg(&sb)
        .stdout(Stdio::null())
        .status()
        .expect("uprun demo");
    assert!(st.success(), "uprun demo failed");
    for i in 4..=nodes {
        let name = format!("app{i:02}");
        copy_node(
            &sb.join("nodes/app02"),
            &sb.join("nodes").join(&name),
            &name,
        );
    }
    let demo = std::fs::read_to_string(sb.join("site.toml")).expect("site");
    let head = &demo[..demo.find("[[node]]").expect("nodes")];
    let mut site = head.replace(
        "stop = \"rm -f service.state\"",
        &format!("stop = {stop:?}"),
    );
    for i in 1..=nodes {
        let name = format!("app{i:02}");
        site.push_str(&format!(
            "[[node]]\nname = \"{name}\"\nrole = \"{}\"\naddress = \"{}\"\nroot = {:?}\n\n",
            if i == 1 { "primary" } else { "secondary" },
            sshd.address(),
            sb.join("nodes").join(&name).display().to_string()
        ));
    }
    site.push_str(&sshd.ssh_section());
    let path = sb.join("site-ssh.toml");
    std::fs::write(&path, site).expect("write site");
    path
}

fn copy_node(from: &Path, to: &Path, name: &str) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read") {
        let e = e.expect("entry");
        let target = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_node(&e.path(), &target, name);
        } else {
            let text = std::fs::read_to_string(e.path()).expect("text");
            std::fs::write(&target, text.replace("app02", name)).expect("write");
        }
    }
}

fn uprun_run(site: &Path, release: &Path, script: &Path) -> String {
    let out = Command::new(UPRUN)
        .arg("run")
        .arg(script)
        .arg("--site")
        .arg(site)
        .arg("--release")
        .arg(release)
        .arg("--yes")
        .output()
        .expect("uprun run");
    assert!(
        out.status.success(),
        "uprun run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const CYCLE: &str = r#"
for_each_node(secondaries(), #{ parallel: 5 }, |n| remove_instance(n));
remove_instance(primary());
create_instance(primary());
for_each_node(secondaries(), #{ parallel: 5 }, |n| create_instance(n));
"#;

const REMOVE_TASKS: &str = r#"- name: stop the service
  command: rm -f service.state
  args:
    chdir: "{{ uprun_root }}/FastApp-1.0.0"
- name: unregister the instance
  copy:
    dest: "{{ uprun_root }}/.uprun-node.json"
    content: '{"current": null, "removed": [], "used_folders": ["FastApp-1.0.0"]}'
"#;

const CREATE_TASKS: &str = r#"- name: record the new folder as used
  copy:
    dest: "{{ uprun_root }}/.uprun-node.json"
    content: '{"current": null, "removed": [], "used_folders": ["FastApp-1.0.0", "FastApp-2.0.0"]}'
- name: create the instance folder
  file:
    path: "{{ uprun_root }}/FastApp-2.0.0"
    state: directory
- name: copy the payload
  copy:
    src: "{{ payload }}/"
    dest: "{{ uprun_root }}/FastApp-2.0.0/"
    mode: preserve
- name: write the instance config
  copy:
    dest: "{{ uprun_root }}/FastApp-2.0.0/uprun-instance.toml"
    content: "app_name = \"FastApp\"\nversion = \"2.0.0\"\nnode = \"{{ inventory_hostname }}\"\n"
- name: register the instance
  copy:
    dest: "{{ uprun_root }}/.uprun-node.json"
    content: '{"current": {"node": "{{ inventory_hostname }}", "app_name": "FastApp", "version": "2.0.0", "folder": "FastApp-2.0.0"}, "removed": [], "used_folders": ["FastApp-1.0.0", "FastApp-2.0.0"]}'
- name: start the service
  shell: echo "running FastApp 2.0.0 on {{ inventory_hostname }}" > service.state
  args:
    chdir: "{{ uprun_root }}/FastApp-2.0.0"
- name: check its health
  command: grep -q running service.state
  args:
    chdir: "{{ uprun_root }}/FastApp-2.0.0"
"#;

/// Inventory, ansible.cfg and playbook for the same cycle; returns the
/// playbook and the config file.
fn ansible_files(dir: &Path, site_dir: &Path, nodes: usize, sshd: &Sshd) -> (PathBuf, PathBuf) {
    let mut inv = format!(
        "all:\n  vars:\n    ansible_host: 127.0.0.1\n    ansible_port: {}\n    ansible_user: {}\n    ansible_python_interpreter: /usr/bin/python3\n    payload: {}\n  children:\n    primary:\n      hosts:\n        app01: {{ uprun_root: {} }}\n    secondaries:\n      hosts:\n",
        sshd.port,
        sshd.user,
        site_dir.join("release/payload").display(),
        site_dir.join("nodes/app01").display()
    );
    for i in 2..=nodes {
        inv.push_str(&format!(
            "        app{i:02}: {{ uprun_root: {} }}\n",
            site_dir.join(format!("nodes/app{i:02}")).display()
        ));
    }
    std::fs::write(dir.join("inventory.yml"), inv).expect("inventory");
    std::fs::write(dir.join("remove.yml"), REMOVE_TASKS).expect("tasks");
    std::fs::write(dir.join("create.yml"), CREATE_TASKS).expect("tasks");
    let play = |name: &str, hosts: &str, tasks: &str| {
        format!("- name: {name}\n  hosts: {hosts}\n  gather_facts: false\n  tasks:\n    - import_tasks: {tasks}\n")
    };
    let playbook = [
        play(
            "remove the secondaries' instances",
            "secondaries",
            "remove.yml",
        ),
        play("remove the primary's instance", "primary", "remove.yml"),
        play("create the primary's instance", "primary", "create.yml"),
        play(
            "create the secondaries' instances",
            "secondaries",
            "create.yml",
        ),
    ]
    .join("");
    std::fs::write(dir.join("cycle.yml"), playbook).expect("playbook");
    let cfg = dir.join("ansible.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[defaults]\nforks = 5\ninventory = {}\nhost_key_checking = True\ninterpreter_python = /usr/bin/python3\n\n[ssh_connection]\npipelining = True\nssh_args = -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={} -o IdentitiesOnly=yes -i {}\n",
            dir.join("inventory.yml").display(),
            sshd.known_hosts.display(),
            sshd.client_key.display()
        ),
    )
    .expect("ansible.cfg");
    (dir.join("cycle.yml"), cfg)
}

fn ansible_playbook() -> Option<String> {
    let exe = std::env::var("ANSIBLE_PLAYBOOK").unwrap_or_else(|_| "ansible-playbook".into());
    Command::new(&exe)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()
        .filter(|s| s.success())
        .map(|_| exe)
}

/// Check that a node ended the cycle with the new instance running.
fn assert_cycled(site_dir: &Path, nodes: usize) {
    for i in 1..=nodes {
        let folder = site_dir.join(format!("nodes/app{i:02}/FastApp-2.0.0"));
        let state = std::fs::read_to_string(folder.join("service.state"))
            .unwrap_or_else(|_| panic!("no service.state in {}", folder.display()));
        assert!(
            state.contains("running FastApp 2.0.0"),
            "{}",
            folder.display()
        );
        assert!(folder.join("bin/fastapp.txt").is_file());
    }
}

fn cycle(sshd: &Sshd) {
    const NODES: usize = 5;
    const UPRUN_RUNS: usize = 7;
    const ANSIBLE_RUNS: usize = 3;
    let mut uprun_ms = Vec::new();
    for _ in 0..UPRUN_RUNS {
        let tmp = tempfile::tempdir().expect("tmp");
        let site = lay_out(tmp.path(), NODES, sshd, "rm -f service.state");
        let sb = tmp.path().join("sb");
        let script = sb.join("cycle.rhai");
        std::fs::write(&script, CYCLE).expect("script");
        let t = Instant::now();
        uprun_run(&site, &sb.join("release"), &script);
        uprun_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_cycled(&sb, NODES);
    }
    let uprun = median(uprun_ms);
    println!("remove + create cycle on {NODES} nodes over loopback SSH (median wall time):");
    println!("  uprun run (plan pass + run, process start included) {uprun:>8.1} ms  ({UPRUN_RUNS} runs)");

    let Some(exe) = ansible_playbook() else {
        println!("  SKIP Ansible: `ansible-playbook` not found (pip install ansible-core; or set ANSIBLE_PLAYBOOK)");
        return;
    };
    let mut ansible_ms = Vec::new();
    for _ in 0..ANSIBLE_RUNS {
        let tmp = tempfile::tempdir().expect("tmp");
        lay_out(tmp.path(), NODES, sshd, "rm -f service.state");
        let sb = tmp.path().join("sb");
        let (playbook, cfg) = ansible_files(tmp.path(), &sb, NODES, sshd);
        let t = Instant::now();
        let out = Command::new(&exe)
            .arg(&playbook)
            .env("ANSIBLE_CONFIG", &cfg)
            .env("ANSIBLE_NOCOLOR", "1")
            .current_dir(tmp.path())
            .output()
            .expect("ansible-playbook");
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert!(
            out.status.success(),
            "ansible-playbook failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_cycled(&sb, NODES);
        ansible_ms.push(ms);
    }
    let ansible = median(ansible_ms);
    println!("  ansible-playbook (forks=5, pipelining)               {ansible:>8.1} ms  ({ANSIBLE_RUNS} runs)");
    println!(
        "  ratio: uprun is {:.1}x faster (target: at least 10x)",
        ansible / uprun
    );
}

fn parallel(sshd: &Sshd) {
    const RUNS: usize = 3;
    println!("for_each_node(parallel = N) over N nodes, each running `node_command(n, \"sleep 0.2\")` (median of {RUNS}):");
    let mut one = 0.0;
    for n in [1usize, 2, 4, 8, 16] {
        let mut times = Vec::new();
        for _ in 0..RUNS {
            let tmp = tempfile::tempdir().expect("tmp");
            let site = lay_out(tmp.path(), n + 1, sshd, "rm -f service.state");
            let sb = tmp.path().join("sb");
            let script = sb.join("parallel.rhai");
            std::fs::write(
                &script,
                format!(
                    "let t = timestamp();\nfor_each_node(secondaries(), #{{ parallel: {n} }}, |n| node_command(n, \"sleep 0.2\"));\nlog(`ELAPSED_MS ${{t.elapsed * 1000.0}}`);\n"
                ),
            )
            .expect("script");
            let out = uprun_run(&site, &sb.join("release"), &script);
            let ms: f64 = out
                .lines()
                .find_map(|l| l.strip_prefix("ELAPSED_MS "))
                .and_then(|v| v.trim().parse().ok())
                .expect("ELAPSED_MS line");
            times.push(ms);
        }
        let ms = median(times);
        if n == 1 {
            one = ms;
        }
        println!(
            "  N = {n:>2}: {ms:>7.1} ms  ({:.2}x one node; target within 1.3x)",
            ms / one
        );
    }
}

fn main() {
    if !Path::new(sshd::SSHD).exists() {
        println!(
            "SKIP ssh_nodes benchmark: {} is missing (apt-get install -y openssh-server)",
            sshd::SSHD
        );
        return;
    }
    let Some(sshd) = Sshd::start() else { return };
    cycle(&sshd);
    parallel(&sshd);
}
