//! Recovery after crashes, through the binary: a SQLite hot journal left by a
//! kill inside a migration, torn and damaged run journals, a journal without
//! header, resume from another folder, one consent up front (on a real
//! terminal), and what `status` and a failed run tell the operator.

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{events, uprun, Sandbox};

fn journals(sb: &Sandbox) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(sb.dir.join(".uprun/runs")) {
        Ok(it) => it.map(|e| e.expect("entry").path()).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

fn run_id(path: &Path) -> String {
    path.file_name()
        .expect("name")
        .to_string_lossy()
        .trim_end_matches(".jsonl")
        .to_string()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Kill the stock procedure with a failpoint; returns the run id.
fn killed_at(sb: &Sandbox, point: &str) -> String {
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .env("UPRUN_FAILPOINT", point)
        .output()
        .expect("run");
    assert_eq!(out.status.signal(), Some(9), "{point}: {}", text(&out));
    let js = journals(sb);
    assert_eq!(js.len(), 1);
    run_id(&js[0])
}

fn status(sb: &Sandbox) -> (std::process::Output, Value) {
    let out = uprun()
        .args(["status", "--json", "--site"])
        .arg(sb.site())
        .output()
        .expect("status");
    assert!(out.status.success(), "status: {}", text(&out));
    let v = serde_json::from_slice(&out.stdout).expect("status json");
    (out, v)
}

fn db_journal(sb: &Sandbox) -> PathBuf {
    sb.dir.join("db/app.sqlite-journal")
}

/// A first migration that writes more than SQLite's page cache holds, so
/// the transaction spills pages into the database file before its commit:
/// killed there, it leaves a hot journal (a small one would not).
fn add_bulk_migration(sb: &Sandbox) {
    std::fs::write(
        sb.release().join("migrations/sqlite/2.0.0_00_bulk.sql"),
        "CREATE TABLE bulk (x BLOB);\nWITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 20000) INSERT INTO bulk SELECT randomblob(300) FROM c;\n",
    )
    .expect("write migration");
}

/// The database file and its hot journal, as the kill left them.
struct Crashed {
    db: Vec<u8>,
    journal: Vec<u8>,
}

impl Crashed {
    fn take(sb: &Sandbox) -> Crashed {
        Crashed {
            db: std::fs::read(sb.db_path()).expect("db"),
            journal: std::fs::read(db_journal(sb)).expect("hot journal"),
        }
    }

    /// Put the crashed database back (each recovery consumes the journal).
    fn restore(&self, sb: &Sandbox) {
        std::fs::write(sb.db_path(), &self.db).expect("db");
        std::fs::write(db_journal(sb), &self.journal).expect("journal");
    }
}

#[test]
fn a_hot_sqlite_journal_from_a_kill_in_a_migration_is_rolled_back_by_status_plan_resume_and_new_runs(
) {
    let sb = Sandbox::new();
    add_bulk_migration(&sb);
    let id = killed_at(&sb, "sqlite:before-commit");
    let crashed = Crashed::take(&sb);
    // The precondition: a real hot journal, which a read-only connection
    // cannot roll back.
    let ro = rusqlite::Connection::open_with_flags(
        sb.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open read-only");
    let err = ro
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .expect_err("a hot journal blocks read-only connections");
    assert!(err.to_string().contains("readonly"), "{err}");
    drop(ro);

    // status: rolls back, says so, and shows the killed run.
    let (out, v) = status(&sb);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rolled back") && err.contains("app.sqlite-journal"),
        "{err}"
    );
    assert!(!db_journal(&sb).exists(), "the hot journal was played back");
    assert_eq!(v["database_version"], "1.0.0");
    assert_eq!(v["migrations_applied"], 0, "the migration was undone");
    assert_eq!(v["unfinished_runs"][0]["run_id"], id.as_str());

    // plan --resume.
    crashed.restore(&sb);
    let out = sb
        .cmd("plan", "in-place-upgrade", &["--resume", &id])
        .output()
        .expect("plan");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("rolled back"), "{}", text(&out));

    // A new run after abandon.
    crashed.restore(&sb);
    uprun()
        .args(["runs", "abandon", &id, "--site"])
        .arg(sb.site())
        .assert()
        .success();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("new run");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("rolled back"), "{}", text(&out));
    assert_eq!(sb.db_version(), "2.0.0");
}

