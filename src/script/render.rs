//! Script errors rendered for people: the message, `file:line:column`, the
//! source line with a caret, and the chain of calls and modules it came through.

use rhai::{EvalAltResult, Position};

use super::error::{message, FOR_NODE_PREFIX};
use super::Sources;

fn location(source: &str, pos: Position, sources: &Sources) -> String {
    let (Some(line), col) = (pos.line(), pos.position().unwrap_or(1)) else {
        return format!("  --> {source}\n");
    };
    let mut s = format!("  --> {source}:{line}:{col}\n");
    if let Some(text) = sources.line(source, line) {
        let num = line.to_string();
        let pad = " ".repeat(num.len());
        // The caret goes under the column, counting characters, tabs kept.
        let lead: String = text
            .chars()
            .take(col.saturating_sub(1))
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        s.push_str(&format!("{pad} |\n{num} | {text}\n{pad} | {lead}^\n"));
    }
    s
}

/// Render `err`, raised while running the script named `main`.
pub fn render_error(err: &EvalAltResult, main: &str, sources: &Sources) -> String {
    let mut notes = Vec::new();
    let mut source = main.to_string();
    let mut e = err;
    loop {
        match e {
            EvalAltResult::ErrorInFunctionCall(f, src, inner, pos) => {
                let name = if f.starts_with("anon$") {
                    "closure".to_string()
                } else if let Some(node) = f.strip_prefix(FOR_NODE_PREFIX) {
                    format!("the for_each_node closure for node `{node}`")
                } else {
                    format!("function `{f}`")
                };
                notes.push(format!(
                    "in {name}, called at {}",
                    short_location(&source, *pos)
                ));
                if !src.is_empty() {
                    source = src.clone();
                }
                e = inner;
            }
            EvalAltResult::ErrorInModule(m, inner, pos) => {
                notes.push(format!(
                    "in module `{m}`, imported at {}",
                    short_location(&source, *pos)
                ));
                source = m.clone();
                e = inner;
            }
            _ => break,
        }
    }
    // The message may quote a database or a node: one inert line.
    let mut out = format!("error: {}\n", crate::output::escape_controls(&message(e)));
    out.push_str(&location(&source, e.position(), sources));
    for n in notes.iter().rev() {
        out.push_str(&format!("   = {n}\n"));
    }
    out.trim_end().to_string()
}

fn short_location(source: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{source}:{l}:{c}"),
        (Some(l), None) => format!("{source}:{l}"),
        _ => source.to_string(),
    }
}
