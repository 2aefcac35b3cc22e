//! Safety rails hold for custom scripts, and a refusal changes nothing.

use crate::support::Sandbox;

/// Run `script` with --yes; it must be refused (exit 3) with `needle` in the
/// error, and leave the database and every node folder byte-identical.
fn refused(sb: &Sandbox, script: &str, needle: &str) {
    stopped(sb, script, 3, needle);
}

/// Run `script` with --yes; it must stop with exit `code` and `needle` in the
/// error, naming the script line, and change nothing.
fn stopped(sb: &Sandbox, script: &str, code: i32, needle: &str) {
    let path = sb.script("custom.rhai", script);
    let before = sb.snapshot();
    let out = sb
        .cmd("run", path.to_str().expect("path"), &["--yes"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}; stderr: {err}"
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

/// Remove every instance, then create the primary's with `options`.
fn recreate_primary(options: &str) -> String {
    format!(
        "for n in secondaries() {{ remove_instance(n); }}\nremove_instance(primary());\ncreate_instance(primary(), {options});\n"
    )
}

/// Empty the primary's old instance folder, so that only its identity (not
/// its contents) can tell it is used.
fn empty_old_folder(sb: &Sandbox) -> std::path::PathBuf {
    let old = sb.dir.join("nodes/app01/FastApp-1.0.0");
    std::fs::remove_dir_all(&old).expect("empty old folder");
    std::fs::create_dir(&old).expect("mkdir old folder");
    old
}

#[test]
fn old_folder_spelled_with_dot_slash_is_a_config_error() {
    let sb = Sandbox::new();
    empty_old_folder(&sb);
    stopped(
        &sb,
        &recreate_primary("#{ folder: \"./FastApp-1.0.0\" }"),
        2,
        "create_instance on `app01`: `folder` \"./FastApp-1.0.0\" is not allowed",
    );
}

#[test]
fn old_folder_spelled_with_a_trailing_slash_is_a_config_error() {
    let sb = Sandbox::new();
    empty_old_folder(&sb);
    stopped(
        &sb,
        &recreate_primary("#{ folder: \"FastApp-1.0.0/\" }"),
        2,
        "`folder` \"FastApp-1.0.0/\" is not allowed: it is a path, not one folder name",
    );
}

#[test]
fn a_folder_inside_the_old_folder_is_a_config_error() {
    let sb = Sandbox::new();
    stopped(
        &sb,
        &recreate_primary("#{ folder: \"FastApp-1.0.0/next\" }"),
        2,
        "directly under the node's root",
    );
    assert!(!sb.dir.join("nodes/app01/FastApp-1.0.0/next").exists());
}

#[cfg(unix)]
#[test]
fn a_link_to_the_old_folder_is_refused() {
    let sb = Sandbox::new();
    empty_old_folder(&sb);
    std::os::unix::fs::symlink("FastApp-1.0.0", sb.dir.join("nodes/app01/fresh")).expect("symlink");
    refused(
        &sb,
        &recreate_primary("#{ folder: \"fresh\" }"),
        "folder `fresh` (`",
    );
    refused(
        &sb,
        &recreate_primary("#{ folder: \"fresh\" }"),
        "is `FastApp-1.0.0`",
    );
}

#[cfg(unix)]
#[test]
fn a_link_outside_the_root_is_refused() {
    let sb = Sandbox::new();
    let outside = sb.dir.join("elsewhere");
    std::fs::create_dir(&outside).expect("mkdir");
    std::os::unix::fs::symlink(&outside, sb.dir.join("nodes/app01/fresh")).expect("symlink");
    refused(
        &sb,
        &recreate_primary("#{ folder: \"fresh\" }"),
        "outside the node's root",
    );
    assert_eq!(std::fs::read_dir(&outside).expect("list").count(), 0);
}

#[cfg(unix)]
#[test]
fn the_default_folder_skips_a_link_to_the_old_folder() {
    let sb = Sandbox::new();
    let old = empty_old_folder(&sb);
    // Where the new instance would go by default, a link to the old folder.
    std::os::unix::fs::symlink("FastApp-1.0.0", sb.dir.join("nodes/app01/FastApp-2.0.0"))
        .expect("symlink");
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sb.manifest("app01")["current"]["folder"], "FastApp-2.0.0-2");
    assert_eq!(std::fs::read_dir(&old).expect("list").count(), 0);
}

/// Run the stock procedure against a site edited by `edit`: it must stop
/// with exit `code` and `needle` in the error, changing nothing.
fn site_stopped(sb: &Sandbox, edit: impl Fn(String) -> String, code: i32, needle: &str) {
    let site = std::fs::read_to_string(sb.site()).expect("site");
    std::fs::write(sb.site(), edit(site)).expect("write site");
    let before = sb.snapshot();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    sb.assert_unchanged(&before, "a stopped run changed something");
    assert!(sb.backups().is_empty(), "not even a backup");
}

#[test]
fn two_nodes_sharing_a_root_are_a_site_error() {
    let sb = Sandbox::new();
    site_stopped(
        &sb,
        |t| t.replace("root = \"nodes/app02\"", "root = \"./nodes/app01/\""),
        2,
        "nodes `app01` and `app02` share the root folder",
    );
}

#[test]
fn nested_node_roots_are_a_site_error() {
    let sb = Sandbox::new();
    std::fs::create_dir(sb.dir.join("nodes/app01/inner")).expect("mkdir");
    site_stopped(
        &sb,
        |t| {
            t.replace(
                "root = \"nodes/app03\"",
                "root = \"nodes/app02/../app01/inner\"",
            )
        },
        2,
        "the root of node `app03` (`",
    );
}

#[test]
fn another_app_name_is_refused() {
    let sb = Sandbox::new();
    refused(
        &sb,
        &recreate_primary("#{ app_name: \"OtherApp\" }"),
        "`app_name` \"OtherApp\" differs from the prior application name \"FastApp\"",
    );
}

#[test]
fn a_renamed_site_without_the_rename_setting_is_refused() {
    let sb = Sandbox::new();
    site_stopped(
        &sb,
        |t| t.replace("name = \"FastApp\"", "name = \"NewApp\""),
        3,
        "renamed_from = \"FastApp\"",
    );
}

#[test]
fn a_declared_rename_gives_every_node_the_new_name() {
    let sb = Sandbox::new();
    let site = std::fs::read_to_string(sb.site()).expect("site");
    let site = site.replace(
        "name = \"FastApp\"",
        "name = \"NewApp\"\nrenamed_from = \"FastApp\"",
    );
    std::fs::write(sb.site(), site).expect("write site");
    let plan = sb
        .cmd("plan", "in-place-upgrade", &[])
        .output()
        .expect("plan");
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(
        text.contains("stage instance NewApp 2.0.0 on `app01` in new folder `NewApp-2.0.0` (not started) (renamed from FastApp"),
        "the plan says so: {text}"
    );
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for node in ["app01", "app02", "app03"] {
        let m = sb.manifest(node);
        assert_eq!(m["current"]["app_name"], "NewApp", "{node}");
        assert_eq!(m["current"]["version"], "2.0.0", "{node}");
        assert_eq!(m["current"]["folder"], "NewApp-2.0.0", "{node}");
    }
}
