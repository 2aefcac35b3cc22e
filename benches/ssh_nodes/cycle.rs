//! The `cycle` part: uprun, Ansible and the floor, interleaved round by round.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::sshd::Sshd;
use crate::{
    assert_cycled, cycle_script, env_usize, fmt, fmt_ratio, lay_out, load, make_payload, make_tar,
    range, ssh_config, uprun_run, START,
};

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
    content: '{"current": null, "removed": [], "used_folders": ["FastApp-1.0.0", "FastApp-1.0.0-2"]}'
- name: create the instance folder
  file:
    path: "{{ uprun_root }}/FastApp-1.0.0-2"
    state: directory
- name: unpack the payload
  unarchive:
    src: "{{ payload_tar }}"
    dest: "{{ uprun_root }}/FastApp-1.0.0-2/"
- name: write the instance config
  copy:
    dest: "{{ uprun_root }}/FastApp-1.0.0-2/uprun-instance.toml"
    content: "app_name = \"FastApp\"\nversion = \"1.0.0\"\nnode = \"{{ inventory_hostname }}\"\n"
- name: register the instance
  copy:
    dest: "{{ uprun_root }}/.uprun-node.json"
    content: '{"current": {"node": "{{ inventory_hostname }}", "app_name": "FastApp", "version": "1.0.0", "folder": "FastApp-1.0.0-2"}, "removed": [], "used_folders": ["FastApp-1.0.0", "FastApp-1.0.0-2"]}'
- name: start the service
  shell: echo "running FastApp 1.0.0 on {{ inventory_hostname }}" > service.state
  args:
    chdir: "{{ uprun_root }}/FastApp-1.0.0-2"
- name: check its health
  command: grep -q running service.state
  args:
    chdir: "{{ uprun_root }}/FastApp-1.0.0-2"
"#;

