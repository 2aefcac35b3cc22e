//! "Prove, don't trust receipts": the backup that allows `upgrade_db` is
//! proved unchanged (size and SHA-256 on SQLite) right before the first
//! migration and when a resumed run replays it. A backup removed or altered
//! after `backup_db()` is a refusal (exit 3) naming the file, and the database
//! is not touched.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};

use crate::support::Sandbox;

/// Grow the sandbox database past 3 MiB, so that 1 MiB in the middle of its
/// backup can be overwritten without changing the backup's size.
fn grow(sb: &Sandbox) {
    sb.exec_sql(
        "CREATE TABLE ballast (x BLOB);
         INSERT INTO ballast SELECT randomblob(4000) FROM (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < 1000) SELECT i FROM n);",
    );
}

/// The only backup file in the sandbox.
fn the_backup(sb: &Sandbox) -> PathBuf {
    let files: Vec<PathBuf> = sb
        .backups()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "sqlite"))
        .collect();
    assert_eq!(files.len(), 1, "one backup expected: {files:?}");
    files.into_iter().next().expect("backup")
}

fn file_name(p: &Path) -> String {
    p.file_name().expect("name").to_string_lossy().into_owned()
}

/// Every node moved to the release after the upgrade, so that the procedures
/// below are whole upgrades (the run-end audit refuses partial ones at plan).
const NODES_AFTER: &str = "for n in secondaries() { remove_instance(n); }\nremove_instance(primary());\ncreate_instance(primary());\nfor n in secondaries() { create_instance(n); }\n";

/// Run `tamper` (a shell command on the backup, `FILE` standing for its path)
/// between `backup_db()` and `upgrade_db()` in a custom procedure: refused at
/// run time (the plan passes), naming the backup, and nothing applied.
fn tampered_between_backup_and_upgrade(sb: &Sandbox, tamper: &str) -> String {
    let cmd = tamper
        .split("FILE")
        .map(|part| format!("{part:?}"))
        .collect::<Vec<_>>()
        .join(" + b.file + ");
    let script = format!(
        "let b = backup_db();\nnode_command(primary(), {cmd});\nupgrade_db();\nlog(\"not reached\");\n{NODES_AFTER}"
    );
    let path = sb.script("custom.rhai", &script);
    let before = sb.snapshot();
    let out = sb
        .cmd("run", path.to_str().expect("path"), &["--yes"])
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let text = format!("{}{err}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(out.status.code(), Some(3), "expected a refusal: {text}");
    assert!(err.contains("custom.rhai:"), "names the script line: {err}");
    assert!(
        err.contains("re-run `backup_db()`") && err.contains("start a new run"),
        "says what to do: {err}"
    );
    assert!(!text.contains("not reached"), "{text}");
    assert_eq!(sb.db_version(), "1.0.0");
    sb.assert_unchanged(&before, "a refused upgrade changed the database or a node");
    let history: i64 = sb
        .db()
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'uprun_migration_history'",
            [],
            |r| r.get(0),
        )
        .expect("history");
    assert_eq!(history, 0, "no migration was applied");
    err
}

#[test]
fn backup_removed_before_the_upgrade_is_refused() {
    let sb = Sandbox::new();
    let err = tampered_between_backup_and_upgrade(&sb, "rm -f FILE");
    assert!(sb
        .backups()
        .iter()
        .all(|p| p.extension().is_none_or(|e| e != "sqlite")));
    assert!(err.contains("is missing"), "{err}");
    // The absolute path of the backup, as recorded.
    let dir = std::fs::canonicalize(sb.dir.join("backups")).expect("backups");
    assert!(
        err.contains(&format!("`{}/app-1.0.0-", dir.display())),
        "{err}"
    );
}

#[test]
fn backup_with_its_first_page_zeroed_is_refused() {
    let sb = Sandbox::new();
    let err = tampered_between_backup_and_upgrade(
        &sb,
        "dd if=/dev/zero of=FILE bs=4096 count=1 conv=notrunc",
    );
    let backup = the_backup(&sb);
    assert!(err.contains(&file_name(&backup)), "{err}");
    assert!(err.contains("SHA-256"), "{err}");
    // Same size: only the content gives it away.
    assert_eq!(
        std::fs::metadata(&backup).expect("backup").len(),
        std::fs::metadata(sb.db_path()).expect("db").len()
    );
}

#[test]
fn backup_with_a_megabyte_overwritten_in_the_middle_is_refused() {
    let sb = Sandbox::new();
    grow(&sb);
    let size = std::fs::metadata(sb.db_path()).expect("db").len();
    assert!(size > 3 << 20, "{size}");
    let err = tampered_between_backup_and_upgrade(
        &sb,
        "dd if=/dev/urandom of=FILE bs=1048576 seek=1 count=1 conv=notrunc",
    );
    let backup = the_backup(&sb);
    assert!(err.contains(&file_name(&backup)), "{err}");
    assert!(err.contains("SHA-256"), "{err}");
    assert_eq!(std::fs::metadata(&backup).expect("backup").len(), size);
}

