//! The rails as decisions over state: `Ops` built over in-memory fakes of the
//! database and the nodes (`fakes`), called directly in plan and run mode.
//! One test per rule and per way around it (issue 9). Each asserts the error's
//! exit code and that a refusal changed nothing: no migration applied, no
//! version recorded, nothing written or run on any node. The same rules are
//! tested end to end through the binary in `tests/host_rails.rs`,
//! `tests/rails.rs` and `tests/host_errors.rs`.

use std::sync::Arc;

use super::fakes::{record, root, World, NODES, RELEASE, SITE};
use super::{BackupOptions, CommandOptions, CreateOptions, Mode, Ops, UpgradeOptions};
use crate::{Error, Result};

const MODES: [Mode; 2] = [Mode::Plan, Mode::Run];

/// The error of `r`, which must be a rail's refusal (exit 3) saying `needle`.
#[track_caller]
fn refused<T: std::fmt::Debug>(r: Result<T>, needle: &str) -> String {
    let e = r.expect_err("refused");
    assert_eq!(e.exit_code(), 3, "{e}");
    assert_eq!(e.kind(), "refused", "{e}");
    let text = e.to_string();
    assert!(text.contains(needle), "refusal lacks {needle:?}: {text}");
    text
}

/// The error of `r`, which must be bad input (exit 2) saying `needle`.
#[track_caller]
fn bad_input<T: std::fmt::Debug>(r: Result<T>, needle: &str) -> String {
    let e = r.expect_err("bad input");
    assert_eq!(e.exit_code(), 2, "{e}");
    let text = e.to_string();
    assert!(text.contains(needle), "error lacks {needle:?}: {text}");
    text
}

#[track_caller]
fn ok<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("unexpected error: {e}"))
}

fn site_with(edit: impl Fn(&str) -> String) -> String {
    let s = edit(SITE);
    assert_ne!(s, SITE, "the edit changed nothing");
    s
}

fn world_with_site(site: &str) -> World {
    World::build(
        site,
        RELEASE,
        &[(
            "2.0.0_01_priority.sql",
            "ALTER TABLE strategies ADD priority INTEGER;\n",
        )],
    )
}

fn backup(ops: &Ops) {
    ok(ops.backup_db(BackupOptions::default()));
}

/// Create options that stage the instance (files and config, not started):
/// the new application only starts against a database at its version.
fn staged() -> CreateOptions {
    CreateOptions {
        start: Some(false),
        ..Default::default()
    }
}

fn upgrade(ops: &Ops) -> Result<super::UpgradeReport> {
    ops.upgrade_db(UpgradeOptions::default())
}

/// The node's state changes and commands so far, to compare before and after.
fn node_marks(w: &World) -> Vec<(usize, usize)> {
    NODES
        .iter()
        .map(|n| {
            let st = w.node(n);
            (st.changes.len(), st.execs.len())
        })
        .collect()
}

// ---- Rule: a verified backup taken in this run before the upgrade ----

#[test]
fn upgrade_without_a_backup_is_refused_and_applies_nothing() {
    for mode in MODES {
        let w = World::new();
        let ops = w.ops(mode);
        refused(upgrade(&ops), "needs a verified backup taken in this run");
        assert!(w.db().changes().is_empty(), "{mode:?}");
        assert_eq!(ok(ops.db_version()).to_string(), "1.0.0");
        assert!(w.nodes_untouched());
    }
}

