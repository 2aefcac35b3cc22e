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
//!   change, p50/p99, and the phases of the slowest runs
//!   (`UPRUN_BENCH_TAIL_NODES`; `UPRUN_BENCH_PORTS=per-node`: each node at
//!   its own port of the server, as if each had its own host and sshd).
//! - `scale`: 200 nodes behind one sshd, `parallel = 32`, a 200 ms start
//!   command per node: wall time against ceil(n/32) x one node's, peak RSS,
//!   and the sshd log checked for dropped connections
//!   (`UPRUN_BENCH_SCALE_FILES=10`: a 1 MB payload instead of 100 bytes).
//! - `window`: the stock procedure on 16 nodes with a 20 MB payload, the
//!   downtime window with the payload copied inside it, staged before it, and
//!   the stop + start + health commands alone (`UPRUN_BENCH_NODES`).
//!
//!     cargo bench --bench ssh_nodes -- cycle|tail|scale|window
//!
//! `UPRUN_BENCH_BIN` runs another uprun binary (a before/after comparison);
//! `UPRUN_BENCH_ROUNDS` (cycle, default 5), `UPRUN_BENCH_RUNS` (tail, default
//! 100). Every run's end state is checked. The load average is printed with
//! every measurement: the machine may be shared.

#[path = "../../tests/support/sshd.rs"]
#[allow(dead_code)]
mod sshd;

mod cycle;
mod scale;
mod tail;
mod window;

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

/// (pass, phase, ms) of one run's phase events.
type Phases = Vec<(String, String, f64)>;

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
    // `tail` with `UPRUN_BENCH_PORTS=per-node`: the server also listens on
    // one port per node, each node at its own `host:port`, as if every node
    // were its own host with its own sshd (uprun limits handshakes per sshd);
    // the server then accepts them all at once, as 16 servers would.
    let extra_ports: Vec<u16> =
        if part == "tail" && std::env::var("UPRUN_BENCH_PORTS").as_deref() == Ok("per-node") {
            // The first node keeps the server's port (sshd listens on 16 at most).
            (1..env_usize("UPRUN_BENCH_TAIL_NODES", 5))
                .map(|_| sshd::free_port())
                .collect()
        } else {
            Vec::new()
        };
    let mut extra = String::new();
    if part == "cycle" || !extra_ports.is_empty() {
        extra.push_str("MaxStartups 64:30:128\n");
    }
    for p in &extra_ports {
        extra.push_str(&format!("Port {p}\n"));
    }
    let Some(sshd) = Sshd::start_with(&extra) else {
        return;
    };
    if !extra_ports.is_empty() {
        let mut kh = std::fs::read_to_string(&sshd.known_hosts).expect("known_hosts");
        for p in &extra_ports {
            kh.push_str(&format!("[127.0.0.1]:{p} {}\n", sshd.host_key));
        }
        std::fs::write(&sshd.known_hosts, kh).expect("known_hosts");
    }
    let per_node_ports: Vec<u16> = if extra_ports.is_empty() {
        Vec::new()
    } else {
        std::iter::once(sshd.port).chain(extra_ports).collect()
    };
    match part.as_str() {
        "cycle" => cycle::cycle(&sshd),
        "tail" => tail::tail(&sshd, &per_node_ports),
        "scale" => scale::scale(&sshd),
        "window" => window::window(&sshd),
        other => println!("unknown part `{other}`: cycle, tail, scale or window"),
    }
}
