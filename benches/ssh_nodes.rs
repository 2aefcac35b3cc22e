//! SSH nodes, against a real OpenSSH server on 127.0.0.1 (the test harness's,
//! OpenSSH's default `MaxStartups`). Parts, chosen by the first argument
//! (default `cycle`):
//!
//! - `cycle`: the remove + create cycle (secondaries' instances removed, the
//!   primary's, the primary's created, then the secondaries'), a same-version
//!   reinstall (release 1.0.0 on a database at 1.0.0, so the run-end audit is
//!   satisfied without `upgrade_db`), with a 20 MB and a 1 MB incompressible
//!   payload at N = 1, 5, 16, three sides interleaved round by round:
//!   uprun; Ansible at its strongest fair setup (one master connection per
//!   node, pipelining, `unarchive` of a tar built once, no facts, strict host
//!   keys, the same key exchange as uprun, cold connections each run); and the
//!   floor (one `ssh` per node piping that tar into `tar -x`, stop, config,
//!   start and health in the same remote shell, all nodes at once).
//! - `tail`: cold `uprun run`s of the cycle at N = 5 (1 MB): time to the first
//!   change, p50/p99, and the phases of the slowest runs.
//! - `scale`: 200 nodes behind one sshd, `parallel = 32`, a 200 ms start
//!   command per node: wall time against ceil(n/32) x one node's, peak RSS,
//!   and the sshd log checked for dropped connections
//!   (`UPRUN_BENCH_SCALE_FILES=10`: a 1 MB payload instead of 100 bytes).
//!
//!     cargo bench --bench ssh_nodes -- cycle|tail|scale
//!
//! `UPRUN_BENCH_BIN` runs another uprun binary (a before/after comparison);
//! `UPRUN_BENCH_ROUNDS` (cycle, default 5), `UPRUN_BENCH_RUNS` (tail, default
//! 100). Every run's end state is checked. The load average is printed with
//! every measurement: the machine may be shared.

#[path = "../tests/support/sshd.rs"]
#[allow(dead_code)]
mod sshd;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sshd::Sshd;

fn uprun_bin() -> String {
    std::env::var("UPRUN_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_uprun").to_string())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).expect("not NaN"));
    v
}

