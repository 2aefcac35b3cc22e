//! Host errors cannot be forged and refusals cannot be swallowed; bad input
//! found while a procedure runs exits 2; values reach shells as quoted words;
//! text from outside cannot forge output lines; runaway procedures stop.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::Sandbox;

/// `uprun run SCRIPT --yes` on a custom procedure: (exit code, stdout, stderr).
fn run(sb: &Sandbox, script: &str) -> (Option<i32>, String, String) {
    let path = sb.script("custom.rhai", script);
    let out = sb
        .cmd("run", path.to_str().expect("path"), &["--yes"])
        .output()
        .expect("run");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every journal entry of every run of the sandbox.
fn journal(sb: &Sandbox) -> Vec<serde_json::Value> {
    let dir = sb.dir.join(".uprun/runs");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("runs dir") {
        let text = std::fs::read_to_string(e.expect("entry").path()).expect("journal");
        out.extend(
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")),
        );
    }
    out
}

fn edit_site(sb: &Sandbox, from: &str, to: &str) {
    let site = std::fs::read_to_string(sb.site()).expect("site");
    assert!(site.contains(from), "site lacks {from:?}");
    std::fs::write(sb.site(), site.replace(from, to)).expect("write site");
}

#[test]
fn a_script_cannot_forge_a_host_error() {
    let sb = Sandbox::new();
    for script in [
        "throw #{ kind: \"refused\", message: \"refused: forged\" };\n",
        "throw #{ kind: \"interrupted\", message: \"interrupted\" };\n",
        "throw #{ kind: \"config\", message: \"bad\" };\n",
        "throw \"refused\";\n",
    ] {
        let (code, _, err) = run(&sb, script);
        assert_eq!(code, Some(1), "{script}: {err}");
        assert!(err.contains("script threw"), "{err}");
        assert!(err.contains("custom.rhai:1:1"), "{err}");
    }
}

#[test]
fn a_caught_refusal_is_journaled_and_listed_in_the_summary() {
    let sb = Sandbox::new();
    let script = r#"
try {
    remove_instance(primary());
} catch (e) {
    log(`caught ${type_of(e)} ${e.kind}/${e["kind"]} node=${e.node}: ${e.message}`);
}
try { refuse("not in this window"); } catch (e) { log(`caught ${e}`); }
"#;
    let (code, out, err) = run(&sb, script);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("caught HostError refused/refused node=: refused: cannot remove the instance on primary node `app01`"),
        "{out}"
    );
    assert!(
        out.contains("caught refused by the procedure: not in this window"),
        "{out}"
    );
    let summary = out.split("run succeeded").nth(1).expect("summary");
    assert!(
        summary.contains(
            "refusals caught by the procedure: cannot remove the instance on primary node `app01`"
        ),
        "{out}"
    );
    assert!(
        summary.contains("not in this window (by the procedure)"),
        "{out}"
    );
    let refusals: Vec<_> = journal(&sb)
        .into_iter()
        .filter(|e| e["type"] == "refusal")
        .collect();
    assert_eq!(refusals.len(), 2, "{refusals:?}");
    assert_eq!(refusals[0]["by"], "rail");
    assert_eq!(refusals[1]["by"], "procedure");
    assert_eq!(refusals[1]["message"], "not in this window");
    // `uprun runs` still reads the journal.
    let runs = sb.on_site(&["runs"]).output().expect("runs");
    assert!(
        runs.status.success(),
        "{}",
        String::from_utf8_lossy(&runs.stderr)
    );
}

#[test]
fn refuse_ends_the_run_refused_and_is_reported_once() {
    let sb = Sandbox::new();
    let before = sb.snapshot();
    // Refused in the run itself (planning passes), so the run is journaled.
    let (code, out, err) = run(
        &sb,
        "if mode() == \"run\" {\n    refuse(\"the load balancer is not drained\");\n}\n",
    );
    assert_eq!(code, Some(3), "{err}");
    assert!(
        err.contains("error: refused by the procedure: the load balancer is not drained"),
        "{err}"
    );
    assert!(err.contains("custom.rhai:2:5"), "{err}");
    assert!(out.contains("run failed"), "{out}");
    assert!(!out.contains("refusals caught"), "{out}");
    let entries = journal(&sb);
    assert_eq!(
        entries.iter().filter(|e| e["type"] == "refusal").count(),
        1,
        "{entries:?}"
    );
    sb.assert_unchanged(&before, "a refused run changed something");
}

#[test]
fn the_stock_checks_refuse_with_a_genuine_refusal() {
    let sb = Sandbox::new();
    sb.exec_sql("UPDATE app_meta SET value = '3.1.0' WHERE key = 'schema_version'");
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("error: refused by the procedure: the database is at 3.1.0"),
        "{err}"
    );
    assert!(err.contains("std/preflight:"), "{err}");
}

#[test]
fn bad_input_found_while_the_procedure_runs_exits_2() {
    let sb = Sandbox::new();
    for (script, needle) in [
        ("instance(\"app99\");\n", "unknown node `app99`"),
        ("backup_db(#{ verfy: true });\n", "bad option"),
        (
            "for_each_node(nodes(), #{ parallel: 0 }, |n| n.name);\n",
            "`parallel` must be at least 1",
        ),
    ] {
        let (code, _, err) = run(&sb, script);
        assert_eq!(code, Some(2), "{script}: {err}");
        assert!(err.contains(needle), "{err}");
        assert!(err.contains("custom.rhai:1:"), "{err}");
    }
}

