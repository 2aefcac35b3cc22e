//! Refusals are recorded, and listed in the summary, even when the procedure
//! catches them.

use super::*;

/// Run `script` over a fresh world in each mode; per mode, the world and
/// the summary's line of refusals the procedure caught (which must be there).
fn caught_in_each_mode(script: &str) -> Vec<(Mode, World, String)> {
    MODES
        .iter()
        .map(|&mode| {
            let w = World::new();
            let ops = Arc::new(w.ops(mode));
            ok(run_script(&ops, script));
            let summary = ops.summary();
            let caught = summary
                .iter()
                .find(|l| l.starts_with("refusals caught by the procedure: "))
                .unwrap_or_else(|| panic!("{mode:?}: {summary:?}"))
                .clone();
            (mode, w, caught)
        })
        .collect()
}

#[test]
fn caught_refusals_are_listed_in_the_summary() {
    let script = r#"
        try { upgrade_db() } catch (e) { print(e.kind) }
        try { remove_instance("app01") } catch { }
        try { refuse("not in this window") } catch { }
    "#;
    for (_, w, caught) in caught_in_each_mode(script) {
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
    let script = r#"
        remove_instance("app02");
        remove_instance("app03");
        try {
            for_each_node(["app01", "app02"], #{ parallel: 2 }, |n| {
                if n == "app01" { remove_instance(n) } else { create_instance(n, #{ start: false }) }
            });
        } catch { }
    "#;
    for (mode, _, caught) in caught_in_each_mode(script) {
        assert!(
            caught.contains("for_each_node(parallel: 2)"),
            "{mode:?}: {caught}"
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
