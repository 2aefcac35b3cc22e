//! Rails of instances: secondaries before the primary, a new instance only
//! where none is, the prior instance's application name, and quoted values.

use super::*;

// ---- Rule: secondaries before the primary ----

#[test]
fn the_primary_is_removed_only_after_every_secondary() {
    for (mode, w, ops) in fresh_worlds() {
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
    for (_, w, ops) in fresh_worlds() {
        refused(
            ops.create_instance("app02", CreateOptions::default()),
            "still has instance FastApp 1.0.0",
        );
        assert!(w.nodes_untouched());
    }
}

// ---- Rule: the application name is the prior instance's ----

/// A fresh world in run mode where app02 and app03 were removed and app02
/// created again (staged) by this run.
fn app02_created_again() -> (World, Ops) {
    let w = World::new();
    let ops = w.ops(Mode::Run);
    ok(ops.remove_instance("app02", Default::default()));
    ok(ops.remove_instance("app03", Default::default()));
    ok(ops.create_instance("app02", staged()));
    (w, ops)
}

/// Change `node`'s manifest on the node itself (behind the rails' back).
fn edit_manifest(w: &World, node: &str, edit: impl FnOnce(&mut crate::nodes::Manifest)) {
    let mut st = w.node(node);
    let mut m = st.manifest(&root(node));
    edit(&mut m);
    st.set_manifest(&root(node), &m);
}

#[test]
fn another_application_name_is_refused() {
    let opts = CreateOptions {
        app_name: Some("OtherApp".into()),
        ..Default::default()
    };
    let needle = "differs from the prior application name \"FastApp\"";
    creates_on_app02_fail(World::new, &[opts], refused, needle);
}

#[test]
fn an_old_name_removed_long_ago_does_not_outvote_the_current_instance() {
    let w = World::new();
    // app02 once ran `OldApp`, removed long ago; it runs FastApp now.
    edit_manifest(&w, "app02", |m| {
        let mut old = record("app02", "OldApp", "0.9.0", "OldApp-0.9.0");
        old.removed = Some("2020-01-01T00:00:00Z".into());
        m.removed.insert(0, old);
        m.used_folders.insert(0, "OldApp-0.9.0".into());
    });
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
    let (w, ops) = app02_created_again();
    edit_manifest(&w, "app03", |m| {
        if let Some(last) = m.removed.last_mut() {
            last.app_name = "OtherApp".into();
        }
    });
    refused(ops.create_instance("app03", staged()), "OtherApp");
    // A procedure's command may change any node: after one, what the rail
    // remembered of app01 no longer speaks for it.
    let (w, ops) = app02_created_again();
    edit_manifest(&w, "app01", |m| {
        if let Some(current) = m.current.as_mut() {
            current.app_name = "OtherApp".into();
        }
    });
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
    let make = || world_with_site(&renamed);
    let needle = "renamed_from = \"FastApp\"";
    creates_on_app02_fail(make, &[CreateOptions::default()], refused, needle);
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
