//! Tests of `Site::parse` as a whole: each step seen through the site file.
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Shell, Site};
use crate::Result;

fn site(database: &str) -> Result<Site> {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(dir.path().join("n1")).expect("mkdir");
    let text = format!(
        "[application]\nname = \"FastApp\"\n[database]\n{database}\n[[node]]\nname = \"n1\"\nrole = \"primary\"\nroot = \"n1\"\n"
    );
    Site::parse(&dir.path().join("site.toml"), &text)
}

/// `site` is refused with an error that says `why`.
fn refuses(site: Result<Site>, why: &str) {
    match site {
        Ok(_) => panic!("accepted; expected an error saying {why:?}"),
        Err(e) => {
            let e = e.to_string();
            assert!(e.contains(why), "{e}");
        }
    }
}

#[test]
fn mssql_section_is_read_and_the_password_stays_secret() {
    std::env::set_var("UPRUN_TEST_SITE_PW", "Sup3r;Secret");
    let s = site(
        "kind = \"mssql\"\nconnection = \"Server=tcp:db01,1433;Database=FastApp;User Id=uprun;Password='${env:UPRUN_TEST_SITE_PW}'\"\nbackup_dir = 'D:\\Backups'\ntrust_server_certificate = true\nconnect_timeout_secs = 5",
    )
    .expect("site");
    let m = s.database.mssql().expect("mssql");
    assert_eq!(s.database.name, "FastApp");
    assert_eq!(m.database, "FastApp");
    assert!(m.trust_server_certificate);
    assert_eq!(m.connect_timeout, Duration::from_secs(5));
    assert_eq!(s.database.backup_dir, PathBuf::from("D:\\Backups"));
    assert!(m.connection.expose().contains("Sup3r;Secret"));
    let debug = format!("{s:?}");
    assert!(!debug.contains("Sup3r") && debug.contains("***"), "{debug}");
}

#[test]
fn mssql_database_override_and_errors() {
    let s = site("kind = \"mssql\"\nconnection = \"Server=db01\"\ndatabase = \"Other]DB\"\nbackup_dir = \"/b\"")
        .expect("site");
    assert_eq!(s.database.name, "Other]DB");
    let long_name = format!(
        "kind = \"mssql\"\nconnection = \"Server=db01\"\ndatabase = \"{}\"\nbackup_dir = \"/b\"",
        "x".repeat(129)
    );
    let refused = [
        ("kind = \"mssql\"\nconnection = \"Server=db01\"\nbackup_dir = \"/b\"", "no database named"),
        (long_name.as_str(), "longer than 128"),
        ("kind = \"mssql\"\nconnection = \"Server=db01;Database=A;TrustServerCertificate=true\"\ntrust_server_certificate = false\nbackup_dir = \"/b\"", "one place"),
        ("kind = \"sqlite\"\npath = \"a.sqlite\"\nconnection = \"x\"\nbackup_dir = \"b\"", "`database.connection` is a SQL Server setting"),
        ("kind = \"mssql\"\nbackup_dir = \"/b\"", "`database.connection` is required"),
    ];
    for (database, why) in refused {
        refuses(site(database), why);
    }
}

fn site_with(dir: &Path, extra: &str, nodes: &str) -> Result<Site> {
    let text = format!(
        "[application]\nname = \"FastApp\"\n[database]\nkind = \"sqlite\"\npath = \"db.sqlite\"\nbackup_dir = \"b\"\n{extra}\n{nodes}"
    );
    Site::parse(&dir.join("site.toml"), &text)
}

#[test]
fn ssh_nodes_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let site = site_with(
        dir.path(),
        "[ssh]\nidentity = \"keys/id\"\naccept_new_host_keys = true\nconnect_timeout_secs = 3\n",
        "[[node]]\nname = \"w1\"\nrole = \"primary\"\naddress = \"ssh://admin@win1:22\"\nroot = \"C:/Apps\"\nshell = \"powershell\"\n\
         [[node]]\nname = \"l1\"\nrole = \"secondary\"\naddress = \"ssh://deploy@l1\"\nroot = \"/opt/app\"\n",
    )
    .unwrap();
    assert_eq!(site.nodes[0].shell, Shell::Powershell);
    assert_eq!(site.nodes[1].shell, Shell::Posix);
    assert_eq!(site.ssh.identity, Some(dir.path().join("keys/id")));
    assert!(site.ssh.accept_new_host_keys);
    assert_eq!(site.ssh.connect_timeout, Duration::from_secs(3));

    let err = site_with(
        dir.path(),
        "",
        "[[node]]\nname = \"l1\"\nrole = \"primary\"\naddress = \"ssh://deploy@l1:70000\"\nroot = \"/opt\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("site.toml") && err.contains("node[0].address") && err.contains("port"),
        "{err}"
    );
    let err = site_with(
        dir.path(),
        "",
        "[[node]]\nname = \"l1\"\nrole = \"primary\"\naddress = \"ssh://deploy@l1\"\nroot = \"opt\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("node[0].root") && err.contains("absolute"),
        "{err}"
    );
    let err = site_with(dir.path(), "[ssh]\nidentty = \"x\"\n", "")
        .unwrap_err()
        .to_string();
    assert!(err.contains("identty"), "{err}");
}