#[test]
fn an_untouched_backup_passes_its_proof_and_the_receipt_carries_its_identity() {
    let sb = Sandbox::new();
    let path = sb.script(
        "custom.rhai",
        &format!("let b = backup_db();\nlog(`receipt ${{b.file}} ${{b.size}} ${{b.sha256}}`);\nupgrade_db();\n{NODES_AFTER}"),
    );
    let out = sb
        .cmd("run", path.to_str().expect("path"), &["--yes"])
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(sb.db_version(), "2.0.0");
    let backup = std::fs::canonicalize(the_backup(&sb)).expect("backup");
    let bytes = std::fs::read(&backup).expect("read");
    let sha = {
        use sha2::{Digest, Sha256};
        Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert!(
        text.contains(&format!(
            "receipt {} {} {sha}",
            backup.display(),
            bytes.len()
        )),
        "{text}"
    );
}

/// Start `backup_db(); upgrade_db();` from the sandbox folder with a relative
/// `--site`, and kill it once the backup is done (before the upgrade starts).
fn killed_after_the_backup(sb: &Sandbox) -> String {
    let path = sb.script(
        "custom.rhai",
        &format!("backup_db();\nupgrade_db();\n{NODES_AFTER}"),
    );
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("uprun"))
        .current_dir(&sb.dir)
        .args(["run"])
        .arg(&path)
        .args(["--site", "site.toml", "--release"])
        .arg(sb.release())
        .arg("--yes")
        .env("UPRUN_FAILPOINT", "step2:before")
        .output()
        .expect("run");
    assert_eq!(out.status.signal(), Some(9), "not killed: {out:?}");
    assert_eq!(sb.db_version(), "1.0.0");
    // The journal records the backup by its absolute path.
    let text = std::fs::read_to_string(sb.only_journal()).expect("journal");
    let done = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["type"] == "done")
        .expect("backup done");
    let file = done["result"]["file"].as_str().expect("file").to_string();
    assert!(Path::new(&file).is_absolute(), "{file}");
    sb.only_journal()
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned()
}

/// `--resume ID` from another working directory.
fn resume(sb: &Sandbox, id: &str) -> std::process::Output {
    let elsewhere = tempfile::tempdir().expect("tmp");
    sb.cmd(
        "run",
        sb.dir.join("custom.rhai").to_str().expect("path"),
        &["--yes", "--resume", id],
    )
    .current_dir(elsewhere.path())
    .output()
    .expect("resume")
}

#[test]
fn resume_from_another_folder_finds_and_proves_the_backup() {
    let sb = Sandbox::new();
    let id = killed_after_the_backup(&sb);
    let out = resume(&sb, &id);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sb.db_version(), "2.0.0");
}

#[test]
fn resume_with_a_backup_altered_after_the_kill_is_refused() {
    let sb = Sandbox::new();
    let id = killed_after_the_backup(&sb);
    let backup = the_backup(&sb);
    let mut bytes = std::fs::read(&backup).expect("read");
    bytes[..4096].fill(0);
    std::fs::write(&backup, bytes).expect("write");
    let before = sb.snapshot();
    let out = resume(&sb, &id);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&file_name(&backup)), "{err}");
    assert!(err.contains("earlier attempt"), "{err}");
    assert!(err.contains("SHA-256"), "{err}");
    assert_eq!(sb.db_version(), "1.0.0");
    sb.assert_unchanged(&before, "a refused resume changed something");
}

#[test]
fn a_backup_that_failed_its_proof_no_longer_counts_as_verified() {
    // The script catches the refusal and tries again: still refused, now by
    // the rail itself (the run has no verified backup any more).
    let sb = Sandbox::new();
    let path = sb.script(
        "custom.rhai",
        &format!("let b = backup_db();\nnode_command(primary(), \"dd if=/dev/zero of=\" + b.file + \" bs=4096 count=1 conv=notrunc\");\ntry {{ upgrade_db(); }} catch (e) {{ log(`first attempt: ${{e.kind}}`); }}\nupgrade_db();\n{NODES_AFTER}"),
    );
    let out = sb
        .cmd("run", path.to_str().expect("path"), &["--yes"])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stdout}{err}");
    assert!(stdout.contains("first attempt: refused"), "{stdout}");
    assert!(
        err.contains("needs a verified backup taken in this run"),
        "{err}"
    );
    assert_eq!(sb.db_version(), "1.0.0");
}
