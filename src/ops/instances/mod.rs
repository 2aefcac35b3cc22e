//! Instance operations with their rails, one concern a file:
//! - `create_remove`: removing an instance (secondaries before the primary)
//!   and creating one (staged, then started and health-checked);
//! - `lifecycle`: start, stop, health now, and replaying a step only when
//!   the node still says it is done;
//! - `folders`: the new instance's folder, one plain name directly under the
//!   root, never one that is, holds or sits in an old instance's folder
//!   (compared by what the node resolves, not by spelling);
//! - `app_name`: the prior application name, unless the site file declares a
//!   rename;
//! - `stage`: the release's payload staged on a node before the window.

mod app_name;
mod create_remove;
mod folders;
mod lifecycle;
mod stage;

use std::path::Path;

use serde::Deserialize;

use super::{lock, Ops};
use crate::config::Role;
use crate::nodes::{InstanceRecord, InstanceState};
use crate::{Error, Result};

pub use folders::check_folder_name;
pub use stage::StageOptions;

/// Options of `remove_instance` (none yet; the map is still checked for typos).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveOptions {}

/// Options of `create_instance`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOptions {
    /// Application name of the new instance (default: the prior instance's;
    /// any other name is refused).
    pub app_name: Option<String>,
    /// One folder name, created directly under the node's root (default:
    /// `<app>-<version>`, with a numeric suffix when that is taken).
    pub folder: Option<String>,
    /// Start the instance and check its health (default true); false only
    /// stages it, to be started with `start_instance` after `upgrade_db`.
    pub start: Option<bool>,
}

/// Options of `start_instance` (none yet; the map is still checked for typos).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartOptions {}

/// Options of `stop_instance` (none yet; the map is still checked for typos).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopOptions {}

/// A lifecycle state for messages (`unknown` in older manifests).
pub(super) fn state_name(s: Option<InstanceState>) -> &'static str {
    s.map(InstanceState::as_str)
        .unwrap_or("in an unknown state")
}

impl Ops {
    /// Plan mode: from now on `node`'s current instance reads as `rec`, whose
    /// folder counts as used.
    pub(super) fn plan_current(&self, node: &str, rec: Option<&InstanceRecord>) {
        let mut st = lock(&self.state);
        if let Some(r) = rec {
            st.planned_used
                .entry(node.to_string())
                .or_default()
                .push(r.folder.clone());
        }
        st.planned_current.insert(node.to_string(), rec.cloned());
    }

    /// The current instance of a node and the one removed last (as planned,
    /// in plan mode), from one read of its manifest.
    pub(super) fn current_and_last_removed(
        &self,
        node: &str,
    ) -> Result<(Option<InstanceRecord>, Option<InstanceRecord>)> {
        let (current, removed) = {
            let st = lock(&self.state);
            (
                st.planned_current.get(node).cloned(),
                st.planned_removed.get(node).cloned(),
            )
        };
        if let (Some(c), Some(r)) = (&current, &removed) {
            return Ok((c.clone(), Some(r.clone())));
        }
        let m = self.manifest_now(node)?;
        lock(&self.state).names_seen.insert(
            node.to_string(),
            (m.current.clone(), m.removed.last().cloned()),
        );
        Ok((
            current.unwrap_or(m.current),
            removed.or_else(|| m.removed.last().cloned()),
        ))
    }

    /// [`Ops::current_and_last_removed`] of another node than the one being
    /// changed, for the application-name rail: what this run last read from
    /// that node's manifest, else read now. Under the site lock a manifest
    /// changes only through this run, and what this run writes never changes
    /// that rail's verdict (a created instance takes the decided name; a
    /// removal keeps the record as the last removed one), so reading every
    /// other node's manifest again at each create (N x N reads at scale)
    /// would observe nothing new. A procedure's command may change any node,
    /// so one makes the rail read every node again (`forget_observations`).
    pub(super) fn other_node_names(
        &self,
        node: &str,
    ) -> Result<(Option<InstanceRecord>, Option<InstanceRecord>)> {
        let seen = {
            let st = lock(&self.state);
            let planned =
                st.planned_current.contains_key(node) || st.planned_removed.contains_key(node);
            match st.names_seen.get(node) {
                Some(v) if !planned => Some(v.clone()),
                _ => None,
            }
        };
        match seen {
            Some(v) => Ok(v),
            None => self.current_and_last_removed(node),
        }
    }

    /// Whether an instance registered on `node` (current or removed) used `folder`.
    pub(super) fn registered_folder(&self, node: &str, folder: &str) -> Result<bool> {
        let m = self.manifest_now(node)?;
        Ok(m.current
            .iter()
            .chain(&m.removed)
            .any(|r| r.folder == folder))
    }

    /// The instance whose layout was cut off on `node` (none in plan mode
    /// once the plan changed the node).
    pub(super) fn pending(&self, node: &str) -> Result<Option<InstanceRecord>> {
        if lock(&self.state).planned_current.contains_key(node) {
            return Ok(None);
        }
        Ok(self.manifest_now(node)?.pending)
    }

    /// The instance's own configuration file: what it is and which database it
    /// uses, never a secret.
    pub(super) fn instance_config(&self, rec: &InstanceRecord) -> String {
        let role = self
            .role(&rec.node)
            .map(Role::as_str)
            .unwrap_or("secondary");
        let mut t = toml::Table::new();
        t.insert("app_name".into(), rec.app_name.clone().into());
        t.insert("version".into(), rec.version.clone().into());
        t.insert("node".into(), rec.node.clone().into());
        t.insert("role".into(), role.into());
        t.insert(
            "database_kind".into(),
            self.site.database.kind().as_str().into(),
        );
        t.insert("database".into(), self.site.database.name.clone().into());
        t.insert("created".into(), rec.created.clone().into());
        format!(
            "# Written by uprun run {}\n{}",
            self.run_id,
            toml::to_string(&t).unwrap_or_default()
        )
    }
}

pub(in crate::ops) fn check_relative(node: &str, folder: &str) -> Result<()> {
    let p = Path::new(folder);
    if folder.is_empty() || folder.contains('\\') || !crate::nodes::local_is_contained(p) {
        return Err(Error::Config(format!(
            "create_instance on `{node}`: `folder` {folder:?} must be a relative path under the node's root, without `..`"
        )));
    }
    Ok(())
}
