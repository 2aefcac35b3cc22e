//! Durable runs: journal, resume after SIGKILL at every step, the site lock,
//! Ctrl-C, and refusing to resume with changed inputs.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Child;

use serde_json::Value;

use crate::support::{fifo, journal_entries, run_id, Sandbox};

/// The comparable end state: database version and history, and each node's
/// manifest without timestamps.
pub(crate) fn end_state(sb: &Sandbox) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    out.insert("db_version".into(), Value::from(sb.db_version()));
    let names: Vec<String> = sb
        .db()
        .prepare("SELECT name FROM uprun_migration_history ORDER BY rowid")
        .expect("history")
        .query_map([], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("names");
    out.insert("history".into(), Value::from(names));
    for node in ["app01", "app02", "app03"] {
        let m = sb.manifest(node);
        let strip = |r: &Value| serde_json::json!({ "app": r["app_name"], "version": r["version"], "folder": r["folder"] });
        let removed: Vec<Value> = m["removed"]
            .as_array()
            .expect("removed")
            .iter()
            .map(strip)
            .collect();
        let mut used: Vec<Value> = m["used_folders"].as_array().expect("used").clone();
        used.sort_by_key(|v| v.to_string());
        // Started for real: the sandbox application's start command wrote it.
        let running = m["current"]["folder"].as_str().is_some_and(|f| {
            sb.dir
                .join("nodes")
                .join(node)
                .join(f)
                .join("service.state")
                .is_file()
        });
        out.insert(
            node.into(),
            serde_json::json!({ "current": strip(&m["current"]), "state": m["current"]["state"], "running": running, "removed": removed, "used": used }),
        );
    }
    out
}

/// The journal never shows an upgrade started before a verified backup was done.
fn assert_backup_before_upgrade(entries: &[Value]) {
    let mut verified_backup = false;
    for e in entries {
        if e["type"] == "done" && e["key"].as_str().unwrap_or("").starts_with("backup_db") {
            verified_backup |= e["result"]["verified"] == true;
        }
        if e["type"] == "started" && e["call"] == "upgrade_db" {
            assert!(
                verified_backup,
                "upgrade started without a verified backup: {entries:#?}"
            );
        }
    }
}

#[test]
fn killed_at_any_step_then_resumed_ends_like_a_clean_run() {
    let clean = Sandbox::new();
    clean
        .cmd("run", "in-place-upgrade", &["--yes"])
        .assert()
        .success();
    let expected = end_state(&clean);
    let clean_journal = journal_entries(&clean.journals()[0]);
    let kinds: Vec<String> = clean_journal
        .iter()
        .filter(|e| e["type"] == "started")
        .map(|e| e["call"].as_str().expect("call").to_string())
        .collect();
    assert_eq!(
        kinds.len(),
        12,
        "changing steps of the stock procedure: {kinds:?}"
    );

    let mut cases = 0;
    for (k, kind) in kinds.iter().enumerate() {
        let k = k + 1;
        let mut points = vec!["before", "after"];
        if matches!(
            kind.as_str(),
            "create_instance" | "upgrade_db" | "start_instance" | "stage_release"
        ) {
            points.push("inner");
        }
        for point in points {
            let sb = Sandbox::new();
            let fp = format!("step{k}:{point}");
            let out = sb
                .cmd("run", "in-place-upgrade", &["--yes"])
                .env("UPRUN_FAILPOINT", &fp)
                .output()
                .expect("run");
            assert_eq!(
                out.status.signal(),
                Some(9),
                "{fp} ({kind}): not killed; {out:?}"
            );
            let js = sb.journals();
            assert_eq!(js.len(), 1);
            let id = run_id(&js[0]);

            // A new run is refused while the killed one is unfinished.
            let fresh = sb
                .cmd("run", "in-place-upgrade", &["--yes"])
                .output()
                .expect("fresh run");
            assert_eq!(fresh.status.code(), Some(3), "{fp}");
            let said = String::from_utf8_lossy(&fresh.stderr);
            assert!(said.contains(&format!("--resume {id}")), "{fp}: {said}");

            let out = sb
                .cmd("run", "in-place-upgrade", &["--yes", "--resume", &id])
                .output()
                .expect("resume");
            assert!(
                out.status.success(),
                "{fp} ({kind}): resume failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            );
            assert_eq!(
                end_state(&sb),
                expected,
                "{fp} ({kind}): end state differs from a clean run"
            );
            let entries = journal_entries(&js[0]);
            assert_backup_before_upgrade(&entries);
            assert_eq!(entries.last().expect("end")["outcome"], "succeeded", "{fp}");
            cases += 1;
        }
    }
    assert_eq!(
        cases,
        12 * 2 + 5 + 3,
        "every step, before and after its change, and inside the long ones (and each staging)"
    );
}

#[test]
fn runs_lists_and_shows_the_journal() {
    let sb = Sandbox::new();
    sb.cmd("run", "in-place-upgrade", &["--yes"])
        .assert()
        .success();
    let out = sb.on_site(&["runs", "--json"]).output().expect("runs");
    assert!(out.status.success());
    let runs: Value = serde_json::from_slice(&out.stdout).expect("json");
    let runs = runs.as_array().expect("array");
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0]["outcome"], "succeeded");
    assert_eq!(runs[0]["steps_done"], 12);
    let id = runs[0]["run_id"].as_str().expect("id");
    let out = sb.on_site(&["runs", "show", id]).output().expect("show");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("started  upgrade database `app` from 1.0.0 to 2.0.0"),
        "{text}"
    );
    assert!(text.contains("succeeded"), "{text}");
    // Every change was announced before it was recorded done.
    let entries = journal_entries(&sb.journals()[0]);
    for e in entries.iter().filter(|e| e["type"] == "done") {
        let key = &e["key"];
        let started = entries
            .iter()
            .position(|s| s["type"] == "started" && &s["key"] == key);
        let done = entries.iter().position(|s| s == e);
        assert!(started < done, "{key} done before started");
    }
}

