//! Wall time of `uprun check` on the stock script and `uprun plan` on the demo
//! sandbox, against the bare start-up of the same binary (`uprun --version`),
//! measured in the same run.
//!
//!     cargo bench --bench cli_latency

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const RUNS: usize = 21;

fn median_ms(args: &[&str], cwd: &Path) -> f64 {
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            let st = Command::new(env!("CARGO_BIN_EXE_uprun"))
                .args(args)
                .current_dir(cwd)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("uprun");
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            assert!(st.success(), "uprun {args:?} failed");
            ms
        })
        .collect();
    times.sort_by(|a, b| a.partial_cmp(b).expect("not NaN"));
    times[RUNS / 2]
}

fn main() {
    let tmp = tempfile::tempdir().expect("tmp");
    let cwd = tmp.path();
    let st = Command::new(env!("CARGO_BIN_EXE_uprun"))
        .args(["demo", "--setup-only", "--dir", "sb"])
        .current_dir(cwd)
        .stdout(Stdio::null())
        .status()
        .expect("demo");
    assert!(st.success());
    let base = median_ms(&["--version"], cwd);
    let check = median_ms(&["check", "in-place-upgrade"], cwd);
    let plan = median_ms(
        &[
            "plan",
            "in-place-upgrade",
            "--site",
            "sb/site.toml",
            "--release",
            "sb/release",
        ],
        cwd,
    );
    println!("median wall time of {RUNS} runs:");
    println!("  uprun --version (start-up baseline) {base:>7.1} ms");
    println!(
        "  uprun check in-place-upgrade        {check:>7.1} ms  ({:.1}x baseline)",
        check / base
    );
    println!(
        "  uprun plan in-place-upgrade (demo)  {plan:>7.1} ms  ({:.1}x baseline)",
        plan / base
    );
}
