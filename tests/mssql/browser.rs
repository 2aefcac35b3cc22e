//! Named instances, found through a SQL Server Browser on 127.0.0.1
//! (`support::browser`), and what is said when it cannot help.

use super::*;

const INSTANCE: &str = "TESTINST";

const PASSWORD_REF: &str = "${env:UPRUN_TEST_MSSQL_PASSWORD}";

#[test]
fn a_named_instance_is_found_through_the_browser_and_the_run_reaches_it() {
    let mock = Mock::start_instance(Fake::default(), INSTANCE);
    let browser = Browser::start(vec![
        instance("SQLEXPRESS", Some(1)),
        instance(INSTANCE, Some(mock.server.port())),
    ]);
    // Instance names are not case-sensitive.
    let sb = sandbox_at(&connection_to("127.0.0.1\\testinst", PASSWORD_REF), "");
    let (key, port) = browser.env();
    let out = sb
        .cmd("run", "in-place-upgrade", &["--yes"])
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .env(key, port)
        .output()
        .expect("run");
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert_contains(&all, &[]);
    assert_eq!(mock.fake().version, "2.0.0");
    assert_eq!(mock.fake().history.len(), 3);

    // The Browser was asked for that instance only, and answered at once (so
    // its list of instances was never asked for).
    let requests = browser.requests();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| *r == instance_request("testinst")),
        "{requests:?}"
    );
    // Every connection (main, progress monitor, run lock) reached the
    // instance's port and named the instance in its prelogin.
    let prelogins = mock.server.prelogin_instances();
    assert!(prelogins.iter().all(|p| p == "testinst"), "{prelogins:?}");
    let apps: std::collections::BTreeSet<String> =
        mock.server.log().into_iter().map(|l| l.app).collect();
    assert!(
        apps.contains("uprun")
            && apps.contains("uprun progress")
            && apps.iter().any(|a| a.starts_with("uprun run ")),
        "{apps:?}"
    );
    assert_eq!(
        prelogins.len(),
        mock.server.log().iter().map(|l| l.conn).max().unwrap_or(0)
    );
}

#[test]
fn an_explicit_port_wins_over_the_browser_and_the_server_checks_the_instance() {
    let mock = Mock::start_instance(Fake::default(), INSTANCE);
    let browser = Browser::silent();
    let port = mock.server.port();
    let sb = sandbox_at(
        &connection_to(&format!("127.0.0.1\\{INSTANCE},{port}"), PASSWORD_REF),
        "connect_timeout_secs = 2",
    );
    let out = status(&sb, browser.port);
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(browser.requests().is_empty(), "the Browser was asked");
    let prelogins = mock.server.prelogin_instances();
    assert!(
        !prelogins.is_empty() && prelogins.iter().all(|p| p == INSTANCE),
        "{prelogins:?}"
    );

    // A port that belongs to another instance: the server refuses the name.
    let logins = |m: &Mock| {
        m.server
            .log()
            .iter()
            .filter(|l| matches!(l.request, Request::Login { .. }))
            .count()
    };
    let before = logins(&mock);
    let sb = sandbox_at(
        &connection_to(&format!("127.0.0.1\\OTHER,{port}"), PASSWORD_REF),
        "connect_timeout_secs = 2",
    );
    let out = status(&sb, browser.port);
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert_contains(
        &all,
        &[
            "database `FastApp`",
            &format!("the SQL Server at 127.0.0.1:{port} is not instance `OTHER`"),
            "leave the port out so that the SQL Server Browser finds the instance",
        ],
    );
    assert!(browser.requests().is_empty(), "the Browser was asked");
    assert_eq!(logins(&mock), before, "logged in to the wrong instance");
}

#[test]
fn a_browser_that_does_not_answer_is_named_with_what_to_do() {
    let mock = Mock::start_instance(Fake::default(), INSTANCE);
    let browser = Browser::silent();
    let sb = sandbox_at(
        &connection_to(&format!("127.0.0.1\\{INSTANCE}"), PASSWORD_REF),
        "connect_timeout_secs = 2",
    );
    let started = std::time::Instant::now();
    let out = status(&sb, browser.port);
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_contains(
        &all,
        &[
            "database `FastApp`",
            &format!(
                "SQL Server Browser on 127.0.0.1:{} did not answer for instance `{INSTANCE}` within 2 s (`database.connect_timeout_secs`)",
                browser.port
            ),
            "start the SQL Server Browser service on 127.0.0.1",
            &format!("`Server=tcp:127.0.0.1\\{INSTANCE},<port>`"),
        ],
    );
    // Asked for the instance, then again together with the list of instances.
    let requests = browser.requests();
    assert_eq!(requests.first(), Some(&instance_request(INSTANCE)));
    assert!(requests.contains(&vec![0x03]), "{requests:?}");
    // Nothing reached the server.
    assert!(mock.server.prelogin_instances().is_empty());
    assert!(mock.server.log().is_empty());
}

#[test]
fn no_browser_on_the_host_is_told_apart_from_a_silent_one() {
    let port = free_udp_port();
    let sb = sandbox_at(
        &connection_to(&format!("127.0.0.1\\{INSTANCE}"), PASSWORD_REF),
        "",
    );
    let started = std::time::Instant::now();
    let out = status(&sb, port);
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    // A closed port is known at once (ICMP port unreachable): no waiting.
    assert!(started.elapsed() < Duration::from_secs(8), "{all}");
    assert_contains(
        &all,
        &[
            &format!(
                "SQL Server Browser on 127.0.0.1:{port} is not running (UDP port {port} is closed), so instance `{INSTANCE}` cannot be found"
            ),
            "start the SQL Server Browser service on 127.0.0.1",
            &format!("`Server=tcp:127.0.0.1\\{INSTANCE},<port>`"),
        ],
    );
}

#[test]
fn unknown_instances_and_instances_without_tcp_are_explained() {
    let browser = Browser::start(vec![
        instance("SQLEXPRESS", Some(1)),
        instance("PIPES", None),
    ]);
    let sb = sandbox_at(&connection_to("127.0.0.1\\NOPE", PASSWORD_REF), "");
    let out = status(&sb, browser.port);
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert_contains(
        &all,
        &[
            &format!(
                "SQL Server Browser on 127.0.0.1:{} knows no instance `NOPE`; it reported `SQLEXPRESS`, `PIPES`: correct the instance name in `Server=` of `database.connection`",
                browser.port
            ),
        ],
    );
    // A real Browser ignores a request for an instance it does not know: the
    // list came from asking for all of them.
    let requests = browser.requests();
    assert_eq!(requests.first(), Some(&instance_request("NOPE")));
    assert!(requests.contains(&vec![0x03]), "{requests:?}");

    let sb = sandbox_at(&connection_to("127.0.0.1\\pipes", PASSWORD_REF), "");
    let out = status(&sb, browser.port);
    let all = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert_contains(
        &all,
        &[&format!(
            "instance `pipes` on 127.0.0.1 does not accept TCP connections (SQL Server Browser on 127.0.0.1:{} reports only: np): enable TCP/IP for the instance",
            browser.port
        )],
    );

    // Named pipes are refused before anything is sent.
    let before = browser.requests().len();
    let sb = sandbox_at(
        &format!("Server=np:\\\\127.0.0.1\\pipe\\MSSQL$PIPES\\sql\\query;Database=FastApp;User Id=uprun;Password='{PASSWORD_REF}'"),
        "",
    );
    let out = status(&sb, browser.port);
    let all = output_text(&out);
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert_contains(
        &all,
        &["protocol `np:` is not supported; uprun connects over TCP"],
    );
    assert_eq!(browser.requests().len(), before);
}
