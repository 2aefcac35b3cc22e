//! Script errors rendered for people: the message, `file:line:column`, the
//! source line with a caret, and the chain of calls and modules it came through.

use rhai::{EvalAltResult, Position};

use super::host_error::HostError;
use super::Sources;

/// The message of one error, without Rhai's own position suffix.
fn message(err: &EvalAltResult) -> String {
    match err {
        EvalAltResult::ErrorRuntime(v, _) | EvalAltResult::ErrorTerminated(v, _) => {
            if let Some(h) = v.read_lock::<HostError>() {
                return h.to_string();
            }
            // The script's own `throw` of a map: its message, but never a
            // host error's exit code (see `root_host_error`).
            if let Some(map) = v.read_lock::<rhai::Map>() {
                let msg = map
                    .get("message")
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| v.to_string());
                return format!("script threw: {msg}");
            }
            format!("script threw: {v}")
        }
        EvalAltResult::ErrorParsing(p, _) => format!("syntax error: {p}"),
        EvalAltResult::ErrorModuleNotFound(m, _) => format!("cannot import `{m}`"),
        EvalAltResult::ErrorFunctionNotFound(sig, _) => {
            let name = sig.split([' ', '(']).next().unwrap_or(sig);
            match super::api::closest_host_function(name) {
                Some(near) => format!("no function `{sig}`; did you mean `{near}`? (`uprun api` lists the host functions)"),
                None => format!("no function `{sig}` (`uprun api` lists the host functions)"),
            }
        }
        EvalAltResult::ErrorTooManyOperations(_) => format!(
            "the procedure went past {} operations (a runaway loop?); procedures order steps, they do not compute",
            super::MAX_OPERATIONS
        ),
        EvalAltResult::ErrorDataTooLarge(what, _) => format!(
            "{what} is past the limit of a procedure ({} bytes of strings in one value, {} items in one array or map)",
            super::MAX_STRING_SIZE,
            super::MAX_ITEMS
        ),
        other => {
            let text = other.to_string();
            match text.rfind(" (line ") {
                Some(i) if text.ends_with(')') => text[..i].to_string(),
                _ => text,
            }
        }
    }
}

/// The host error at the root of `err`, if the host raised it. Whatever the
/// script threw itself is not one, whatever it looks like.
pub fn root_host_error(err: &EvalAltResult) -> Option<HostError> {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => root_host_error(inner),
        EvalAltResult::ErrorRuntime(v, _) | EvalAltResult::ErrorTerminated(v, _) => {
            v.read_lock::<HostError>().map(|h| h.clone())
        }
        _ => None,
    }
}

/// The `kind` of `err` for result maps: the host error's, else "script".
pub fn root_kind(err: &EvalAltResult) -> &'static str {
    root_host_error(err).map(|h| h.kind()).unwrap_or("script")
}

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
                } else if let Some(node) = f.strip_prefix(super::api::FOR_NODE_PREFIX) {
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
    let mut out = format!("error: {}\n", crate::progress::escape_controls(&message(e)));
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

/// The innermost message of `err`, without position, for result maps.
pub fn plain_message(err: &EvalAltResult) -> String {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => plain_message(inner),
        other => message(other),
    }
}
