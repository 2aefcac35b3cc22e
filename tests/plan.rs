//! `uprun plan`: the ordered list of what `run` would do; nothing changes.

use crate::support::Sandbox;

fn planned(sb: &Sandbox) -> Vec<(String, String)> {
    let out = sb
        .cmd("plan", "in-place-upgrade", &["--json"])
        .output()
        .expect("plan");
    assert!(
        out.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    crate::support::planned(&out.stdout)
        .into_iter()
        .map(|e| {
            (
                e["kind"].as_str().expect("kind").to_string(),
                e["description"].as_str().expect("description").to_string(),
            )
        })
        .collect()
}

fn node_of(desc: &str) -> &str {
    ["app01", "app02", "app03"]
        .into_iter()
        .find(|n| desc.contains(&format!("`{n}`")))
        .unwrap_or("")
}

#[test]
fn plan_lists_the_vendor_order_and_changes_nothing() {
    let sb = Sandbox::new();
    let before = sb.snapshot();
    let steps = planned(&sb);
    let changing: Vec<(&str, &str)> = steps
        .iter()
        .filter(|(k, _)| k != "confirm")
        .map(|(k, d)| (k.as_str(), node_of(d)))
        .collect();
    // Exactly the vendor's order: backup, removals (secondaries, then the
    // primary), stage the primary, upgrade, start the primary, then the
    // secondaries.
    assert_eq!(changing.len(), 13, "{steps:#?}");
    assert_eq!(changing[0].0, "backup_db");
    assert_eq!(changing[1].0, "check");
    assert!(steps[1].1.contains("strategies"));
    // The payload staged on every node before the window opens (the first
    // removal), outside any instance folder.
    let mut staged: Vec<&str> = changing[2..5]
        .iter()
        .map(|(k, n)| {
            assert_eq!(*k, "stage_release");
            *n
        })
        .collect();
    staged.sort();
    assert_eq!(staged, ["app01", "app02", "app03"]);
    assert!(steps[2].1.contains("`.uprun-staging/"), "{}", steps[2].1);
    // Secondaries (in any order, they may run in parallel) before the primary.
    let mut removed_first: Vec<&str> = changing[5..7]
        .iter()
        .map(|(k, n)| {
            assert_eq!(*k, "remove_instance");
            *n
        })
        .collect();
    removed_first.sort();
    assert_eq!(removed_first, ["app02", "app03"]);
    assert_eq!(changing[7], ("remove_instance", "app01"));
    assert_eq!(changing[8], ("create_instance", "app01"));
    assert!(
        steps[8]
            .1
            .starts_with("stage instance FastApp 2.0.0 on `app01`")
            && steps[8].1.contains("(not started)"),
        "{}",
        steps[8].1
    );
    assert_eq!(changing[9].0, "upgrade_db");
    assert!(steps[9].1.contains("1.0.0 to 2.0.0"), "{}", steps[9].1);
    assert_eq!(changing[10], ("start_instance", "app01"));
    let mut created_after: Vec<&str> = changing[11..13]
        .iter()
        .map(|(k, n)| {
            assert_eq!(*k, "create_instance");
            *n
        })
        .collect();
    created_after.sort();
    assert_eq!(created_after, ["app02", "app03"]);
    assert!(
        steps[11].1.starts_with("create instance FastApp 2.0.0"),
        "{}",
        steps[11].1
    );

    sb.assert_unchanged(&before, "plan changed the database or a node folder");
    assert!(sb.backups().is_empty(), "plan wrote a backup");
}

#[test]
fn plan_human_output_marks_changes_and_reads() {
    let sb = Sandbox::new();
    let out = sb
        .cmd("plan", "in-place-upgrade", &[])
        .output()
        .expect("plan");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[change] upgrade_db"), "{text}");
    assert!(text.contains("[read  ] check"), "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
}
