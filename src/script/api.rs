//! The host API registered with the engine, area by area. Each function's
//! documentation is registered with it (one source of truth for `uprun api`).
//! Functions convert Rhai values to `ops` calls and back; errors reach the
//! script as a catchable `HostError` (`e.kind`, `e.message`, `e.node`) at the
//! calling line, and refusals are recorded on the way (see `fail`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rhai::{
    Array, Dynamic, Engine, EvalAltResult, FnPtr, FuncRegistration, Map, NativeCallContext,
    Position,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::host_error::HostError;
use crate::ops::{
    BackupOptions, CommandOptions, CreateOptions, Mode, Ops, RefusedBy, RemoveOptions,
    StartOptions, StopOptions, UpgradeOptions,
};
use crate::progress::Event;
use crate::Error;

type HostResult<T> = Result<T, Box<EvalAltResult>>;

/// Function name given to a failed `for_each_node` closure in error chains.
pub const FOR_NODE_PREFIX: &str = "for_each_node closure on node ";

/// Option keys accepted by each host function taking an options map, so that
/// `uprun check` can flag a misspelled key before the window. Kept in step with
/// the option structs by a test.
pub const OPTION_KEYS: &[(&str, &[&str])] = &[
    ("backup_db", &["verify"]),
    ("remove_instance", &[]),
    ("create_instance", &["app_name", "folder", "start"]),
    ("start_instance", &[]),
    ("stop_instance", &[]),
    ("upgrade_db", &[]),
    ("for_each_node", &["parallel", "continue_on_error"]),
    (
        "node_command",
        &[
            "cwd",
            "timeout_secs",
            "changes",
            "allow_failure",
            "in_instance",
        ],
    ),
];

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

/// Raise an error that no run state needs to hear of (bad arguments).
fn host_error(e: Error, pos: Position) -> Box<EvalAltResult> {
    HostError::from_error(&e).raise(pos)
}

/// Raise an error returned by `ops`. A refusal is recorded in the run state
/// (and journal) here, so that one the script catches is still reported.
fn fail(ops: &Ops, e: Error, pos: Position) -> Box<EvalAltResult> {
    match &e {
        Error::Refused(m) => {
            let n = ops.record_refusal(RefusedBy::Rail, m);
            HostError::refusal(e.to_string(), Some(n)).raise(pos)
        }
        _ => host_error(e, pos),
    }
}

fn ops<'a>(o: &'a Option<Arc<Ops>>, ctx: &NativeCallContext) -> HostResult<&'a Arc<Ops>> {
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

fn to_dyn<T: Serialize>(v: &T, pos: Position) -> HostResult<Dynamic> {
    rhai::serde::to_dynamic(v).map_err(|e| host_error(Error::Script(e.to_string()), pos))
}

