//! Bad input gets one clear error naming the file and the key, and changes nothing.

use crate::support::{uprun, Sandbox};

#[test]
fn check_reports_syntax_errors_with_file_line_and_column() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("broken.rhai");
    std::fs::write(&path, "let a = 1;\nlet b = (a + ;\n").expect("write");
    let out = uprun().arg("check").arg(&path).output().expect("check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{}:2:", path.display())), "{err}");
    assert!(err.contains("let b = (a + ;"), "source line quoted: {err}");
    assert!(err.contains('^'), "{err}");
}

#[test]
fn check_names_valid_keys_for_a_misspelled_option() {
    let tmp = tempfile::tempdir().expect("tmp");
    let path = tmp.path().join("typo.rhai");
    std::fs::write(&path, "let b = backup_db(#{ verfy: true });\n").expect("write");
    let out = uprun().arg("check").arg(&path).output().expect("check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown option `verfy`") && err.contains("`verify`"),
        "{err}"
    );
    assert!(err.contains(&format!("{}:1:", path.display())), "{err}");
}

#[test]
fn a_misspelled_option_at_run_time_names_the_valid_keys() {
    let sb = Sandbox::new();
    let path = sb.script(
        "typo.rhai",
        "create_instance(\"app02\", #{ fodler: \"x\" });\n",
    );
    let out = sb
        .cmd("plan", path.to_str().expect("path"), &[])
        .output()
        .expect("plan");
    // Bad input, found while the procedure runs: exit 2 like any bad input.
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("fodler") && err.contains("`app_name`, `folder`"),
        "{err}"
    );
    assert!(err.contains("typo.rhai:1:"), "{err}");
}

#[test]
fn check_accepts_the_stock_script() {
    uprun()
        .args(["check", "in-place-upgrade"])
        .assert()
        .success();
}

#[test]
fn imports_outside_the_script_folder_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(tmp.path().join("procs")).expect("mkdir");
    std::fs::write(tmp.path().join("secret.rhai"), "fn x() { 1 }\n").expect("write");
    let path = tmp.path().join("procs/p.rhai");
    for import in ["../secret", "/etc/passwd"] {
        std::fs::write(&path, format!("import \"{import}\" as s;\n")).expect("write");
        let out = uprun().arg("check").arg(&path).output().expect("check");
        assert!(!out.status.success(), "{import} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("without `..` or an absolute path"), "{err}");
    }
    std::fs::write(tmp.path().join("procs/helper.rhai"), "fn x() { 1 }\n").expect("write");
    std::fs::write(
        &path,
        "import \"helper\" as h;\nimport \"std/cluster\" as c;\nlet v = h::x();\n",
    )
    .expect("write");
    uprun().arg("check").arg(&path).assert().success();
}

/// Replace `from` by `to` in the sandbox's site file and run `status`.
fn bad_site(edit: impl Fn(&str) -> String) -> (Option<i32>, String) {
    let sb = Sandbox::new();
    let text = std::fs::read_to_string(sb.site()).expect("site");
    std::fs::write(sb.site(), edit(&text)).expect("write");
    let out = uprun()
        .arg("status")
        .arg("--site")
        .arg(sb.site())
        .output()
        .expect("status");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains("site.toml"),
        "error does not name the file: {err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error")).count(),
        1,
        "one error, no cascade: {err}"
    );
    (out.status.code(), err)
}

#[test]
fn bad_site_files_get_one_clear_error() {
    let (code, err) = bad_site(|t| t.replacen("role = \"secondary\"", "rol = \"secondary\"", 1));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("unknown field `rol`") && err.contains("`role`"),
        "{err}"
    );

    let (code, err) =
        bad_site(|t| t.replacen("root = \"nodes/app02\"", "root = \"nodes/missing\"", 1));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("node[1].root") && err.contains("app02") && err.contains("does not exist"),
        "{err}"
    );

    let (code, err) = bad_site(|t| t.replacen("root = \"nodes/app02\"\n", "", 1));
    assert_eq!(code, Some(2));
    assert!(err.contains("missing field `root`"), "{err}");

    let (code, err) = bad_site(|t| t.replacen("role = \"secondary\"", "role = \"primary\"", 1));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("node.role") && err.contains("`app01`, `app02`"),
        "{err}"
    );

    let (code, err) = bad_site(|t| t.replacen("role = \"primary\"", "role = \"secondary\"", 1));
    assert_eq!(code, Some(2));
    assert!(
        err.contains("node.role") && err.contains("no node"),
        "{err}"
    );

    let (code, err) = bad_site(|t| t.replacen("kind = \"sqlite\"", "kind = \"oracle\"", 1));
    assert_eq!(code, Some(2));
    assert!(err.contains("oracle") && err.contains("kind"), "{err}");
}

#[test]
fn a_missing_environment_variable_is_named() {
    let (code, err) = bad_site(|t| {
        t.replacen(
            "backup_dir = \"backups\"",
            "backup_dir = \"${env:UPRUN_TEST_NOT_SET}\"",
            1,
        )
    });
    assert_eq!(code, Some(2));
    assert!(
        err.contains("UPRUN_TEST_NOT_SET") && err.contains("database.backup_dir"),
        "{err}"
    );
}

#[test]
fn unknown_script_names_the_bundled_ones() {
    let out = uprun()
        .args(["check", "in-place-upgrad"])
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in-place-upgrade"));
}

#[test]
fn scripts_lists_and_shows_bundled_procedures() {
    let out = uprun().arg("scripts").output().expect("scripts");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("in-place-upgrade") && text.contains("verified backup"),
        "{text}"
    );
    let out = uprun()
        .args(["scripts", "show", "in-place-upgrade"])
        .output()
        .expect("show");
    assert!(String::from_utf8_lossy(&out.stdout).contains("upgrade_db()"));
}

#[test]
fn missing_site_or_release_is_bad_input_with_a_hint() {
    let sb = Sandbox::new();
    let out = uprun()
        .args(["status", "--site", "/no/such/site.toml"])
        .output()
        .expect("status");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("uprun init"));
    let out = sb
        .on_site(&["plan", "in-place-upgrade"])
        .args(["--release", "/no/such/release"])
        .output()
        .expect("plan");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("holding release.toml"));
}
