//! Rails of the database upgrade: a verified backup taken in this run, no
//! downgrades, the site's checks, and declared migrations.

use super::*;

// ---- Rule: a verified backup taken in this run before the upgrade ----

#[test]
fn upgrade_without_a_backup_is_refused_and_applies_nothing() {
    for (mode, w, ops) in fresh_worlds() {
        refused(upgrade(&ops), "needs a verified backup taken in this run");
        assert!(w.db().changes().is_empty(), "{mode:?}");
        assert_eq!(ok(ops.db_version()).to_string(), "1.0.0");
        assert!(w.nodes_untouched());
    }
}

#[test]
fn an_unverified_backup_does_not_allow_the_upgrade() {
    for (mode, w, ops) in fresh_worlds() {
        let receipt = ok(ops.backup_db(BackupOptions { verify: false }));
        assert!(!receipt.verified);
        refused(upgrade(&ops), "needs a verified backup");
        let db = w.db();
        assert!(db.changes().is_empty(), "{mode:?}: {:?}", db.calls);
        assert!(!db.calls.iter().any(|c| c.starts_with("verify ")));
        // Plan mode takes no backup at all.
        assert_eq!(db.backups(), usize::from(mode == Mode::Run));
    }
}

#[test]
fn a_verified_backup_allows_the_upgrade_and_only_run_applies_it() {
    for (mode, w, ops) in fresh_worlds() {
        backup(&ops);
        let report = ok(upgrade(&ops));
        assert!(report.upgraded);
        assert_eq!(report.migrations, ["2.0.0_01_priority.sql"]);
        assert_eq!(ok(ops.db_version()).to_string(), "2.0.0");
        let changes = w.db().changes();
        match mode {
            Mode::Plan => assert!(changes.is_empty(), "{changes:?}"),
            Mode::Run => assert_eq!(
                changes,
                ["apply 2.0.0_01_priority.sql", "set_version 2.0.0"]
            ),
        }
    }
}

#[test]
fn a_declared_external_backup_is_the_only_way_around_the_backup_rail() {
    let w = world_with_site(&site_with(|s| {
        s.replace(
            "backup_dir = \"backups\"",
            "backup_dir = \"backups\"\nexternal_backup = \"nightly snapshot by the storage team\"",
        )
    }));
    let ops = w.ops(Mode::Run);
    let report = ok(upgrade(&ops));
    assert_eq!(
        report.backup,
        "external: nightly snapshot by the storage team"
    );
    assert_eq!(w.db().backups(), 0);
}

#[test]
fn a_backup_of_another_version_does_not_count() {
    let w = World::new();
    let ops = w.ops(Mode::Run);
    backup(&ops);
    // Something else moved the database on after the backup.
    w.db().version = semver::Version::new(1, 5, 0);
    refused(upgrade(&ops), "needs a verified backup");
    assert!(w.db().changes().is_empty());
}

// ---- Rule: no downgrades; an upgrade to the installed version is a no-op ----

/// A fresh world whose database is at `version`, and its `Ops` in `mode`.
fn db_at(mode: Mode, version: semver::Version) -> (World, Ops) {
    let w = World::new();
    w.db().version = version;
    let ops = w.ops(mode);
    (w, ops)
}

/// In every mode, an upgrade from a database at `from`, after a verified
/// backup, is refused saying `needle` and changes nothing; the refusals' texts.
#[track_caller]
fn upgrade_from_is_refused(from: semver::Version, needle: &str) -> Vec<String> {
    MODES
        .iter()
        .map(|&mode| {
            let (w, ops) = db_at(mode, from.clone());
            backup(&ops);
            let text = refused(upgrade(&ops), needle);
            assert!(w.db().changes().is_empty(), "{mode:?}");
            text
        })
        .collect()
}

