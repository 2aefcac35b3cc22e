//! Host functions that act across nodes: `node_command` and `for_each_node`
//! (closures on several nodes, one after the other or in parallel).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rhai::{Array, Dynamic, EvalAltResult, FnPtr, Map, NativeCallContext};
use serde::Deserialize;

use super::super::error::{is_uncatchable, plain_message, root_kind, FOR_NODE_PREFIX};
use super::{fail, host_error, invoke, node_name, ops, options, reg, HostResult, Registrar};
use crate::ops::{CommandOptions, Mode, Ops};
use crate::output::Event;
use crate::Error;

/// Options of `for_each_node`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForEachOptions {
    /// How many nodes run the closure at once (default 1).
    #[serde(default = "one")]
    pub parallel: i64,
    /// Go on with the other nodes after a failure and return every result
    /// (default false: the first failure stops starting new nodes, and the call
    /// fails once the running ones finish).
    #[serde(default)]
    pub continue_on_error: bool,
}

fn one() -> i64 {
    1
}

fn command(
    x: &Option<Arc<Ops>>,
    ctx: &NativeCallContext,
    node: Dynamic,
    cmd: &str,
    opts: Map,
) -> HostResult<Dynamic> {
    let name = node_name(&node, ctx.call_position())?;
    invoke(x, ctx, "node_command", opts, |ops, o: CommandOptions| {
        ops.node_command(&name, cmd, o)
    })
}

pub(super) fn register(r: &mut Registrar, o: &Option<Arc<Ops>>) {
    r.options::<CommandOptions>("node_command");
    r.options::<ForEachOptions>("for_each_node");
    let cmd_doc = "Run a shell command on `node` (a site-specific step: drain from a load balancer, warm a cache).\nOptions: `cwd` (relative to the node's root), `in_instance` (default false; true: run in the folder of the node's\ncurrent instance), `timeout_secs` (default: the site's service timeout),\n`changes` (default true: a journaled step, only described in plan mode; false: a read, listed in plan mode and run\nthere only where the site sets `service.read_commands_in_plan = true`, else it returns status () and empty output),\n`allow_failure` (default false: a non-zero exit fails the call).\nReturns `#{ node, command, status, stdout, stderr }`. A changing command that was in flight when a run died\nruns again on resume: keep such commands idempotent (`uprun test` finds those that are not).";
    let name = "node_command";
    let x = o.clone();
    let params = ["node: Dynamic", "command: &str", "Map"];
    reg(
        r,
        name,
        &params,
        cmd_doc,
        move |cx: NativeCallContext, n: Dynamic, c: &str| command(&x, &cx, n, c, Map::new()),
    );
    let x = o.clone();
    let params = ["node: Dynamic", "command: &str", "options: Map", "Map"];
    reg(
        r,
        name,
        &params,
        cmd_doc,
        move |cx: NativeCallContext, n: Dynamic, c: &str, m: Map| command(&x, &cx, n, c, m),
    );
    let doc = "Run `f(node)` for every node in `nodes`. Returns one result per node, in input order:\n`#{ node, ok: true, value }` or `#{ node, ok: false, error, kind }`.\nOptions: `parallel` (how many nodes at once, default 1), `continue_on_error` (default false: the first\nfailure stops starting new nodes and the call fails once the running ones finish; true: every node runs and\nthe results say which failed). Closures should return values rather than assign captured variables.\nErrors: the first closure error (with its node named) unless `continue_on_error`; `config` (bad options or node).";
    let x = o.clone();
    reg(
        r,
        "for_each_node",
        &["nodes: Array", "f: FnPtr", "Array"],
        doc,
        move |ctx: NativeCallContext, nodes: Array, f: FnPtr| -> HostResult<Array> {
            let ops = ops(&x, &ctx)?;
            for_each_node(
                &ctx,
                ops,
                nodes,
                ForEachOptions {
                    parallel: 1,
                    continue_on_error: false,
                },
                f,
            )
        },
    );
    let x = o.clone();
    reg(
        r,
        "for_each_node",
        &["nodes: Array", "options: Map", "f: FnPtr", "Array"],
        doc,
        move |ctx: NativeCallContext, nodes: Array, opts: Map, f: FnPtr| -> HostResult<Array> {
            let ops = ops(&x, &ctx)?;
            let opts: ForEachOptions = options("for_each_node", opts, ctx.call_position())?;
            if opts.parallel < 1 {
                return Err(host_error(
                    Error::Config("for_each_node: `parallel` must be at least 1".into()),
                    ctx.call_position(),
                ));
            }
            for_each_node(&ctx, ops, nodes, opts, f)
        },
    );
}

