//! The host API registered with the engine, one file per area: `site`,
//! `database`, `instances`, `cluster` (node commands, `for_each_node`),
//! `output` (log, refuse, confirm). Each function's documentation is
//! registered with it (one source of truth for `uprun api`).
//! Functions convert Rhai values to `ops` calls and back; errors reach the
//! script as a catchable `HostError` (`e.kind`, `e.message`, `e.node`) at the
//! calling line, and refusals are recorded on the way (see `fail`).
//!
//! One list of host functions: `reg` records each name as it registers it,
//! and `reg_opts`/`reg_node_opts`/`Registrar::options` record the option keys
//! from the options struct itself; `host_functions` and `option_keys` are read
//! from that record. Adding a function is one `reg` call in its area's file.

mod cluster;
mod database;
mod instances;
mod output;
mod site;

use std::sync::{Arc, OnceLock};

use rhai::{Dynamic, Engine, EvalAltResult, FuncRegistration, Map, NativeCallContext, Position};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::HostError;
use crate::ops::{Ops, RefusedBy};
use crate::Error;

pub(super) type HostResult<T> = Result<T, Box<EvalAltResult>>;

/// Registers host functions into an engine and records what it registered.
pub(super) struct Registrar<'e> {
    engine: &'e mut Engine,
    /// Host function names, in registration order, once each.
    names: Vec<&'static str>,
    /// Option keys of each function taking an options map.
    options: Vec<(&'static str, &'static [&'static str])>,
}

impl Registrar<'_> {
    /// Record that `name` takes an options map read into `O`.
    pub(super) fn options<O: DeserializeOwned>(&mut self, name: &'static str) {
        if !self.options.iter().any(|(n, _)| *n == name) {
            self.options.push((name, option_fields::<O>()));
        }
    }
}

pub fn register(engine: &mut Engine, ops: Option<Arc<Ops>>) {
    register_all(
        &mut Registrar {
            engine,
            names: Vec::new(),
            options: Vec::new(),
        },
        &ops,
    );
    // The "did you mean" hints of script errors come from the same record.
    catalog();
}

fn register_all(r: &mut Registrar, o: &Option<Arc<Ops>>) {
    site::register(r, o);
    database::register(r, o);
    instances::register(r, o);
    cluster::register(r, o);
    output::register(r, o);
}

/// What `register` registers: names and option keys.
struct Catalog {
    names: Vec<&'static str>,
    options: Vec<(&'static str, &'static [&'static str])>,
}

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let mut engine = Engine::new_raw();
        let mut r = Registrar {
            engine: &mut engine,
            names: Vec::new(),
            options: Vec::new(),
        };
        register_all(&mut r, &None);
        super::error::set_host_function_names(r.names.clone());
        Catalog {
            names: r.names,
            options: r.options,
        }
    })
}

/// Names of every host function, in registration order.
pub fn host_functions() -> &'static [&'static str] {
    &catalog().names
}

/// Option keys accepted by each host function taking an options map, so that
/// `uprun check` can flag a misspelled key before the window.
pub fn option_keys() -> &'static [(&'static str, &'static [&'static str])] {
    &catalog().options
}

/// The host function whose name is closest to `name`, if any is close.
pub fn closest_host_function(name: &str) -> Option<&'static str> {
    catalog();
    super::error::closest_host_function(name)
}

