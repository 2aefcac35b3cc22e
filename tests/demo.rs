//! `uprun demo`: the stock procedure end to end on the sandbox.

use std::collections::BTreeSet;

use crate::support::{uprun, Sandbox};

#[test]
fn demo_upgrades_database_and_every_node() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("demo");
    let out = uprun()
        .args(["demo", "--dir"])
        .arg(&dir)
        .output()
        .expect("run demo");
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The database is at 2.0.0 with the three migrations applied.
    let conn = rusqlite::Connection::open(dir.join("db/app.sqlite")).expect("db");
    let v: String = conn
        .query_row(
            "SELECT value FROM app_meta WHERE key='schema_version'",
            [],
            |r| r.get(0),
        )
        .expect("version");
    assert_eq!(v, "2.0.0");
    let applied: Vec<String> = conn
        .prepare("SELECT name FROM uprun_migration_history ORDER BY rowid")
        .expect("history")
        .query_map([], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("names");
    assert_eq!(
        applied,
        [
            "2.0.0_01_strategy_priority.sql",
            "2.0.0_02_customer_email.sql",
            "2.0.0_03_audit_log.sql"
        ]
    );
    let emails: i64 = conn
        .query_row(
            "SELECT count(*) FROM customers WHERE email LIKE '%@example.com'",
            [],
            |r| r.get(0),
        )
        .expect("emails");
    assert_eq!(emails, 5, "data migration ran");
    let prio: i64 = conn
        .query_row(
            "SELECT priority FROM strategies WHERE name = 'customer-match'",
            [],
            |r| r.get(0),
        )
        .expect("priority");
    assert_eq!(prio, 10);

    // Every node: exactly one current instance at 2.0.0, prior name, new folder.
    for node in ["app01", "app02", "app03"] {
        let m: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.join("nodes").join(node).join(".uprun-node.json"))
                .expect("manifest"),
        )
        .expect("json");
        let cur = &m["current"];
        assert_eq!(cur["version"], "2.0.0", "{node}");
        assert_eq!(cur["app_name"], "FastApp", "{node}");
        let folder = cur["folder"].as_str().expect("folder");
        let earlier: BTreeSet<&str> = m["removed"]
            .as_array()
            .expect("removed")
            .iter()
            .map(|r| r["folder"].as_str().expect("folder"))
            .collect();
        assert_eq!(earlier, BTreeSet::from(["FastApp-1.0.0"]), "{node}");
        assert!(
            !earlier.contains(folder),
            "{node}: new folder {folder} was used before"
        );
        let config = std::fs::read_to_string(
            dir.join("nodes")
                .join(node)
                .join(folder)
                .join("uprun-instance.toml"),
        )
        .expect("instance config");
        assert!(
            config.contains("version = \"2.0.0\"") && config.contains("app_name = \"FastApp\"")
        );
        let payload = std::fs::read_to_string(
            dir.join("nodes")
                .join(node)
                .join(folder)
                .join("bin/fastapp.txt"),
        )
        .expect("payload");
        assert!(payload.contains("2.0.0"));
        // The service was started in the new folder and stopped in the old one.
        assert!(dir
            .join("nodes")
            .join(node)
            .join(folder)
            .join("service.state")
            .exists());
        assert!(!dir
            .join("nodes")
            .join(node)
            .join("FastApp-1.0.0/service.state")
            .exists());
    }

    // A backup exists, opens as SQLite at 1.0.0 and passes an integrity check.
    let backups: Vec<_> = std::fs::read_dir(dir.join("backups"))
        .expect("backups")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let b = rusqlite::Connection::open_with_flags(
        &backups[0],
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open backup");
    let ok: String = b
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("check");
    assert_eq!(ok, "ok");
    let bv: String = b
        .query_row(
            "SELECT value FROM app_meta WHERE key='schema_version'",
            [],
            |r| r.get(0),
        )
        .expect("backup version");
    assert_eq!(bv, "1.0.0");
}

#[test]
fn demo_refuses_an_existing_sandbox_unless_recreate() {
    let sb = Sandbox::new();
    let out = uprun()
        .args(["demo", "--setup-only", "--dir"])
        .arg(&sb.dir)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already exists") && err.contains("--recreate"),
        "{err}"
    );

    sb.exec_sql("UPDATE app_meta SET value = '1.5.0' WHERE key = 'schema_version'");
    uprun()
        .args(["demo", "--setup-only", "--recreate", "--dir"])
        .arg(&sb.dir)
        .assert()
        .success();
    assert_eq!(sb.db_version(), "1.0.0", "recreated from scratch");
}

#[test]
fn demo_refuses_a_folder_that_is_not_a_sandbox() {
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(tmp.path().join("precious.txt"), "keep me").expect("write");
    let out = uprun()
        .args(["demo", "--recreate", "--dir"])
        .arg(tmp.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("precious.txt")).expect("kept"),
        "keep me"
    );
}

#[test]
fn second_run_on_an_upgraded_site_is_a_noop() {
    let sb = Sandbox::new();
    sb.cmd("run", "in-place-upgrade", &["--yes"])
        .assert()
        .success();
    assert_eq!(sb.db_version(), "2.0.0");
    let before = sb.snapshot();
    let backups = sb.backups().len();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to do"));
    sb.assert_unchanged(&before, "a no-op run changed files");
    assert_eq!(sb.backups().len(), backups, "a no-op run took a backup");
}

#[test]
fn status_shows_database_and_instances() {
    let sb = Sandbox::new();
    let out = sb.on_site(&["status", "--json"]).output().expect("status");
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["database_version"], "1.0.0");
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3);
    assert_eq!(nodes[0]["name"], "app01");
    assert_eq!(nodes[0]["role"], "primary");
    assert_eq!(nodes[0]["instance"]["version"], "1.0.0");
    assert_eq!(nodes[0]["instance"]["folder"], "FastApp-1.0.0");
}