fn for_each_node(
    ctx: &NativeCallContext,
    ops: &Ops,
    nodes: Array,
    opts: ForEachOptions,
    f: FnPtr,
) -> HostResult<Array> {
    let reporter = ops.reporter();
    let pos = ctx.call_position();
    // The order rails see which closure changed which node (see ops::groups).
    let context = ops.parallel_context();
    let group = (opts.parallel > 1).then(|| ops.begin_parallel());
    let names = nodes
        .iter()
        .map(|n| node_name(n, pos))
        .collect::<HostResult<Vec<_>>>()?;
    let slots: Vec<Mutex<Option<HostResult<Dynamic>>>> =
        names.iter().map(|_| Mutex::new(None)).collect();
    // Many nodes on a terminal: one summary bar, not a line per node.
    let _bar = reporter.nodes_bar(names.len());
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let work = || loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let i = next.fetch_add(1, Ordering::SeqCst);
        if i >= nodes.len() {
            break;
        }
        let started = Instant::now();
        let scope = reporter.node_scope(&names[i]);
        let member = group.map(|g| ops.enter_member(&context, g, i));
        let r = f.call_within_context::<Dynamic>(ctx, (nodes[i].clone(),));
        drop(member);
        drop(scope);
        // A plan only lists steps: a node "done" in no time says nothing,
        // but a node whose closure fails in the plan is news.
        if ops.mode == Mode::Run || r.is_err() {
            reporter.event(Event::NodeFinished {
                node: names[i].clone(),
                ok: r.is_ok(),
                ms: started.elapsed().as_millis(),
                error: r.as_ref().err().map(|e| plain_message(e)),
            });
        }
        if r.is_err() && !opts.continue_on_error {
            stop.store(true, Ordering::SeqCst);
        }
        *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
    };
    // Plan mode (and `uprun test`) runs the closures one after the other, so
    // that what it reports does not depend on timing; the order rails above
    // hold for any interleaving.
    let workers = if ops.closures_in_order() {
        1
    } else {
        (opts.parallel as usize).min(nodes.len()).max(1)
    };
    if workers == 1 {
        work();
    } else {
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(work);
            }
        });
    }
    if let Some(g) = group {
        // Through `fail`: a refusal the script catches is still recorded.
        ops.end_parallel(g, &format!("for_each_node(parallel: {})", opts.parallel))
            .map_err(|e| fail(ops, e, pos))?;
    }
    let mut out = Array::new();
    let mut first_err = None;
    for (name, slot) in names.into_iter().zip(slots) {
        let Some(r) = slot.into_inner().unwrap_or_else(|e| e.into_inner()) else {
            continue;
        };
        let mut m = Map::new();
        m.insert("node".into(), name.clone().into());
        match r {
            Ok(v) => {
                m.insert("ok".into(), true.into());
                m.insert("value".into(), v);
            }
            Err(e) => {
                m.insert("ok".into(), false.into());
                m.insert("error".into(), plain_message(&e).into());
                m.insert("kind".into(), root_kind(&e).into());
                // The first error, or the first that stops the procedure.
                let stops =
                    |f: &Option<Box<EvalAltResult>>| f.as_deref().is_some_and(is_uncatchable);
                if first_err.is_none() || (is_uncatchable(&e) && !stops(&first_err)) {
                    first_err = Some(for_node(&name, *e));
                }
            }
        }
        out.push(m.into());
    }
    match first_err {
        Some(e) if !opts.continue_on_error => Err(e),
        // Ctrl-C and the time limit stop the procedure, whatever the options.
        Some(e) if is_uncatchable(&e) => Err(e),
        _ => Ok(out),
    }
}

/// Name the node in an error raised by a `for_each_node` closure, keeping the
/// closure's own position for the renderer.
fn for_node(name: &str, e: EvalAltResult) -> Box<EvalAltResult> {
    match e {
        EvalAltResult::ErrorInFunctionCall(f, src, inner, pos) if f.starts_with("anon$") => {
            EvalAltResult::ErrorInFunctionCall(format!("{FOR_NODE_PREFIX}{name}"), src, inner, pos)
                .into()
        }
        other => other.into(),
    }
}
