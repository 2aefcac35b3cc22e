//! Host functions about the site and the release: `site`, `nodes`, `primary`,
//! `secondaries`, `release`, `compare_versions`, `mode`.

use std::sync::Arc;

use rhai::{Dynamic, Map, NativeCallContext};
use serde::Serialize;

use super::{fail, host_error, ops, reg, to_dyn, HostResult, Registrar};
use crate::config::{NodeConfig, Role};
use crate::ops::{Mode, Ops};
use crate::Error;

#[derive(Serialize)]
struct NodeInfo<'a> {
    name: &'a str,
    role: &'a str,
    address: String,
    root: &'a str,
    shell: &'a str,
}

fn node_info(n: &NodeConfig) -> NodeInfo<'_> {
    NodeInfo {
        name: &n.name,
        role: n.role.as_str(),
        address: n.address.to_string(),
        root: &n.root,
        shell: n.shell.as_str(),
    }
}

pub(super) fn register(r: &mut Registrar, o: &Option<Arc<Ops>>) {
    let x = o.clone();
    reg(r, "site", &["Map"],
        "The site being upgraded: `#{ app_name, customizations, database: #{ kind, name }, nodes }`.\n`customizations` is \"none\", \"upgraded-separately\" or () when the site file does not say.\nNever contains a secret.",
        move |ctx: NativeCallContext| -> HostResult<Dynamic> {
            let ops = ops(&x, &ctx)?;
            let s = &ops.site;
            let mut m = Map::new();
            m.insert("app_name".into(), s.app_name.clone().into());
            m.insert("customizations".into(), s.customizations.map(|c| Dynamic::from(c.as_str().to_string())).unwrap_or(Dynamic::UNIT));
            let mut db = Map::new();
            db.insert("kind".into(), s.database.kind().as_str().into());
            db.insert("name".into(), s.database.name.clone().into());
            m.insert("database".into(), db.into());
            let nodes: Vec<NodeInfo> = s.nodes.iter().map(node_info).collect();
            m.insert("nodes".into(), to_dyn(&nodes, ctx.call_position())?);
            Ok(m.into())
        });
    let x = o.clone();
    reg(
        r,
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
        r,
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
        r,
        "secondaries",
        &["Array"],
        "The secondary nodes, in site-file order (empty on a one-node site).",
        move |ctx: NativeCallContext| -> HostResult<Dynamic> {
            let ops = ops(&x, &ctx)?;
            let nodes: Vec<NodeInfo> = ops
                .site
                .nodes
                .iter()
                .filter(|n| n.role == Role::Secondary)
                .map(node_info)
                .collect();
            to_dyn(&nodes, ctx.call_position())
        },
    );
    let x = o.clone();
    reg(
        r,
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
        r,
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
    reg(r, "mode", &["String"],
        "\"plan\" when the procedure is being previewed (changes are only described), \"run\" otherwise.",
        move |ctx: NativeCallContext| -> HostResult<String> {
            let ops = ops(&x, &ctx)?;
            Ok(if ops.mode == Mode::Plan { "plan" } else { "run" }.into())
        });
}
