//! Connection strings, logins and TLS: what reaches the server, what never
//! shows, which authentication is refused, and certificate trust.

use super::*;

#[test]
fn login_failure_names_host_and_port_but_not_the_password() {
    let mock = Mock::start(Fake {
        reject_login: true,
        ..Fake::default()
    });
    let sb = mock.sandbox();
    let out = sb
        .on_site(&["status"])
        .env("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD)
        .output()
        .expect("status");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let addr = format!("127.0.0.1:{}", mock.server.port());
    for needle in [
        "database `FastApp`",
        addr.as_str(),
        "rejected the user name or password",
        "18456",
    ] {
        assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
    }
    assert!(!err.contains(PASSWORD) && !err.contains("Pa55"), "{err}");
    match &mock.server.log()[0].request {
        Request::Login { user, database, .. } => {
            assert_eq!(user, "uprun");
            assert_eq!(database, "FastApp");
        }
        other => panic!("first request {other:?}"),
    }
}

#[test]
fn debug_and_errors_never_show_the_connection_string() {
    let mock = Mock::start(Fake::default());
    let sb = mock.sandbox();
    std::env::set_var("UPRUN_TEST_MSSQL_PASSWORD", PASSWORD);
    let site = Site::load(&sb.site()).expect("site");
    let text = format!("{site:?}");
    assert!(
        !text.contains("Pa55") && !text.contains("Server=tcp"),
        "{text}"
    );
    let db = open_db(&sb);
    let text = format!("{db:?}");
    assert!(!text.contains("Pa55") && text.contains("FastApp"), "{text}");
}

#[test]
fn a_password_with_separators_and_quotes_stays_one_value() {
    let mock = Mock::start(Fake::default());
    let port = mock.server.port();
    // Substituted after the string is parsed: what the password holds cannot
    // add keys (here, another database and user) or end the value.
    let tricky = "x;Database=master;User Id=sa;'\"é";
    for connection in [
        format!("Server=tcp:127.0.0.1,{port};Database=FastApp;User Id=uprun;Password=${{env:UPRUN_TEST_TRICKY_PW}};Encrypt=DANGER_PLAINTEXT"),
        // `Addr` is a synonym of `Server`; the last `Password` wins.
        format!("Addr=tcp:127.0.0.1,{port};Initial Catalog=FastApp;uid=uprun;pwd=wrong;Password='${{env:UPRUN_TEST_TRICKY_PW}}';Encrypt=DANGER_PLAINTEXT"),
    ] {
        let sb = sandbox_at(&connection, "");
        let out = sb.on_site(&["status"])
            .env("UPRUN_TEST_TRICKY_PW", tricky)
            .output()
            .expect("status");
        let all = output_text(&out);
        assert_eq!(out.status.code(), Some(0), "{all}");
        assert!(!all.contains(tricky), "{all}");
    }
    let seen = logins(&mock);
    assert!(!seen.is_empty());
    for (user, database, password) in seen {
        assert_eq!(
            (user.as_str(), database.as_str(), password.as_str()),
            ("uprun", "FastApp", tricky)
        );
    }
}

#[test]
fn windows_and_entra_authentication_are_refused_at_load() {
    let mock = Mock::start(Fake::default());
    let port = mock.server.port();
    for (extra, needle) in [
        ("Integrated Security=SSPI", "Windows authentication"),
        ("Trusted_Connection=Yes", "Windows authentication"),
        (
            "Authentication=ActiveDirectoryIntegrated",
            "Microsoft Entra",
        ),
        ("ApplicationIntent=ReadOnly", "read-only replica"),
        ("MultiSubnetFailover=true", "MultiSubnetFailover"),
    ] {
        let sb = sandbox_at(
            &format!(
                "Server=tcp:127.0.0.1,{port};Database=FastApp;{extra};Encrypt=DANGER_PLAINTEXT"
            ),
            "",
        );
        let out = status(&sb, 1);
        let all = output_text(&out);
        assert_eq!(out.status.code(), Some(2), "{extra}: {all}");
        assert_contains(&all, &["`database.connection`", needle]);
    }
    assert!(
        mock.server.log().is_empty(),
        "a refused string reached the server"
    );
}

/// A connection string to the TLS responder at 127.0.0.1 (`Encrypt=` and
/// more keys in `extra`).
fn tls_connection(mock: &Mock, extra: &str) -> String {
    format!(
        "Server=tcp:127.0.0.1,{};Database=FastApp;User Id=uprun;Password=${{env:UPRUN_TEST_MSSQL_PASSWORD}}{extra}",
        mock.server.port()
    )
}

/// Plan, then run, the stock procedure; both must succeed, the run
/// upgrades, and every connection that logged in was encrypted `how`.
fn plan_and_run_succeed(mock: &Mock, sb: &Sandbox, how: Encryption) {
    for (cmd, extra) in [("plan", &[][..]), ("run", &["--yes"][..])] {
        let (code, all) = uprun_on(sb, cmd, extra);
        assert_eq!(code, Some(0), "{cmd}: {all}");
    }
    assert_eq!(mock.fake().version, "2.0.0");
    assert_eq!(history_names(mock), THREE);
    let logged_in: Vec<usize> = mock
        .server
        .log()
        .iter()
        .filter(|l| matches!(l.request, Request::Login { .. }))
        .map(|l| l.conn)
        .collect();
    let encrypted = mock.server.encrypted();
    assert!(logged_in.len() >= 3, "{logged_in:?}");
    for conn in logged_in {
        assert!(encrypted.contains(&(conn, how)), "{conn}: {encrypted:?}");
    }
}

#[test]
fn tls_with_a_self_signed_certificate_works_when_the_site_trusts_the_server() {
    let cert = TestCert::self_signed_cn_only("SQLSRV01");
    let mock = Mock::start_tls(Fake::default(), &cert);
    let sb = sandbox_at(
        &tls_connection(&mock, ""),
        "trust_server_certificate = true\n",
    );
    plan_and_run_succeed(&mock, &sb, Encryption::All);
    // The login went through TLS: the responder read the password from it.
    assert!(logins(&mock).iter().all(|(_, _, pw)| pw == PASSWORD));
}

#[test]
fn tls_with_a_ca_signed_certificate_for_another_name_works_with_ca_file_and_host_name() {
    let cert = TestCert::ca_signed("db01.corp.example");
    let mock = Mock::start_tls(Fake::default(), &cert);
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = cert.write_trust(dir.path(), "corp-ca.pem");
    let ca_key = format!("ca_file = \"{}\"\n", ca.display());
    // The CA alone: the certificate does not name 127.0.0.1.
    let sb = sandbox_at(&tls_connection(&mock, ""), &ca_key);
    let (code, all) = uprun_on(&sb, "plan", &[]);
    assert_ne!(code, Some(0), "{all}");
    assert_contains(
        &all,
        &[
            "subject alternative names: DNS:db01.corp.example",
            "`HostNameInCertificate=<a DNS name above>`",
        ],
    );
    assert!(logins(&mock).is_empty());
    let sb = sandbox_at(
        &tls_connection(&mock, ";HostNameInCertificate=db01.corp.example"),
        &ca_key,
    );
    plan_and_run_succeed(&mock, &sb, Encryption::All);
}

#[test]
fn tls_failure_describes_the_certificate_the_server_offered_and_what_trusts_it() {
    let cert = TestCert::self_signed_cn_only("SQLSRV01");
    let mock = Mock::start_tls(Fake::default(), &cert);
    let sb = sandbox_at(&tls_connection(&mock, ""), "");
    for cmd in ["plan", "run"] {
        let extra: &[&str] = if cmd == "run" { &["--yes"] } else { &[] };
        let (code, all) = uprun_on(&sb, cmd, extra);
        assert_ne!(code, Some(0), "{cmd}: {all}");
        assert_contains(
            &all,
            &[
                "TLS with 127.0.0.1:",
                "the server's certificate was rejected",
                "The server offered subject `CN=SQLSRV01`, subject alternative names: none, issuer `CN=SQLSRV01` (self-signed), valid from ",
                "uprun checks the server's certificate whatever `Encrypt` says (the login carries the password)",
                "no subject alternative name",
                "`database.ca_file`",
                "`HostNameInCertificate=",
                "`database.trust_server_certificate = true`",
            ],
        );
        // The driver's own advice (its API) is not passed on.
        assert!(!all.contains("Config::trust_cert"), "{all}");
    }
    // No login reached the server: the password never left under TLS that
    // failed, and the probe sends none.
    assert!(logins(&mock).is_empty());
    assert_eq!(mock.fake().version, "1.0.0");
}

#[test]
fn encrypt_optional_still_checks_the_certificate_and_says_so() {
    // A CA-signed certificate for another name, the CA not given.
    let cert = TestCert::ca_signed("db01.corp.example");
    let mock = Mock::start_tls(Fake::default(), &cert);
    let sb = sandbox_at(&tls_connection(&mock, ";Encrypt=Optional"), "");
    let (code, all) = uprun_on(&sb, "plan", &[]);
    assert_ne!(code, Some(0), "{all}");
    assert_contains(
        &all,
        &[
            "The server offered subject `CN=db01.corp.example`, subject alternative names: DNS:db01.corp.example, issuer `CN=uprun test CA` (issued by `CN=uprun test CA`)",
            "uprun checks the server's certificate with `Encrypt=Optional` too, unlike SqlClient",
            "give the CA that signed it in `database.ca_file`",
            "`HostNameInCertificate=<a DNS name above>`",
        ],
    );
    assert!(logins(&mock).is_empty());
    // With the CA and the name, the same Encrypt=Optional connection works
    // (the responder then encrypts the login only, as SQL Server does).
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = cert.write_trust(dir.path(), "corp-ca.pem");
    let sb = sandbox_at(
        &tls_connection(
            &mock,
            ";Encrypt=Optional;HostNameInCertificate=db01.corp.example",
        ),
        &format!("ca_file = \"{}\"\n", ca.display()),
    );
    plan_and_run_succeed(&mock, &sb, Encryption::LoginOnly);
}