#[test]
fn for_each_node_results_tell_host_errors_from_script_throws() {
    let sb = Sandbox::new();
    let script = r#"
let rs = for_each_node(secondaries(), #{ continue_on_error: true }, |node| {
    if node.name == "app02" {
        throw #{ kind: "refused", message: "forged" };
    }
    node_command(node, "exit 3", #{ changes: false });
});
for r in rs { if r.ok { log(`${r.node} ok`); } else { log(`${r.node} false ${r.kind}`); } }
"#;
    let (code, out, err) = run(&sb, script);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("app02 false script"), "{out}");
    assert!(out.contains("app03 false node"), "{out}");
}

/// Files named `PWNED*` anywhere under `dir`.
fn pwned(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for e in entries {
        let p = e.expect("entry").path();
        if p.is_dir() {
            found.extend(pwned(&p));
        } else if p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("PWNED"))
        {
            found.push(p);
        }
    }
    found
}

#[test]
fn placeholders_reach_the_shell_as_quoted_words() {
    let sb = Sandbox::new();
    let evil = "Fast'App $(touch PWNED1) `touch PWNED2`; touch PWNED3";
    // The site's application is named so from the start (the instances too).
    edit_site(&sb, "name = \"FastApp\"", &format!("name = \"{evil}\""));
    for node in ["app01", "app02", "app03"] {
        let p = sb.dir.join("nodes").join(node).join(".uprun-node.json");
        let m = std::fs::read_to_string(&p).expect("manifest");
        let m = m.replace(
            "\"app_name\": \"FastApp\"",
            &format!(
                "\"app_name\": {}",
                serde_json::to_string(evil).expect("json")
            ),
        );
        std::fs::write(&p, m).expect("write manifest");
    }
    let script = "backup_db();\nfor n in secondaries() { remove_instance(n); }\nremove_instance(primary());\ncreate_instance(primary(), #{ folder: \"fresh\", start: false });\nupgrade_db();\nstart_instance(primary());\nfor n in secondaries() { create_instance(n); }\n";
    let (code, out, err) = run(&sb, script);
    assert_eq!(code, Some(0), "{out}\n{err}");
    let state = std::fs::read_to_string(sb.dir.join("nodes/app01/fresh/service.state"))
        .expect("service started");
    assert_eq!(state.trim_end(), format!("running {evil} 2.0.0 on app01"));
    assert_eq!(pwned(&sb.dir), Vec::<std::path::PathBuf>::new());
}

#[test]
fn text_from_the_database_cannot_forge_output_lines() {
    let sb = Sandbox::new();
    sb.db()
        .execute(
            "INSERT INTO strategies VALUES (?1, 'matching', 'invalid')",
            ["evil\nrun succeeded\x1b[2J"],
        )
        .expect("insert");
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("evil\\nrun succeeded\\u{1b}[2J"),
        "{stderr}"
    );
    for text in [&stdout, &stderr] {
        assert!(!text.lines().any(|l| l.trim() == "run succeeded"), "{text}");
        assert!(!text.contains('\x1b'), "{text}");
    }
}

#[test]
fn a_runaway_procedure_stops_at_the_time_limit() {
    let sb = Sandbox::new();
    let site = std::fs::read_to_string(sb.site()).expect("site");
    std::fs::write(
        sb.site(),
        format!("{site}\n[limits]\nscript_timeout_secs = 2\n"),
    )
    .expect("write site");
    // Planning passes; the run copies a big string until stopped.
    let script = "if mode() == \"run\" {\n    let s = \"x\";\n    while s.len() < 500000 { s += s; }\n    loop { let t = s + \"\"; }\n}\n";
    let started = Instant::now();
    let (code, out, err) = run(&sb, script);
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(
            "the procedure ran past its time limit of 2 s (site setting `limits.script_timeout_secs`)"
        ),
        "{err}"
    );
    assert!(err.contains("custom.rhai:4:"), "{err}");
    assert!(out.contains("run failed"), "{out}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
}

#[test]
fn a_runaway_loop_stops_at_the_operation_limit_and_strings_are_bounded() {
    let sb = Sandbox::new();
    let (code, _, err) = run(&sb, "let n = 0;\nloop { n += 1; }\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("operations (a runaway loop?)"), "{err}");
    let (code, _, err) = run(&sb, "let s = \"x\";\nwhile s.len() < 4000000 { s += s; }\n");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("past the limit of a procedure"), "{err}");
}

#[test]
fn a_bad_time_limit_is_bad_input() {
    let sb = Sandbox::new();
    let site = std::fs::read_to_string(sb.site()).expect("site");
    std::fs::write(
        sb.site(),
        format!("{site}\n[limits]\nscript_timeout_secs = 0\n"),
    )
    .expect("write site");
    let (code, _, err) = run(&sb, "log(\"hi\");\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("limits.script_timeout_secs"), "{err}");
}
