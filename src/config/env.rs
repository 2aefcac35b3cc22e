//! `${env:NAME}` expansion for values that must not be written in site files.

use crate::{Error, Result};

/// Replace every `${env:NAME}` in `value` by the environment variable `NAME`.
/// `what` names the file and key for the error message.
pub(crate) fn expand(value: &str, what: &str) -> Result<String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${env:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 6..];
        let Some(end) = after.find('}') else {
            return Err(Error::Config(format!(
                "{what}: unterminated `${{env:` reference; write `${{env:NAME}}`"
            )));
        };
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::Config(format!(
                "{what}: `${{env:{name}}}` is not a valid environment variable name"
            )));
        }
        match std::env::var(name) {
            Ok(v) => out.push_str(&v),
            Err(_) => {
                return Err(Error::Config(format!(
                "{what}: environment variable `{name}` is not set; export it before running uprun"
            )))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_and_reports_missing() {
        std::env::set_var("UPRUN_TEST_ENV_A", "s3cret");
        assert_eq!(
            expand("pw=${env:UPRUN_TEST_ENV_A};x", "f: k").unwrap(),
            "pw=s3cret;x"
        );
        let err = expand(
            "${env:UPRUN_TEST_ENV_MISSING}",
            "site.toml: `database.connection`",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("UPRUN_TEST_ENV_MISSING") && err.contains("database.connection"));
        assert!(expand("${env:A", "f").is_err());
    }
}