#[test]
fn a_run_killed_inside_a_migration_resumes_after_the_rollback() {
    let sb = Sandbox::new();
    add_bulk_migration(&sb);
    let id = killed_at(&sb, "sqlite:before-commit");
    assert!(db_journal(&sb).exists());
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes", "--resume", &id])
        .output()
        .expect("resume");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("rolled back"), "{}", text(&out));
    assert!(!db_journal(&sb).exists());
    assert_eq!(sb.db_version(), "2.0.0");
    let applied: i64 = sb
        .db()
        .query_row("SELECT count(*) FROM uprun_migration_history", [], |r| {
            r.get(0)
        })
        .expect("history");
    assert_eq!(applied, 4, "every migration once");
    for node in ["app01", "app02", "app03"] {
        assert_eq!(sb.manifest(node)["current"]["version"], "2.0.0", "{node}");
    }
}

#[test]
fn a_torn_last_journal_line_is_set_aside_and_the_run_resumes() {
    let sb = Sandbox::new();
    let id = killed_at(&sb, "step3:before");
    let path = journals(&sb)[0].clone();
    let fragment = b"{\"type\":\"started\",\"key\":\"remove_instance:app01#1\",\"ca";
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("journal")
        .write_all(fragment)
        .expect("tear");

    // Readers go on.
    let out = uprun()
        .args(["runs", "--site"])
        .arg(sb.site())
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&id), "{}", text(&out));
    let out = uprun()
        .args(["runs", "show", &id, "--site"])
        .arg(sb.site())
        .output()
        .expect("show");
    assert!(out.status.success(), "{}", text(&out));
    let (_, v) = status(&sb);
    assert_eq!(v["unfinished_runs"][0]["run_id"], id.as_str());

    // A new run is refused: the torn run still holds the site.
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("new run");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("--resume {id}")),
        "{}",
        text(&out)
    );

    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes", "--resume", &id])
        .output()
        .expect("resume");
    assert!(out.status.success(), "{}", text(&out));
    let side = PathBuf::from(format!("{}.torn", path.display()));
    assert!(
        text(&out).contains("torn") && text(&out).contains(&side.display().to_string()),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read(&side).expect("side file"), fragment);
    // Every line of the journal is a complete entry, and the repair is noted.
    let body = std::fs::read_to_string(&path).expect("journal");
    let entries: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).expect("complete entry"))
        .collect();
    assert!(entries
        .iter()
        .any(|e| e["type"] == "note" && e["message"].as_str().unwrap_or("").contains("torn")));
    assert_eq!(entries.last().expect("end")["outcome"], "succeeded");
    assert_eq!(sb.db_version(), "2.0.0");
}

#[test]
fn a_journal_damaged_in_the_middle_is_listed_as_damaged_and_can_be_set_aside() {
    let sb = Sandbox::new();
    let id = killed_at(&sb, "step2:after");
    let path = journals(&sb)[0].clone();
    let body = std::fs::read_to_string(&path).expect("journal");
    let mut lines: Vec<&str> = body.lines().collect();
    assert!(lines.len() >= 3);
    lines[1] = "{\"type\":\"done\",\"key\":";
    std::fs::write(&path, format!("{}\n", lines.join("\n"))).expect("damage");

    let out = uprun()
        .args(["runs", "--site"])
        .arg(sb.site())
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("damaged"), "{}", text(&out));
    let (_, v) = status(&sb);
    assert_eq!(v["unfinished_runs"][0]["outcome"], "damaged");
    assert!(v["unfinished_runs"][0]["resume"].is_null());
    let out = uprun()
        .args(["runs", "show", &id, "--site"])
        .arg(sb.site())
        .output()
        .expect("show");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains(&path.display().to_string()) && text(&out).contains("line 2"),
        "{}",
        text(&out)
    );
    // Resume refuses with the same clear error; a new run is refused too.
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes", "--resume", &id])
        .output()
        .expect("resume");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("line 2"), "{}", text(&out));
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("new run");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("cannot be read") && text(&out).contains("runs abandon"),
        "{}",
        text(&out)
    );

    let out = uprun()
        .args(["runs", "abandon", &id, "--site"])
        .arg(sb.site())
        .output()
        .expect("abandon");
    assert!(out.status.success(), "{}", text(&out));
    let aside = PathBuf::from(format!("{}.damaged", path.display()));
    assert!(aside.exists(), "{}", text(&out));
    sb.cmd("run", "in-place-upgrade", &["--yes"])
        .assert()
        .success();
    assert_eq!(sb.db_version(), "2.0.0");
}

