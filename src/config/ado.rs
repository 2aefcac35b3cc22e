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
}
