//! Journal overhead per step: the two durable appends (`started`, `done`)
//! that bracket every change, against the same appends without fsync,
//! measured in the same run.
//!
//!     cargo bench --bench journal

use std::time::Instant;

use serde_json::json;
use uprun::journal::{Entry, Journal};

const STEPS: usize = 200;

fn run(journal: &Journal, durable: bool, file: &std::path::Path) -> f64 {
    let t = Instant::now();
    for i in 0..STEPS {
        let key = format!("create_instance:app{:02}#1", i % 16);
        let started = Entry::Started {
            key: key.clone(),
            call: "create_instance".into(),
            node: Some(format!("app{:02}", i % 16)),
            description: "create instance FastApp 2.0.0 on `app01` in new folder `FastApp-2.0.0`"
                .into(),
            intent: json!({ "node": "app01", "app_name": "FastApp", "version": "2.0.0", "folder": "FastApp-2.0.0" }),
            at: "2026-11-25T00:00:00Z".into(),
            within: None,
        };
        let done = Entry::Done {
            key,
            result: json!({ "node": "app01", "app_name": "FastApp", "version": "2.0.0", "folder": "FastApp-2.0.0" }),
            ms: 12,
            at: "2026-11-25T00:00:00Z".into(),
        };
        if durable {
            journal.append(&started).expect("append");
            journal.append(&done).expect("append");
        } else {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(file)
                .expect("open");
            for e in [&started, &done] {
                let mut line = serde_json::to_vec(e).expect("json");
                line.push(b'\n');
                f.write_all(&line).expect("write");
            }
        }
    }
    t.elapsed().as_secs_f64() * 1000.0 / STEPS as f64
}

fn main() {
    // On the same disk as the build, as a site's state folder would be.
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-journal");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("dir");
    std::fs::write(base.join("site.toml"), "[application]\nname = \"B\"\n[database]\nkind = \"sqlite\"\npath = \"x.sqlite\"\nbackup_dir = \"b\"\n[[node]]\nname = \"n\"\nrole = \"primary\"\nroot = \".\"\n").expect("site");
    let site = uprun::config::Site::load(&base.join("site.toml")).expect("site");
    let j = Journal::create(&site, "bench").expect("journal");
    let plain = base.join("plain.jsonl");
    std::fs::write(&plain, "").expect("plain");
    let buffered = run(&j, false, &plain);
    let durable = run(&j, true, &plain);
    println!("journal cost per step (started + done), {STEPS} steps:");
    println!("  appends without fsync (baseline) {buffered:>7.3} ms");
    println!(
        "  durable appends (fsync each)     {durable:>7.3} ms  ({:.0}x baseline)",
        durable / buffered
    );
    let _ = std::fs::remove_dir_all(&base);
}