/// `valid options: ...` text: the keys quoted, or `none`.
pub fn valid_options(keys: &[&str]) -> String {
    if keys.is_empty() {
        "none".to_string()
    } else {
        keys.iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The keys of an options struct, as serde reads them (its field names).
fn option_fields<O: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields = None;
    let _ = O::deserialize(FieldNames(&mut fields));
    fields.unwrap_or_default()
}

/// A deserializer that only learns the field names of the struct asked for.
struct FieldNames<'a>(&'a mut Option<&'static [&'static str]>);

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("options are a struct"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = Some(fields);
        Err(serde::de::Error::custom("field names read"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// Raise an error that no run state needs to hear of (bad arguments).
pub(super) fn host_error(e: Error, pos: Position) -> Box<EvalAltResult> {
    HostError::from_error(&e).raise(pos)
}

/// Raise an error returned by `ops`. A refusal is recorded in the run state
/// (and journal) here, so that one the script catches is still reported.
pub(super) fn fail(ops: &Ops, e: Error, pos: Position) -> Box<EvalAltResult> {
    match &e {
        Error::Refused(m) => {
            let n = ops.record_refusal(RefusedBy::Rail, m);
            HostError::refusal(e.to_string(), Some(n)).raise(pos)
        }
        _ => host_error(e, pos),
    }
}

pub(super) fn ops<'a>(
    o: &'a Option<Arc<Ops>>,
    ctx: &NativeCallContext,
) -> HostResult<&'a Arc<Ops>> {
    o.as_ref().ok_or_else(|| {
        host_error(
            Error::Config(format!(
                "`{}` cannot be called here (no site loaded)",
                ctx.fn_name()
            )),
            ctx.call_position(),
        )
    })
}

pub(super) fn to_dyn<T: Serialize>(v: &T, pos: Position) -> HostResult<Dynamic> {
    rhai::serde::to_dynamic(v).map_err(|e| host_error(Error::Script(e.to_string()), pos))
}

pub(super) fn options<T: DeserializeOwned>(f: &str, map: Map, pos: Position) -> HostResult<T> {
    rhai::serde::from_dynamic::<T>(&map.into()).map_err(|e| {
        let valid = valid_options(option_fields::<T>());
        let msg = e.to_string();
        let msg = msg.split(" (line").next().unwrap_or(&msg);
        let msg = msg.trim_start_matches("Syntax error: ");
        host_error(
            Error::Config(format!("{f}: bad option: {msg}; valid options: {valid}")),
            pos,
        )
    })
}

/// A node argument: a node map (as from `nodes()`) or a node name.
pub(super) fn node_name(d: &Dynamic, pos: Position) -> HostResult<String> {
    if let Some(s) = d.read_lock::<rhai::ImmutableString>() {
        return Ok(s.to_string());
    }
    if let Some(m) = d.read_lock::<Map>() {
        if let Some(n) = m.get("name").and_then(|n| {
            n.read_lock::<rhai::ImmutableString>()
                .map(|s| s.to_string())
        }) {
            return Ok(n);
        }
    }
    Err(host_error(
        Error::Config(format!(
            "expected a node (a map from `nodes()` or a node name), got a {}",
            d.type_name()
        )),
        pos,
    ))
}

/// Register a host function with its documentation.
pub(super) fn reg<
    A: 'static,
    const N: usize,
    const X: bool,
    R: rhai::Variant + Clone,
    const F: bool,
>(
    r: &mut Registrar,
    name: &'static str,
    params: &[&str],
    doc: &str,
    f: impl rhai::RhaiNativeFunc<A, N, X, R, F> + Send + Sync + 'static,
) {
    let doc: Vec<String> = doc
        .lines()
        .map(|l| format!("/// {}", l.trim()).trim_end().to_string())
        .collect();
    FuncRegistration::new(name)
        .with_volatility(true)
        .with_purity(false)
        .with_params_info(params)
        .with_comments([doc.join("\n")])
        .register_into_engine(r.engine, f);
    if !r.names.contains(&name) {
        r.names.push(name);
    }
}

/// Call `f` with the options map parsed into `O`, and convert the result.
pub(super) fn invoke<O: DeserializeOwned, R: Serialize>(
    x: &Option<Arc<Ops>>,
    ctx: &NativeCallContext,
    name: &str,
    opts: Map,
    f: impl FnOnce(&Ops, O) -> crate::Result<R>,
) -> HostResult<Dynamic> {
    let ops = ops(x, ctx)?;
    let opts: O = options(name, opts, ctx.call_position())?;
    let r = f(ops, opts).map_err(|e| fail(ops, e, ctx.call_position()))?;
    to_dyn(&r, ctx.call_position())
}

/// Register `name()`, a function of the run (it fails without a site).
pub(super) fn reg_ops<R: rhai::Variant + Clone>(
    r: &mut Registrar,
    o: &Option<Arc<Ops>>,
    name: &'static str,
    returns: &str,
    doc: &str,
    f: fn(&Ops, Position) -> HostResult<R>,
) {
    let x = o.clone();
    reg(
        r,
        name,
        &[returns],
        doc,
        move |ctx: NativeCallContext| -> HostResult<R> {
            let ops = ops(&x, &ctx)?;
            f(ops, ctx.call_position())
        },
    );
}

/// Register `name(arg)`, a function of the run with one argument (a node,
/// a name) that `f` reads.
pub(super) fn reg_ops_arg<A: rhai::Variant + Clone, R: rhai::Variant + Clone>(
    r: &mut Registrar,
    o: &Option<Arc<Ops>>,
    name: &'static str,
    params: &[&str],
    doc: &str,
    f: fn(&Ops, A, Position) -> HostResult<R>,
) {
    let x = o.clone();
    let call = move |ctx: NativeCallContext, arg: A| -> HostResult<R> {
        f(ops(&x, &ctx)?, arg, ctx.call_position())
    };
    reg(r, name, params, doc, call);
}

/// Register `name()` and `name(options)`.
pub(super) fn reg_opts<O: DeserializeOwned + 'static, R: Serialize + 'static>(
    r: &mut Registrar,
    o: &Option<Arc<Ops>>,
    name: &'static str,
    doc: &str,
    f: fn(&Ops, O) -> crate::Result<R>,
) {
    r.options::<O>(name);
    let x = o.clone();
    let call = move |cx: &NativeCallContext, m: Map| invoke(&x, cx, name, m, f);
    let bare = call.clone();
    reg(r, name, &["Map"], doc, move |cx: NativeCallContext| {
        bare(&cx, Map::new())
    });
    let params = ["options: Map", "Map"];
    reg(
        r,
        name,
        &params,
        doc,
        move |cx: NativeCallContext, m: Map| call(&cx, m),
    );
}

/// Register `name(node)` and `name(node, options)`.
pub(super) fn reg_node_opts<O: DeserializeOwned + 'static, R: Serialize + 'static>(
    r: &mut Registrar,
    o: &Option<Arc<Ops>>,
    name: &'static str,
    doc: &str,
    f: fn(&Ops, &str, O) -> crate::Result<R>,
) {
    r.options::<O>(name);
    let x = o.clone();
    let call = move |cx: &NativeCallContext, node: Dynamic, m: Map| {
        let node = node_name(&node, cx.call_position())?;
        invoke(&x, cx, name, m, |ops, o: O| f(ops, &node, o))
    };
    let bare = call.clone();
    let params = ["node: Dynamic", "Map"];
    reg(
        r,
        name,
        &params,
        doc,
        move |cx: NativeCallContext, n: Dynamic| bare(&cx, n, Map::new()),
    );
    let params = ["node: Dynamic", "options: Map", "Map"];
    reg(
        r,
        name,
        &params,
        doc,
        move |cx: NativeCallContext, n: Dynamic, m: Map| call(&cx, n, m),
    );
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// What an engine holds after `register`: name -> takes an options map.
    fn registered() -> Vec<(String, bool)> {
        let mut engine = Engine::new_raw();
        register(&mut engine, None);
        let json = engine.gen_fn_metadata_to_json(false).expect("metadata");
        let meta: serde_json::Value = serde_json::from_str(&json).expect("json");
        let functions = meta["functions"].as_array().expect("functions");
        functions
            .iter()
            .map(|f| {
                let name = f["name"].as_str().expect("name").to_string();
                let params = f["params"].as_array().cloned().unwrap_or_default();
                let options = params.iter().any(|p| p["name"] == "options");
                (name, options)
            })
            .collect()
    }

    #[test]
    fn host_functions_are_what_is_registered() {
        let engine: BTreeSet<String> = registered().into_iter().map(|(n, _)| n).collect();
        let listed: BTreeSet<String> = host_functions().iter().map(|n| n.to_string()).collect();
        assert_eq!(listed, engine);
        assert_eq!(listed.len(), host_functions().len(), "listed once each");
        assert!(listed.contains("for_each_node") && listed.contains("backup_db"));
    }

    #[test]
    fn option_keys_are_listed_for_every_function_taking_options() {
        let with_options: BTreeSet<String> = registered()
            .into_iter()
            .filter(|(_, options)| *options)
            .map(|(n, _)| n)
            .collect();
        let listed: BTreeSet<String> = option_keys().iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(listed, with_options);
        let keys = |name: &str| {
            option_keys()
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, k)| *k)
        };
        assert_eq!(keys("backup_db"), Some(&["verify"][..]));
        assert_eq!(
            keys("create_instance"),
            Some(&["app_name", "folder", "start"][..])
        );
        assert_eq!(
            keys("for_each_node"),
            Some(&["parallel", "continue_on_error"][..])
        );
        assert_eq!(
            keys("node_command"),
            Some(
                &[
                    "cwd",
                    "timeout_secs",
                    "changes",
                    "allow_failure",
                    "in_instance"
                ][..]
            )
        );
        assert_eq!(keys("upgrade_db"), Some(&[][..]));
    }

    #[test]
    fn a_bad_option_names_the_valid_ones() {
        let mut m = Map::new();
        m.insert("verfy".into(), true.into());
        let e = options::<crate::ops::BackupOptions>("backup_db", m, Position::NONE)
            .expect_err("unknown key");
        let text = super::super::error::plain_message(&e);
        assert!(
            text.contains("backup_db: bad option: unknown field `verfy`"),
            "{text}"
        );
        assert!(text.contains("valid options: `verify`"), "{text}");
    }

    #[test]
    fn closest_host_function_hints_at_registered_names() {
        assert_eq!(closest_host_function("backup_bd"), Some("backup_db"));
        assert_eq!(closest_host_function("for_each_nod"), Some("for_each_node"));
        assert_eq!(closest_host_function("completely_unrelated_name"), None);
    }
}