#[test]
fn an_unverified_backup_does_not_allow_the_upgrade() {
    for mode in MODES {
        let w = World::new();
        let ops = w.ops(mode);
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
    for mode in MODES {
        let w = World::new();
        let ops = w.ops(mode);
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

// ---- Rule: changes need consent; without a terminal, --yes ----

#[test]
fn without_a_terminal_or_yes_every_change_is_refused_before_it_starts() {
    let w = World::new();
    let ops = w.ops_confirmed(
        Mode::Run,
        super::Confirmation {
            yes: false,
            interactive: false,
        },
    );
    refused(
        ops.remove_instance("app02", Default::default()),
        "there is no terminal to confirm on",
    );
    refused(
        ops.node_command("app02", "lb-drain", CommandOptions::default()),
        "re-run with --yes",
    );
    backup(&ops);
    refused(upgrade(&ops), "there is no terminal to confirm on");
    assert!(w.db().changes().is_empty());
    assert!(w.nodes_untouched());
}

// ---- Rule: no downgrades; an upgrade to the installed version is a no-op ----

#[test]
fn a_downgrade_is_refused() {
    for mode in MODES {
        let w = World::new();
        w.db().version = semver::Version::new(3, 0, 0);
        let ops = w.ops(mode);
        backup(&ops);
        let text = refused(upgrade(&ops), "downgrades are not supported");
        assert!(text.contains("3.0.0") && text.contains("2.0.0"), "{text}");
        assert!(w.db().changes().is_empty());
    }
}

#[test]
fn the_same_version_is_left_alone_without_a_backup() {
    for mode in MODES {
        let w = World::new();
        w.db().version = semver::Version::new(2, 0, 0);
        let ops = w.ops(mode);
        let report = ok(upgrade(&ops));
        assert!(!report.upgraded);
        assert!(w.db().changes().is_empty());
        assert!(ops.steps().iter().all(|s| !s.changes));
    }
}

#[test]
fn a_database_below_min_upgrade_from_is_refused() {
    for mode in MODES {
        let w = World::new();
        w.db().version = semver::Version::new(0, 9, 0);
        let ops = w.ops(mode);
        backup(&ops);
        refused(upgrade(&ops), "install an intermediate release first");
        assert!(w.db().changes().is_empty());
    }
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

// ---- Rule: SDK customisations acknowledged before any change ----

#[test]
fn unacknowledged_customisations_refuse_every_change_before_it_starts() {
    let site = site_with(|s| s.replace("customizations = \"none\"\n", ""));
    for mode in MODES {
        let w = world_with_site(&site);
        let ops = w.ops(mode);
        refused(
            ops.remove_instance("app02", Default::default()),
            "customizations = \"none\"",
        );
        backup(&ops);
        refused(upgrade(&ops), "upgraded-separately");
        // A fresh node (no instance to remove first).
        w.node("app03")
            .set_manifest(&root("app03"), &Default::default());
        refused(ops.create_instance("app03", staged()), "customizations");
        assert!(w.db().changes().is_empty());
        assert!(w.nodes_untouched(), "{mode:?}");
        assert!(ops
            .steps()
            .iter()
            .all(|s| !s.changes || s.kind == super::StepKind::BackupDb));
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

// ---- Rule: secondaries before the primary ----

#[test]
fn the_primary_is_removed_only_after_every_secondary() {
    for mode in MODES {
        let w = World::new();
        let ops = w.ops(mode);
        let text = refused(
            ops.remove_instance("app01", Default::default()),
            "cannot remove the instance on primary node `app01`",
        );
        assert!(
            text.contains("`app02`") && text.contains("`app03`"),
            "{text}"
        );
        assert!(w.nodes_untouched());
        ok(ops.remove_instance("app02", Default::default()));
        refused(ops.remove_instance("app01", Default::default()), "`app03`");
        ok(ops.remove_instance("app03", Default::default()));
        let removed = ok(ops.remove_instance("app01", Default::default()));
        assert_eq!(removed.map(|r| r.version), Some("1.0.0".into()));
        match mode {
            // Plan mode saw the planned removals and changed nothing.
            Mode::Plan => assert!(w.nodes_untouched()),
            Mode::Run => {
                for n in NODES {
                    assert_eq!(w.manifest(n).current, None, "{n}");
                    assert!(w.node(n).execs.iter().any(|c| c.starts_with("stop-app")));
                }
            }
        }
    }
}

// ---- Rule: a new instance only where no instance is ----

#[test]
fn create_beside_an_existing_instance_is_refused() {
    for mode in MODES {
        let w = World::new();
        let ops = w.ops(mode);
        refused(
            ops.create_instance("app02", CreateOptions::default()),
            "still has instance FastApp 1.0.0",
        );
        assert!(w.nodes_untouched());
    }
}

// ---- Rule: folders by identity, not by spelling ----

#[test]
fn folder_spellings_other_than_one_plain_name_are_bad_input() {
    for mode in MODES {
        let w = World::new();
        let ops = w.ops(mode);
        ok(ops.remove_instance("app02", Default::default()));
        let before = node_marks(&w);
        for bad in [
            "./FastApp-1.0.0",
            "FastApp-1.0.0/",
            "FastApp-1.0.0/next",
            "..",
            ".",
            "/srv/app02/FastApp-9",
            "",
        ] {
            let opts = CreateOptions {
                folder: Some(bad.into()),
                ..Default::default()
            };
            bad_input(ops.create_instance("app02", opts), "is not allowed");
        }
        assert_eq!(node_marks(&w), before, "{mode:?}");
    }
}

#[test]
fn used_folders_and_folders_inside_containing_or_linking_to_them_are_refused() {
    for mode in MODES {
        let w = World::new();
        {
            // An old instance's folder left over from a nested layout, links
            // to the old folder, inside it and outside the root.
            let mut m = w.manifest("app02");
            m.used_folders.push("old/FastApp-0.9.0".into());
            let mut st = w.node("app02");
            st.set_manifest(&root("app02"), &m);
            st.links
                .insert("/srv/app02/alias".into(), "/srv/app02/FastApp-1.0.0".into());
            st.links.insert(
                "/srv/app02/nested".into(),
                "/srv/app02/FastApp-1.0.0/next".into(),
            );
            st.dirs.insert("/srv/app02/FastApp-1.0.0/next".into());
            st.dirs.insert("/elsewhere".into());
            st.links
                .insert("/srv/app02/away".into(), "/elsewhere".into());
            st.links
                .insert("/srv/app02/fresh-link".into(), "/srv/app02/fresh".into());
            st.dirs.insert("/srv/app02/fresh".into());
        }
        let ops = w.ops(mode);
        ok(ops.remove_instance("app02", Default::default()));
        // The old folder, emptied: still refused.
        if mode == Mode::Run {
            let mut st = w.node("app02");
            st.files
                .retain(|f, _| !f.starts_with("/srv/app02/FastApp-1.0.0/"));
        }
        let before = node_marks(&w);
        for (folder, needle) in [
            ("FastApp-1.0.0", "is `FastApp-1.0.0`"),
            ("alias", "is `FastApp-1.0.0`"),
            ("nested", "is inside `FastApp-1.0.0`"),
            ("old", "contains `old/FastApp-0.9.0`"),
            ("away", "outside the node's root"),
            ("fresh-link", "symbolic link"),
        ] {
            let opts = CreateOptions {
                folder: Some(folder.into()),
                ..Default::default()
            };
            let text = refused(ops.create_instance("app02", opts), needle);
            assert!(text.contains("app02"), "{text}");
        }
        assert_eq!(node_marks(&w), before, "{mode:?}");
        // A new folder is accepted.
        let rec = ok(ops.create_instance(
            "app02",
            CreateOptions {
                folder: Some("FastApp-2.0.0".into()),
                ..staged()
            },
        ));
        assert_eq!(rec.folder, "FastApp-2.0.0");
    }
}

#[test]
fn on_a_node_that_ignores_case_another_spelling_of_a_used_folder_is_refused() {
    for mode in MODES {
        let w = World::new();
        w.node("app02").ignore_case = true;
        let ops = w.ops(mode);
        ok(ops.remove_instance("app02", Default::default()));
        let before = node_marks(&w);
        for folder in ["fastapp-1.0.0", "FASTAPP-1.0.0"] {
            let opts = CreateOptions {
                folder: Some(folder.into()),
                ..Default::default()
            };
            refused(
                ops.create_instance("app02", opts),
                "which was used by an earlier instance",
            );
        }
        assert_eq!(node_marks(&w), before);
    }
}

#[test]
fn the_default_folder_avoids_every_used_one() {
    let w = World::new();
    let mut m = w.manifest("app02");
    m.used_folders.push("FastApp-2.0.0".into());
    w.node("app02").set_manifest(&root("app02"), &m);
    let ops = w.ops(Mode::Run);
    ok(ops.remove_instance("app02", Default::default()));
    let rec = ok(ops.create_instance("app02", staged()));
    assert_eq!(rec.folder, "FastApp-2.0.0-2");
    assert!(w.node("app02").dirs.contains("/srv/app02/FastApp-2.0.0-2"));
}

#[test]
fn nodes_sharing_or_nesting_a_root_are_a_site_error() {
    // On the same host (however the address spells it); on other hosts the
    // same path is another folder.
    for (address, other) in [
        ("ssh://uprun@app01", "/srv/app01"),
        ("ssh://admin@APP01:22", "/srv/app01/inner"),
        ("ssh://uprun@app01", "/srv"),
    ] {
        let text = SITE
            .replacen("root = \"/srv/app02\"", &format!("root = \"{other}\""), 1)
            .replacen("ssh://uprun@app02", address, 1);
        let file = std::path::Path::new("/nonexistent/site.toml");
        let e = crate::config::Site::parse(file, &text).expect_err(other);
        assert_eq!(e.exit_code(), 2, "{e}");
        assert!(e.to_string().contains("app02"), "{e}");
    }
}

// ---- Rule: the application name is the prior instance's ----

#[test]
fn another_application_name_is_refused() {
    for mode in MODES {
        let w = World::new();
        let ops = w.ops(mode);
        ok(ops.remove_instance("app02", Default::default()));
        let before = node_marks(&w);
        let opts = CreateOptions {
            app_name: Some("OtherApp".into()),
            ..Default::default()
        };
        refused(
            ops.create_instance("app02", opts),
            "differs from the prior application name \"FastApp\"",
        );
        assert_eq!(node_marks(&w), before);
    }
}

#[test]
fn an_old_name_removed_long_ago_does_not_outvote_the_current_instance() {
    let w = World::new();
    // app02 once ran `OldApp`, removed long ago; it runs FastApp now.
    {
        let mut st = w.node("app02");
        let mut m = st.manifest(&root("app02"));
        let mut old = record("app02", "OldApp", "0.9.0", "OldApp-0.9.0");
        old.removed = Some("2020-01-01T00:00:00Z".into());
        m.removed.insert(0, old);
        m.used_folders.insert(0, "OldApp-0.9.0".into());
        st.set_manifest(&root("app02"), &m);
    }
    // app01 is a new, empty node: its name comes from the others'.
    w.node("app01")
        .set_manifest(&root("app01"), &Default::default());
    for mode in MODES {
        let ops = w.ops(mode);
        let rec = ok(ops.create_instance("app01", staged()));
        assert_eq!(rec.app_name, "FastApp");
    }
}

/// The application-name rail reads the node being created every time, and
/// the other nodes once per run (again only after this run changed them):
/// not every node's manifest at every create (N x N reads at 200 nodes).
#[test]
fn the_name_rail_reads_other_nodes_once_per_run_and_again_after_a_change() {
    let w = World::new();
    let manifest = |node: &str| format!("{}/{}", root(node), crate::nodes::instances::MANIFEST);
    let reads = |node: &str| {
        let m = manifest(node);
        w.node(node).reads.iter().filter(|r| **r == m).count()
    };
    let ops = w.ops(Mode::Run);
    ok(ops.remove_instance("app02", Default::default()));
    ok(ops.remove_instance("app03", Default::default()));
    let (app01, app02, app03) = (reads("app01"), reads("app02"), reads("app03"));
    ok(ops.create_instance("app02", staged()));
    // The node created is read; app01 and app03 were read (never by the rail before).
    assert!(reads("app02") > app02);
    assert_eq!(reads("app01"), app01 + 1, "app01 read once for the rail");
    assert_eq!(reads("app03"), app03 + 1, "app03 read once for the rail");
    let (app01, app02) = (reads("app01"), reads("app02"));
    ok(ops.create_instance("app03", staged()));
    // app01 unchanged since: not read again; app02 changed by this run: read again.
    assert_eq!(reads("app01"), app01, "app01 is not read again");
    assert_eq!(reads("app02"), app02 + 1, "app02 changed: read again");
    // A stray name on the node being created is still seen now.
    let w = World::new();
    let ops = w.ops(Mode::Run);
    ok(ops.remove_instance("app02", Default::default()));
    ok(ops.remove_instance("app03", Default::default()));
    ok(ops.create_instance("app02", staged()));
    {
        let mut st = w.node("app03");
        let mut m = st.manifest(&root("app03"));
        if let Some(last) = m.removed.last_mut() {
            last.app_name = "OtherApp".into();
        }
        st.set_manifest(&root("app03"), &m);
    }
    refused(ops.create_instance("app03", staged()), "OtherApp");
    // A procedure's command may change any node: after one, what the rail
    // remembered of app01 no longer speaks for it.
    let w = World::new();
    let ops = w.ops(Mode::Run);
    ok(ops.remove_instance("app02", Default::default()));
    ok(ops.remove_instance("app03", Default::default()));
    ok(ops.create_instance("app02", staged()));
    {
        let mut st = w.node("app01");
        let mut m = st.manifest(&root("app01"));
        if let Some(current) = m.current.as_mut() {
            current.app_name = "OtherApp".into();
        }
        st.set_manifest(&root("app01"), &m);
    }
    ok(ops.node_command("app01", "edit-things", CommandOptions::default()));
    refused(ops.create_instance("app03", staged()), "OtherApp");
}

/// One host call reads the node's manifest once for its decision (the
/// rails used to read it once each: 3 times per removal, 6 per create), and
/// the change reads it again (what it changes is observed then).
#[test]
fn one_call_reads_the_node_manifest_once_to_decide() {
    let w = World::new();
    let manifest = format!("{}/{}", root("app02"), crate::nodes::instances::MANIFEST);
    let reads = || {
        w.node("app02")
            .reads
            .iter()
            .filter(|r| **r == manifest)
            .count()
    };
    let ops = w.ops(Mode::Run);
    let before = reads();
    ok(ops.remove_instance("app02", Default::default()));
    assert_eq!(
        reads() - before,
        2,
        "one to decide, one by the removal itself"
    );
    ok(ops.remove_instance("app03", Default::default()));
    let before = reads();
    ok(ops.create_instance("app02", staged()));
    assert_eq!(
        reads() - before,
        2,
        "one to decide, one by the layout itself"
    );
    // After the call, the node is read again: the new instance is seen.
    let rec = ok(ops.instance("app02")).expect("an instance");
    assert_eq!(rec.version, "2.0.0");
    assert_eq!(reads() - before, 3);
}

#[test]
fn a_renamed_site_is_refused_unless_the_rename_is_declared() {
    let renamed = site_with(|s| s.replace("name = \"FastApp\"", "name = \"NewApp\""));
    for mode in MODES {
        let w = world_with_site(&renamed);
        let ops = w.ops(mode);
        ok(ops.remove_instance("app02", Default::default()));
        let before = node_marks(&w);
        refused(
            ops.create_instance("app02", CreateOptions::default()),
            "renamed_from = \"FastApp\"",
        );
        assert_eq!(node_marks(&w), before);
    }
    let declared = site_with(|s| {
        s.replace(
            "name = \"FastApp\"",
            "name = \"NewApp\"\nrenamed_from = \"FastApp\"",
        )
    });
    let w = world_with_site(&declared);
    // The database is already at the release (the primary was done first).
    w.db().version = semver::Version::new(2, 0, 0);
    let ops = w.ops(Mode::Run);
    ok(ops.remove_instance("app02", Default::default()));
    let rec = ok(ops.create_instance("app02", CreateOptions::default()));
    assert_eq!(rec.app_name, "NewApp");
    assert!(w
        .node("app02")
        .execs
        .iter()
        .any(|c| c == "start-app 'NewApp' '2.0.0'"));
}

#[test]
fn values_reach_service_commands_quoted() {
    let hostile = site_with(|s| s.replace("name = \"FastApp\"", "name = \"$(touch PWNED)\""));
    let w = world_with_site(&hostile);
    for n in NODES {
        w.node(n).set_manifest(&root(n), &Default::default());
    }
    w.db().version = semver::Version::new(2, 0, 0);
    let ops = w.ops(Mode::Run);
    ok(ops.create_instance("app01", CreateOptions::default()));
    let execs = w.node("app01").execs.clone();
    assert_eq!(
        execs,
        [
            "start-app '$(touch PWNED)' '2.0.0'",
            "health-app '$(touch PWNED)' '2.0.0'"
        ]
    );
}

// ---- Rule: the run-end audit ----

/// The stock order over the fakes for the nodes in `touch` (secondaries
/// removed before the primary, the primary staged before the upgrade and
/// started after it), and
/// the database upgrade when `upgrade_db` is true.
fn upgrade_site(ops: &Ops, touch: &[&str], upgrade_db: bool) {
    backup(ops);
    for n in ["app02", "app03", "app01"] {
        if touch.contains(&n) {
            ok(ops.remove_instance(n, Default::default()));
        }
    }
    if touch.contains(&"app01") {
        ok(ops.create_instance("app01", staged()));
    }
    if upgrade_db {
        ok(upgrade(ops));
        if touch.contains(&"app01") {
            ok(ops.start_instance("app01", Default::default()));
        }
    }
    for n in ["app02", "app03"] {
        if touch.contains(&n) {
            let opts = if upgrade_db {
                CreateOptions::default()
            } else {
                staged()
            };
            ok(ops.create_instance(n, opts));
        }
    }
}

#[test]
fn a_complete_upgrade_passes_the_audit() {
    for mode in MODES {
        let w = World::new();
        let ops = w.ops(mode);
        assert!(ok(ops.audit()).complete(), "nothing changed yet");
        upgrade_site(&ops, &NODES, true);
        let audit = ok(ops.audit());
        assert!(
            audit.changed && audit.complete(),
            "{mode:?}: {:?}",
            audit.problems
        );
        assert_eq!(audit.target.as_deref(), Some("2.0.0"));
    }
}

#[test]
fn the_audit_names_a_node_left_without_an_instance() {
    for mode in MODES {
        let w = World::new();
        let ops = w.ops(mode);
        upgrade_site(&ops, &NODES, true);
        // The procedure removes app03's new instance again.
        ok(ops.remove_instance("app03", Default::default()));
        let audit = ok(ops.audit());
        assert_eq!(audit.problems, ["node `app03` has no instance"], "{mode:?}");
    }
}

#[test]
fn the_audit_observes_the_nodes_rather_than_believing_the_run() {
    let w = World::new();
    let ops = w.ops(Mode::Run);
    upgrade_site(&ops, &NODES, true);
    // Someone puts app03 back on the old version behind the run's back.
    w.install(
        "app03",
        &record("app03", "FastApp", "1.0.0", "FastApp-1.0.0"),
    );
    let audit = ok(ops.audit());
    assert_eq!(
        audit.problems,
        ["node `app03` runs FastApp 1.0.0, not FastApp 2.0.0"]
    );
}

#[test]
fn the_audit_names_a_node_on_another_version() {
    for mode in MODES {
        let w = World::new();
        let ops = w.ops(mode);
        // Only app02 is upgraded by the procedure.
        upgrade_site(&ops, &["app02"], true);
        let audit = ok(ops.audit());
        assert_eq!(
            audit.problems,
            [
                "node `app01` runs FastApp 1.0.0, not FastApp 2.0.0",
                "node `app03` runs FastApp 1.0.0, not FastApp 2.0.0"
            ],
            "{mode:?}"
        );
    }
}

#[test]
fn the_audit_runs_the_health_command_of_a_node_not_checked_in_this_run() {
    let w = World::new();
    // app01 and app03 were upgraded by an earlier run; app03 is not healthy now.
    for n in ["app01", "app03"] {
        w.install(n, &record(n, "FastApp", "2.0.0", "FastApp-2.0.0"));
    }
    w.node("app03")
        .fail_on("health-app", "503 Service Unavailable");
    let ops = w.ops(Mode::Run);
    upgrade_site(&ops, &["app02"], true);
    // app03 "already runs 2.0.0" by its record; the procedure leaves it be.
    let audit = ok(ops.audit());
    assert_eq!(audit.problems.len(), 1, "{:?}", audit.problems);
    assert!(
        audit.problems[0].starts_with("node `app03` is not healthy")
            && audit.problems[0].contains("503 Service Unavailable"),
        "{:?}",
        audit.problems
    );
    assert_eq!(
        w.node("app03").execs,
        ["health-app 'FastApp' '2.0.0'"],
        "only the audit's health command ran on app03"
    );
}

#[test]
fn the_audit_names_a_database_left_behind() {
    for mode in MODES {
        let w = World::new();
        let ops = w.ops(mode);
        upgrade_site(&ops, &NODES, false);
        let audit = ok(ops.audit());
        // The database first; each node's new instance can only be staged.
        assert_eq!(
            audit.problems[0], "database `app` is at 1.0.0, not 2.0.0",
            "{mode:?}"
        );
        assert!(
            audit.problems[1..]
                .iter()
                .all(|p| p.contains("is not healthy") && p.contains("staged")),
            "{mode:?}: {:?}",
            audit.problems
        );
    }
}

#[test]
fn a_changing_command_after_the_health_checks_makes_the_audit_check_again() {
    let w = World::new();
    let ops = w.ops(Mode::Run);
    upgrade_site(&ops, &NODES, true);
    assert!(ok(ops.audit()).complete());
    // The procedure stops app03's service after its health check passed.
    w.node("app03").fail_on("health-app", "connection refused");
    ok(ops.node_command("app03", "systemctl stop fastapp", CommandOptions::default()));
    let audit = ok(ops.audit());
    assert_eq!(audit.problems.len(), 1, "{:?}", audit.problems);
    assert!(
        audit.problems[0].starts_with("node `app03` is not healthy"),
        "{:?}",
        audit.problems
    );
}

#[test]
fn instances_of_an_older_release_leave_the_plan_incomplete() {
    let w = World::new();
    for n in NODES {
        w.install(n, &record(n, "FastApp", "3.0.0", "FastApp-3.0.0"));
    }
    w.db().version = semver::Version::new(3, 0, 0);
    let ops = w.ops(Mode::Plan);
    upgrade_site(&ops, &NODES, false);
    refused(upgrade(&ops), "downgrades are not supported");
    let audit = ok(ops.audit());
    assert_eq!(audit.problems[0], "database `app` is at 3.0.0, not 2.0.0");
    assert!(w.nodes_untouched());
}

// ---- Rule: order rails do not depend on timing ----

/// Member 0 removes the primary's instance, member 1 changes a secondary's
/// (`remove` or `create`), in the order given. Returns the closures' results
/// and the call's.
fn parallel_primary_and_secondary(
    w: &World,
    mode: Mode,
    secondary_change: &str,
    primary_first: bool,
) -> (Result<()>, Result<()>, Result<()>) {
    let ops = w.ops(mode);
    ok(ops.remove_instance("app03", Default::default()));
    if secondary_change == "create" {
        ok(ops.remove_instance("app02", Default::default()));
    }
    let group = ops.begin_parallel();
    let primary = || {
        let _m = ops.enter_member(&[], group, 0);
        ops.remove_instance("app01", Default::default()).map(|_| ())
    };
    let secondary = || {
        let _m = ops.enter_member(&[], group, 1);
        match secondary_change {
            "create" => ops
                .create_instance("app02", CreateOptions::default())
                .map(|_| ()),
            _ => ops.remove_instance("app02", Default::default()).map(|_| ()),
        }
    };
    let (p, s) = if primary_first {
        let p = primary();
        (p, secondary())
    } else {
        let s = secondary();
        (primary(), s)
    };
    let end = ops.end_parallel(group, "for_each_node(parallel: 2)");
    (p, s, end)
}

#[test]
fn the_primary_beside_a_secondary_in_one_parallel_call_is_refused_in_either_order() {
    for mode in MODES {
        for change in ["remove", "create"] {
            for primary_first in [true, false] {
                let w = World::new();
                let (p, s, end) = parallel_primary_and_secondary(&w, mode, change, primary_first);
                let case = format!("{mode:?} {change} primary_first={primary_first}");
                if p.is_ok() && s.is_ok() {
                    // Both closures passed in this order: the call is refused.
                    let text = refused(end, "for_each_node(parallel: 2)");
                    assert!(
                        text.contains("removes the primary `app01`'s instance")
                            && text.contains("secondary `app02`"),
                        "{case}: {text}"
                    );
                } else {
                    // In this order the primary-last rail refused one closure.
                    let e = p.err().or(s.err()).expect("an error");
                    assert_eq!(e.exit_code(), 3, "{case}: {e}");
                }
                if mode == Mode::Plan {
                    assert!(w.nodes_untouched(), "{case}");
                }
            }
        }
    }
}

#[test]
fn one_node_changed_by_two_closures_is_refused_whichever_runs_first() {
    for mode in MODES {
        for remove_first in [true, false] {
            let w = World::new();
            let ops = w.ops(mode);
            let group = ops.begin_parallel();
            let remove = || {
                let _m = ops.enter_member(&[], group, 0);
                ops.remove_instance("app02", Default::default()).map(|_| ())
            };
            let create = || {
                let _m = ops.enter_member(&[], group, 1);
                ops.create_instance("app02", staged()).map(|_| ())
            };
            if remove_first {
                ok(remove());
                ok(create());
                refused(
                    ops.end_parallel(group, "for_each_node(parallel: 2)"),
                    "two closures change the instance on `app02`",
                );
            } else {
                // The create finds the old instance: refused by that rail;
                // the call is still judged on what its closures asked for.
                refused(create(), "still has instance");
                ok(remove());
                refused(
                    ops.end_parallel(group, "for_each_node(parallel: 2)"),
                    "two closures change the instance on `app02`",
                );
            }
        }
    }
}

#[test]
fn a_conflict_inside_a_nested_parallel_call_refuses_the_outer_call() {
    for mode in MODES {
        let w = World::new();
        let ops = w.ops(mode);
        ok(ops.remove_instance("app03", Default::default()));
        let outer = ops.begin_parallel();
        {
            // Closure 0 of the outer call runs an inner parallel call.
            let _m = ops.enter_member(&[], outer, 0);
            let context = ops.parallel_context();
            let inner = ops.begin_parallel();
            {
                let _i = ops.enter_member(&context, inner, 0);
                ok(ops.remove_instance("app02", Default::default()));
            }
            ok(ops.end_parallel(inner, "inner for_each_node"));
        }
        {
            let _m = ops.enter_member(&[], outer, 1);
            ok(ops.remove_instance("app01", Default::default()));
        }
        refused(
            ops.end_parallel(outer, "outer for_each_node"),
            "outer for_each_node: one closure removes the primary `app01`'s instance",
        );
    }
}

#[test]
fn the_issue_s_parallel_procedure_is_refused_by_every_plan() {
    // Issue 9: this passed `plan` in some runs and failed it in others. The
    // closures run on real threads here, in whatever order they happen to.
    for attempt in 0..25 {
        let w = World::new();
        let ops = Arc::new(w.ops(Mode::Plan));
        let e = run_script(
            &ops,
            "for_each_node(nodes(), #{ parallel: 2 }, |n| { remove_instance(n); create_instance(n) });",
        )
        .expect_err("refused");
        assert_eq!(e.exit_code(), 3, "attempt {attempt}: {e}");
        assert!(w.nodes_untouched() && w.db().changes().is_empty());
    }
}

#[test]
fn closures_on_disjoint_secondaries_pass() {
    let w = World::new();
    let ops = w.ops(Mode::Plan);
    let group = ops.begin_parallel();
    for (i, n) in ["app02", "app03"].into_iter().enumerate() {
        let _m = ops.enter_member(&[], group, i);
        ok(ops.remove_instance(n, Default::default()));
        ok(ops.create_instance(n, staged()));
    }
    ok(ops.end_parallel(group, "for_each_node(parallel: 2)"));
}

// ---- Rule: plan changes nothing, read commands included ----

fn read_only() -> CommandOptions {
    CommandOptions {
        changes: false,
        ..Default::default()
    }
}

#[test]
fn a_read_command_is_not_run_while_planning_unless_the_site_allows_it() {
    let w = World::new();
    let ops = w.ops(Mode::Plan);
    let r = ok(ops.node_command("app01", "lb-status", read_only()));
    assert_eq!(r.status, None);
    assert!(w.node("app01").execs.is_empty());
    let step = ops.steps().pop().expect("a step");
    assert!(!step.changes);
    assert!(
        step.description.contains("not run while planning"),
        "{step:?}"
    );
    // A changing command is only described.
    let r = ok(ops.node_command("app01", "lb-drain", CommandOptions::default()));
    assert_eq!(r.status, None);
    assert!(w.nodes_untouched());

    let allowed =
        site_with(|s| s.replace("[service]\n", "[service]\nread_commands_in_plan = true\n"));
    let w = world_with_site(&allowed);
    let ops = w.ops(Mode::Plan);
    let r = ok(ops.node_command("app01", "lb-status", read_only()));
    assert_eq!(r.status, Some(0));
    assert_eq!(w.node("app01").execs, ["lb-status"]);
    ok(ops.node_command("app01", "lb-drain", CommandOptions::default()));
    assert_eq!(w.node("app01").execs, ["lb-status"]);
}

#[test]
fn commands_run_in_run_mode() {
    let w = World::new();
    let ops = w.ops(Mode::Run);
    ok(ops.node_command("app01", "lb-status", read_only()));
    ok(ops.node_command("app01", "lb-drain", CommandOptions::default()));
    assert_eq!(w.node("app01").execs, ["lb-status", "lb-drain"]);
}

// ---- Refusals are recorded even when the procedure catches them ----

fn run_script(ops: &Arc<Ops>, text: &str) -> Result<()> {
    use crate::script::{self, Procedure, Sources};
    let proc = Procedure {
        name: "caught.rhai".into(),
        text: text.into(),
        base: None,
    };
    let sources = Sources::default();
    let engine = script::engine(None, Some(ops.clone()), &sources);
    let ast = script::compile(&engine, &proc, &sources)?;
    script::run(&engine, &ast, &proc, &sources, ops)
}

#[test]
fn caught_refusals_are_listed_in_the_summary() {
    for mode in MODES {
        let w = World::new();
        let ops = Arc::new(w.ops(mode));
        ok(run_script(
            &ops,
            r#"
            try { upgrade_db() } catch (e) { print(e.kind) }
            try { remove_instance("app01") } catch { }
            try { refuse("not in this window") } catch { }
            "#,
        ));
        let summary = ops.summary();
        let caught = summary
            .iter()
            .find(|l| l.starts_with("refusals caught by the procedure: "))
            .unwrap_or_else(|| panic!("{mode:?}: {summary:?}"));
        for needle in [
            "needs a verified backup",
            "cannot remove the instance on primary node `app01`",
            "not in this window (by the procedure)",
        ] {
            assert!(caught.contains(needle), "{needle:?}: {caught}");
        }
        assert!(w.db().changes().is_empty() && w.nodes_untouched());
    }
}

#[test]
fn a_caught_order_conflict_is_listed_in_the_summary() {
    for mode in MODES {
        let w = World::new();
        let ops = Arc::new(w.ops(mode));
        ok(run_script(
            &ops,
            r#"
            remove_instance("app02");
            remove_instance("app03");
            try {
                for_each_node(["app01", "app02"], #{ parallel: 2 }, |n| {
                    if n == "app01" { remove_instance(n) } else { create_instance(n, #{ start: false }) }
                });
            } catch { }
            "#,
        ));
        let summary = ops.summary();
        assert!(
            summary
                .iter()
                .any(|l| l.starts_with("refusals caught by the procedure: ")
                    && l.contains("for_each_node(parallel: 2)")),
            "{mode:?}: {summary:?}"
        );
    }
}

#[test]
fn an_uncaught_refusal_ends_the_run_as_refused() {
    let w = World::new();
    let ops = Arc::new(w.ops(Mode::Run));
    let e = run_script(&ops, "upgrade_db();").expect_err("refused");
    assert_eq!(e.exit_code(), 3, "{e}");
    assert!(
        !ops.summary()
            .iter()
            .any(|l| l.starts_with("refusals caught")),
        "the run's own error is not listed again"
    );
}