/// The options host function `f` accepts, as error messages list them:
/// "`a`, `b`", or "none".
pub fn valid_options(f: &str) -> String {
    match OPTION_KEYS.iter().find(|(n, _)| *n == f) {
        None => String::new(),
        Some((_, [])) => "none".to_string(),
        Some((_, keys)) => keys
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

fn options<T: DeserializeOwned>(f: &str, map: Map, pos: Position) -> HostResult<T> {
    rhai::serde::from_dynamic::<T>(&map.into()).map_err(|e| {
        let valid = valid_options(f);
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
fn node_name(d: &Dynamic, pos: Position) -> HostResult<String> {
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

#[derive(Serialize)]
struct NodeInfo<'a> {
    name: &'a str,
    role: &'a str,
    address: String,
    root: &'a str,
    shell: &'a str,
}

fn node_info(n: &crate::config::NodeConfig) -> NodeInfo<'_> {
    NodeInfo {
        name: &n.name,
        role: n.role.as_str(),
        address: n.address.to_string(),
        root: &n.root,
        shell: n.shell.as_str(),
    }
}

/// Register a host function with its documentation.
fn reg<A: 'static, const N: usize, const X: bool, R: rhai::Variant + Clone, const F: bool>(
    engine: &mut Engine,
    name: &str,
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
        .register_into_engine(engine, f);
}

pub fn register(engine: &mut Engine, ops_: Option<Arc<Ops>>) {
    register_site(engine, &ops_);
    register_database(engine, &ops_);
    register_instances(engine, &ops_);
    register_cluster(engine, &ops_);
    register_ui(engine, &ops_);
}

fn register_site(engine: &mut Engine, o: &Option<Arc<Ops>>) {
    let x = o.clone();
    reg(engine, "site", &["Map"],
        "The site being upgraded: `#{ app_name, customizations, database: #{ kind, name }, nodes }`.\n`customizations` is \"none\", \"upgraded-separately\" or () when the site file does not say.\nNever contains a secret.",
        move |ctx: NativeCallContext| -> HostResult<Dynamic> {
            let ops = ops(&x, &ctx)?;
            let s = &ops.site;
            let mut m = Map::new();
            m.insert("app_name".into(), s.app_name.clone().into());
            m.insert("customizations".into(), s.customizations.map(|c| Dynamic::from(c.as_str().to_string())).unwrap_or(Dynamic::UNIT));
            let mut db = Map::new();
            db.insert("kind".into(), s.database.kind.as_str().into());
            db.insert("name".into(), s.database.name.clone().into());
            m.insert("database".into(), db.into());
            let nodes: Vec<NodeInfo> = s.nodes.iter().map(node_info).collect();
            m.insert("nodes".into(), to_dyn(&nodes, ctx.call_position())?);
            Ok(m.into())
        });
    let x = o.clone();
    reg(
        engine,
        "nodes",
        &["Array"],
        "Every node of the site, in site-file order: `#{ name, role, address, root, shell }`.\n`address` is \"local\" or \"ssh://user@host:port\"; `shell` is \"posix\" or \"powershell\".",
        move |ctx: NativeCallContext| -> HostResult<Dynamic> {
            let ops = ops(&x, &ctx)?;
            let nodes: Vec<NodeInfo> = ops.site.nodes.iter().map(node_info).collect();
            to_dyn(&nodes, ctx.call_position())
        },
    );
    let x = o.clone();
    reg(
        engine,
        "primary",
        &["Map"],
        "The primary node: `#{ name, role, address, root, shell }`.",
        move |ctx: NativeCallContext| -> HostResult<Dynamic> {
            let ops = ops(&x, &ctx)?;
            to_dyn(&node_info(ops.site.primary()), ctx.call_position())
        },
    );
    let x = o.clone();
    reg(
        engine,
        "secondaries",
        &["Array"],
        "The secondary nodes, in site-file order (empty on a one-node site).",
        move |ctx: NativeCallContext| -> HostResult<Dynamic> {
            let ops = ops(&x, &ctx)?;
            let nodes: Vec<NodeInfo> = ops
                .site
                .nodes
                .iter()
                .filter(|n| n.role == crate::config::Role::Secondary)
                .map(node_info)
                .collect();
            to_dyn(&nodes, ctx.call_position())
        },
    );
    let x = o.clone();
    reg(
        engine,
        "release",
        &["Map"],
        "The release being installed: `#{ version, min_upgrade_from }`.",
        move |ctx: NativeCallContext| -> HostResult<Dynamic> {
            let ops = ops(&x, &ctx)?;
            ops.release
                .require("release()")
                .map_err(|e| fail(ops, e, ctx.call_position()))?;
            let mut m = Map::new();
            m.insert("version".into(), ops.release.version.to_string().into());
            m.insert(
                "min_upgrade_from".into(),
                ops.release.min_upgrade_from.to_string().into(),
            );
            Ok(m.into())
        },
    );
    reg(
        engine,
        "compare_versions",
        &["a: &str", "b: &str", "i64"],
        "Compare two semantic versions: -1 when `a` is older than `b`, 0 when equal, 1 when newer.",
        move |ctx: NativeCallContext, a: &str, b: &str| -> HostResult<i64> {
            let parse = |v: &str| {
                semver::Version::parse(v.trim()).map_err(|e| {
                    host_error(
                        Error::Config(format!("compare_versions: {v:?} is not a version: {e}")),
                        ctx.call_position(),
                    )
                })
            };
            Ok(match parse(a)?.cmp(&parse(b)?) {
                std::cmp::Ordering::Less => -1,
                std::cmp::Ordering::Equal => 0,
                std::cmp::Ordering::Greater => 1,
            })
        },
    );
    let x = o.clone();
    reg(engine, "mode", &["String"],
        "\"plan\" when the procedure is being previewed (changes are only described), \"run\" otherwise.",
        move |ctx: NativeCallContext| -> HostResult<String> {
            let ops = ops(&x, &ctx)?;
            Ok(if ops.mode == Mode::Plan { "plan" } else { "run" }.into())
        });
}

fn register_database(engine: &mut Engine, o: &Option<Arc<Ops>>) {
    let x = o.clone();
    reg(engine, "db_version", &["String"],
        "The application's schema version as the database records it (after planned upgrades, in plan mode).",
        move |ctx: NativeCallContext| -> HostResult<String> {
            let ops = ops(&x, &ctx)?;
            ops.db_version().map(|v| v.to_string()).map_err(|e| fail(ops, e, ctx.call_position()))
        });
    let x = o.clone();
    reg(engine, "run_check", &["name: &str", "Array"],
        "Run the read-only check query `name` from the site's `[checks]`; returns its rows as maps.\nRows are problems: an empty array means the check passed. Listed as a step in `plan`.",
        move |ctx: NativeCallContext, name: &str| -> HostResult<Dynamic> {
            let ops = ops(&x, &ctx)?;
            let rows = ops.run_check(name).map_err(|e| fail(ops, e, ctx.call_position()))?;
            to_dyn(&rows, ctx.call_position())
        });
    let x = o.clone();
    reg(engine, "query", &["sql: &str", "Array"],
        "Run a read-only SQL query and return its rows as maps. A statement that would change the database is refused.",
        move |ctx: NativeCallContext, sql: &str| -> HostResult<Dynamic> {
            let ops = ops(&x, &ctx)?;
            let rows = ops.query(sql).map_err(|e| fail(ops, e, ctx.call_position()))?;
            to_dyn(&rows, ctx.call_position())
        });
    let backup_doc = "Take a full backup of the site's database into its backup folder and verify it.\nOptions: `verify` (bool, default true).\nReturns `#{ database, file, size, version, started, finished, verified, verification, checksum, sha256, backup_set_guid, first_lsn, last_lsn }`\n(`checksum`: the backup carries page checksums, SQL Server `WITH CHECKSUM`; the backup's identity, proved again before\n`upgrade_db`: `sha256` of the file for SQLite, whose `file` is an absolute path; `backup_set_guid`, `first_lsn`, `last_lsn`\nfrom `RESTORE HEADERONLY` for SQL Server, whose `file` is on the server).\nOnly a verified backup taken in the same run allows `upgrade_db`.\nErrors: `database` (the backup or its verification failed: the server's message), `refused` (on resume: the backup taken\nby the earlier attempt is missing or changed), `config` (a bad option).";
    reg_opts(
        engine,
        o,
        "backup_db",
        backup_doc,
        |ops, opts: BackupOptions| ops.backup_db(opts),
    );
    let upgrade_doc = "Upgrade the existing database to the release's version: apply the release's pending migrations\n(each in its own transaction, recorded in the history table), then record the version.\nIrreversible. Refused without a verified backup of this database taken in this run (unless the site sets\n`database.external_backup`), refused for a database newer than the release (no downgrades) or older than\nthe release's `min_upgrade_from`. A database already at the release's version is left alone.\nOptions: none. Returns `#{ database, from, to, upgraded, migrations, backup }`.\nRight before its first change it proves the backup again (same size and SHA-256, or the same backup set by `RESTORE\nHEADERONLY` and `RESTORE VERIFYONLY` on the server).\nErrors: `refused` (no verified backup, the backup missing or changed since it was taken, downgrade, below `min_upgrade_from`, not confirmed), `database` (a migration\nfailed and was rolled back; the history shows which were applied), `config` (no release, changed migration file).";
    reg_opts(
        engine,
        o,
        "upgrade_db",
        upgrade_doc,
        |ops, opts: UpgradeOptions| ops.upgrade_db(opts),
    );
}

fn register_instances(engine: &mut Engine, o: &Option<Arc<Ops>>) {
    let x = o.clone();
    reg(engine, "instance", &["node: Dynamic", "Map"],
        "The current instance on `node` (a node map or name): `#{ node, app_name, version, folder, created, state }`, or () when there is none.\n`state` is what was last done to it: \"staged\" (files and config laid out, never started), \"started\", \"healthy\"\n(start and health commands passed) or \"failed\"; absent for instances recorded by older versions. Use `healthy(node)`\nto know whether it runs now.",
        move |ctx: NativeCallContext, node: Dynamic| -> HostResult<Dynamic> {
            let ops = ops(&x, &ctx)?;
            let name = node_name(&node, ctx.call_position())?;
            match ops.instance(&name).map_err(|e| fail(ops, e, ctx.call_position()))? {
                Some(r) => to_dyn(&r, ctx.call_position()),
                None => Ok(Dynamic::UNIT),
            }
        });
    let remove_doc = "Remove the current instance on `node`: run the site's stop command, unregister it, keep its folder.\nRefused on the primary while any secondary still has an instance (secondaries first).\nReturns the removed instance's record, or () when the node had none. Options: none.\nErrors: `refused` (primary before secondaries, not confirmed), `node` (the stop command failed, the node is unreachable).";
    reg_node_opts(
        engine,
        o,
        "remove_instance",
        remove_doc,
        |ops, node, opts: RemoveOptions| ops.remove_instance(node, opts),
    );
    let create_doc = "Create the release's instance on `node` in a new folder under the node's root: copy the payload and\nwrite the instance's config (no secrets): the instance is `staged`; then run the start and health commands: it is\n`healthy`. It counts as created only once its health command passed; a failed start or health check leaves it\n`failed` on the node, and a resume starts it again in the same folder (never a new one).\nOptions: `start` (default true; false only stages it: start it with `start_instance` once the database is at its\nversion), `app_name` (default and only accepted value: the prior instance's name: the node's removed instance, else\nanother node's, else the site's `[application] name` on a site with no instance; users keep their URL; to rename on\npurpose set `[application] name = \"New\"` and `renamed_from = \"Old\"` in the site file, and instances named Old are\ncreated as New), `folder` (one plain folder name created directly under the node's root, no `/`, `\\`, `:`, `.` or\n`..`; default `<app>-<version>`, suffixed when taken). Folders are compared as the node resolves them (links, mounts,\nspelling): refused for a folder that is, holds or sits inside a folder any earlier instance used, that is a link or\nresolves outside the root, or that exists and is not empty; and while the node still has another instance.\nDecided from what the node says now: a node that already has this app and version is not created again (it is\nstarted when it is staged, failed or its health command fails now; left alone when healthy now), and a layout\nthat was cut off is finished in its own folder. Starting is refused unless the database is at the release's\nversion (the new application cannot run on the old schema): stage the primary, `upgrade_db()`, then start it.\nReturns `#{ node, app_name, version, folder, created, state }`.\nErrors: `refused` (database not at the release's version while starting, used, linked, outside or non-empty folder,\nanother application name than the prior one, another instance still there, not confirmed), `node` (copy, start or\nhealth command failed), `config` (folder not one plain name, bad app name, no release).";
    reg_node_opts(
        engine,
        o,
        "create_instance",
        create_doc,
        |ops, node, opts: CreateOptions| ops.create_instance(node, opts),
    );
    let start_doc = "Start the instance on `node` (staged by `create_instance(node, #{ start: false })`, or failed earlier):\nrun the site's start command, then its health command; the node records `started`, then `healthy` (or `failed`).\nAn instance that is healthy now (not staged or failed, and its health command passes) is left alone.\nRefused unless the database is at the instance's version (the vendor's wizard creates the application and\nupgrades the database in one pass: the new application cannot run on the old schema). Options: none.\nReturns `#{ node, app_name, version, folder, created, state }`.\nErrors: `refused` (no instance on the node, database at another version, not confirmed), `node` (the start or\nhealth command failed: the instance is recorded as failed, and a resume starts it again).";
    reg_node_opts(
        engine,
        o,
        "start_instance",
        start_doc,
        |ops, node, opts: StartOptions| ops.start_instance(node, opts),
    );
    let stop_doc = "Stop the instance on `node` with the site's stop command; it stays the node's instance, recorded
`stopped`, and `start_instance(node)` starts it again (a rolling restart, maintenance on one node).
A run that stops an instance must leave it running: the run-end audit checks every node's health. Options: none.
Returns `#{ node, app_name, version, folder, created, state }`.
Errors: `refused` (no instance on the node, not confirmed), `node` (the stop command failed; the instance is
recorded `stopped` and a later `start_instance` starts it).";
    reg_node_opts(
        engine,
        o,
        "stop_instance",
        stop_doc,
        |ops, node, opts: StopOptions| ops.stop_instance(node, opts),
    );
    let x = o.clone();
    reg(engine, "healthy", &["node: Dynamic", "bool"],
        "Whether `node`'s current instance runs now: it has one, its lifecycle reached healthy (not left staged,\nfailed, or started with its health check cut off), and the site's health command passes now (it runs in plan mode too: it is the site's own read-only check; an instance\nthe plan changes is as planned). Changes nothing. A site without a health command counts a started\ninstance as healthy.",
        move |ctx: NativeCallContext, node: Dynamic| -> HostResult<bool> {
            let ops = ops(&x, &ctx)?;
            let name = node_name(&node, ctx.call_position())?;
            ops.healthy(&name).map_err(|e| fail(ops, e, ctx.call_position()))
        });
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

/// Call `f` with the options map parsed into `O`, and convert the result.
fn invoke<O: DeserializeOwned, R: Serialize>(
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

/// Register `name()` and `name(options)`.
fn reg_opts<O: DeserializeOwned + 'static, R: Serialize + 'static>(
    engine: &mut Engine,
    o: &Option<Arc<Ops>>,
    name: &'static str,
    doc: &str,
    f: fn(&Ops, O) -> crate::Result<R>,
) {
    let x = o.clone();
    reg(
        engine,
        name,
        &["Map"],
        doc,
        move |ctx: NativeCallContext| -> HostResult<Dynamic> {
            invoke(&x, &ctx, name, Map::new(), f)
        },
    );
    let x = o.clone();
    reg(
        engine,
        name,
        &["options: Map", "Map"],
        doc,
        move |ctx: NativeCallContext, opts: Map| -> HostResult<Dynamic> {
            invoke(&x, &ctx, name, opts, f)
        },
    );
}

/// Register `name(node)` and `name(node, options)`.
fn reg_node_opts<O: DeserializeOwned + 'static, R: Serialize + 'static>(
    engine: &mut Engine,
    o: &Option<Arc<Ops>>,
    name: &'static str,
    doc: &str,
    f: fn(&Ops, &str, O) -> crate::Result<R>,
) {
    let call = move |x: &Option<Arc<Ops>>, ctx: &NativeCallContext, node: Dynamic, opts: Map| {
        let node = node_name(&node, ctx.call_position())?;
        invoke(x, ctx, name, opts, |ops, o: O| f(ops, &node, o))
    };
    let x = o.clone();
    reg(
        engine,
        name,
        &["node: Dynamic", "Map"],
        doc,
        move |ctx: NativeCallContext, node: Dynamic| -> HostResult<Dynamic> {
            call(&x, &ctx, node, Map::new())
        },
    );
    let x = o.clone();
    reg(
        engine,
        name,
        &["node: Dynamic", "options: Map", "Map"],
        doc,
        move |ctx: NativeCallContext, node: Dynamic, opts: Map| -> HostResult<Dynamic> {
            call(&x, &ctx, node, opts)
        },
    );
}

fn register_cluster(engine: &mut Engine, o: &Option<Arc<Ops>>) {
    let cmd_doc = "Run a shell command on `node` (a site-specific step: drain from a load balancer, warm a cache).\nOptions: `cwd` (relative to the node's root), `in_instance` (default false; true: run in the folder of the node's\ncurrent instance), `timeout_secs` (default: the site's service timeout),\n`changes` (default true: a journaled step, only described in plan mode; false: a read, listed in plan mode and run\nthere only where the site sets `service.read_commands_in_plan = true`, else it returns status () and empty output),\n`allow_failure` (default false: a non-zero exit fails the call).\nReturns `#{ node, command, status, stdout, stderr }`. A changing command that was in flight when a run died\nruns again on resume: keep such commands idempotent (`uprun test` finds those that are not).";
    let x = o.clone();
    reg(
        engine,
        "node_command",
        &["node: Dynamic", "command: &str", "Map"],
        cmd_doc,
        move |ctx: NativeCallContext, node: Dynamic, cmd: &str| -> HostResult<Dynamic> {
            command(&x, &ctx, node, cmd, Map::new())
        },
    );
    let x = o.clone();
    reg(
        engine,
        "node_command",
        &["node: Dynamic", "command: &str", "options: Map", "Map"],
        cmd_doc,
        move |ctx: NativeCallContext, node: Dynamic, cmd: &str, opts: Map| -> HostResult<Dynamic> {
            command(&x, &ctx, node, cmd, opts)
        },
    );
    let doc = "Run `f(node)` for every node in `nodes`. Returns one result per node, in input order:\n`#{ node, ok: true, value }` or `#{ node, ok: false, error, kind }`.\nOptions: `parallel` (how many nodes at once, default 1), `continue_on_error` (default false: the first\nfailure stops starting new nodes and the call fails once the running ones finish; true: every node runs and\nthe results say which failed). Closures should return values rather than assign captured variables.\nErrors: the first closure error (with its node named) unless `continue_on_error`; `config` (bad options or node).";
    let x = o.clone();
    reg(
        engine,
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
        engine,
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
                error: r.as_ref().err().map(|e| super::render::plain_message(e)),
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
                m.insert("error".into(), super::render::plain_message(&e).into());
                m.insert("kind".into(), super::render::root_kind(&e).into());
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

fn is_uncatchable(e: &EvalAltResult) -> bool {
    match e {
        EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
        | EvalAltResult::ErrorInModule(_, inner, _) => is_uncatchable(inner),
        EvalAltResult::ErrorTerminated(..) => true,
        _ => false,
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

fn register_ui(engine: &mut Engine, o: &Option<Arc<Ops>>) {
    let x = o.clone();
    reg(
        engine,
        "log",
        &["message: &str", "()"],
        "Write an informational line to the run's output.",
        move |_: NativeCallContext, msg: &str| -> HostResult<()> {
            // Without a site (`uprun check` loading a module that logs at
            // its top level) there is no run output to write to.
            if let Some(o) = &x {
                o.log("info", msg);
            }
            Ok(())
        },
    );
    let x = o.clone();
    reg(
        engine,
        "warn",
        &["message: &str", "()"],
        "Write a warning to the run's output.",
        move |_: NativeCallContext, msg: &str| -> HostResult<()> {
            if let Some(o) = &x {
                o.log("warn", msg);
            }
            Ok(())
        },
    );
    let x = o.clone();
    reg(engine, "refuse", &["message: &str", "()"],
        "Stop the procedure with a refusal: the run ends refused (exit 3), nothing more is done, and the\njournal and summary record it as a refusal by the procedure. For checks that should stop a run before\nany change (a pre-flight check found a problem). Catchable like a rail's refusal; a caught one is still\nrecorded and listed in the end-of-run summary.",
        move |ctx: NativeCallContext, msg: &str| -> HostResult<()> {
            let ops = ops(&x, &ctx)?;
            let n = ops.record_refusal(RefusedBy::Procedure, msg);
            Err(HostError::refusal(format!("refused by the procedure: {msg}"), Some(n))
                .raise(ctx.call_position()))
        });
    let x = o.clone();
    reg(engine, "confirm", &["question: &str", "bool"],
        "Ask the operator a yes/no question. `run` asks it up front with the plan, on the terminal, and one\nanswer covers the whole run (nothing is asked mid-run); `--yes` answers yes; without a terminal and\nwithout `--yes` the answer is no. In plan mode the question is listed and answered yes.",
        move |ctx: NativeCallContext, q: &str| -> HostResult<bool> {
            let ops = ops(&x, &ctx)?;
            ops.confirm(q).map_err(|e| fail(ops, e, ctx.call_position()))
        });
}

/// Names of every host function, for "did you mean" hints.
pub const HOST_FUNCTIONS: &[&str] = &[
    "site",
    "nodes",
    "primary",
    "secondaries",
    "release",
    "mode",
    "compare_versions",
    "db_version",
    "run_check",
    "query",
    "backup_db",
    "upgrade_db",
    "instance",
    "remove_instance",
    "create_instance",
    "start_instance",
    "stop_instance",
    "healthy",
    "node_command",
    "for_each_node",
    "log",
    "warn",
    "refuse",
    "confirm",
];

/// The host function whose name is closest to `name`, if any is close.
pub fn closest_host_function(name: &str) -> Option<&'static str> {
    HOST_FUNCTIONS
        .iter()
        .map(|h| (strsim::damerau_levenshtein(name, h), *h))
        .filter(|(d, h)| *d > 0 && *d <= 2.max(h.len() / 4))
        .min()
        .map(|(_, h)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe<T: DeserializeOwned>(keys: &[&str]) {
        // Every listed key is accepted, and an unknown one is not.
        for k in keys {
            let mut m = Map::new();
            let v: Dynamic = match *k {
                "verify" | "continue_on_error" | "changes" | "allow_failure" | "start"
                | "in_instance" => true.into(),
                "parallel" | "timeout_secs" => 2_i64.into(),
                _ => "x".into(),
            };
            m.insert((*k).into(), v);
            assert!(rhai::serde::from_dynamic::<T>(&m.into()).is_ok(), "key {k}");
        }
        let mut m = Map::new();
        m.insert("no_such_key".into(), true.into());
        assert!(rhai::serde::from_dynamic::<T>(&m.into()).is_err());
    }

    #[test]
    fn option_keys_match_option_structs() {
        for (name, keys) in OPTION_KEYS {
            match *name {
                "backup_db" => probe::<BackupOptions>(keys),
                "remove_instance" => probe::<RemoveOptions>(keys),
                "create_instance" => probe::<CreateOptions>(keys),
                "start_instance" => probe::<StartOptions>(keys),
                "stop_instance" => probe::<StopOptions>(keys),
                "upgrade_db" => probe::<UpgradeOptions>(keys),
                "for_each_node" => probe::<ForEachOptions>(keys),
                "node_command" => probe::<CommandOptions>(keys),
                other => panic!("OPTION_KEYS lists `{other}` without a struct"),
            }
        }
    }
}
