//! How an error reads on stderr: the one rendering path of every error.

use super::text::{escape_controls, escape_controls_keep_lines};

/// An error as printed on stderr, always under an `error:` heading. Text
/// from outside is escaped; messages that are several lines by design (a
/// site file's parse error with its snippet, a script error with its source
/// line) keep their line breaks. A script error rendered with its position
/// (`error: ...` then ` --> file:line:column`) already starts with the
/// heading, and gets no second one.
pub fn error_text(e: &crate::Error) -> String {
    let message = e.to_string();
    let text = if e.keeps_lines() {
        escape_controls_keep_lines(&message)
    } else {
        escape_controls(&message).into_owned()
    };
    if text.starts_with("error: ") {
        text
    } else {
        format!("error: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn every_error_gets_one_heading() {
        assert_eq!(
            error_text(&Error::Config("bad `x`\n  at line 2".into())),
            "error: bad `x`\n  at line 2"
        );
        assert_eq!(
            error_text(&Error::node("app01", "died\nrun succeeded\x1b[2J")),
            "error: node `app01`: died\\nrun succeeded\\u{1b}[2J"
        );
        assert_eq!(
            error_text(&Error::Refused("no backup".into())),
            "error: refused: no backup"
        );
        // Rendered with its position: as it is.
        let rendered = "error: no function `foo`\n --> p.rhai:3:1\n  |\n3 | foo()";
        assert_eq!(error_text(&Error::Script(rendered.into())), rendered);
        // A script error that is not rendered gets the heading too.
        assert_eq!(
            error_text(&Error::Script(format!("the clean run fails:\n{rendered}"))),
            format!("error: the clean run fails:\n{rendered}")
        );
        assert_eq!(
            error_text(&Error::Journal("journal `j` line 2: bad".into())),
            "error: journal `j` line 2: bad"
        );
    }

    #[test]
    fn exit_codes_keep_their_meaning() {
        assert_eq!(Error::Config(String::new()).exit_code(), 2);
        assert_eq!(Error::Journal(String::new()).exit_code(), 2);
        assert_eq!(Error::Internal(String::new()).exit_code(), 1);
        assert_eq!(Error::Refused(String::new()).exit_code(), 3);
        assert_eq!(Error::Interrupted(String::new()).exit_code(), 130);
    }
}