fn median(v: &[f64]) -> f64 {
    let s = sorted(v.to_vec());
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let s = sorted(v.to_vec());
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn range(v: &[f64]) -> (f64, f64) {
    let s = sorted(v.to_vec());
    (s[0], s[s.len() - 1])
}

/// `count` files of `size` random bytes (incompressible), built once.
fn make_payload(dir: &Path, count: usize, size: usize) -> PathBuf {
    let p = dir.join(format!("payload-{count}x{size}"));
    std::fs::create_dir_all(&p).expect("payload dir");
    let mut urandom = std::fs::File::open("/dev/urandom").expect("urandom");
    for i in 0..count {
        let mut buf = vec![0u8; size];
        std::io::Read::read_exact(&mut urandom, &mut buf).expect("random");
        std::fs::write(p.join(format!("f{i:03}.bin")), buf).expect("payload file");
    }
    p
}

/// The payload as a tar, built once (Ansible's `unarchive` and the floor).
fn make_tar(payload: &Path) -> PathBuf {
    let tar = payload.with_extension("tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(payload)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success());
    tar
}

/// A demo sandbox with `nodes` nodes (app01 primary, the rest secondaries),
/// all at `sshd`, each with a FastApp 1.0.0 instance; the release is 1.0.0
/// (same-version reinstall) with `payload`. Returns the site file.
fn lay_out(dir: &Path, nodes: usize, sshd: &Sshd, payload: &Path, start: &str) -> PathBuf {
    let sb = dir.join("sb");
    let st = Command::new(env!("CARGO_BIN_EXE_uprun"))
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
    let rel = sb.join("release/release.toml");
    let text = std::fs::read_to_string(&rel).expect("release.toml");
    let text = text
        .replace("version = \"2.0.0\"", "version = \"1.0.0\"")
        .replace(
            "payload = \"payload\"",
            &format!("payload = {:?}", payload.display().to_string()),
        );
    std::fs::write(&rel, text).expect("release.toml");
    let demo = std::fs::read_to_string(sb.join("site.toml")).expect("site");
    let head = &demo[..demo.find("[[node]]").expect("nodes")];
    // The demo's start command (whatever it is now: it also runs the demo
    // application's database check) becomes the bench's.
    let mut site = head
        .lines()
        .map(|l| {
            if l.starts_with("start = ") {
                format!("start = {start:?}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    site.push('\n');
    assert!(
        site.contains(&format!("start = {start:?}")),
        "no start command in the demo's site file"
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

const START: &str = "echo running {app} {version} on {node} > service.state";

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

fn cycle_script(parallel: usize) -> String {
    format!(
        "for_each_node(secondaries(), #{{ parallel: {parallel} }}, |n| remove_instance(n));\n\
         remove_instance(primary());\n\
         create_instance(primary());\n\
         for_each_node(secondaries(), #{{ parallel: {parallel} }}, |n| create_instance(n));\n"
    )
}

/// One `uprun run --json`: wall time, time to the first change (the first
/// `remove_instance` step started, read as the line arrives), the phase
/// events, and the process's peak RSS (KiB).
struct UprunRun {
    wall_ms: f64,
    first_change_ms: f64,
    phases: Phases,
    events: Vec<serde_json::Value>,
    max_rss_kib: i64,
    /// User + system CPU seconds of the uprun process (all its threads).
    cpu_s: f64,
}

fn uprun_run(site: &Path, release: &Path, script: &Path) -> UprunRun {
    let t = Instant::now();
    let mut child = Command::new(uprun_bin())
        .arg("run")
        .arg(script)
        .arg("--site")
        .arg(site)
        .arg("--release")
        .arg(release)
        .args(["--yes", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("uprun run");
    let stdout = child.stdout.take().expect("stdout");
    let mut first_change_ms = f64::NAN;
    let mut events = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if first_change_ms.is_nan()
            && ev["event"] == "step_started"
            && ev["kind"] != "check"
            && ev["kind"] != "backup_db"
        {
            first_change_ms = t.elapsed().as_secs_f64() * 1000.0;
        }
        events.push(ev);
    }
    let (status, max_rss_kib, cpu_s) = wait_rusage(&mut child);
    let wall_ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(
        status == 0,
        "uprun run failed ({status}): {err}\n{events:?}"
    );
    let phases = events
        .iter()
        .filter(|e| e["event"] == "phase")
        .map(|e| {
            (
                e["pass"].as_str().unwrap_or("").to_string(),
                e["phase"].as_str().unwrap_or("").to_string(),
                e["ms"].as_f64().unwrap_or(0.0),
            )
        })
        .collect();
    UprunRun {
        wall_ms,
        first_change_ms,
        phases,
        events,
        max_rss_kib,
        cpu_s,
    }
}

/// Wait for `child`, returning its exit status, peak RSS in KiB and user +
/// system CPU seconds (wait4).
fn wait_rusage(child: &mut std::process::Child) -> (i32, i64, f64) {
    let mut status = 0;
    // SAFETY: wait4 on our own child's pid, with a zeroed rusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        code,
        usage.ru_maxrss,
        secs(usage.ru_utime) + secs(usage.ru_stime),
    )
}

/// CPU seconds the sshd listener and every per-connection process it reaped
/// have used so far (`/proc/<pid>/stat`: utime + stime + cutime + cstime).
/// Call it once the connections of a run are closed: a session's CPU is
/// counted when its process is reaped.
fn sshd_cpu_s(sshd: &Sshd) -> f64 {
    let pid = sshd.pid();
    // The sessions of the run end shortly after uprun exits: wait (bounded)
    // until the listener has no child left, so their CPU is counted.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !sshd.descendants().is_empty() && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("sshd stat");
    // Fields after the command name (which may hold spaces) start at `state`.
    let rest = &stat[stat.rfind(')').expect("stat") + 2..];
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // state=0 ... utime=11 stime=12 cutime=13 cstime=14 (0-based from state).
    (f[11] + f[12] + f[13] + f[14]) / hz
}

/// Every node ended with a new 1.0.0 instance running and the whole payload.
fn assert_cycled(site_dir: &Path, nodes: usize, payload: &Path, folder: &str) {
    let want: Vec<(String, u64)> = sorted_files(payload);
    for i in 1..=nodes {
        let f = site_dir.join(format!("nodes/app{i:02}/{folder}"));
        let state = std::fs::read_to_string(f.join("service.state"))
            .unwrap_or_else(|_| panic!("no service.state in {}", f.display()));
        assert!(state.contains("running FastApp 1.0.0"), "{}", f.display());
        for (name, len) in &want {
            let got = std::fs::metadata(f.join(name)).map(|m| m.len()).ok();
            assert_eq!(got, Some(*len), "{}/{name}", f.display());
        }
    }
}

fn sorted_files(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .expect("payload")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().expect("meta").len(),
            )
        })
        .collect();
    v.sort();
    v
}

/// An ssh_config giving each node its own host name (all 127.0.0.1), so
/// that each gets its own master connection, like separate hosts.
fn ssh_config(dir: &Path, nodes: usize, sshd: &Sshd) -> PathBuf {
    let mut cfg = String::new();
    for i in 1..=nodes {
        cfg.push_str(&format!(
            "Host app{i:02}\n  HostName 127.0.0.1\n  Port {}\n  User {}\n",
            sshd.port, sshd.user
        ));
    }
    cfg.push_str(&format!(
        "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  \
         KexAlgorithms curve25519-sha256\n  Ciphers chacha20-poly1305@openssh.com\n  HostKeyAlgorithms ssh-ed25519\n  \
         BatchMode yes\n",
        sshd.client_key.display(),
        sshd.known_hosts.display()
    ));
    let p = dir.join("ssh_config");
    std::fs::write(&p, cfg).expect("ssh_config");
    p
}

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

fn fmt(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let (lo, hi) = range(v);
    format!("{:.0} ms ({:.0}-{:.0})", median(v), lo, hi)
}

fn fmt_ratio(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let (lo, hi) = range(v);
    format!("{:.1}x ({:.1}-{:.1})", median(v), lo, hi)
}

fn cycle(sshd: &Sshd) {
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

/// One cold `ssh true` to the server (handshake, authentication, one
/// command), with the key exchange uprun negotiates: the floor for the time
/// before a first change.
fn one_handshake_ms(dir: &Path, sshd: &Sshd) -> f64 {
    let cfg = ssh_config(dir, 1, sshd);
    let t = Instant::now();
    let st = Command::new("ssh")
        .arg("-F")
        .arg(&cfg)
        .args(["app01", "true"])
        .stdin(Stdio::null())
        .status()
        .expect("ssh");
    assert!(st.success(), "ssh true failed");
    t.elapsed().as_secs_f64() * 1000.0
}

/// (pass, phase, ms) of one run's phase events.
type Phases = Vec<(String, String, f64)>;

#[derive(Default)]
struct TailSide {
    first: Vec<f64>,
    walls: Vec<f64>,
    slow: Vec<(f64, usize, String, Phases)>,
    per_phase: std::collections::BTreeMap<String, Vec<f64>>,
}

/// Cold runs at N = 5: time to the first change, and where it went. With
/// `UPRUN_BENCH_BEFORE=/path/to/old/uprun`, runs alternate between that
/// binary and this one. A cold `ssh true` is measured between runs.
fn tail(sshd: &Sshd) {
    let runs = env_usize("UPRUN_BENCH_RUNS", 100);
    let n = env_usize("UPRUN_BENCH_TAIL_NODES", 5);
    let base = tempfile::tempdir().expect("tmp");
    let payload = make_payload(base.path(), 10, 100_000);
    let mut sides: Vec<(String, TailSide)> = vec![(uprun_bin(), TailSide::default())];
    if let Ok(before) = std::env::var("UPRUN_BENCH_BEFORE") {
        sides.insert(0, (before, TailSide::default()));
    }
    let mut handshakes = Vec::new();
    println!(
        "{runs} cold runs of the cycle at N = {n} (1 MB) per binary, interleaved; load average at start: {}",
        load()
    );
    for i in 0..runs {
        handshakes.push(one_handshake_ms(base.path(), sshd));
        for (bin, side) in sides.iter_mut() {
            let tmp = tempfile::tempdir().expect("tmp");
            let site = lay_out(tmp.path(), n, sshd, &payload, START);
            let sb = tmp.path().join("sb");
            let script = sb.join("cycle.rhai");
            std::fs::write(&script, cycle_script(16)).expect("script");
            std::env::set_var("UPRUN_BENCH_BIN", &*bin);
            let r = uprun_run(&site, &sb.join("release"), &script);
            assert_cycled(&sb, n, &payload, "FastApp-1.0.0-2");
            for (pass, phase, ms) in &r.phases {
                side.per_phase
                    .entry(format!("{pass}/{phase}"))
                    .or_default()
                    .push(*ms);
            }
            side.first.push(r.first_change_ms);
            side.walls.push(r.wall_ms);
            side.slow.push((r.first_change_ms, i, load(), r.phases));
        }
    }
    println!(
        "cold `ssh true` (one handshake + one command): p50 {:.1} ms, p99 {:.1} ms; load at end {}",
        percentile(&handshakes, 50.0),
        percentile(&handshakes, 99.0),
        load()
    );
    for (bin, side) in sides.iter_mut() {
        println!("\n{bin}:");
        println!(
            "time to first change: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms; whole run p50 {:.1} ms, p99 {:.1} ms",
            percentile(&side.first, 50.0),
            percentile(&side.first, 90.0),
            percentile(&side.first, 99.0),
            range(&side.first).1,
            percentile(&side.walls, 50.0),
            percentile(&side.walls, 99.0),
        );
        if !side.per_phase.is_empty() {
            println!("phases (median, p99, max ms):");
        }
        for (k, v) in &side.per_phase {
            println!(
                "  {k:<24} {:>7.2} {:>7.2} {:>7.2}",
                median(v),
                percentile(v, 99.0),
                range(v).1
            );
        }
        side.slow
            .sort_by(|a, b| b.0.partial_cmp(&a.0).expect("not NaN"));
        println!("slowest runs:");
        for (ms, i, l, phases) in side.slow.iter().take(5) {
            let p: Vec<String> = phases
                .iter()
                .filter(|(_, _, ms)| *ms >= 5.0)
                .map(|(pass, ph, ms)| format!("{pass}/{ph} {ms:.0}"))
                .collect();
            println!("  run {i}: {ms:.1} ms (load {l}): {}", p.join(", "));
        }
    }
}

/// 200 nodes behind one sshd, parallel = 32, a 200 ms start command.
fn scale(sshd: &Sshd) {
    const PARALLEL: usize = 32;
    let nodes = env_usize("UPRUN_BENCH_SCALE_NODES", 200);
    // Payload files of 100,000 bytes (default 0: one file of 100 bytes, so
    // that what is measured is the scheduling, not the copy).
    let files = env_usize("UPRUN_BENCH_SCALE_FILES", 0);
    let base = tempfile::tempdir().expect("tmp");
    let payload = if files == 0 {
        make_payload(base.path(), 1, 100)
    } else {
        make_payload(base.path(), files, 100_000)
    };
    let start = format!("sleep 0.2; {START}");
    let script = format!(
        "let t = timestamp();\n\
         for_each_node(secondaries(), #{{ parallel: {PARALLEL} }}, |n| remove_instance(n));\n\
         log(`REMOVED_MS ${{t.elapsed * 1000.0}}`);\n\
         remove_instance(primary());\n\
         create_instance(primary());\n\
         let c = timestamp();\n\
         for_each_node(secondaries(), #{{ parallel: {PARALLEL} }}, |n| create_instance(n));\n\
         log(`CREATED_MS ${{c.elapsed * 1000.0}}`);\n"
    );
    struct Scale {
        wall_ms: f64,
        removed_ms: f64,
        created_ms: f64,
        rss_kib: i64,
        dropped: usize,
        accepted: usize,
        first_change_ms: f64,
        uprun_cpu_s: f64,
        sshd_cpu_s: f64,
    }
    let measure = |n: usize| {
        let tmp = tempfile::tempdir().expect("tmp");
        let site = lay_out(tmp.path(), n, sshd, &payload, &start);
        let sb = tmp.path().join("sb");
        let path = sb.join("scale.rhai");
        std::fs::write(&path, &script).expect("script");
        let before = sshd.log();
        let sshd_before = sshd_cpu_s(sshd);
        let r = uprun_run(&site, &sb.join("release"), &path);
        let sshd_after = sshd_cpu_s(sshd);
        assert_cycled(&sb, n, &payload, "FastApp-1.0.0-2");
        let log = sshd.log();
        let new_log = &log[before.len()..];
        let get = |key: &str| -> f64 {
            r.events
                .iter()
                .filter_map(|e| e["message"].as_str())
                .find_map(|m| m.strip_prefix(key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(f64::NAN)
        };
        Scale {
            wall_ms: r.wall_ms,
            removed_ms: get("REMOVED_MS "),
            created_ms: get("CREATED_MS "),
            rss_kib: r.max_rss_kib,
            dropped: new_log.matches("drop connection").count(),
            accepted: new_log.matches("Accepted publickey").count(),
            first_change_ms: r.first_change_ms,
            uprun_cpu_s: r.cpu_s,
            sshd_cpu_s: sshd_after - sshd_before,
        }
    };
    println!(
        "{nodes} nodes behind one sshd (default MaxStartups), parallel = {PARALLEL}, start command `sleep 0.2; ...`, payload {} file(s) of {} bytes; {}; load {}",
        files.max(1),
        if files == 0 { 100 } else { 100_000 },
        uprun_bin(),
        load()
    );
    let one = measure(2);
    println!(
        "  one secondary: create phase {:.0} ms, remove phase {:.0} ms, whole run {:.0} ms, peak RSS {:.1} MiB; CPU: uprun {:.2} s, sshd {:.2} s  (load {})",
        one.created_ms,
        one.removed_ms,
        one.wall_ms,
        one.rss_kib as f64 / 1024.0,
        one.uprun_cpu_s,
        one.sshd_cpu_s,
        load()
    );
    let big = measure(nodes);
    let batches = (nodes - 1).div_ceil(PARALLEL) as f64;
    println!(
        "  {} secondaries: create phase {:.0} ms = {:.2}x the ideal {batches} x {:.0} ms (target <= 1.3x); remove phase {:.0} ms ({:.2}x {batches} x {:.0} ms)",
        nodes - 1,
        big.created_ms,
        big.created_ms / (batches * one.created_ms),
        one.created_ms,
        big.removed_ms,
        big.removed_ms / (batches * one.removed_ms),
        one.removed_ms
    );
    println!(
        "  whole run {:.0} ms, first change at {:.0} ms; peak RSS {:.1} MiB (target < 200); sshd: {} connections accepted, {} dropped  (load {})",
        big.wall_ms,
        big.first_change_ms,
        big.rss_kib as f64 / 1024.0,
        big.accepted,
        big.dropped,
        load()
    );
    println!(
        "  CPU: uprun {:.2} s ({:.1} ms per node), sshd {:.2} s ({:.1} ms per connection: fork/exec, key exchange, auth, SFTP, the shells of the commands); the machine has {} cores",
        big.uprun_cpu_s,
        big.uprun_cpu_s * 1000.0 / nodes as f64,
        big.sshd_cpu_s,
        big.sshd_cpu_s * 1000.0 / big.accepted.max(1) as f64,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
}

/// The layout of `lay_out`, but with the release kept at 2.0.0: the stock
/// procedure then upgrades for real (backup, removals, the upgrade, creates).
fn lay_out_upgrade(dir: &Path, nodes: usize, sshd: &Sshd, payload: &Path) -> PathBuf {
    let site = lay_out(dir, nodes, sshd, payload, START);
    let rel = dir.join("sb/release/release.toml");
    let text = std::fs::read_to_string(&rel).expect("release.toml");
    std::fs::write(
        &rel,
        text.replace("version = \"1.0.0\"", "version = \"2.0.0\""),
    )
    .expect("release.toml");
    site
}

/// The newest journal of the site laid out in `dir`.
fn newest_journal(dir: &Path) -> Vec<uprun::journal::Entry> {
    let runs = dir.join("sb/.uprun/runs");
    let newest = std::fs::read_dir(&runs)
        .expect("runs")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .max_by_key(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .expect("mtime")
        })
        .expect("a journal");
    uprun::journal::read(&newest).expect("journal")
}

fn at_ms(s: &str) -> f64 {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .expect("time");
    t.unix_timestamp_nanos() as f64 / 1e6
}

/// From the first step of kind `first` started to the last step of kind
/// `last` done, in the journal (ms).
fn span_ms(entries: &[uprun::journal::Entry], first: &str, last: &str) -> f64 {
    use uprun::journal::Entry;
    let mut calls = std::collections::HashMap::new();
    let (mut start, mut end) = (f64::NAN, f64::NAN);
    for e in entries {
        match e {
            Entry::Started { key, call, at, .. } => {
                calls.insert(key.clone(), call.clone());
                if call == first && start.is_nan() {
                    start = at_ms(at);
                }
            }
            Entry::Done { key, at, .. } if calls.get(key).map(String::as_str) == Some(last) => {
                end = at_ms(at);
            }
            _ => {}
        }
    }
    end - start
}

/// The downtime window of the stock procedure with a 20 MB payload on 16
/// nodes, before (the payload copied inside the window) and after (staged
/// before it, renamed inside), excluding backup and migrations, against the
/// stop + start + health commands alone (`stop_instance` then
/// `start_instance` on every node in the stock order and parallelism).
/// Interleaved rounds (`UPRUN_BENCH_ROUNDS`, default 3).
fn window(sshd: &Sshd) {
    let rounds = env_usize("UPRUN_BENCH_ROUNDS", 3);
    let nodes = env_usize("UPRUN_BENCH_NODES", 16);
    let dir = tempfile::tempdir().expect("tmp");
    let payload = make_payload(dir.path(), 200, 100_000);
    let stock = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/in-place-upgrade.rhai"),
    )
    .expect("stock procedure");
    let line = "stage_release(primary());\nfor_each_node(secondaries(), #{ parallel: 4 }, |node| stage_release(node));\n";
    assert!(stock.contains(line), "the stock procedure stages");
    let unstaged = dir.path().join("unstaged.rhai");
    std::fs::write(&unstaged, stock.replace(line, "")).expect("script");
    let staged = dir.path().join("staged.rhai");
    std::fs::write(&staged, &stock).expect("script");
    let commands = dir.path().join("commands.rhai");
    std::fs::write(
        &commands,
        "for_each_node(secondaries(), #{ parallel: 4 }, |n| stop_instance(n));\n\
         stop_instance(primary());\n\
         start_instance(primary());\n\
         for_each_node(secondaries(), #{ parallel: 4 }, |n| start_instance(n));\n",
    )
    .expect("script");
    let (mut before, mut after, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    println!(
        "window: {nodes} nodes over loopback sshd, payload 200 x 100000 random bytes, {rounds} interleaved rounds (load {})",
        load()
    );
    for round in 0..rounds {
        for (name, script) in [("before", &unstaged), ("after", &staged)] {
            let tmp = tempfile::tempdir().expect("tmp");
            let site = lay_out_upgrade(tmp.path(), nodes, sshd, &payload);
            let release = tmp.path().join("sb/release");
            let r = uprun_run(&site, &release, script);
            let entries = newest_journal(tmp.path());
            let w = uprun::downtime::window(&entries).expect("a window");
            let part = |k: &str| {
                w.parts
                    .iter()
                    .find(|(kind, _)| kind == k)
                    .map(|(_, ms)| *ms)
                    .unwrap_or(0.0)
            };
            let excl = w.ms - part("upgrade_db") - part("backup_db");
            println!(
                "  round {round} {name}: window {:.0} ms, excluding backup and migrations {excl:.0} ms (wall {:.0} ms; load {})",
                w.ms,
                r.wall_ms,
                load()
            );
            if name == "before" {
                before.push(excl);
            } else {
                after.push(excl);
                // Every node runs the release (the audit said so; the files are checked).
                assert_cycled_at(tmp.path(), nodes, &payload, "FastApp-2.0.0", "2.0.0");
                let _ = uprun_run(&site, &release, &commands);
                let entries = newest_journal(tmp.path());
                let ms = span_ms(&entries, "stop_instance", "start_instance");
                println!("  round {round} commands only: {ms:.0} ms");
                floor.push(ms);
            }
        }
    }
    let ratio: Vec<f64> = after.iter().zip(&floor).map(|(a, f)| a / f).collect();
    let ratio_before: Vec<f64> = before.iter().zip(&floor).map(|(b, f)| b / f).collect();
    println!("window excluding backup and migrations, {nodes} nodes, 20 MB:");
    println!("  before (copy inside the window): {}", fmt(&before));
    println!("  after (staged, renamed inside):  {}", fmt(&after));
    println!("  stop + start + health alone:     {}", fmt(&floor));
    println!("  after / commands alone:  {}", fmt_ratio(&ratio));
    println!("  before / commands alone: {}", fmt_ratio(&ratio_before));
}

/// Like `assert_cycled`, for `version`.
fn assert_cycled_at(dir: &Path, nodes: usize, payload: &Path, folder: &str, version: &str) {
    let want: Vec<(String, u64)> = sorted_files(payload);
    for i in 1..=nodes {
        let f = dir.join(format!("sb/nodes/app{i:02}/{folder}"));
        let state = std::fs::read_to_string(f.join("service.state"))
            .unwrap_or_else(|_| panic!("no service.state in {}", f.display()));
        assert!(
            state.contains(&format!("running FastApp {version}")),
            "{}",
            f.display()
        );
        for (name, len) in &want {
            let got = std::fs::metadata(f.join(name)).map(|m| m.len()).ok();
            assert_eq!(got, Some(*len), "{}/{name}", f.display());
        }
        assert!(
            !dir.join(format!("sb/nodes/app{i:02}/.uprun-staging"))
                .exists(),
            "staging left behind"
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
    let part = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "cycle".into());
    // The cycle compares three sides opening up to 16 connections at once
    // (Ansible's forks, the floor's ssh processes): its server accepts them
    // all, so that OpenSSH's default `MaxStartups 10:30:100` drops none.
    // Every other part keeps the default.
    let extra = if part == "cycle" {
        "MaxStartups 64:30:128\n"
    } else {
        ""
    };
    let Some(sshd) = Sshd::start_with(extra) else {
        return;
    };
    match part.as_str() {
        "cycle" => cycle(&sshd),
        "tail" => tail(&sshd),
        "scale" => scale(&sshd),
        "window" => window(&sshd),
        other => println!("unknown part `{other}`: cycle, tail, scale or window"),
    }
}