#[test]
fn a_downgrade_is_refused() {
    for text in upgrade_from_is_refused(
        semver::Version::new(3, 0, 0),
        "downgrades are not supported",
    ) {
        assert!(text.contains("3.0.0") && text.contains("2.0.0"), "{text}");
    }
}

#[test]
fn the_same_version_is_left_alone_without_a_backup() {
    for mode in MODES {
        let (w, ops) = db_at(mode, semver::Version::new(2, 0, 0));
        let report = ok(upgrade(&ops));
        assert!(!report.upgraded);
        assert!(w.db().changes().is_empty());
        assert!(ops.steps().iter().all(|s| !s.changes));
    }
}

#[test]
fn a_database_below_min_upgrade_from_is_refused() {
    upgrade_from_is_refused(
        semver::Version::new(0, 9, 0),
        "install an intermediate release first",
    );
}

// ---- Rule: no invalid strategies (the site's checks, run by upgrade_db) ----

#[test]
fn check_rows_refuse_the_upgrade_listing_them_escaped() {
    for mode in MODES {
        let w = World::new();
        let mut row = crate::db::Row::new();
        row.insert("name".into(), "evil\u{1b}[2J\nrun succeeded".into());
        row.insert("state".into(), "invalid".into());
        w.db().rows.push(("FROM strategies".into(), vec![row]));
        let ops = w.ops(mode);
        backup(&ops);
        let text = refused(
            upgrade(&ops),
            "check `invalid_strategies` returned 1 row(s)",
        );
        assert!(
            text.contains("name=evil\\u{1b}[2J\\nrun succeeded state=invalid"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}') && !text.contains('\n'), "{text:?}");
        let db = w.db();
        assert!(db.changes().is_empty(), "{mode:?}: {:?}", db.calls);
        assert!(db.calls.iter().any(|c| c.contains("FROM strategies")));
        drop(db);
        assert_eq!(ok(ops.db_version()).to_string(), "1.0.0");
    }
}

// ---- Rule: migrations are declared ----

#[test]
fn a_missing_or_empty_migrations_folder_is_refused_while_the_version_changes() {
    for empty_folder in [false, true] {
        for mode in MODES {
            let w = World::build(SITE, RELEASE, &[]);
            if empty_folder {
                ok(
                    std::fs::create_dir_all(w.release.dir.join("migrations/sqlite"))
                        .map_err(|e| Error::io("mkdir", "migrations", e)),
                );
            }
            let ops = w.ops(mode);
            backup(&ops);
            let text = refused(upgrade(&ops), "has no sqlite migration newer than 1.0.0");
            assert!(text.contains("schema_change = false"), "{text}");
            assert!(w.db().changes().is_empty());
        }
    }
}

#[test]
fn a_release_declaring_no_schema_change_records_only_the_version() {
    for mode in MODES {
        let w = World::build(SITE, &format!("{RELEASE}schema_change = false\n"), &[]);
        let ops = w.ops(mode);
        backup(&ops);
        let report = ok(upgrade(&ops));
        assert!(report.upgraded && report.migrations.is_empty());
        let changes = w.db().changes();
        match mode {
            Mode::Plan => assert!(changes.is_empty()),
            Mode::Run => assert_eq!(changes, ["set_version 2.0.0"]),
        }
    }
}

#[test]
fn every_pending_migration_is_checked_before_the_first_is_applied() {
    let w = World::build(
        SITE,
        RELEASE,
        &[
            ("2.0.0_01_good.sql", "CREATE TABLE a (x);\n"),
            ("2.0.0_02_bad.sql", "CREATE TABLE b (\n"),
        ],
    );
    w.db().bad_migration = Some("2.0.0_02_bad.sql".into());
    let ops = w.ops(Mode::Run);
    backup(&ops);
    bad_input(upgrade(&ops), "2.0.0_02_bad.sql");
    let db = w.db();
    assert!(db.changes().is_empty(), "{:?}", db.calls);
    assert!(db.calls.iter().any(|c| c == "check 2.0.0_01_good.sql"));
}