#[test]
fn a_journal_without_header_is_a_run_that_never_started() {
    let sb = Sandbox::new();
    let id = "20260101-000000-dead";
    // The disk filled up while the header was written: a lock naming the
    // run, and a journal holding a piece of its first line.
    let state = sb.dir.join(".uprun");
    std::fs::create_dir_all(state.join("runs")).expect("state");
    std::fs::write(
        state.join("run.lock"),
        format!("{{\"run_id\":\"{id}\",\"pid\":1,\"since\":\"2026-01-01T00:00:00Z\"}}"),
    )
    .expect("lock");
    std::fs::write(
        state.join(format!("runs/{id}.jsonl")),
        "{\"type\":\"run\",\"run_",
    )
    .expect("journal");

    let out = uprun()
        .args(["runs", "--site"])
        .arg(sb.site())
        .output()
        .expect("runs");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("never started"), "{}", text(&out));
    let out = uprun()
        .args(["status", "--site"])
        .arg(sb.site())
        .output()
        .expect("status");
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("never started") && t.contains("runs abandon"),
        "{t}"
    );
    assert!(
        !t.contains("uprun run "),
        "no resume command without a script: {t}"
    );

    let before = sb.snapshot();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes", "--resume", id])
        .output()
        .expect("resume");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("never started") && text(&out).contains("new run"),
        "{}",
        text(&out)
    );
    sb.assert_unchanged(&before, "the refused resume changed something");
    // It does not hold the site: a new run goes ahead.
    sb.cmd("run", "in-place-upgrade", &["--yes"])
        .assert()
        .success();
    assert_eq!(sb.db_version(), "2.0.0");
}

#[test]
fn status_gives_the_exact_resume_command_and_it_works_from_another_folder() {
    let sb = Sandbox::new();
    std::fs::write(
        sb.dir.join("proc.rhai"),
        "import \"std/cluster\" as cluster;\nlet b = backup_db();\nlet r = cluster::remove_all(1);\ncreate_instance(primary(), #{ start: false });\nupgrade_db();\nstart_instance(primary());\ncluster::configure_secondaries(site().app_name, 1);\n",
    )
    .expect("script");
    // Started with paths relative to the sandbox folder.
    let out = uprun()
        .current_dir(&sb.dir)
        .args([
            "run",
            "proc.rhai",
            "--site",
            "site.toml",
            "--release",
            "release",
            "--yes",
        ])
        .env("UPRUN_FAILPOINT", "step1:before")
        .output()
        .expect("run");
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    let id = run_id(&journals(&sb)[0]);

    let out = uprun()
        .args(["status", "--site"])
        .arg(sb.site())
        .output()
        .expect("status");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let dir = sb.dir.display().to_string();
    let resume = t
        .lines()
        .find_map(|l| l.trim().strip_prefix("resume:"))
        .unwrap_or_else(|| panic!("no resume command: {t}"))
        .trim()
        .to_string();
    assert_eq!(
        resume,
        format!(
            "uprun run {dir}/proc.rhai --site {dir}/site.toml --release {dir}/release --resume {id} --yes"
        )
    );
    assert!(
        t.contains(&format!(
            "abandon: uprun runs abandon {id} --site {dir}/site.toml"
        )),
        "{t}"
    );

    // Run exactly that, from another folder.
    let elsewhere = tempfile::tempdir().expect("tmp");
    let args: Vec<&str> = resume.split_whitespace().skip(1).collect();
    let out = uprun()
        .current_dir(elsewhere.path())
        .args(&args)
        .output()
        .expect("resume");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sb.db_version(), "2.0.0");
}