/// Inventory, ansible.cfg and playbook for the same cycle; returns the
/// playbook, the config file and the control-socket folder.
fn ansible_files(
    dir: &Path,
    site_dir: &Path,
    nodes: usize,
    tar: &Path,
    ssh_cfg: &Path,
) -> (PathBuf, PathBuf, PathBuf) {
    let mut inv = format!(
        "all:\n  vars:\n    ansible_python_interpreter: /usr/bin/python3\n    payload_tar: {}\n  children:\n    primary:\n      hosts:\n        app01: {{ ansible_host: app01, uprun_root: {} }}\n    secondaries:\n      hosts:\n",
        tar.display(),
        site_dir.join("nodes/app01").display()
    );
    for i in 2..=nodes {
        inv.push_str(&format!(
            "        app{i:02}: {{ ansible_host: app{i:02}, uprun_root: {} }}\n",
            site_dir.join(format!("nodes/app{i:02}")).display()
        ));
    }
    if nodes == 1 {
        inv.push_str("        {}\n");
        inv = inv.replace("      hosts:\n        {}\n", "      hosts: {}\n");
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
    let cp = dir.join("cp");
    std::fs::create_dir_all(&cp).expect("control dir");
    let cfg = dir.join("ansible.cfg");
    std::fs::write(
        &cfg,
        format!(
            "[defaults]\nforks = {}\ninventory = {}\nhost_key_checking = True\ninterpreter_python = /usr/bin/python3\ngathering = explicit\n\n\
             [ssh_connection]\npipelining = True\ncontrol_path_dir = {}\ncontrol_path = %(directory)s/%%n-%%p-%%r\n\
             ssh_args = -F {} -o ControlMaster=auto -o ControlPersist=60s\n",
            nodes.max(5),
            dir.join("inventory.yml").display(),
            cp.display(),
            ssh_cfg.display()
        ),
    )
    .expect("ansible.cfg");
    (dir.join("cycle.yml"), cfg, cp)
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

/// Run the playbook; returns the wall time. Checks one master socket per
/// node, then stops the masters (cold connections for the next run).
fn ansible_run(
    exe: &str,
    dir: &Path,
    site_dir: &Path,
    nodes: usize,
    tar: &Path,
    sshd: &Sshd,
) -> f64 {
    let ssh_cfg = ssh_config(dir, nodes, sshd);
    let (playbook, cfg, cp) = ansible_files(dir, site_dir, nodes, tar, &ssh_cfg);
    let t = Instant::now();
    let out = Command::new(exe)
        .arg(&playbook)
        .env("ANSIBLE_CONFIG", &cfg)
        .env("ANSIBLE_NOCOLOR", "1")
        .current_dir(dir)
        .output()
        .expect("ansible-playbook");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    assert!(
        out.status.success(),
        "ansible-playbook failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let masters = std::fs::read_dir(&cp).expect("control dir").count();
    assert_eq!(masters, nodes, "one master connection per node");
    for i in 1..=nodes {
        let _ = Command::new("ssh")
            .arg("-F")
            .arg(&ssh_cfg)
            .arg("-o")
            .arg(format!("ControlPath={}/%n-%p-%r", cp.display()))
            .args(["-O", "exit"])
            .arg(format!("app{i:02}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    ms
}

/// The floor: one `ssh` per node, all at once, each piping the tar into a
/// remote shell that stops the old instance, unpacks into the new folder,
/// writes the config and manifest, starts and checks health.
fn floor_run(dir: &Path, site_dir: &Path, nodes: usize, tar: &Path, sshd: &Sshd) -> f64 {
    let ssh_cfg = ssh_config(dir, nodes, sshd);
    let t = Instant::now();
    let mut children = Vec::new();
    for i in 1..=nodes {
        let name = format!("app{i:02}");
        let root = site_dir.join("nodes").join(&name);
        let remote = format!(
            "set -e; cd '{r}'; (cd FastApp-1.0.0 && rm -f service.state); mkdir FastApp-1.0.0-2; \
             tar -xf - -C FastApp-1.0.0-2; \
             printf 'app_name = \"FastApp\"\\nversion = \"1.0.0\"\\nnode = \"{name}\"\\n' > FastApp-1.0.0-2/uprun-instance.toml; \
             printf '{{\"current\": {{\"node\": \"{name}\", \"version\": \"1.0.0\", \"folder\": \"FastApp-1.0.0-2\"}}}}' > .uprun-node.json; \
             cd FastApp-1.0.0-2; echo 'running FastApp 1.0.0 on {name}' > service.state; grep -q running service.state",
            r = root.display()
        );
        let child = Command::new("ssh")
            .arg("-F")
            .arg(&ssh_cfg)
            .arg(&name)
            .arg(remote)
            .stdin(std::fs::File::open(tar).expect("tar"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ssh");
        children.push(child);
    }
    for c in children {
        let out = c.wait_with_output().expect("ssh");
        assert!(
            out.status.success(),
            "floor ssh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    t.elapsed().as_secs_f64() * 1000.0
}

#[derive(Default)]
struct Samples {
    uprun: Vec<f64>,
    first_change: Vec<f64>,
    floor: Vec<f64>,
    ansible: Vec<f64>,
    /// Ansible / uprun and uprun / floor, per round (same round, interleaved).
    ratio_ansible: Vec<f64>,
    ratio_floor: Vec<f64>,
    loads: Vec<String>,
}

pub(super) fn cycle(sshd: &Sshd) {
    let rounds = env_usize("UPRUN_BENCH_ROUNDS", 5);
    let sizes: Vec<usize> = std::env::var("UPRUN_BENCH_NODES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 5, 16]);
    let ansible = ansible_playbook();
    if ansible.is_none() {
        println!("  SKIP Ansible: `ansible-playbook` not found (pip install ansible-core; or set ANSIBLE_PLAYBOOK)");
    }
    let base = tempfile::tempdir().expect("tmp");
    let payloads = [
        ("20 MB", make_payload(base.path(), 200, 100_000)),
        ("1 MB", make_payload(base.path(), 10, 100_000)),
    ];
    let tars: Vec<PathBuf> = payloads.iter().map(|(_, p)| make_tar(p)).collect();
    let mut results: Vec<((usize, usize), Samples)> = Vec::new();
    for &n in &sizes {
        for pi in 0..payloads.len() {
            results.push(((n, pi), Samples::default()));
        }
    }
    println!(
        "remove + create cycle (same-version reinstall), {rounds} interleaved rounds; load average at start: {}",
        load()
    );
    for round in 0..rounds {
        for ((n, pi), s) in results.iter_mut() {
            let (label, payload) = &payloads[*pi];
            let tar = &tars[*pi];
            let mut u = 0.0;
            let mut f = 0.0;
            let mut a = None;
            // Rotate the order of the sides each round.
            for k in 0..3 {
                match (k + round) % 3 {
                    0 => {
                        let tmp = tempfile::tempdir().expect("tmp");
                        let site = lay_out(tmp.path(), *n, sshd, payload, START);
                        let sb = tmp.path().join("sb");
                        let script = sb.join("cycle.rhai");
                        std::fs::write(&script, cycle_script(16)).expect("script");
                        let r = uprun_run(&site, &sb.join("release"), &script);
                        assert_cycled(&sb, *n, payload, "FastApp-1.0.0-2");
                        u = r.wall_ms;
                        s.first_change.push(r.first_change_ms);
                    }
                    1 => {
                        let tmp = tempfile::tempdir().expect("tmp");
                        lay_out(tmp.path(), *n, sshd, payload, START);
                        let sb = tmp.path().join("sb");
                        f = floor_run(tmp.path(), &sb, *n, tar, sshd);
                        assert_cycled(&sb, *n, payload, "FastApp-1.0.0-2");
                    }
                    _ => {
                        if let Some(exe) = &ansible {
                            let tmp = tempfile::tempdir().expect("tmp");
                            lay_out(tmp.path(), *n, sshd, payload, START);
                            let sb = tmp.path().join("sb");
                            a = Some(ansible_run(exe, tmp.path(), &sb, *n, tar, sshd));
                            assert_cycled(&sb, *n, payload, "FastApp-1.0.0-2");
                        }
                    }
                }
            }
            s.uprun.push(u);
            s.floor.push(f);
            s.ratio_floor.push(u / f);
            if let Some(a) = a {
                s.ansible.push(a);
                s.ratio_ansible.push(a / u);
            }
            let l = load();
            println!(
                "  round {round} N={n:>2} {label:>5}: uprun {u:>7.0} ms  floor {f:>7.0} ms  ansible {}  load {l}",
                a.map(|a| format!("{a:>7.0} ms")).unwrap_or_else(|| "-".into())
            );
            s.loads.push(l);
        }
    }
    println!("\n| N | payload | uprun | floor | Ansible | Ansible / uprun | uprun / floor | uprun: time to first change | load (1 min) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for ((n, pi), s) in &results {
        let loads: Vec<f64> = s
            .loads
            .iter()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        let (llo, lhi) = range(&loads);
        println!(
            "| {n} | {} | {} | {} | {} | {} | {} | {} | {llo:.1}-{lhi:.1} |",
            payloads[*pi].0,
            fmt(&s.uprun),
            fmt(&s.floor),
            fmt(&s.ansible),
            fmt_ratio(&s.ratio_ansible),
            fmt_ratio(&s.ratio_floor),
            fmt(&s.first_change),
        );
    }
}
