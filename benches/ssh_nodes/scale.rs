//! The `scale` part: 200 nodes behind one sshd, `parallel = 32`.

use crate::sshd::Sshd;
use crate::{
    assert_cycled, env_usize, lay_out, load, make_payload, sshd_cpu_s, uprun_bin, uprun_run, START,
};

/// 200 nodes behind one sshd, parallel = 32, a 200 ms start command.
pub(super) fn scale(sshd: &Sshd) {
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
