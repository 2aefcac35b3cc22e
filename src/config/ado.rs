//! Just enough of ADO.NET connection-string syntax to read the keys the site
//! file cares about (the database name, TLS keys that would clash with
//! `database.trust_server_certificate` / `database.ca_file`). The connection
//! itself is parsed by the driver. Errors never quote a value: the string holds
//! a password.

/// `key=value` pairs, keys trimmed and lower-cased, values unquoted.
pub(crate) fn pairs(s: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return Ok(out);
        }
        let Some(eq) = rest.find('=') else {
            return Err("a part without `=` (write `key=value` pairs separated by `;`)".into());
        };
        let key = rest[..eq].trim().to_ascii_lowercase();
        if key.is_empty() || key.contains(';') {
            return Err("a `key=value` pair without a key".into());
        }
        let after = rest[eq + 1..].trim_start_matches([' ', '\t']);
        let (value, remaining) = match after.chars().next() {
            Some(q @ ('\'' | '"')) => {
                // Quoted; a doubled quote is a quote inside the value.
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
            Some('{') => match after.find('}') {
                Some(close) => (after[1..close].to_string(), &after[close + 1..]),
                None => return Err(format!("the `{{...}}` value of `{key}` is never closed")),
            },
            _ => match after.find(';') {
                Some(i) => (after[..i].trim_end().to_string(), &after[i..]),
                None => (after.trim_end().to_string(), ""),
            },
        };
        let remaining = remaining.trim_start_matches([' ', '\t']);
        if !remaining.is_empty() && !remaining.starts_with(';') {
            return Err(format!("unexpected text after the quoted value of `{key}`"));
        }
        out.push((key, value));
        rest = remaining;
    }
}

/// The value of the first key among `keys` (lower case).
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
    let Some(raw) = get(pairs, &["server", "data source"]) else {
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
            "Server=tcp:db01,1433; Database = Fast App ;User Id=sa;Password='p;w''d';Encrypt={yes};",
        )
        .expect("parse");
        assert_eq!(get(&p, &["database", "initial catalog"]), Some("Fast App"));
        assert_eq!(get(&p, &["password", "pwd"]), Some("p;w'd"));
        assert_eq!(get(&p, &["encrypt"]), Some("yes"));
        assert_eq!(get(&p, &["trustservercertificate"]), None);
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