#[test]
fn a_failed_run_is_listed_by_status_and_its_summary_names_each_step_once() {
    let sb = Sandbox::new();
    let site = std::fs::read_to_string(sb.site()).expect("site");
    std::fs::write(
        sb.site(),
        site.replace(
            "health = \"grep -q running service.state\"",
            "health = \"false\"",
        ),
    )
    .expect("site");
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes", "--json"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let finished = events(&out.stdout)
        .into_iter()
        .find(|e| e["event"] == "run_finished")
        .expect("run_finished");
    assert_eq!(finished["outcome"], "failed");
    let summary: Vec<String> = finished["summary"]
        .as_array()
        .expect("summary")
        .iter()
        .map(|s| s.as_str().expect("line").to_string())
        .collect();
    let mut seen = std::collections::HashMap::new();
    for line in &summary {
        for status in [
            "done: ",
            "not done: ",
            "FAILED: ",
            "refused: ",
            "interrupted: ",
        ] {
            if let Some(what) = line.strip_prefix(status) {
                if let Some(other) = seen.insert(what.to_string(), status) {
                    panic!("`{what}` listed as {other} and {status}: {summary:#?}");
                }
            }
        }
    }
    assert!(
        summary
            .iter()
            .any(|l| l.starts_with("not done: create instance FastApp 2.0.0 on `app02`")),
        "{summary:#?}"
    );
    let id = run_id(&journals(&sb)[0]);
    let (_, v) = status(&sb);
    let run = &v["unfinished_runs"][0];
    assert_eq!(run["run_id"], id.as_str());
    assert_eq!(run["outcome"], "failed");
    let resume = run["resume"].as_str().expect("resume command");
    assert!(
        resume.starts_with("uprun run in-place-upgrade --site /")
            && resume.contains(" --release /")
            && resume.ends_with(&format!("--resume {id} --yes")),
        "{resume}"
    );
}

#[test]
fn replayed_steps_say_what_was_done() {
    let sb = Sandbox::new();
    let id = killed_at(&sb, "step2:after");
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes", "--resume", &id])
        .output()
        .expect("resume");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("done in an earlier attempt: back up database `app`"),
        "{t}"
    );
    assert!(!t.contains("backup_db:-#1"), "{t}");
}

#[test]
fn a_new_version_of_the_payload_outside_the_release_folder_is_a_changed_input() {
    let sb = Sandbox::new();
    // The payload lives next to the release folder.
    let elsewhere = sb.dir.join("elsewhere");
    std::fs::rename(sb.release().join("payload"), &elsewhere).expect("move payload");
    let toml = sb.release().join("release.toml");
    let text_toml = std::fs::read_to_string(&toml).expect("release.toml");
    assert!(text_toml.contains("payload = \"payload\""), "{text_toml}");
    std::fs::write(
        &toml,
        text_toml.replace("payload = \"payload\"", "payload = \"../elsewhere\""),
    )
    .expect("write");
    let id = killed_at(&sb, "step1:before");
    let file = elsewhere.join("bin/fastapp.txt");
    assert!(file.is_file(), "the demo payload has {}", file.display());
    std::fs::write(&file, "changed").expect("change payload");
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes", "--resume", &id])
        .output()
        .expect("resume");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("the release changed")
            && text(&out).contains("--accept-changed-inputs"),
        "{}",
        text(&out)
    );
}

#[test]
fn plan_and_the_question_count_the_same_changes() {
    let sb = Sandbox::new();
    let out = sb
        .cmd("plan", "in-place-upgrade", &[])
        .output()
        .expect("plan");
    assert!(out.status.success(), "{}", text(&out));
    let counted = "12 change(s) (1 backup(s), 1 irreversible)";
    assert!(text(&out).contains(counted), "{}", text(&out));
    assert!(
        text(&out).contains("IRREVERSIBLE: upgrade database"),
        "{}",
        text(&out)
    );
    // Without a terminal and without --yes: refused, with the same count.
    let before = sb.snapshot();
    let out = sb
        .cmd("run", "in-place-upgrade", &[])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(text(&out).contains(counted), "{}", text(&out));
    sb.assert_unchanged(&before, "the refused run changed something");
}

