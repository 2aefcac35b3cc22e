//! Text as the terminal gets it: text from outside (database rows, node
//! output, manifests, error messages) with its control characters escaped,
//! so that it cannot forge a line or drive the terminal; durations.

use std::borrow::Cow;

/// Prefix every line of `text` with `[node] `.
pub(super) fn prefixed(node: &str, text: &str) -> String {
    let node = escape_controls(node);
    text.lines()
        .map(|l| format!("[{node}] {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` with every control character escaped (newline as `\n`, carriage
/// return as `\r`, ESC as `\u{1b}`...), and the bidirectional overrides too,
/// so that text from a database, a node or a manifest prints as one inert
/// line. Tabs stay.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `text` escaped as [`escape_controls`] does, keeping its line breaks: for
/// messages that are several lines by design (a site file's parse error with
/// its snippet).
pub fn escape_controls_keep_lines(text: &str) -> String {
    text.split('\n')
        .map(|l| escape_controls(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn human_ms(ms: u128) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain text\tok"), "plain text\tok");
        assert_eq!(
            escape_controls("evil\nrun succeeded"),
            "evil\\nrun succeeded"
        );
        assert_eq!(escape_controls("a\r\x1b[2Jb"), "a\\r\\u{1b}[2Jb");
        assert_eq!(escape_controls("\u{7f}\u{9b}\0"), "\\u{7f}\\u{9b}\\u{0}");
        assert_eq!(escape_controls("abc\u{202e}cba"), "abc\\u{202e}cba");
        assert_eq!(escape_controls("é ü 漢字"), "é ü 漢字");
        assert_eq!(escape_controls_keep_lines("a\nb\x1b"), "a\nb\\u{1b}");
    }

    #[test]
    fn durations_read_as_ms_or_seconds() {
        assert_eq!(human_ms(999), "999 ms");
        assert_eq!(human_ms(1500), "1.5 s");
    }
}
