//! ADO.NET connection strings, read as SqlClient reads them, and the one
//! place that decides which keywords uprun honours. The driver never parses
//! the string: `db::mssql` builds its configuration from these pairs. Errors
//! never quote a value: the string holds a password.
//!
//! Syntax (SqlClient's `DbConnectionOptions`): `key=value` pairs separated by
//! `;`; keys are case-insensitive, trimmed, `==` in a key is a literal `=`;
//! a value is trimmed unless quoted with `'...'` or `"..."` (the quote doubled
//! inside: `'it''s'`); braces are not quoting (that is ODBC); any Unicode is
//! allowed. A key given twice (or two synonyms of one keyword: `Server`,
//! `Data Source`, `Addr`...) keeps the last value, as SqlClient does.

/// `key=value` pairs, keys in SqlClient's canonical (lower-case) name, values
/// unquoted, one pair per keyword (the last one given wins), in the order the
/// keywords first appear.
pub(crate) fn pairs(s: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if rest.is_empty() {
            return Ok(out);
        }
        // The key: up to the first `=` that is not doubled.
        let mut key = String::new();
        let mut chars = rest.char_indices().peekable();
        let mut value_at = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '=' if chars.peek().map(|&(_, n)| n) == Some('=') => {
                    key.push('=');
                    chars.next();
                }
                '=' => {
                    value_at = Some(i + 1);
                    break;
                }
                ';' => break,
                c => key.push(c),
            }
        }
        let Some(value_at) = value_at else {
            return Err("a part without `=` (write `key=value` pairs separated by `;`)".into());
        };
        let key = key.trim().to_lowercase();
        if key.is_empty() {
            return Err("a `key=value` pair without a key".into());
        }
        let key = canonical(&key).unwrap_or(&key).to_string();
        let after = rest[value_at..].trim_start();
        let (value, remaining) = match after.chars().next() {
            Some(q @ ('\'' | '"')) => {
                let mut value = String::new();
                let mut chars = after[1..].char_indices().peekable();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    if c == q {
                        if chars.peek().map(|&(_, n)| n) == Some(q) {
                            value.push(q);
                            chars.next();
                        } else {
                            end = Some(1 + i + 1);
                            break;
                        }
                    } else {
                        value.push(c);
                    }
                }
                let Some(end) = end else {
                    return Err(format!("the quoted value of `{key}` is never closed"));
                };
                (value, &after[end..])
            }
            _ => match after.find(';') {
                Some(i) => (after[..i].trim_end().to_string(), &after[i..]),
                None => (after.trim_end().to_string(), ""),
            },
        };
        let remaining = remaining.trim_start();
        if !remaining.is_empty() && !remaining.starts_with(';') {
            return Err(format!("unexpected text after the quoted value of `{key}`"));
        }
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some(pair) => pair.1 = value,
            None => out.push((key, value)),
        }
        rest = remaining;
    }
}

/// Write pairs back as a connection string that `pairs` reads back the same.
pub(crate) fn join(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let plain = !v.contains([';', '\'', '"']) && v.trim() == v.as_str() && !v.is_empty();
            if plain {
                format!("{}={v}", k.replace('=', "=="))
            } else {
                format!("{}=\"{}\"", k.replace('=', "=="), v.replace('"', "\"\""))
            }
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// SqlClient's keywords and their synonyms: (canonical, synonyms).
const KEYWORDS: &[(&str, &[&str])] = &[
    (
        "data source",
        &["server", "address", "addr", "network address"],
    ),
    ("initial catalog", &["database"]),
    ("user id", &["uid", "user"]),
    ("password", &["pwd"]),
    ("encrypt", &[]),
    ("trustservercertificate", &["trust server certificate"]),
    ("hostnameincertificate", &["host name in certificate"]),
    ("integrated security", &["trusted_connection"]),
    ("authentication", &[]),
    ("multisubnetfailover", &["multi subnet failover"]),
    ("applicationintent", &["application intent"]),
    ("application name", &["app"]),
    ("workstation id", &["wsid"]),
    ("connect timeout", &["connection timeout", "timeout"]),
    ("command timeout", &[]),
    ("persist security info", &["persistsecurityinfo"]),
    ("pooling", &[]),
    ("max pool size", &[]),
    ("min pool size", &[]),
    ("load balance timeout", &["connection lifetime"]),
    ("connect retry count", &["connectretrycount"]),
    ("connect retry interval", &["connectretryinterval"]),
    ("multipleactiveresultsets", &["multiple active result sets"]),
    ("failover partner", &[]),
];

/// The canonical name of a keyword or synonym (lower case), None if unknown.
fn canonical(key: &str) -> Option<&'static str> {
    KEYWORDS
        .iter()
        .find(|(k, syn)| *k == key || syn.contains(&key))
        .map(|(k, _)| *k)
}

