//! Instances are healthy or not done: the lifecycle (staged -> started ->
//! healthy, or failed) recorded on the node, the vendor's order (the new
//! application only starts against a database at its version), and runs that
//! act on what the nodes and the database say now: a resume or a new run
//! after `runs abandon` reaches the clean run's end state without churn.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Output;

use serde_json::Value;

use crate::durable::end_state;
use crate::support::{fifo, journal_entries, run_id, uprun, Sandbox};

fn edit_site(sb: &Sandbox, from: &str, to: &str) {
    let text = std::fs::read_to_string(sb.site()).expect("site");
    assert!(text.contains(from), "site lacks {from:?}");
    std::fs::write(sb.site(), text.replacen(from, to, 1)).expect("write site");
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stock(sb: &Sandbox, extra: &[&str]) -> Output {
    sb.cmd("run", "in-place-upgrade", extra)
        .output()
        .expect("run")
}

fn resume(sb: &Sandbox, id: &str) -> Output {
    stock(sb, &["--yes", "--resume", id])
}

fn abandon(sb: &Sandbox, id: &str) {
    sb.on_site(&["runs", "abandon", id]).assert().success();
}

/// The end state of a clean stock run on a fresh sandbox.
fn clean_end_state() -> BTreeMap<String, Value> {
    let clean = Sandbox::new();
    let out = stock(&clean, &["--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    end_state(&clean)
}

/// Every node's manifest has no instance left half laid out.
fn assert_nothing_pending(sb: &Sandbox) {
    for node in ["app01", "app02", "app03"] {
        assert!(
            sb.manifest(node).get("pending").is_none(),
            "{node}: {:#}",
            sb.manifest(node)
        );
    }
}

/// A flag file whose presence makes a service command fail.
fn flag(sb: &Sandbox, name: &str) -> PathBuf {
    let p = sb.dir.join(name);
    std::fs::write(&p, "").expect("flag");
    p
}

#[test]
fn the_sandbox_application_only_starts_on_a_database_at_its_version() {
    let sb = Sandbox::new();
    let folder = sb.dir.join("nodes/app01/FastApp-1.0.0");
    let check = |version: &str| {
        uprun()
            .current_dir(&folder)
            .args([
                "sandbox-app",
                "check-db",
                "--database",
                "../../../db/app.sqlite",
                "--version",
                version,
            ])
            .output()
            .expect("check")
    };
    assert!(check("1.0.0").status.success());
    let out = check("2.0.0");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("FastApp 2.0.0 cannot start") && text(&out).contains("is at 1.0.0"),
        "{}",
        text(&out)
    );
}

#[test]
fn starting_before_the_upgrade_is_refused_at_plan_and_changes_nothing() {
    let sb = Sandbox::new();
    let removals = "backup_db();\nfor n in secondaries() { remove_instance(n); }\nremove_instance(primary());\n";
    for tail in [
        // The old order: a started instance before the upgrade.
        "create_instance(primary());\nupgrade_db();\nfor n in secondaries() { create_instance(n); }\n",
        // Staged, but started before the upgrade.
        "create_instance(primary(), #{ start: false });\nstart_instance(primary());\nupgrade_db();\nfor n in secondaries() { create_instance(n); }\n",
    ] {
        let path = sb.script("early.rhai", &format!("{removals}{tail}"));
        let before = sb.snapshot();
        let out = sb
            .cmd("run", path.to_str().expect("path"), &["--yes"])
            .output()
            .expect("run");
        let all = text(&out);
        assert_eq!(out.status.code(), Some(3), "{all}");
        assert!(
            all.contains("starting FastApp 2.0.0 on `app01` against database `app` at 1.0.0")
                && all.contains("#{ start: false }")
                && all.contains("start_instance(node)")
                && all.contains("early.rhai:"),
            "{all}"
        );
        sb.assert_unchanged(&before, "a refused plan changed something");
        assert!(sb.backups().is_empty());
    }
    // `start_instance` without an instance says what to do.
    let path = sb.script("nothing.rhai", "for n in secondaries() { remove_instance(n); }\nremove_instance(primary());\nstart_instance(primary());\n");
    let out = sb
        .cmd("plan", path.to_str().expect("path"), &[])
        .output()
        .expect("plan");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("no instance to start"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_primary_that_fails_to_start_leaves_a_clear_message_and_a_resume_converges() {
    let expected = clean_end_state();
    let sb = Sandbox::new();
    let broken = flag(&sb, "start-broken");
    edit_site(
        &sb,
        "start = \"",
        &format!(
            "start = \"if [ -e '{}' ]; then echo the service will not start >&2; exit 7; fi; ",
            broken.display()
        ),
    );
    let out = stock(&sb, &["--yes"]);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains("node `app01`: start command")
            && all.contains("the service will not start")
            && all.contains("recorded as failed")
            && all.contains("resume"),
        "{all}"
    );
    // The vendor's order: the database was upgraded (after the backup), the
    // primary was staged and failed to start, no secondary was configured.
    assert_eq!(sb.db_version(), "2.0.0");
    assert_eq!(sb.manifest("app01")["current"]["state"], "failed");
    for n in ["app02", "app03"] {
        assert!(sb.manifest(n)["current"].is_null(), "{n}");
    }
    let id = run_id(&sb.journals()[0]);
    // Nothing fixed: the start runs again, fails again, never `succeeded`.
    let out = resume(&sb, &id);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(!text(&out).contains("nothing to create"), "{}", text(&out));
    std::fs::remove_file(&broken).expect("fix");
    let out = resume(&sb, &id);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(end_state(&sb), expected);
    assert_eq!(sb.backups().len(), 1);
    let entries = journal_entries(&sb.journals()[0]);
    assert_eq!(entries.last().expect("end")["outcome"], "succeeded");
    // The upgrade ran once; the staged primary was never created again.
    let started = |call: &str| {
        entries
            .iter()
            .filter(|e| e["type"] == "started" && e["call"] == call)
            .count()
    };
    assert_eq!(started("upgrade_db"), 1);
    assert_eq!(started("backup_db"), 1);
    assert_eq!(
        started("start_instance"),
        3,
        "three attempts to start app01"
    );
}

#[test]
fn a_health_check_failing_once_is_rechecked_on_resume_without_recreating() {
    let expected = clean_end_state();
    let sb = Sandbox::new();
    let broken = flag(&sb, "health-broken");
    edit_site(
        &sb,
        "health = \"",
        &format!(
            "health = \"if [ -e '{}' ] && [ {{node}} = app02 ]; then exit 1; fi; ",
            broken.display()
        ),
    );
    let out = stock(&sb, &["--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("node `app02`: health command"),
        "{}",
        text(&out)
    );
    assert_eq!(sb.manifest("app02")["current"]["state"], "failed");
    let id = run_id(&sb.journals()[0]);
    std::fs::remove_file(&broken).expect("fix");
    let out = resume(&sb, &id);
    assert!(out.status.success(), "{}", text(&out));
    let acted: Vec<String> = text(&out)
        .lines()
        .filter(|l| !l.contains("done in an earlier attempt") && !l.contains("  done: "))
        .map(str::to_string)
        .collect();
    assert!(
        acted
            .iter()
            .all(|l| !l.contains("stage instance") && !l.contains("new folder")),
        "nothing created again: {}",
        text(&out)
    );
    assert_eq!(end_state(&sb), expected);
}

#[test]
fn a_node_found_not_running_after_success_is_started_again_without_churn() {
    let sb = Sandbox::new();
    let out = stock(&sb, &["--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let expected = end_state(&sb);
    // app02's service went away (the node rebooted); its manifest still
    // says healthy. A new run observes it.
    std::fs::remove_file(sb.dir.join("nodes/app02/FastApp-2.0.0/service.state")).expect("stop");
    let out = stock(&sb, &["--yes"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("app02 runs FastApp 2.0.0, not healthy")
            || all.contains("start instance FastApp 2.0.0 on `app02`"),
        "{all}"
    );
    assert_eq!(end_state(&sb), expected);
    assert_eq!(
        sb.backups().len(),
        1,
        "no backup: the database needs no upgrade"
    );
    assert!(!all.contains("remove instance"), "{all}");
}

#[test]
fn a_power_loss_while_the_secondaries_start_is_reconciled_on_resume() {
    let expected = clean_end_state();
    let sb = Sandbox::new();
    let ready = fifo::make(&sb.dir, "ready.fifo");
    let gate = fifo::OpenOnDrop(fifo::make(&sb.dir, "gate.fifo"));
    let once = sb.dir.join("held-once");
    // app03's start command holds, once, after telling the test its process
    // group; the test then kills uprun and that group (a power loss).
    edit_site(
        &sb,
        "start = \"",
        &format!(
            "start = \"if [ {{node}} = app03 ] && [ ! -e '{once}' ]; then touch '{once}'; echo $$ > '{ready}'; cat '{gate}' > /dev/null; fi; ",
            once = once.display(),
            ready = ready.display(),
            gate = gate.0.display()
        ),
    );
    let mut run = sb.spawn_run(&sb.site(), "in-place-upgrade", &[]);
    let (tx, rx) = std::sync::mpsc::channel();
    let r = ready.clone();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read_to_string(r));
    });
    let group: i32 = match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(t) => t.expect("ready").trim().parse().expect("pid"),
        Err(_) => {
            let _ = run.kill();
            panic!("the run never reached app03's start command");
        }
    };
    // SAFETY: killing our own child and the process group of its command.
    unsafe {
        libc::kill(run.id() as i32, libc::SIGKILL);
        libc::kill(-group, libc::SIGKILL);
    }
    let out = fifo::finish(run);
    assert_eq!(out.status.signal(), Some(9));
    assert_ne!(sb.manifest("app03")["current"]["state"], "healthy");
    let id = run_id(&sb.journals()[0]);
    let out = resume(&sb, &id);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !text(&out).contains("nothing to do"),
        "the resume believed the manifests: {}",
        text(&out)
    );
    assert_eq!(end_state(&sb), expected);
    assert_nothing_pending(&sb);
}

#[test]
fn abandon_then_a_new_run_from_each_partial_state_ends_like_a_clean_run() {
    let expected = clean_end_state();
    // Steps of the clean stock run: 1 backup, 2-4 payloads staged before
    // the window, 5-6 secondaries removed, 7 primary removed, 8 primary
    // staged, 9 database upgraded, 10 primary started, 11-12 secondaries
    // created.
    for (failpoint, upgraded) in [
        ("step7:after", false), // after the removals
        ("step8:inner", false), // while staging the primary (files half copied)
        ("step8:after", false), // after staging
        ("step9:after", true),  // after the upgrade
        ("step10:inner", true), // started, health not yet checked
        ("step10:after", true), // after the primary's start
        ("step11:inner", true), // while creating a secondary
    ] {
        let sb = Sandbox::new();
        let out = sb
            .cmd("run", "in-place-upgrade", &["--yes"])
            .env("UPRUN_FAILPOINT", failpoint)
            .output()
            .expect("run");
        assert_eq!(out.status.signal(), Some(9), "{failpoint}: {}", text(&out));
        let id = run_id(&sb.journals()[0]);
        abandon(&sb, &id);
        let out = stock(&sb, &["--yes"]);
        let all = text(&out);
        assert!(out.status.success(), "{failpoint}: {all}");
        assert_eq!(end_state(&sb), expected, "{failpoint}: {all}");
        assert_nothing_pending(&sb);
        // A new run is a new run: it takes its own verified backup before
        // its upgrade; once the database is at the release, none is needed.
        let backups = if upgraded { 1 } else { 2 };
        assert_eq!(sb.backups().len(), backups, "{failpoint}: {all}");
        if upgraded {
            assert!(!all.contains("remove instance"), "{failpoint}: {all}");
        }
    }
}

/// A small deterministic generator (xorshift64*), so that a failing trial can
/// be replayed from its printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn killed_at_random_points_during_runs_and_resumes_converges() {
    // UPRUN_CHAOS_SEED=<n> replays a trial sequence; UPRUN_CHAOS_TRIALS=<n>
    // runs more of them.
    let seed: u64 = std::env::var("UPRUN_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        .max(1);
    let trials: usize = std::env::var("UPRUN_CHAOS_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    eprintln!("chaos seed: {seed} (replay with UPRUN_CHAOS_SEED={seed})");
    let mut rng = Rng(seed);
    let expected = clean_end_state();
    for trial in 0..trials {
        let sb = Sandbox::new();
        let mut log: Vec<String> = Vec::new();
        let mut id: Option<String> = None;
        // Up to four killed attempts, then one that must finish.
        let attempts = 1 + rng.below(4);
        for attempt in 0..=attempts {
            let last = attempt == attempts;
            let failpoint = (!last).then(|| {
                let step = 1 + rng.below(9);
                let point = ["before", "inner", "after"][rng.below(3) as usize];
                format!("step{step}:{point}")
            });
            // Go on with the killed run, or abandon it and start a new one.
            let abandon_it = id.is_some() && rng.below(3) == 0;
            if abandon_it {
                if let Some(old) = id.take() {
                    abandon(&sb, &old);
                }
            }
            let mut cmd = match &id {
                Some(old) => sb.cmd("run", "in-place-upgrade", &["--yes", "--resume", old]),
                None => sb.cmd("run", "in-place-upgrade", &["--yes"]),
            };
            if let Some(fp) = &failpoint {
                cmd.env("UPRUN_FAILPOINT", fp);
            }
            log.push(format!(
                "{}{} at {}",
                if abandon_it { "abandon, " } else { "" },
                if id.is_some() { "resume" } else { "run" },
                failpoint.as_deref().unwrap_or("no failpoint")
            ));
            let out = cmd.output().expect("run");
            let ctx = format!("seed {seed}, trial {trial}: {log:?}");
            match out.status.signal() {
                Some(9) => {
                    assert!(!last, "{ctx}");
                    // The killed run is the one journal without an end.
                    let unfinished: Vec<PathBuf> = sb
                        .journals()
                        .into_iter()
                        .filter(|j| journal_entries(j).last().is_none_or(|e| e["type"] != "end"))
                        .collect();
                    assert_eq!(unfinished.len(), 1, "{ctx}");
                    id = Some(run_id(&unfinished[0]));
                }
                _ => {
                    assert!(out.status.success(), "{ctx}: {}", text(&out));
                    break;
                }
            }
        }
        let ctx = format!("seed {seed}, trial {trial}: {log:?}");
        assert_eq!(end_state(&sb), expected, "{ctx}");
        assert_nothing_pending(&sb);
        // Every journal ended, and the database was never upgraded twice.
        let history: i64 = sb
            .db()
            .query_row("SELECT count(*) FROM uprun_migration_history", [], |r| {
                r.get(0)
            })
            .expect("history");
        assert_eq!(history, 3, "{ctx}");
    }
}