/// Run `cmd` on a new pseudo-terminal (stdin, stdout and stderr), answering
/// each `[y/N]` question with the next of `answers` (then `n`). Returns the
/// exit code, the questions asked, and the whole output.
fn on_terminal(mut cmd: std::process::Command, answers: &[&str]) -> (Option<i32>, usize, String) {
    let (mut master, slave) = {
        let mut m = -1;
        let mut s = -1;
        // SAFETY: openpty writes two new descriptors, owned below.
        let rc = unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty");
        // SAFETY: fresh descriptors from openpty, owned once each.
        unsafe { (std::fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
    };
    cmd.stdin(slave.try_clone().expect("dup"))
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave.try_clone().expect("dup"))
        .env("TERM", "xterm");
    let mut child = cmd.spawn().expect("spawn on a terminal");
    // Only the child may hold the terminal: the master reads EIO once it ends.
    drop(cmd);
    drop(slave);
    let mut output = Vec::new();
    let mut asked = 0;
    let mut buf = [0u8; 4096];
    loop {
        // EIO once the child and its descendants closed the terminal.
        let n = match master.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        output.extend_from_slice(&buf[..n]);
        let questions = String::from_utf8_lossy(&output).matches("[y/N]").count();
        while asked < questions {
            let answer = answers.get(asked).copied().unwrap_or("n");
            // Ctrl-D (closing the input) is typed alone, without Enter.
            let typed = if answer == "\u{4}" {
                answer.to_string()
            } else {
                format!("{answer}\n")
            };
            master.write_all(typed.as_bytes()).expect("answer");
            asked += 1;
        }
    }
    let status = child.wait().expect("wait");
    (
        status.code(),
        asked,
        String::from_utf8_lossy(&output).into_owned(),
    )
}

#[test]
fn one_yes_up_front_covers_the_whole_run() {
    let sb = Sandbox::new();
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("uprun"));
    cmd.args(["run", "in-place-upgrade", "--site"])
        .arg(sb.site())
        .arg("--release")
        .arg(sb.release());
    let (code, asked, out) = on_terminal(cmd, &["y"]);
    assert_eq!(code, Some(0), "exit {code:?}: {out}");
    assert_eq!(asked, 1, "one question, up front: {out}");
    let question = out
        .lines()
        .find(|l| l.contains("[y/N]"))
        .expect("the question");
    assert!(
        question.contains("12 change(s) (1 backup(s), 1 irreversible)")
            && question.contains("whole run"),
        "{question}"
    );
    assert!(out.contains("IRREVERSIBLE: upgrade database"), "{out}");
    assert_eq!(sb.db_version(), "2.0.0");
}

#[test]
fn no_up_front_changes_nothing() {
    let sb = Sandbox::new();
    let before = sb.snapshot();
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("uprun"));
    cmd.args(["run", "in-place-upgrade", "--site"])
        .arg(sb.site())
        .arg("--release")
        .arg(sb.release());
    let (code, asked, out) = on_terminal(cmd, &["n"]);
    assert_eq!(code, Some(3), "{out}");
    assert_eq!(asked, 1, "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    sb.assert_unchanged(&before, "a refused run changed something");
    assert!(journals(&sb).is_empty());
}

#[test]
fn the_procedures_own_question_is_asked_up_front_with_the_plan() {
    let sb = Sandbox::new();
    let script = sb.script(
        "ask.rhai",
        "if confirm(\"Carry on with the site check?\") { log(\"carrying on\"); } else { log(\"stopping\"); }\n",
    );
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("uprun"));
    cmd.arg("run")
        .arg(&script)
        .arg("--site")
        .arg(sb.site())
        .arg("--release")
        .arg(sb.release());
    let (code, asked, out) = on_terminal(cmd, &["y"]);
    assert_eq!(code, Some(0), "exit {code:?}: {out}");
    assert_eq!(asked, 1, "asked once, before the run: {out}");
    let question = out
        .lines()
        .find(|l| l.contains("[y/N]"))
        .expect("the question");
    assert!(question.contains("question(s) listed above"), "{question}");
    assert!(out.contains("ask: Carry on with the site check?"), "{out}");
    assert!(out.contains("carrying on"), "{out}");
}

#[test]
fn input_closed_at_the_question_is_a_no_and_ends_the_line() {
    let sb = Sandbox::new();
    let before = sb.snapshot();
    let mut cmd = std::process::Command::new(assert_cmd::cargo::cargo_bin("uprun"));
    cmd.args(["run", "in-place-upgrade", "--site"])
        .arg(sb.site())
        .arg("--release")
        .arg(sb.release());
    // Ctrl-D at the start of the line: the terminal closes the input.
    let (code, asked, out) = on_terminal(cmd, &["\u{4}"]);
    assert_eq!(code, Some(3), "{out}");
    assert_eq!(asked, 1, "{out}");
    let after = out.split("[y/N]").nth(1).expect("the question was asked");
    // What follows the question starts on a line of its own.
    assert!(
        after.trim_start_matches(' ').starts_with(['\r', '\n']),
        "the next output continues the question's line: {out:?}"
    );
    assert!(after.contains("Cancelled: nothing was changed"), "{out}");
    sb.assert_unchanged(&before, "a refused run changed something");
}
