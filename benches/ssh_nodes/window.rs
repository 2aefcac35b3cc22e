//! The `window` part: the stock procedure's downtime window, before and after staging.

use std::path::{Path, PathBuf};

use crate::sshd::Sshd;
use crate::{
    env_usize, fmt, fmt_ratio, lay_out, load, make_payload, sorted_files, uprun_run, START,
};

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

/// Per kind of step, the median time from its `started` to its `done` entry
/// (ms), in journal order of first appearance: where a window's time goes.
fn step_medians(entries: &[uprun::journal::Entry]) -> String {
    use uprun::journal::Entry;
    let mut started = std::collections::HashMap::new();
    let mut by_kind: Vec<(String, Vec<f64>)> = Vec::new();
    for e in entries {
        match e {
            Entry::Started { key, call, at, .. } => {
                started.insert(key.clone(), (call.clone(), at_ms(at)));
            }
            Entry::Done { key, at, .. } => {
                if let Some((call, t0)) = started.get(key) {
                    let ms = at_ms(at) - t0;
                    match by_kind.iter_mut().find(|(k, _)| k == call) {
                        Some((_, v)) => v.push(ms),
                        None => by_kind.push((call.clone(), vec![ms])),
                    }
                }
            }
            _ => {}
        }
    }
    by_kind
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(f64::total_cmp);
            format!("{k} {:.1} ms (x{})", v[v.len() / 2], v.len())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The downtime window of the stock procedure with a 20 MB payload on 16
/// nodes, before (the payload copied inside the window) and after (staged
/// before it, renamed inside), excluding backup and migrations, against the
/// stop + start + health commands alone (`stop_instance` then
/// `start_instance` on every node in the stock order and parallelism).
/// Interleaved rounds (`UPRUN_BENCH_ROUNDS`, default 3).
pub(super) fn window(sshd: &Sshd) {
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
            println!(
                "    parts: {}, between steps {:.0} ms; steps (median): {}",
                w.parts
                    .iter()
                    .map(|(k, ms)| format!("{k} {ms:.0} ms"))
                    .collect::<Vec<_>>()
                    .join(", "),
                w.other_ms,
                step_medians(&entries)
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
                println!("    steps (median): {}", step_medians(&entries));
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
