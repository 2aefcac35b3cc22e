//! Unit tests of the rehearsal's comparison of site states.

use std::collections::BTreeMap;

use super::{differences, EndState, NodeState};

fn node(current: &str, files: &[(&str, &str)]) -> NodeState {
    NodeState {
        current: Some(current.into()),
        removed: vec!["FastApp 1.0.0 FastApp-1.0.0".into()],
        used_folders: vec!["FastApp-1.0.0".into(), "FastApp-2.0.0".into()],
        files: files
            .iter()
            .map(|(f, d)| (f.to_string(), d.to_string()))
            .collect(),
    }
}

/// The end state of a clean run: database at 2.0.0, two tables, two nodes.
fn clean() -> EndState {
    let files = [("FastApp-2.0.0/bin/app", "aa11"), ("manifest.json", "-")];
    EndState {
        database_version: "2.0.0".into(),
        migrations: vec!["2.0.0_01_priority.sql".into()],
        tables: BTreeMap::from([("strategies".into(), 3), ("users".into(), 2)]),
        nodes: BTreeMap::from([
            ("app01".into(), node("FastApp 2.0.0 FastApp-2.0.0", &files)),
            ("app02".into(), node("FastApp 2.0.0 FastApp-2.0.0", &files)),
        ]),
    }
}

/// What `differences` says of the clean end state changed by `change`.
fn after(change: impl FnOnce(&mut EndState)) -> Vec<String> {
    let mut got = clean();
    change(&mut got);
    differences(&clean(), &got)
}

/// The state of node `name`.
fn at<'a>(s: &'a mut EndState, name: &str) -> &'a mut NodeState {
    s.nodes
        .get_mut(name)
        .unwrap_or_else(|| panic!("no node {name}"))
}

#[test]
fn the_same_end_state_has_no_differences() {
    assert_eq!(differences(&clean(), &clean()), Vec::<String>::new());
}

#[test]
fn database_differences_are_named() {
    let said = after(|s| s.database_version = "1.0.0".into());
    assert_eq!(said, ["database at 1.0.0 (clean run: 2.0.0)"]);
    let said = after(|s| s.migrations.clear());
    let want = "migration history [] (clean run: [\"2.0.0_01_priority.sql\"])";
    assert_eq!(said, [want]);
    let said = after(|s| _ = s.tables.insert("strategies".into(), 4));
    assert_eq!(said, ["table `strategies` has 4 rows (clean run: 3)"]);
    let said = after(|s| _ = s.tables.remove("users"));
    assert_eq!(said, ["table `users` is missing"]);
    let said = after(|s| _ = s.tables.insert("tmp".into(), 0));
    assert_eq!(said, ["table `tmp` exists only here"]);
}

#[test]
fn node_differences_are_named_with_their_node() {
    let said = after(|s| at(s, "app02").current = None);
    let want = "node `app02` runs None (clean run: Some(\"FastApp 2.0.0 FastApp-2.0.0\"))";
    assert_eq!(said, [want]);
    let said = after(|s| at(s, "app01").used_folders.push("x".into()));
    assert!(
        said.len() == 1 && said[0].starts_with("node `app01` instance history"),
        "{said:?}"
    );
    let said = after(|s| at(s, "app02").removed.clear());
    assert!(
        said.len() == 1 && said[0].starts_with("node `app02` instance history"),
        "{said:?}"
    );
    let app = "FastApp-2.0.0/bin/app";
    let said = after(|s| _ = at(s, "app02").files.insert(app.into(), "bb22".into()));
    assert_eq!(said, ["node `app02`: `FastApp-2.0.0/bin/app` differs"]);
    let said = after(|s| _ = at(s, "app01").files.insert("stray".into(), "cc".into()));
    assert_eq!(said, ["node `app01`: `stray` exists only here"]);
    let said = after(|s| _ = at(s, "app01").files.remove("manifest.json"));
    assert_eq!(said, ["node `app01`: `manifest.json` is missing"]);
    // A digest of `-` (contents that hold times) is compared like any
    // other: equal to `-`, different from a real digest.
    let said = after(|s| _ = at(s, "app01").files.insert(app.into(), "-".into()));
    assert_eq!(said, ["node `app01`: `FastApp-2.0.0/bin/app` differs"]);
}

#[test]
fn every_difference_is_listed_database_first_then_node_by_node() {
    let said = after(|s| {
        s.database_version = "1.0.0".into();
        at(s, "app02").current = None;
        at(s, "app01").files.clear();
    });
    let starts = [
        "database at 1.0.0",
        "node `app01`: ",
        "node `app01`: ",
        "node `app02` runs",
    ];
    assert_eq!(said.len(), starts.len(), "{said:?}");
    for (line, start) in said.iter().zip(starts) {
        assert!(line.starts_with(start), "{said:?}");
    }
}
