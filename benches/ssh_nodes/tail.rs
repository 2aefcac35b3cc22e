//! The `tail` part: cold runs, time to the first change and where it went.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::sshd::Sshd;
use crate::{
    assert_cycled, cycle_script, env_usize, lay_out, load, make_payload, median, percentile, range,
    ssh_config, uprun_bin, uprun_run, Phases, START,
};

/// Node `i` of the site (in order) at `ports[i]` instead of the server's
/// port (nothing changes without ports).
fn spread_over_ports(site: &Path, sshd: &Sshd, ports: &[u16]) {
    if ports.is_empty() {
        return;
    }
    let text = std::fs::read_to_string(site).expect("site");
    let address = format!("address = \"{}\"", sshd.address());
    let mut parts = text.split(&address);
    let mut out = parts.next().expect("head").to_string();
    for (i, rest) in parts.enumerate() {
        out.push_str(&address.replace(&format!(":{}\"", sshd.port), &format!(":{}\"", ports[i])));
        out.push_str(rest);
    }
    assert_eq!(
        out.matches("address = ").count(),
        ports.len(),
        "every node at its own port"
    );
    std::fs::write(site, out).expect("site");
}

/// `ssh true` to every port of `ports` at once (one cold handshake each,
/// all in parallel, with the key exchange uprun negotiates): with one port,
/// the floor for the time before a first change; with one per node, the
/// floor for connecting to that many nodes at once on this machine, where
/// every sshd shares its cores.
fn handshakes_at_once_ms(dir: &Path, sshd: &Sshd, ports: &[u16]) -> f64 {
    let cfg = ssh_config(dir, 1, sshd);
    let t = Instant::now();
    let children: Vec<_> = ports
        .iter()
        .map(|p| {
            Command::new("ssh")
                .arg("-F")
                .arg(&cfg)
                .args(["-p", &p.to_string(), "app01", "true"])
                .stdin(Stdio::null())
                .spawn()
                .expect("ssh")
        })
        .collect();
    for mut c in children {
        assert!(c.wait().expect("ssh").success(), "ssh true failed");
    }
    t.elapsed().as_secs_f64() * 1000.0
}

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
pub(super) fn tail(sshd: &Sshd, per_node_ports: &[u16]) {
    let runs = env_usize("UPRUN_BENCH_RUNS", 100);
    let n = env_usize("UPRUN_BENCH_TAIL_NODES", 5);
    let base = tempfile::tempdir().expect("tmp");
    let payload = make_payload(base.path(), 10, 100_000);
    let mut sides: Vec<(String, TailSide)> = vec![(uprun_bin(), TailSide::default())];
    if let Ok(before) = std::env::var("UPRUN_BENCH_BEFORE") {
        sides.insert(0, (before, TailSide::default()));
    }
    let mut handshakes = Vec::new();
    let mut all_at_once = Vec::new();
    println!(
        "{runs} cold runs of the cycle at N = {n} (1 MB) per binary, interleaved, {}; load average at start: {}",
        if per_node_ports.is_empty() {
            "every node at the server's one port"
        } else {
            "each node at its own port of the server"
        },
        load()
    );
    for i in 0..runs {
        handshakes.push(handshakes_at_once_ms(base.path(), sshd, &[sshd.port]));
        if !per_node_ports.is_empty() {
            all_at_once.push(handshakes_at_once_ms(base.path(), sshd, per_node_ports));
        }
        for (bin, side) in sides.iter_mut() {
            let tmp = tempfile::tempdir().expect("tmp");
            let site = lay_out(tmp.path(), n, sshd, &payload, START);
            spread_over_ports(&site, sshd, per_node_ports);
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
    if !all_at_once.is_empty() {
        println!(
            "{} cold `ssh true` at once, one per port: p50 {:.1} ms, p99 {:.1} ms",
            per_node_ports.len(),
            percentile(&all_at_once, 50.0),
            percentile(&all_at_once, 99.0)
        );
    }
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
