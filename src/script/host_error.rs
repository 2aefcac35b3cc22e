//! Errors raised by host functions, as an opaque type registered with the
//! engine. A script can inspect a caught one (`e.kind`, `e.message`, `e.node`)
//! but cannot build one: only the host can end a run as refused (exit 3), as
//! bad input (exit 2) or as interrupted (exit 130). Whatever a script throws
//! itself, even a map with `kind: "refused"`, is a script failure (exit 1).

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

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
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