/// Keywords that change nothing for uprun, so they are accepted and ignored:
/// connection pooling (uprun opens few connections and keeps them), and the
/// names a connection shows in `sys.dm_exec_sessions` (uprun names its own:
/// `uprun`, `uprun run <id>`, `uprun progress`).
const IGNORED: &[&str] = &[
    "persist security info",
    "pooling",
    "max pool size",
    "min pool size",
    "load balance timeout",
    "connect retry count",
    "connect retry interval",
    "application name",
    "workstation id",
];

/// How the connection is encrypted (`Encrypt=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encrypt {
    /// `Mandatory`, `true`, `yes`, or no `Encrypt`: TLS, certificate checked.
    Mandatory,
    /// `Optional`, `false`, `no`: TLS for the login at least, the rest as the
    /// server requires.
    Optional,
    /// `Strict`: TDS 8.0, TLS before anything else.
    Strict,
    /// `DANGER_PLAINTEXT` (the driver's, not ADO.NET's): nothing encrypted,
    /// not even the password. For test servers that cannot do TLS.
    Plaintext,
}

fn boolean(key: &str, v: &str) -> std::result::Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" => Ok(true),
        "false" | "no" => Ok(false),
        _ => Err(format!("`{key}` must be true or false (or yes/no)")),
    }
}

/// A boolean keyword's value (absent: false).
pub(crate) fn flag(pairs: &[(String, String)], key: &str) -> std::result::Result<bool, String> {
    match get(pairs, &[key]) {
        Some(v) => boolean(key, v),
        None => Ok(false),
    }
}

/// `Encrypt=` as SqlClient reads it (absent: Mandatory, as SqlClient 4+).
pub(crate) fn encrypt(pairs: &[(String, String)]) -> std::result::Result<Encrypt, String> {
    let Some(v) = get(pairs, &["encrypt"]) else {
        return Ok(Encrypt::Mandatory);
    };
    if v.trim() == "DANGER_PLAINTEXT" {
        return Ok(Encrypt::Plaintext);
    }
    match v.trim().to_ascii_lowercase().as_str() {
        "mandatory" | "true" | "yes" => Ok(Encrypt::Mandatory),
        "optional" | "false" | "no" => Ok(Encrypt::Optional),
        "strict" => Ok(Encrypt::Strict),
        _ => Err("`Encrypt` must be Mandatory, Optional or Strict (or true/false, yes/no)".into()),
    }
}

