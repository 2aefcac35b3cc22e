//! The run-end audit: it observes the nodes and the database rather than
//! believing the run.

use super::*;

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
    for (mode, _w, ops) in fresh_worlds() {
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
    for (mode, _w, ops) in fresh_worlds() {
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
    for (mode, _w, ops) in fresh_worlds() {
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
    for (mode, _w, ops) in fresh_worlds() {
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
