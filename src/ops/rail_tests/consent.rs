//! Rails before any change starts: consent (a terminal or `--yes`) and
//! acknowledged SDK customisations.

use super::*;

// ---- Rule: changes need consent; without a terminal, --yes ----

#[test]
fn without_a_terminal_or_yes_every_change_is_refused_before_it_starts() {
    let w = World::new();
    let ops = w.ops_confirmed(
        Mode::Run,
        crate::ops::Confirmation {
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

// ---- Rule: SDK customisations acknowledged before any change ----

#[test]
fn unacknowledged_customisations_refuse_every_change_before_it_starts() {
    let site = site_with(|s| s.replace("customizations = \"none\"\n", ""));
    for (mode, w, ops) in worlds(|| world_with_site(&site)) {
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
            .all(|s| !s.changes || s.kind == crate::ops::StepKind::BackupDb));
    }
}