/// Refuse what uprun does not honour, with what to write instead; every
/// other keyword is either honoured (see the README) or in `IGNORED`.
pub(crate) fn check(pairs: &[(String, String)]) -> std::result::Result<(), String> {
    for (key, value) in pairs {
        let known = KEYWORDS.iter().any(|(k, _)| k == key);
        if !known {
            return Err(format!(
                "keyword `{key}` is not supported; uprun honours Server (Data Source, Address, Addr), Database (Initial Catalog), User Id, Password, Encrypt, TrustServerCertificate and HostNameInCertificate (see the README's SQL Server section)"
            ));
        }
        let refused = match key.as_str() {
            "integrated security" => match value.trim().to_ascii_lowercase().as_str() {
                "sspi" => true,
                _ => boolean(key, value)?,
            }
            .then(|| "Windows authentication (`Integrated Security`/`Trusted_Connection`) is not supported: uprun logs in with a SQL Server login; create one for uprun and give `User Id` and `Password`".to_string()),
            "authentication" => {
                let v = value.trim().to_ascii_lowercase().replace(' ', "");
                (v != "sqlpassword").then(|| "`Authentication` other than `SqlPassword` (Microsoft Entra / Active Directory) is not supported: uprun logs in with a SQL Server login (`User Id`, `Password`)".to_string())
            }
            "multisubnetfailover" => boolean(key, value)?.then(|| "`MultiSubnetFailover=true` is not supported: uprun connects to one address at a time; point `Server=` at the availability group listener without it (allow `connect_timeout_secs` for a failover)".to_string()),
            "applicationintent" => match value.trim().to_ascii_lowercase().as_str() {
                "readwrite" => None,
                "readonly" => Some("`ApplicationIntent=ReadOnly` would route uprun to a read-only replica, but uprun writes (migrations, history, version): remove it".to_string()),
                _ => return Err("`ApplicationIntent` must be ReadWrite or ReadOnly".into()),
            },
            "multipleactiveresultsets" => boolean(key, value)?.then(|| "`MultipleActiveResultSets=true` is not supported: remove it (uprun does not need MARS)".to_string()),
            "connect timeout" => Some("set the connection timeout with `database.connect_timeout_secs` in the site file, not in the connection string".to_string()),
            "command timeout" => Some("set statement timeouts with `database.query_timeout_secs` / `database.operation_timeout_secs` in the site file, not in the connection string".to_string()),
            "failover partner" => Some("`Failover Partner` (database mirroring) is not supported: point `Server=` at the current principal".to_string()),
            "trustservercertificate" => {
                boolean(key, value)?;
                None
            }
            "encrypt" => {
                let one = [(key.clone(), value.clone())];
                encrypt(&one)?;
                None
            }
            k if IGNORED.contains(&k) => None,
            _ => None,
        };
        if let Some(why) = refused {
            return Err(why);
        }
    }
    Ok(())
}

/// The value of the first key among `keys` (canonical, lower case).
pub(crate) fn get<'a>(pairs: &'a [(String, String)], keys: &[&str]) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| keys.contains(&k.as_str()))
        .map(|(_, v)| v.as_str())
}

/// Longest instance name the SQL Server Browser protocol carries (MS-SQLR:
/// 32 bytes; SQL Server itself allows 16 characters).
pub(crate) const MAX_INSTANCE_BYTES: usize = 32;

/// Where `Server=` (or `Data Source=`) points: `[tcp:]host[\instance][,port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerAddr {
    /// Host name or address; `.`, `(local)` and an empty host mean `localhost`.
    pub host: String,
    /// A named instance (`host\INSTANCE`), found through the SQL Server Browser
    /// unless `port` is given.
    pub instance: Option<String>,
    /// An explicit TCP port (`host,port`); it wins over the instance name.
    pub port: Option<u16>,
}

