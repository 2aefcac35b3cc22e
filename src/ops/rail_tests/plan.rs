//! Plan changes nothing, read commands included.

use super::*;

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