/// A site whose stop command on app02 reports it is running (writes to the
/// `ready` FIFO) and then waits for the test (reads the `gate` FIFO).
struct Gate {
    ready: PathBuf,
    gate: fifo::OpenOnDrop,
}

impl Gate {
    fn install(sb: &Sandbox) -> Gate {
        let ready = fifo::make(&sb.dir, "ready.fifo");
        let gate = fifo::make(&sb.dir, "gate.fifo");
        let site = std::fs::read_to_string(sb.site()).expect("site").replace(
            "stop = \"rm -f service.state\"",
            &format!(
                "stop = \"if [ {{node}} = app02 ]; then echo up > '{}'; cat '{}' > /dev/null; fi; rm -f service.state\"",
                ready.display(),
                gate.display()
            ),
        );
        std::fs::write(sb.site(), site).expect("write site");
        Gate {
            ready,
            gate: fifo::OpenOnDrop(gate),
        }
    }

    /// Wait (bounded) until the run is inside app02's stop command.
    fn wait_ready(&self, child: &mut Child) {
        fifo::wait_ready(&self.ready, child, "app02's stop command");
    }

    fn open(&self) {
        self.gate.open();
    }
}

/// A whole upgrade, one step at a time, app02's removal first (the gate).
const SEQUENTIAL_UPGRADE: &str = "backup_db();
remove_instance(\"app02\");
remove_instance(\"app03\");
remove_instance(\"app01\");
create_instance(\"app01\", #{ start: false });
upgrade_db();
start_instance(\"app01\");
create_instance(\"app02\");
create_instance(\"app03\");
";

fn spawn_run(sb: &Sandbox, script: &str, extra: &[&str]) -> Child {
    sb.spawn_run(&sb.site(), script, extra)
}

#[test]
fn a_second_run_on_a_locked_site_is_refused_and_changes_nothing() {
    let sb = Sandbox::new();
    let gate = Gate::install(&sb);
    // The first run goes one step at a time, so nothing else moves while it waits.
    let only = sb.script("only.rhai", SEQUENTIAL_UPGRADE);
    let mut first = spawn_run(&sb, only.to_str().expect("path"), &[]);
    gate.wait_ready(&mut first);
    let before = sb.snapshot();
    let second = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("second run");
    let err = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(3), "{err}");
    assert!(
        err.contains("is locked by run") && err.contains("still running"),
        "{err}"
    );
    sb.assert_unchanged(&before, "the refused run changed something");
    gate.open();
    let out = first.wait_with_output().expect("first run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sb.manifest("app02")["current"]["version"], "2.0.0");
    assert_eq!(sb.journals().len(), 1, "the refused run left no journal");
}

/// A run killed while it was starting a command leaves that command's
/// process holding the site's lock file (inherited until its `exec`
/// closes it): the next run waits for it briefly instead of calling a dead
/// run "still running", and when it is held on, says which process it is
/// about (here the test holds the lock, for a run whose process is gone).
#[test]
fn a_lock_held_on_for_a_dead_run_is_named_as_such_and_changes_nothing() {
    let sb = Sandbox::new();
    let mut gone = std::process::Command::new("true").spawn().expect("true");
    let pid = gone.id();
    gone.wait().expect("true exits");
    let state = sb.dir.join(".uprun");
    std::fs::create_dir_all(&state).expect("state dir");
    let lock = state.join("run.lock");
    std::fs::write(
        &lock,
        format!(
            r#"{{"run_id":"20261202-000000-dead","pid":{pid},"since":"2026-12-02T00:00:00Z"}}"#
        ),
    )
    .expect("lock file");
    let held = std::fs::File::open(&lock).expect("open lock");
    held.lock().expect("hold the lock");
    let before = sb.snapshot();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!("pid {pid}"))
            && err.contains("is gone")
            && err.contains("still holds"),
        "{err}"
    );
    sb.assert_unchanged(&before, "the refused run changed something");
    drop(held);
    // Let go: the next run takes the site.
    sb.cmd("run", "in-place-upgrade", &["--yes"])
        .assert()
        .success();
}

#[test]
fn ctrl_c_stops_after_the_current_step_and_the_run_resumes() {
    let sb = Sandbox::new();
    let gate = Gate::install(&sb);
    let mut run = spawn_run(&sb, "in-place-upgrade", &[]);
    gate.wait_ready(&mut run);
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(run.id() as i32, libc::SIGINT);
    }
    gate.open();
    let out = run.wait_with_output().expect("run");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("run interrupted") && text.contains("--resume"),
        "{text}"
    );
    // The step in progress (removal on app02) finished; nothing after it started.
    assert!(sb.manifest("app02")["current"].is_null());
    assert_eq!(sb.db_version(), "1.0.0");
    let js = sb.journals();
    let entries = journal_entries(&js[0]);
    assert_eq!(entries.last().expect("end")["outcome"], "interrupted");
    let id = run_id(&js[0]);
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes", "--resume", &id])
        .output()
        .expect("resume");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sb.db_version(), "2.0.0");
    assert_eq!(sb.manifest("app02")["current"]["version"], "2.0.0");
}

#[test]
fn resume_with_an_edited_script_is_refused_unless_accepted() {
    let sb = Sandbox::new();
    let script = "import \"std/cluster\" as cluster;\nlet b = backup_db();\nlet r = cluster::remove_all(1);\nif mode() == \"run\" { throw \"stop here\"; }\ncreate_instance(primary(), #{ start: false });\nupgrade_db();\nstart_instance(primary());\ncluster::configure_secondaries(site().app_name, 1);\n";
    let path = sb.script("proc.rhai", script);
    let p = path.to_str().expect("path");
    let out = sb.cmd("run", p, &["--yes"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let id = run_id(&sb.journals()[0]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("--resume {id}")));

    std::fs::write(
        &path,
        script.replace("throw \"stop here\";", "log(\"fixed\");"),
    )
    .expect("edit");
    let before = sb.snapshot();
    let out = sb
        .cmd("run", p, &["--yes", "--resume", &id])
        .output()
        .expect("resume");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("proc.rhai` changed") && err.contains("--accept-changed-inputs"),
        "{err}"
    );
    sb.assert_unchanged(&before, "changed");

    let out = sb
        .cmd(
            "run",
            p,
            &["--yes", "--resume", &id, "--accept-changed-inputs"],
        )
        .output()
        .expect("resume");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = journal_entries(&sb.journals()[0]);
    let resume = entries
        .iter()
        .find(|e| e["type"] == "resume")
        .expect("resume entry");
    assert!(resume["accepted_changes"][0]
        .as_str()
        .expect("change")
        .contains("proc.rhai"));
    // The earlier backup and removals were not done again.
    assert_eq!(sb.backups().len(), 1);
    let started = entries.iter().filter(|e| e["type"] == "started").count();
    assert_eq!(
        started, 9,
        "backup + 3 removals once each, then staging, the upgrade, the start and 2 creations: {entries:#?}"
    );
}

#[test]
fn an_abandoned_run_frees_the_site() {
    let sb = Sandbox::new();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .env("UPRUN_FAILPOINT", "step2:after")
        .output()
        .expect("run");
    assert_eq!(out.status.signal(), Some(9));
    let id = run_id(&sb.journals()[0]);
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("new run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stale lock") && err.contains(&id) && err.contains("runs abandon"),
        "{err}"
    );
    // `status` shows the unfinished run; `plan --resume` what resuming would do.
    let unfinished = |sb: &Sandbox| -> Vec<String> {
        let out = sb.on_site(&["status", "--json"]).output().expect("status");
        let v: Value = serde_json::from_slice(&out.stdout).expect("json");
        v["unfinished_runs"]
            .as_array()
            .expect("array")
            .iter()
            .map(|r| r["run_id"].as_str().expect("id").to_string())
            .collect()
    };
    assert_eq!(unfinished(&sb), vec![id.clone()]);
    let out = sb
        .cmd("plan", "in-place-upgrade", &["--json", "--resume", &id])
        .output()
        .expect("plan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let planned = crate::support::planned(&out.stdout);
    let done_earlier = planned
        .iter()
        .filter(|e| {
            e["description"]
                .as_str()
                .unwrap_or("")
                .starts_with("done in an earlier attempt")
        })
        .count();
    // The secondaries' removals run in parallel: the other one may have
    // finished before the kill too. The journal says which are done.
    let done_in_journal = journal_entries(&sb.journals()[0])
        .iter()
        .filter(|e| e["type"] == "done")
        .count();
    assert!(done_in_journal >= 1, "the backup at least was done");
    assert_eq!(done_earlier, done_in_journal, "{planned:#?}");
    assert_eq!(
        planned.iter().filter(|e| e["changes"] == true).count(),
        12 - done_in_journal,
        "the rest of the 12 changing steps is still to do: {planned:#?}"
    );
    // The run was killed right after staging the payload on a node: the
    // staged files are outside any instance, and abandoning removes them.
    let staging = |sb: &Sandbox| -> Vec<String> {
        ["app01", "app02", "app03"]
            .into_iter()
            .filter(|n| sb.dir.join("nodes").join(n).join(".uprun-staging").exists())
            .map(str::to_string)
            .collect()
    };
    assert!(!staging(&sb).is_empty(), "step 2 staged a node's payload");
    let out = sb
        .on_site(&["runs", "abandon", &id])
        .output()
        .expect("abandon");
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("staged payload(s)"),
        "{out:?}"
    );
    assert!(
        staging(&sb).is_empty(),
        "abandon removed the staged payloads"
    );
    assert!(unfinished(&sb).is_empty());
    sb.cmd("run", "in-place-upgrade", &["--yes"])
        .assert()
        .success();
    assert_eq!(sb.db_version(), "2.0.0");
}

#[test]
fn ctrl_c_stops_a_script_busy_between_steps() {
    let sb = Sandbox::new();
    let ready = fifo::make(&sb.dir, "busy.fifo");
    let script = sb.script(
        "busy.rhai",
        &format!(
            "node_command(primary(), \"echo up > '{}'\");\nif mode() == \"run\" {{\n    let i = 0;\n    loop {{ i += 1; }}\n}}\n",
            ready.display()
        ),
    );
    let mut run = spawn_run(&sb, script.to_str().expect("path"), &[]);
    fifo::wait_ready(&ready, &mut run, "its loop");
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(run.id() as i32, libc::SIGINT);
    }
    let out = run.wait_with_output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("stopped by the operator"), "{err}");
}