/// Read `Server=`/`Data Source=` (absent: `localhost`, as the driver does).
/// Only TCP is supported: `np:`, `lpc:` and `admin:` are refused. Errors
/// quote the server value, never anything else of the string.
pub(crate) fn server(pairs: &[(String, String)]) -> std::result::Result<ServerAddr, String> {
    let Some(raw) = get(pairs, &["data source"]) else {
        return Ok(ServerAddr {
            host: "localhost".into(),
            instance: None,
            port: None,
        });
    };
    let value = raw.trim();
    let (prefix, rest) = match value.split_once(':') {
        // A prefix is a protocol name (letters only).
        Some((p, r)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_alphabetic()) => (Some(p), r),
        _ => (None, value),
    };
    match prefix.map(str::to_ascii_lowercase).as_deref() {
        None | Some("tcp") => {}
        Some(p @ ("np" | "lpc" | "admin")) => {
            return Err(format!(
                "`Server={value}`: protocol `{p}:` is not supported; uprun connects over TCP: write `tcp:host\\instance` or `tcp:host,port`"
            ))
        }
        Some(_) => {
            return Err(format!(
                "`Server={value}`: expected `tcp:host`, `tcp:host\\instance` or `tcp:host,port`"
            ))
        }
    }
    let (target, port) = match rest.rsplit_once(',') {
        Some((t, p)) => match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => (t, Some(n)),
            _ => {
                return Err(format!(
                    "`Server={value}`: the port after `,` must be a number from 1 to 65535"
                ))
            }
        },
        None => (rest, None),
    };
    let (host, instance) = match target.split_once('\\') {
        Some((h, i)) => (h.trim(), Some(i.trim())),
        None => (target.trim(), None),
    };
    if let Some(i) = instance {
        if i.is_empty() || i.contains(['\\', '\0', ';']) {
            return Err(format!(
                "`Server={value}`: expected one instance name after `\\` (`host\\INSTANCE`)"
            ));
        }
        if i.len() > MAX_INSTANCE_BYTES {
            return Err(format!(
                "`Server={value}`: the instance name is longer than {MAX_INSTANCE_BYTES} bytes"
            ));
        }
    }
    let host = match host {
        "" | "." | "(local)" => "localhost".to_string(),
        h if h.contains(['\0', ' ']) => {
            return Err(format!("`Server={value}`: the host name is not valid"))
        }
        h => h.to_string(),
    };
    Ok(ServerAddr {
        host,
        instance: instance.map(str::to_string),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keys_and_quoted_values() {
        let p = pairs(
            "Server=tcp:db01,1433; Database = Fast App ;User Id=sa;Password='p;w''d';Encrypt=yes;",
        )
        .expect("parse");
        assert_eq!(get(&p, &["initial catalog"]), Some("Fast App"));
        assert_eq!(get(&p, &["password"]), Some("p;w'd"));
        assert_eq!(get(&p, &["encrypt"]), Some("yes"));
        assert_eq!(get(&p, &["trustservercertificate"]), None);
    }

    #[test]
    fn reads_as_sqlclient_does() {
        // The last of duplicate keys and synonyms wins.
        let p = pairs("Server=a;Data Source=b;ADDR=c;pwd=1;Password=2").expect("parse");
        assert_eq!(get(&p, &["data source"]), Some("c"));
        assert_eq!(get(&p, &["password"]), Some("2"));
        assert_eq!(p.len(), 2);
        // Quotes: doubled inside, the other kind is plain text; braces are not quoting.
        let p = pairs("Password=\"a\"\"b'c\";uid='x\"y';Database={db}").expect("parse");
        assert_eq!(get(&p, &["password"]), Some("a\"b'c"));
        assert_eq!(get(&p, &["user id"]), Some("x\"y"));
        assert_eq!(get(&p, &["initial catalog"]), Some("{db}"));
        // `==` in a key is `=`; non-ASCII anywhere; a quote inside an unquoted value.
        let p = pairs("a==b=1;Password=pässwörd;User=o'brien").expect("parse");
        assert_eq!(get(&p, &["a=b"]), Some("1"));
        assert_eq!(get(&p, &["password"]), Some("pässwörd"));
        assert_eq!(get(&p, &["user id"]), Some("o'brien"));
        // Written back, read back the same.
        let p = pairs("Server=db;Password=' a;b\"c '").expect("parse");
        assert_eq!(pairs(&join(&p)).expect("again"), p);
    }

    fn checked(s: &str) -> std::result::Result<(), String> {
        check(&pairs(s).expect("parse"))
    }

    #[test]
    fn refuses_what_uprun_does_not_honour() {
        for (s, needle) in [
            ("Integrated Security=SSPI", "Windows authentication"),
            ("Trusted_Connection=yes", "Windows authentication"),
            (
                "Authentication=Active Directory Password",
                "Microsoft Entra",
            ),
            ("MultiSubnetFailover=True", "MultiSubnetFailover=true"),
            ("ApplicationIntent=ReadOnly", "read-only replica"),
            ("Connect Timeout=30", "database.connect_timeout_secs"),
            ("Encrypt=maybe", "Mandatory, Optional or Strict"),
            ("Colour=blue", "keyword `colour` is not supported"),
        ] {
            let e = checked(&format!("Server=db;{s};Password=s3cret")).expect_err(s);
            assert!(e.contains(needle) && !e.contains("s3cret"), "{s}: {e}");
        }
        for ok in [
            "Integrated Security=false",
            "Authentication=SqlPassword",
            "Authentication=Sql Password",
            "MultiSubnetFailover=no",
            "ApplicationIntent=ReadWrite",
            "Pooling=false;Max Pool Size=5;Application Name=x;Persist Security Info=False",
            "Encrypt=Mandatory;HostNameInCertificate=db.example.com",
            "Encrypt=Optional;TrustServerCertificate=true",
            "Encrypt=Strict",
        ] {
            assert_eq!(checked(&format!("Server=db;{ok}")), Ok(()), "{ok}");
        }
    }

    #[test]
    fn encrypt_as_sqlclient_reads_it() {
        let enc = |s: &str| encrypt(&pairs(s).expect("parse"));
        assert_eq!(enc("Server=x"), Ok(Encrypt::Mandatory));
        assert_eq!(enc("Encrypt=MANDATORY"), Ok(Encrypt::Mandatory));
        assert_eq!(enc("Encrypt=true"), Ok(Encrypt::Mandatory));
        assert_eq!(enc("Encrypt=Optional"), Ok(Encrypt::Optional));
        assert_eq!(enc("Encrypt=no"), Ok(Encrypt::Optional));
        assert_eq!(enc("Encrypt=strict"), Ok(Encrypt::Strict));
        assert_eq!(enc("Encrypt=DANGER_PLAINTEXT"), Ok(Encrypt::Plaintext));
    }

    #[test]
    fn errors_do_not_quote_values() {
        let e = pairs("server=x;password='s3cret").unwrap_err();
        assert!(e.contains("password") && !e.contains("s3cret"), "{e}");
        let e = pairs("server=x;s3cret").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }

    fn server_of(s: &str) -> std::result::Result<ServerAddr, String> {
        server(&pairs(s).expect("parse"))
    }

    fn addr(host: &str, instance: Option<&str>, port: Option<u16>) -> ServerAddr {
        ServerAddr {
            host: host.into(),
            instance: instance.map(str::to_string),
            port,
        }
    }

    #[test]
    fn reads_the_server() {
        let cases = [
            ("Server=tcp:db01,1433", addr("db01", None, Some(1433))),
            ("Server=db01", addr("db01", None, None)),
            (
                "Data Source=tcp:db01\\SQL2019",
                addr("db01", Some("SQL2019"), None),
            ),
            ("server=db01\\SQL2019", addr("db01", Some("SQL2019"), None)),
            (
                "Server=TCP:db01.example.com\\SQL2019, 49731",
                addr("db01.example.com", Some("SQL2019"), Some(49731)),
            ),
            (
                "Server=.\\SQLEXPRESS",
                addr("localhost", Some("SQLEXPRESS"), None),
            ),
            ("Server=(local)", addr("localhost", None, None)),
            ("Database=x", addr("localhost", None, None)),
        ];
        for (s, want) in cases {
            assert_eq!(server_of(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn refuses_servers_it_cannot_reach() {
        for (s, needle) in [
            (
                "Server=np:\\\\db01\\pipe\\sql\\query",
                "`np:` is not supported",
            ),
            ("Server=lpc:db01", "`lpc:` is not supported"),
            ("Server=db01,abc", "must be a number"),
            ("Server=db01,0", "must be a number"),
            ("Server=db01\\", "one instance name"),
            ("Server=db01\\a\\b", "one instance name"),
            (
                "Server=db01\\ThisNameIsFarTooLongForTheBrowserProtocol",
                "longer than 32",
            ),
            ("Server=udp:db01", "expected `tcp:host`"),
        ] {
            let e = server_of(&format!("{s};Password=s3cret")).expect_err(s);
            assert!(e.contains(needle) && !e.contains("s3cret"), "{s}: {e}");
        }
    }
}
