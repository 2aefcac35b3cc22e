//! Errors raised by host functions, as an opaque type registered with the
//! engine. A script can inspect a caught one (`e.kind`, `e.message`, `e.node`)
//! but cannot build one: only the host can end a run as refused (exit 3), as
//! bad input (exit 2) or as interrupted (exit 130). Whatever a script throws
//! itself, even a map with `kind: "refused"`, is a script failure (exit 1).
//!
//! Also what an error says, plain (for result maps) and where it came from
//! (host or script); `render` adds positions and source lines around it.

use std::sync::OnceLock;

use rhai::{Dynamic, Engine, EvalAltResult, FuncRegistration, Position};

use crate::Error;

/// Type name scripts see (`type_of(e)`), and that `uprun api` leaves out of
/// the host function list.
pub const TYPE_NAME: &str = "HostError";

/// Kind of the uncatchable error that stops a procedure past its time limit.
pub const TIME_LIMIT: &str = "time_limit";

/// A failure raised by the host: what kind, the message (as rendered), the
/// node it is about, and for a refusal its number in the run's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    kind: &'static str,
    message: String,
    node: Option<String>,
    refusal: Option<usize>,
}

impl HostError {
    pub fn new(kind: &'static str, message: impl Into<String>) -> HostError {
        HostError {
            kind,
            message: message.into(),
            node: None,
            refusal: None,
        }
    }

    pub fn from_error(e: &Error) -> HostError {
        HostError {
            kind: e.kind(),
            message: e.to_string(),
            node: match e {
                Error::Node { node, .. } => Some(node.clone()),
                _ => None,
            },
            refusal: None,
        }
    }

    /// A refusal, recorded as number `n` in the run's refusals.
    pub fn refusal(message: impl Into<String>, n: Option<usize>) -> HostError {
        HostError {
            kind: "refused",
            message: message.into(),
            node: None,
            refusal: n,
        }
    }

    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The number of this refusal in the run's record, if it is one.
    pub fn refusal_number(&self) -> Option<usize> {
        self.refusal
    }

    /// Raise it in the script at `pos`. Interrupts and the time limit cannot
    /// be caught: a script must not carry on past Ctrl-C, a crash or its limit.
    pub fn raise(self, pos: Position) -> Box<EvalAltResult> {
        let uncatchable = matches!(self.kind, "interrupted" | TIME_LIMIT);
        let v = Dynamic::from(self);
        if uncatchable {
            EvalAltResult::ErrorTerminated(v, pos).into()
        } else {
            EvalAltResult::ErrorRuntime(v, pos).into()
        }
    }
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.node {
            Some(n) if !self.message.contains(&format!("`{n}`")) => {
                write!(f, "node `{n}`: {}", self.message)
            }
            _ => f.write_str(&self.message),
        }
    }
}

/// Register the type and its read-only accessors.
pub fn register(engine: &mut Engine) {
    engine.register_type_with_name::<HostError>(TYPE_NAME);
    let getter = |name: &str, doc: &str| {
        FuncRegistration::new_getter(name)
            .with_params_info(["error: HostError", "String"])
            .with_comments([format!("/// {doc}")])
    };
    getter(
        "kind",
        "What failed: refused, config, database, node, io, script.",
    )
    .register_into_engine(engine, |e: &mut HostError| e.kind.to_string());
    getter("message", "The error message, as uprun renders it.")
        .register_into_engine(engine, |e: &mut HostError| e.message.clone());
    getter("node", "The node the error is about, or ().")
        .register_into_engine(engine, |e: &mut HostError| {
            e.node.clone().map(Dynamic::from).unwrap_or(Dynamic::UNIT)
        });
    // `e["kind"]` as well as `e.kind`, as with the maps host errors once were.
    FuncRegistration::new_index_getter()
        .with_params_info(["error: HostError", "key: &str", "Dynamic"])
        .with_comments(["/// `kind`, `message` or `node` of a host error."])
        .register_into_engine(
            engine,
            |e: &mut HostError, key: &str| -> Result<Dynamic, Box<EvalAltResult>> {
                match key {
                    "kind" => Ok(e.kind.into()),
                    "message" => Ok(e.message.clone().into()),
                    "node" => Ok(e.node.clone().map(Dynamic::from).unwrap_or(Dynamic::UNIT)),
                    other => Err(format!(
                        "a host error has no `{other}`: it has `kind`, `message` and `node`"
                    )
                    .into()),
                }
            },
        );
    for name in ["to_string", "to_debug"] {
        FuncRegistration::new(name)
            .with_params_info(["error: HostError", "String"])
            .with_comments(["/// The error as uprun renders it."])
            .register_into_engine(engine, |e: &mut HostError| e.to_string());
    }
}

/// Function name given to a failed `for_each_node` closure in error chains.
pub const FOR_NODE_PREFIX: &str = "for_each_node closure on node ";

/// The host functions' names, for "did you mean" hints. Set by
/// `api::register` from what it registers (this module sits below `api`, which
/// raises its errors, so it is told the names rather than asking for them).
static HOST_FUNCTION_NAMES: OnceLock<Vec<&'static str>> = OnceLock::new();

pub(super) fn set_host_function_names(names: Vec<&'static str>) {
    // Every engine registers the same functions: the first list is the list.
    let _ = HOST_FUNCTION_NAMES.set(names);
}

/// The host function whose name is closest to `name`, if any is close.
pub(super) fn closest_host_function(name: &str) -> Option<&'static str> {
    HOST_FUNCTION_NAMES
        .get()?
        .iter()
        .map(|h| (strsim::damerau_levenshtein(name, h), *h))
        .filter(|(d, h)| *d > 0 && *d <= 2.max(h.len() / 4))
        .min()
        .map(|(_, h)| h)
}

/// The message of one error, without Rhai's own position suffix.
pub(super) fn message(err: &EvalAltResult) -> String {
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
            match closest_host_function(name) {
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

/// The innermost message of `err`, without position, for result maps.
pub fn plain_message(err: &EvalAltResult) -> String {
    match err {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => plain_message(inner),
        other => message(other),
    }
}

/// Whether `e` stops the procedure whatever catches it (Ctrl-C, time limit).
pub(super) fn is_uncatchable(e: &EvalAltResult) -> bool {
    match e {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => is_uncatchable(inner),
        EvalAltResult::ErrorTerminated(..) => true,
        _ => false,
    }
}
