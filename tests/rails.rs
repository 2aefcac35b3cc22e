//! Safety rails hold for custom scripts, and a refusal changes nothing.

use crate::support::Sandbox;

/// Run `script` with --yes; it must be refused (exit 3) with `needle` in the
/// error, and leave the database and every node folder byte-identical.
fn refused(sb: &Sandbox, script: &str, needle: &str) {
    let path = sb.script("custom.rhai", script);
    let before = sb.snapshot();
    let out = sb
        .cmd("run", path.to_str().expect("path"), &["--yes"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "expected a refusal; stderr: {err}"
    );
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    assert!(
        err.contains("custom.rhai:"),
        "error does not name the script line: {err}"
    );
    sb.assert_unchanged(&before, "a refused run changed something");
}

#[test]
fn upgrade_without_backup_is_refused() {
    let sb = Sandbox::new();
    refused(
        &sb,
        "upgrade_db();\n",
        "needs a verified backup taken in this run",
    );
    assert_eq!(sb.db_version(), "1.0.0");
}

#[test]
fn upgrade_after_unverified_backup_is_refused() {
    let sb = Sandbox::new();
    refused(
        &sb,
        "backup_db(#{ verify: false });\nupgrade_db();\n",
        "needs a verified backup",
    );
}

#[test]
fn removing_the_primary_first_is_refused() {
    let sb = Sandbox::new();
    refused(&sb, "remove_instance(primary());\n", "secondary node(s)");
    assert_eq!(sb.manifest("app01")["current"]["version"], "1.0.0");
}

#[test]
fn creating_in_an_old_folder_is_refused() {
    let sb = Sandbox::new();
    let script = "for n in secondaries() { remove_instance(n); }\nremove_instance(primary());\ncreate_instance(primary(), #{ folder: \"FastApp-1.0.0\" });\n";
    refused(&sb, script, "was used by an earlier instance");
}

#[test]
fn creating_in_a_non_empty_folder_is_refused() {
    let sb = Sandbox::new();
    let junk = sb.dir.join("nodes/app01/fresh");
    std::fs::create_dir_all(&junk).expect("mkdir");
    std::fs::write(junk.join("old.dll"), "stale").expect("write");
    let script = "for n in secondaries() { remove_instance(n); }\nremove_instance(primary());\ncreate_instance(primary(), #{ folder: \"fresh\" });\n";
    refused(&sb, script, "exists and is not empty");
}

#[test]
fn creating_beside_an_existing_instance_is_refused() {
    let sb = Sandbox::new();
    refused(&sb, "create_instance(\"app02\");\n", "remove it first");
}

#[test]
fn invalid_strategy_stops_before_any_change_and_names_it() {
    let sb = Sandbox::new();
    sb.exec_sql("UPDATE strategies SET state = 'invalid' WHERE name = 'postal-address'");
    let before = sb.snapshot();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("postal-address"), "{err}");
    assert!(err.contains("invalid state"), "{err}");
    sb.assert_unchanged(&before, "changed");
    assert!(
        sb.backups().is_empty(),
        "nothing, not even a backup, before the check fails"
    );
}

#[test]
fn a_release_older_than_the_database_is_refused() {
    let sb = Sandbox::new();
    sb.exec_sql("UPDATE app_meta SET value = '3.1.0' WHERE key = 'schema_version'");
    let before = sb.snapshot();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("downgrades are not supported"), "{err}");
    sb.assert_unchanged(&before, "changed");
}

#[test]
fn upgrade_to_the_installed_version_is_a_noop() {
    let sb = Sandbox::new();
    sb.exec_sql("UPDATE app_meta SET value = '2.0.0' WHERE key = 'schema_version'");
    let path = sb.script(
        "same.rhai",
        "let u = upgrade_db();\nif u.upgraded { throw \"upgraded twice\"; }\nlog(`upgraded: ${u.upgraded}`);\n",
    );
    let before = sb.snapshot();
    let out = sb
        .cmd("run", path.to_str().expect("path"), &[])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("upgraded: false"));
    sb.assert_unchanged(&before, "changed");
}

#[test]
fn run_without_terminal_and_without_yes_changes_nothing() {
    let sb = Sandbox::new();
    let before = sb.snapshot();
    let out = sb
        .cmd("run", "in-place-upgrade", &[])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("--yes") && err.contains("no terminal"),
        "{err}"
    );
    sb.assert_unchanged(&before, "changed");
    assert!(sb.backups().is_empty());
}

#[test]
fn a_failed_run_says_what_was_done_and_what_was_not() {
    let sb = Sandbox::new();
    // The health check fails only for the new instance on app02: the run
    // stops after the database upgrade, part-way through step 6.
    let site = std::fs::read_to_string(sb.site()).expect("site");
    let site = site.replace(
        "health = \"grep -q running service.state\"",
        "health = \"test {node}-{version} != app02-2.0.0\"",
    );
    std::fs::write(sb.site(), site).expect("write site");
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("run failed"), "{text}");
    assert!(text.contains("done: upgrade database"), "{text}");
    assert!(text.contains("the database WAS upgraded"), "{text}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("app02") && err.contains("health"), "{err}");
}
