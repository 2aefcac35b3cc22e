//! Host functions about the site and the release: `site`, `nodes`, `primary`,
//! `secondaries`, `release`, `compare_versions`, `mode`.

use std::sync::Arc;

use rhai::{Dynamic, Map, NativeCallContext, Position};
use serde::Serialize;

use super::{fail, host_error, reg, reg_ops, to_dyn, HostResult, Registrar};
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
    reg_ops(r, o, "site", "Map",
        "The site being upgraded: `#{ app_name, customizations, database: #{ kind, name }, nodes }`.\n`customizations` is \"none\", \"upgraded-separately\" or () when the site file does not say.\nNever contains a secret.",
        |ops, pos| {
            let s = &ops.site;
            let mut m = Map::new();
            m.insert("app_name".into(), s.app_name.clone().into());
            m.insert("customizations".into(), s.customizations.map(|c| Dynamic::from(c.as_str().to_string())).unwrap_or(Dynamic::UNIT));
            let mut db = Map::new();
            db.insert("kind".into(), s.database.kind().as_str().into());
            db.insert("name".into(), s.database.name.clone().into());
            m.insert("database".into(), db.into());
            m.insert("nodes".into(), node_list(ops, |_| true, pos)?);
            Ok(Dynamic::from_map(m))
        });
    reg_ops(
        r,
        o,
        "nodes",
        "Array",
        "Every node of the site, in site-file order: `#{ name, role, address, root, shell }`.\n`address` is \"local\" or \"ssh://user@host:port\"; `shell` is \"posix\" or \"powershell\".",
        |ops, pos| node_list(ops, |_| true, pos),
    );
    reg_ops(
        r,
        o,
        "primary",
        "Map",
        "The primary node: `#{ name, role, address, root, shell }`.",
        |ops, pos| to_dyn(&node_info(ops.site.primary()), pos),
    );
    reg_ops(
        r,
        o,
        "secondaries",
        "Array",
        "The secondary nodes, in site-file order (empty on a one-node site).",
        |ops, pos| node_list(ops, |n| n.role == Role::Secondary, pos),
    );
    reg_ops(
        r,
        o,
        "release",
        "Map",
        "The release being installed: `#{ version, min_upgrade_from }`.",
        |ops, pos| {
            ops.release
                .require("release()")
                .map_err(|e| fail(ops, e, pos))?;
            let mut m = Map::new();
            m.insert("version".into(), ops.release.version.to_string().into());
            m.insert(
                "min_upgrade_from".into(),
                ops.release.min_upgrade_from.to_string().into(),
            );
            Ok(Dynamic::from_map(m))
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
    reg_ops(r, o, "mode", "String",
        "\"plan\" when the procedure is being previewed (changes are only described), \"run\" otherwise.",
        |ops, _| Ok(if ops.mode == Mode::Plan { "plan" } else { "run" }.to_string()));
}

/// The site's nodes that `keep` keeps, in site-file order, as maps.
fn node_list(ops: &Ops, keep: impl Fn(&NodeConfig) -> bool, pos: Position) -> HostResult<Dynamic> {
    let nodes: Vec<NodeInfo> = ops
        .site
        .nodes
        .iter()
        .filter(|n| keep(n))
        .map(node_info)
        .collect();
    to_dyn(&nodes, pos)
}
