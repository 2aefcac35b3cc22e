//! The vendor's rules hold for custom procedures written from `uprun api`
//! alone, without the stock script or `stdlib/`: each way around a rule that
//! worked before is refused (changing nothing) or audited as incomplete.

use crate::support::{run_id, Sandbox};

/// A whole upgrade written without `stdlib/`: every vendor rule the stock
/// script checks early must still hold for it. The primary's instance is
/// staged, and started once the database is at its version.
const BARE_UPGRADE: &str = "backup_db();
for n in secondaries() { remove_instance(n); }
remove_instance(primary());
create_instance(primary(), #{ start: false });
upgrade_db();
start_instance(primary());
for n in secondaries() { create_instance(n); }
";

/// Run `script` with --yes: exit `code`, `needle` in stderr, nothing changed.
fn refused_whole(sb: &Sandbox, script: &str, code: i32, needle: &str) -> String {
    let path = sb.script("custom.rhai", script);
    let before = sb.snapshot();
    let out = sb
        .cmd("run", path.to_str().expect("path"), &["--yes"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    sb.assert_unchanged(&before, "a refused run changed something");
    assert!(sb.backups().is_empty(), "a refused run took a backup");
    err
}

fn edit_site(sb: &Sandbox, from: &str, to: &str) {
    let text = std::fs::read_to_string(sb.site()).expect("site");
    assert!(text.contains(from), "site lacks {from:?}");
    std::fs::write(sb.site(), text.replace(from, to)).expect("write site");
}

#[test]
fn the_bare_upgrade_succeeds_when_every_rule_holds() {
    let sb = Sandbox::new();
    let path = sb.script("bare.rhai", BARE_UPGRADE);
    let out = sb
        .cmd("run", path.to_str().expect("path"), &["--yes"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sb.db_version(), "2.0.0");
    for n in ["app01", "app02", "app03"] {
        assert_eq!(sb.manifest(n)["current"]["version"], "2.0.0", "{n}");
    }
}

#[test]
fn invalid_strategies_stop_an_upgrade_without_the_stdlib_check() {
    let sb = Sandbox::new();
    sb.exec_sql("UPDATE strategies SET state = 'invalid' WHERE name = 'supplier-match'");
    let err = refused_whole(&sb, BARE_UPGRADE, 3, "check `strategies` returned 1 row(s)");
    assert!(err.contains("name=supplier-match"), "{err}");
    assert_eq!(sb.db_version(), "1.0.0");
}

#[test]
fn invalid_strategy_names_cannot_forge_output_lines() {
    let sb = Sandbox::new();
    sb.exec_sql(
        "UPDATE strategies SET state = 'invalid', name = 'evil' || char(10) || 'run succeeded' || char(27) || '[2J' WHERE name = 'supplier-match'",
    );
    let err = refused_whole(&sb, BARE_UPGRADE, 3, "name=evil\\nrun succeeded\\u{1b}[2J");
    assert!(
        !err.lines().any(|l| l.trim() == "run succeeded"),
        "a database value forged a line: {err}"
    );
}

#[test]
fn unacknowledged_customisations_stop_any_change() {
    let sb = Sandbox::new();
    edit_site(&sb, "customizations = \"none\"", "");
    refused_whole(
        &sb,
        BARE_UPGRADE,
        3,
        "customizations = \"upgraded-separately\"",
    );
}

#[test]
fn a_procedure_that_leaves_secondaries_behind_is_refused_at_plan() {
    let sb = Sandbox::new();
    let script = "backup_db();
for n in secondaries() { remove_instance(n); }
remove_instance(primary());
create_instance(primary(), #{ start: false });
upgrade_db();
start_instance(primary());
";
    let err = refused_whole(&sb, script, 3, "node `app02` has no instance");
    assert!(err.contains("node `app03` has no instance"), "{err}");
    assert!(err.contains("uprun run in-place-upgrade"), "{err}");
    assert!(sb.journals().is_empty(), "a refused plan left a journal");
}

#[test]
fn continue_on_error_cannot_turn_a_failed_node_into_success() {
    let sb = Sandbox::new();
    // app03's new instance does not start; the planning pass cannot know.
    edit_site(
        &sb,
        "start = \"",
        "start = \"if [ {node} = app03 ]; then exit 9; fi; ",
    );
    let script = "backup_db();
for n in secondaries() { remove_instance(n); }
remove_instance(primary());
create_instance(primary(), #{ start: false });
upgrade_db();
start_instance(primary());
let r = for_each_node(secondaries(), #{ continue_on_error: true }, |n| create_instance(n));
log(`results: ${r.len()}`);
";
    let path = sb.script("custom.rhai", script);
    let out = sb
        .cmd("run", path.to_str().expect("path"), &["--yes"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{err}");
    assert!(stdout.contains("run incomplete"), "{stdout}");
    assert!(err.contains("node `app03` is not healthy"), "{err}");
    assert!(!err.contains("node `app02`"), "app02 is fine: {err}");
    let journal = std::fs::read_to_string(&sb.journals()[0]).expect("journal");
    let end: serde_json::Value =
        serde_json::from_str(journal.lines().last().expect("end")).expect("json");
    assert_eq!(end["outcome"], "incomplete", "{journal}");
}

#[test]
fn a_persistently_unhealthy_node_is_never_a_success() {
    let sb = Sandbox::new();
    edit_site(
        &sb,
        "health = \"grep -q running service.state\"",
        "health = \"[ {node} != app03 ] && grep -q running service.state\"",
    );
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let id = run_id(&sb.only_journal());
    assert_eq!(sb.manifest("app03")["current"]["state"], "failed");
    // Resumed with nothing fixed: app03's instance is registered, but it
    // never passed its health command: it is started and checked again (in
    // its own folder), fails again, and the run never succeeds.
    for _ in 0..2 {
        let out = sb
            .cmd("run", "in-place-upgrade", &["--yes", "--resume", &id])
            .output()
            .expect("resume");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(
            err.contains("node `app03`: health command") && err.contains("recorded as failed"),
            "{err}"
        );
        assert!(!err.contains("nothing to create"), "{err}");
        assert_eq!(sb.manifest("app03")["current"]["folder"], "FastApp-2.0.0");
    }
    let journal = std::fs::read_to_string(&sb.journals()[0]).expect("journal");
    assert!(!journal.contains("\"succeeded\""), "{journal}");
}

#[test]
fn a_typo_in_the_migrations_folder_is_refused_at_plan() {
    let sb = Sandbox::new();
    let release = sb.release().join("release.toml");
    let text = std::fs::read_to_string(&release).expect("release");
    let typo = text.replace("migrations = \"migrations\"", "migrations = \"migratons\"");
    assert_ne!(text, typo, "the release file changed shape");
    std::fs::write(&release, typo).expect("write");
    let err = refused_whole(&sb, BARE_UPGRADE, 3, "no sqlite migration newer than 1.0.0");
    assert!(err.contains("schema_change = false"), "{err}");
    let out = sb
        .cmd("plan", "in-place-upgrade", &[])
        .output()
        .expect("plan");
    assert_eq!(out.status.code(), Some(3), "plan must refuse it too");
}

#[test]
fn a_release_without_schema_change_upgrades_the_version_only() {
    let sb = Sandbox::new();
    let release = sb.release().join("release.toml");
    let text = std::fs::read_to_string(&release).expect("release");
    std::fs::write(
        &release,
        text.replace(
            "migrations = \"migrations\"",
            "schema_change = false\nmigrations = \"none\"",
        ),
    )
    .expect("write");
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sb.db_version(), "2.0.0");
    let tables: i64 = sb
        .db()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'audit_log'",
            [],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(tables, 0, "no migration ran");
}

#[test]
fn a_bad_third_migration_is_found_before_the_first_is_applied() {
    let sb = Sandbox::new();
    let third = sb
        .release()
        .join("migrations/sqlite/2.0.0_03_audit_log.sql");
    std::fs::write(
        &third,
        "CREATE TABLE audit_log (id INTEGER PRIMARY KEY, 'unterminated);\n",
    )
    .expect("write");
    let err = refused_whole(&sb, BARE_UPGRADE, 2, "2.0.0_03_audit_log.sql");
    assert!(err.contains("complete statement"), "{err}");
    assert_eq!(sb.db_version(), "1.0.0");
}

#[test]
fn parallel_closures_that_order_nodes_are_refused_at_plan_every_time() {
    let sb = Sandbox::new();
    // Remove and recreate each node in one closure, two at a time: the
    // primary's removal would race the secondaries'.
    let racy = "backup_db();
let ns = secondaries();
ns.push(primary());
for_each_node(ns, #{ parallel: 2 }, |n| { remove_instance(n); });
create_instance(primary(), #{ start: false });
upgrade_db();
start_instance(primary());
for n in secondaries() { create_instance(n); }
";
    for _ in 0..3 {
        refused_whole(&sb, racy, 3, "for_each_node(parallel: 2)");
    }
    // The issue's own example: nodes() in site order, remove + create per closure.
    let example = "backup_db();
for_each_node(nodes(), #{ parallel: 2 }, |n| { remove_instance(n); create_instance(n); });
upgrade_db();
";
    for _ in 0..3 {
        refused_whole(&sb, example, 3, "refused");
    }
}

#[test]
fn parallel_closures_on_disjoint_secondaries_pass() {
    let sb = Sandbox::new();
    let script = "backup_db();
for_each_node(secondaries(), #{ parallel: 2 }, |n| remove_instance(n));
remove_instance(primary());
create_instance(primary(), #{ start: false });
upgrade_db();
start_instance(primary());
for_each_node(secondaries(), #{ parallel: 2 }, |n| create_instance(n));
";
    let path = sb.script("custom.rhai", script);
    let out = sb
        .cmd("run", path.to_str().expect("path"), &["--yes"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn read_commands_do_not_run_while_planning_unless_the_site_allows() {
    let sb = Sandbox::new();
    let path = sb.script(
        "probe.rhai",
        "let r = node_command(primary(), \"touch probe\", #{ changes: false });\nlog(`status ${r.status}`);\n",
    );
    let out = sb
        .cmd("plan", path.to_str().expect("path"), &[])
        .output()
        .expect("plan");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("not run while planning"), "{stdout}");
    assert!(!sb.dir.join("nodes/app01/probe").exists(), "plan ran it");
    edit_site(
        &sb,
        "timeout_secs = 30",
        "timeout_secs = 30\nread_commands_in_plan = true",
    );
    let out = sb
        .cmd("plan", path.to_str().expect("path"), &[])
        .output()
        .expect("plan");
    assert!(out.status.success());
    assert!(
        sb.dir.join("nodes/app01/probe").exists(),
        "allowed, not run"
    );
}

#[test]
fn a_procedure_that_never_touches_the_database_runs_without_one() {
    let sb = Sandbox::new();
    std::fs::remove_file(sb.db_path()).expect("rm db");
    let path = sb.script(
        "nodes-only.rhai",
        "for n in nodes() { let i = instance(n); log(`${n.name}: ${i.version}`); }\n",
    );
    for (cmd, extra) in [("plan", &[][..]), ("run", &["--yes"][..])] {
        let out = sb
            .cmd(cmd, path.to_str().expect("path"), extra)
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{cmd}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("app03: 1.0.0"), "{stdout}");
    }
    // One that does is told which database is missing.
    let path = sb.script("db.rhai", "log(db_version());\n");
    let out = sb
        .cmd("plan", path.to_str().expect("path"), &[])
        .output()
        .expect("plan");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not exist") && err.contains("db.rhai:1"),
        "{err}"
    );
}

#[test]
fn a_rolling_restart_uses_the_sites_own_service_commands() {
    let sb = Sandbox::new();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    assert!(out.status.success());
    // One node at a time: stop, a command in the instance's folder, start.
    let path = sb.script(
        "restart.rhai",
        "for n in nodes() {
    stop_instance(n);
    node_command(n, \"test ! -e service.state && touch restarted\", #{ in_instance: true });
    start_instance(n);
}
",
    );
    let out = sb
        .cmd("run", path.to_str().expect("path"), &["--yes"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in ["app01", "app02", "app03"] {
        let folder = sb.dir.join("nodes").join(n).join("FastApp-2.0.0");
        assert!(folder.join("restarted").exists(), "{n}: not stopped first");
        assert!(
            folder.join("service.state").exists(),
            "{n}: not started again"
        );
        assert_eq!(sb.manifest(n)["current"]["state"], "healthy", "{n}");
    }
    assert!(stdout.contains("observed at the end"), "{stdout}");
    // A procedure that stops an instance and leaves it stopped is refused at plan.
    let path = sb.script("stop.rhai", "stop_instance(\"app02\");\n");
    let before = sb.snapshot();
    let out = sb
        .cmd("run", path.to_str().expect("path"), &["--yes"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("node `app02` is not healthy"), "{err}");
    sb.assert_unchanged(&before, "a refused plan changed something");
}

#[test]
fn at_scale_the_summary_counts_done_steps_instead_of_listing_them() {
    let sb = Sandbox::new();
    let path = sb.script(
        "many.rhai",
        "for i in 0..25 { node_command(primary(), `echo ${i} > step-${i}`); }\n",
    );
    let out = sb
        .cmd("run", path.to_str().expect("path"), &["--yes"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let summary = stdout.split("run succeeded").nth(1).expect("summary");
    assert!(
        summary.contains("done: 25 steps (25 x node command; each one is in the journal)"),
        "{summary}"
    );
    assert!(!summary.contains("done: run `echo"), "{summary}");
}
