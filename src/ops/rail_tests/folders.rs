//! Rails of folders, compared by identity rather than by spelling.

use super::*;

// ---- Rule: folders by identity, not by spelling ----

#[test]
fn folder_spellings_other_than_one_plain_name_are_bad_input() {
    let bad = [
        "./FastApp-1.0.0",
        "FastApp-1.0.0/",
        "FastApp-1.0.0/next",
        "..",
        ".",
        "/srv/app02/FastApp-9",
        "",
    ];
    creates_on_app02_fail(World::new, &bad.map(in_folder), bad_input, "is not allowed");
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
    let ignoring_case = || {
        let w = World::new();
        w.node("app02").ignore_case = true;
        w
    };
    let folders = ["fastapp-1.0.0", "FASTAPP-1.0.0"].map(in_folder);
    let needle = "which was used by an earlier instance";
    creates_on_app02_fail(ignoring_case, &folders, refused, needle);
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