fn two_nodes(first: (&str, &str), second: (&str, &str)) -> String {
    format!(
        "[[node]]\nname = \"a\"\nrole = \"primary\"\naddress = \"{}\"\nroot = {:?}\n\
         [[node]]\nname = \"b\"\nrole = \"secondary\"\naddress = \"{}\"\nroot = {:?}\n",
        first.0, first.1, second.0, second.1
    )
}

#[test]
fn node_roots_must_not_overlap() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("n/a/inner")).unwrap();
    std::fs::create_dir_all(dir.path().join("n/b")).unwrap();
    let err = |nodes: String| site_with(dir.path(), "", &nodes).unwrap_err().to_string();
    let e = err(two_nodes(("local", "n/a"), ("local", "./n/b/../a/")));
    assert!(e.contains("nodes `a` and `b` share the root folder"), "{e}");
    let e = err(two_nodes(("local", "n/a/inner"), ("local", "n/a")));
    assert!(
        e.contains("the root of node `a` (`") && e.contains("inside the root of node `b`"),
        "{e}"
    );
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink("a", dir.path().join("n/link")).unwrap();
        let e = err(two_nodes(("local", "n/a"), ("local", "n/link")));
        assert!(e.contains("share the root folder"), "{e}");
    }
    assert!(site_with(
        dir.path(),
        "",
        &two_nodes(("local", "n/a"), ("local", "n/b"))
    )
    .is_ok());
    // SSH nodes: compared when they share host and port.
    let ssh = "ssh://u@h1:22";
    let e = err(two_nodes(
        (ssh, "/opt/app/"),
        ("ssh://v@H1", "/opt/x/../app"),
    ));
    assert!(e.contains("share the root folder"), "{e}");
    let e = err(two_nodes((ssh, "/opt/app"), (ssh, "/opt/app/b")));
    assert!(e.contains("inside the root of node `a`"), "{e}");
    assert!(site_with(
        dir.path(),
        "",
        &two_nodes((ssh, "/opt/app"), ("ssh://u@h2", "/opt/app"))
    )
    .is_ok());
    assert!(site_with(
        dir.path(),
        "",
        &two_nodes((ssh, "/opt/app"), ("ssh://u@h1:2222", "/opt/app"))
    )
    .is_ok());
    assert!(site_with(
        dir.path(),
        "",
        &two_nodes((ssh, "/opt/app"), (ssh, "/opt/app2"))
    )
    .is_ok());
    // Windows nodes ignore case and take either separator.
    let nodes = two_nodes((ssh, "C:/Apps/Fast"), (ssh, "c:\\apps\\fast\\b"))
        .replace("root = \"C:", "shell = \"powershell\"\nroot = \"C:")
        .replace("root = \"c:", "shell = \"powershell\"\nroot = \"c:");
    let e = err(nodes);
    assert!(e.contains("inside the root of node `a`"), "{e}");
}

#[test]
fn renamed_from_is_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("n1")).unwrap();
    let parse = |app: &str| {
        let text = format!(
            "[application]\n{app}\n[database]\nkind = \"sqlite\"\npath = \"db.sqlite\"\nbackup_dir = \"b\"\n[[node]]\nname = \"n1\"\nrole = \"primary\"\nroot = \"n1\"\n"
        );
        Site::parse(&dir.path().join("site.toml"), &text)
    };
    let s = parse("name = \"NewApp\"\nrenamed_from = \"FastApp\"").unwrap();
    assert_eq!(s.renamed_from.as_deref(), Some("FastApp"));
    assert_eq!(parse("name = \"FastApp\"").unwrap().renamed_from, None);
    let refused = [
        (
            "name = \"FastApp\"\nrenamed_from = \"FastApp\"",
            "nothing is renamed",
        ),
        (
            "name = \"NewApp\"\nrenamed_from = \"a/b\"",
            "application.renamed_from",
        ),
        (
            "name = \"NewApp\"\nrenamed_form = \"FastApp\"",
            "renamed_form",
        ),
    ];
    for (app, why) in refused {
        refuses(parse(app), why);
    }
}
