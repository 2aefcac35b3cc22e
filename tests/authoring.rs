//! Writing custom procedures: the API reference, scaffolding, bundled
//! procedures, completions and the man page.

use crate::support::{uprun, Sandbox};

#[test]
fn api_lists_the_five_host_functions_with_their_options() {
    let out = uprun().arg("api").output().expect("api");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sig in [
        "backup_db(options: Map) -> Map",
        "remove_instance(node: Dynamic, options: Map) -> Map",
        "create_instance(node: Dynamic, options: Map) -> Map",
        "upgrade_db(options: Map) -> Map",
        "for_each_node(nodes: Array, options: Map, f: FnPtr) -> Array",
    ] {
        assert!(text.contains(sig), "missing {sig}:\n{text}");
    }
    for option in [
        "`verify` (bool, default true)",
        "`app_name`",
        "`folder`",
        "`parallel`",
        "`continue_on_error`",
    ] {
        assert!(text.contains(option), "missing option {option}");
    }
    assert!(text.contains("std/cluster") && text.contains("cluster::remove_all(parallel)"));
    assert!(
        text.matches("Errors: ").count() >= 5,
        "the five host functions say what they raise"
    );
}

#[test]
fn api_writes_definition_files() {
    let tmp = tempfile::tempdir().expect("tmp");
    uprun()
        .arg("api")
        .arg("--definitions")
        .arg(tmp.path())
        .assert()
        .success();
    let all: String = std::fs::read_dir(tmp.path())
        .expect("dir")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).unwrap_or_default())
        .collect();
    assert!(
        all.contains("fn backup_db") && all.contains("fn for_each_node"),
        "{all}"
    );
}

#[test]
fn init_writes_a_procedure_that_plans_against_the_demo_sandbox() {
    let sb = Sandbox::new();
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("mysite");
    uprun().arg("init").arg(&dir).assert().success();
    let proc = dir.join("upgrade.rhai");
    uprun().arg("check").arg(&proc).assert().success();
    let before = sb.snapshot();
    let out = sb
        .cmd("plan", proc.to_str().expect("path"), &["--json"])
        .output()
        .expect("plan");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kinds: Vec<String> = crate::support::planned(&out.stdout)
        .into_iter()
        .map(|e| e["kind"].as_str().expect("kind").to_string())
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| *k == "node_command").count(),
        6,
        "{kinds:?}"
    );
    assert_eq!(kinds.iter().filter(|k| *k == "upgrade_db").count(), 1);
    sb.assert_unchanged(&before, "plan of the init procedure changed something");

    // It runs for real too, and init never overwrites.
    sb.cmd("run", proc.to_str().expect("path"), &["--yes"])
        .assert()
        .success();
    assert_eq!(sb.db_version(), "2.0.0");
    let lb = std::fs::read_to_string(sb.dir.join("nodes/app02/lb-state")).expect("lb state");
    assert_eq!(lb, "serving\n");
    let out = uprun().arg("init").arg(&dir).output().expect("init again");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("never overwrites"));
}

#[test]
fn bundled_backup_and_verify_cluster_run_without_a_release() {
    let sb = Sandbox::new();
    // A backup changes nothing on the site: no --yes needed.
    let out = sb.on_site(&["run", "backup"]).output().expect("backup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sb.backups().len(), 1);

    let out = sb
        .on_site(&["run", "verify-cluster"])
        .output()
        .expect("verify");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Drift: app03 left behind at another version.
    let path = sb.dir.join("nodes/app03/.uprun-node.json");
    let text = std::fs::read_to_string(&path)
        .expect("manifest")
        .replace("\"version\": \"1.0.0\"", "\"version\": \"0.9.0\"");
    std::fs::write(&path, text).expect("write");
    let out = sb
        .on_site(&["run", "verify-cluster"])
        .output()
        .expect("verify");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("app03 runs FastApp 0.9.0"), "{err}");

    // Procedures that install something say they need a release.
    let out = sb
        .on_site(&["plan", "in-place-upgrade"])
        .output()
        .expect("plan");
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a release: pass --release"));
}

#[test]
fn completions_and_man_page_come_from_the_cli() {
    let out = uprun()
        .args(["completions", "bash"])
        .output()
        .expect("completions");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("_uprun") && text.contains("--resume") && text.contains("completions"));
    let out = uprun().arg("man").output().expect("man");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(".TH uprun 1") && text.contains("in\\-place"),
        "{}",
        &text[..200.min(text.len())]
    );
}

#[test]
fn uprun_test_reports_that_the_stock_procedure_converges_everywhere() {
    let sb = Sandbox::new();
    let before = sb.snapshot();
    let out = sb
        .cmd("test", "in-place-upgrade", &[])
        .output()
        .expect("test");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("every interruption point converges (24 paths)"),
        "{text}"
    );
    assert!(!text.contains("DIVERGES"), "{text}");
    sb.assert_unchanged(&before, "uprun test touched the real site");
    assert!(
        sb.backups().is_empty() && !sb.dir.join(".uprun").exists(),
        "uprun test wrote into the real site"
    );
}

#[test]
fn uprun_test_names_the_step_that_is_not_safe_to_resume() {
    let sb = Sandbox::new();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unsafe_resume.rhai");
    let out = uprun()
        .arg("test")
        .arg(&fixture)
        .arg("--site")
        .arg(sb.site())
        .arg("--release")
        .arg(sb.release())
        .args(["--run-commands", "--json"])
        .output()
        .expect("test");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let diverging: Vec<&serde_json::Value> = report["paths"]
        .as_array()
        .expect("paths")
        .iter()
        .filter(|p| p["converged"] == false)
        .collect();
    assert_eq!(diverging.len(), 1, "{report:#}");
    let p = diverging[0];
    assert_eq!(p["step"], 2);
    assert_eq!(p["point"], "after");
    assert!(p["description"]
        .as_str()
        .expect("description")
        .contains("touch marks/run-"));
    assert!(
        p["problems"][0]
            .as_str()
            .expect("problem")
            .contains("marks/run-1"),
        "{p:#}"
    );
    assert!(
        !sb.dir.join("nodes/app01/marks").exists(),
        "the real node was touched"
    );
}

#[test]
fn uprun_test_reports_the_same_paths_every_time_and_reads_are_not_flagged() {
    let sb = Sandbox::new();
    // Parallel closures and a read command: the rehearsal's step numbers must
    // not depend on which closure finishes first, and a read that runs again
    // on resume is not a command that must be idempotent.
    let script = sb.script(
        "parallel.rhai",
        "backup_db();
for_each_node(secondaries(), #{ parallel: 2 }, |n| {
    node_command(n, \"true\", #{ changes: false });
    remove_instance(n)
});
remove_instance(primary());
create_instance(primary(), #{ start: false });
upgrade_db();
start_instance(primary());
for_each_node(secondaries(), #{ parallel: 2 }, |n| create_instance(n));
",
    );
    let report = || -> serde_json::Value {
        let out = uprun()
            .arg("test")
            .arg(&script)
            .arg("--site")
            .arg(sb.site())
            .arg("--release")
            .arg(sb.release())
            .args(["--run-commands", "--json"])
            .output()
            .expect("test");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("json")
    };
    let first = report();
    assert_eq!(report()["paths"], first["paths"], "the report changed");
    let paths = first["paths"].as_array().expect("paths");
    assert!(paths.len() >= 16, "{first:#}");
    assert!(
        paths
            .iter()
            .all(|p| p["reran_commands"].as_array().is_some_and(|r| r.is_empty())),
        "a read command was flagged: {first:#}"
    );
}
