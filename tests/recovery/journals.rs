//! Run journals: torn, damaged and header-less journals, the resume command
//! `status` gives, what a failed or replayed run reports, and changed inputs.

use super::*;

#[test]
fn a_torn_last_journal_line_is_set_aside_and_the_run_resumes() {
    let sb = Sandbox::new();
    let id = killed_at(&sb, "step3:before");
    let path = sb.journals()[0].clone();
    let fragment = b"{\"type\":\"started\",\"key\":\"remove_instance:app01#1\",\"ca";
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("journal")
        .write_all(fragment)
        .expect("tear");

    // Readers go on.
    let out = sb.on_site(&["runs"]).output().expect("runs");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(output_text(&out).contains(&id), "{}", output_text(&out));
    let out = sb.on_site(&["runs", "show", &id]).output().expect("show");
    assert!(out.status.success(), "{}", output_text(&out));
    let (_, v) = status(&sb);
    assert_eq!(v["unfinished_runs"][0]["run_id"], id.as_str());

    // A new run is refused: the torn run still holds the site.
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("new run");
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert!(
        output_text(&out).contains(&format!("--resume {id}")),
        "{}",
        output_text(&out)
    );

    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes", "--resume", &id])
        .output()
        .expect("resume");
    assert!(out.status.success(), "{}", output_text(&out));
    let side = PathBuf::from(format!("{}.torn", path.display()));
    assert!(
        output_text(&out).contains("torn")
            && output_text(&out).contains(&side.display().to_string()),
        "{}",
        output_text(&out)
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
    let path = sb.journals()[0].clone();
    let body = std::fs::read_to_string(&path).expect("journal");
    let mut lines: Vec<&str> = body.lines().collect();
    assert!(lines.len() >= 3);
    lines[1] = "{\"type\":\"done\",\"key\":";
    std::fs::write(&path, format!("{}\n", lines.join("\n"))).expect("damage");

    let out = sb.on_site(&["runs"]).output().expect("runs");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("damaged"),
        "{}",
        output_text(&out)
    );
    let (_, v) = status(&sb);
    assert_eq!(v["unfinished_runs"][0]["outcome"], "damaged");
    assert!(v["unfinished_runs"][0]["resume"].is_null());
    let out = sb.on_site(&["runs", "show", &id]).output().expect("show");
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains(&path.display().to_string())
            && output_text(&out).contains("line 2"),
        "{}",
        output_text(&out)
    );
    // Resume refuses with the same clear error; a new run is refused too.
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes", "--resume", &id])
        .output()
        .expect("resume");
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("line 2"),
        "{}",
        output_text(&out)
    );
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("new run");
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("cannot be read") && output_text(&out).contains("runs abandon"),
        "{}",
        output_text(&out)
    );

    let out = sb
        .on_site(&["runs", "abandon", &id])
        .output()
        .expect("abandon");
    assert!(out.status.success(), "{}", output_text(&out));
    let aside = PathBuf::from(format!("{}.damaged", path.display()));
    assert!(aside.exists(), "{}", output_text(&out));
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

    let out = sb.on_site(&["runs"]).output().expect("runs");
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("never started"),
        "{}",
        output_text(&out)
    );
    let out = sb.on_site(&["status"]).output().expect("status");
    assert!(out.status.success(), "{}", output_text(&out));
    let t = output_text(&out);
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
    assert_eq!(out.status.code(), Some(2), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("never started") && output_text(&out).contains("new run"),
        "{}",
        output_text(&out)
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
    assert_eq!(out.status.signal(), Some(9), "{}", output_text(&out));
    let id = run_id(&sb.journals()[0]);

    let out = sb.on_site(&["status"]).output().expect("status");
    let t = output_text(&out);
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
    assert!(out.status.success(), "{}", output_text(&out));
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
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
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
    let id = run_id(&sb.journals()[0]);
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
    let t = output_text(&out);
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
    assert_eq!(out.status.code(), Some(3), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("the release changed")
            && output_text(&out).contains("--accept-changed-inputs"),
        "{}",
        output_text(&out)
    );
}
