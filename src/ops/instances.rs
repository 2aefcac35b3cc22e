//! Instance operations with their rails: secondaries before the primary, and
//! a new instance never in an old or non-empty folder.

use std::path::Path;

use serde::Deserialize;

use super::{lock, Mode, Ops};
use crate::config::Role;
use crate::db::now_rfc3339;
use crate::nodes::{DirState, InstanceRecord};
use crate::{Error, Result};

/// Options of `remove_instance` (none yet; the map is still checked for typos).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveOptions {}

/// Options of `create_instance`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOptions {
    /// Application name of the new instance (default: the site's `application.name`).
    pub app_name: Option<String>,
    /// Folder under the node's root (default: `<app>-<version>`, with a numeric
    /// suffix when that was used before).
    pub folder: Option<String>,
}

impl Ops {
    /// Plan mode: from now on `node`'s current instance reads as `rec`, whose
    /// folder counts as used.
    fn plan_current(&self, node: &str, rec: Option<&InstanceRecord>) {
        let mut st = lock(&self.state);
        if let Some(r) = rec {
            st.planned_used
                .entry(node.to_string())
                .or_default()
                .push(r.folder.clone());
        }
        st.planned_current.insert(node.to_string(), rec.cloned());
    }

    /// Every folder used on a node, including planned ones.
    fn used_folders(&self, node: &str) -> Result<Vec<String>> {
        let mut used = self.node(node)?.manifest()?.used_folders;
        if let Some(p) = lock(&self.state).planned_used.get(node) {
            used.extend(p.iter().cloned());
        }
        Ok(used)
    }

    /// Remove the current instance on `node` (stop it, unregister it, keep its
    /// folder). Returns the removed instance, or `None` when there was none.
    pub fn remove_instance(
        &self,
        node: &str,
        _opts: RemoveOptions,
    ) -> Result<Option<InstanceRecord>> {
        let n = self.node(node)?;
        let key = self.call_key("remove_instance", Some(node));
        if let Some(r) =
            self.replayed::<Option<InstanceRecord>>(&key, "remove_instance", Some(node))?
        {
            return Ok(r);
        }
        if let Some(intent) = self.in_flight(&key) {
            let intended: InstanceRecord = serde_json::from_value(intent.clone()).map_err(|e| {
                Error::Config(format!("journal entry `{key}` cannot be read back: {e}"))
            })?;
            let m = n.manifest()?;
            if m.current.as_ref() != Some(&intended) {
                // The removal finished before the earlier attempt died.
                let removed = m
                    .removed
                    .iter()
                    .rev()
                    .find(|r| r.folder == intended.folder)
                    .cloned()
                    .unwrap_or(intended);
                let text = format!(
                    "instance {} {} on `{node}` was removed before the earlier attempt stopped (reconciled)",
                    removed.app_name, removed.version
                );
                return self.step(
                    &key,
                    "remove_instance",
                    text.clone(),
                    Some(node),
                    false,
                    intent.clone(),
                    || Ok((Some(removed), text)),
                );
            }
        }
        let Some(current) = self.instance(node)? else {
            let idx = self.begin_step("remove_instance", String::new(), Some(node), false, false);
            self.finish_step(
                idx,
                Ok(format!("no instance on `{node}`: nothing to remove")),
                0,
            );
            return Ok(None);
        };
        if self.role(node) == Some(Role::Primary) {
            let mut still = Vec::new();
            for s in self.site.nodes.iter().filter(|s| s.role == Role::Secondary) {
                if let Some(i) = self.instance(&s.name)? {
                    still.push(format!("`{}` ({} {})", s.name, i.app_name, i.version));
                }
            }
            if !still.is_empty() {
                return Err(Error::Refused(format!(
                    "cannot remove the instance on primary node `{node}` while secondary node(s) {} still have one: remove instances on all secondaries first (vendor procedure)",
                    still.join(", ")
                )));
            }
        }
        let description = format!(
            "remove instance {} {} (folder `{}`) on `{node}`",
            current.app_name, current.version, current.folder
        );
        self.ensure_confirmed(&description, false)?;
        let intent = serde_json::to_value(&current).unwrap_or_default();
        self.step(
            &key,
            "remove_instance",
            description.clone(),
            Some(node),
            false,
            intent,
            || {
                let removed = if self.mode == Mode::Plan {
                    self.plan_current(node, None);
                    let mut r = current.clone();
                    r.removed = Some("(planned)".into());
                    Some(r)
                } else {
                    n.remove(&self.site.service, &now_rfc3339())?
                };
                Ok((removed, description.clone()))
            },
        )
    }

    /// Create the release's instance on `node` in a new folder.
    pub fn create_instance(&self, node: &str, opts: CreateOptions) -> Result<InstanceRecord> {
        self.release.require("create_instance")?;
        let n = self.node(node)?;
        let key = self.call_key("create_instance", Some(node));
        if let Some(r) = self.replayed::<InstanceRecord>(&key, "create_instance", Some(node))? {
            return Ok(r);
        }
        if let Some(intent) = self.in_flight(&key) {
            return self.finish_interrupted_create(&key, node, intent.clone());
        }
        let app_name = opts.app_name.unwrap_or_else(|| self.site.app_name.clone());
        if app_name.is_empty() || app_name.contains(['/', '\\', '\0']) {
            return Err(Error::Config(format!(
                "create_instance on `{node}`: `app_name` {app_name:?} must be a non-empty name without `/` or `\\`"
            )));
        }
        let version = self.release.version.to_string();
        if let Some(current) = self.instance(node)? {
            if current.app_name == app_name && current.version == version {
                let idx =
                    self.begin_step("create_instance", String::new(), Some(node), false, false);
                self.finish_step(
                    idx,
                    Ok(format!(
                        "`{node}` already runs {app_name} {version} in `{}`: nothing to create",
                        current.folder
                    )),
                    0,
                );
                return Ok(current);
            }
            return Err(Error::Refused(format!(
                "node `{node}` still has instance {} {} in `{}`: remove it first with `remove_instance`",
                current.app_name, current.version, current.folder
            )));
        }
        let used = self.used_folders(node)?;
        let folder = match opts.folder {
            Some(f) => {
                check_relative(node, &f)?;
                if used.contains(&f) {
                    return Err(Error::Refused(format!(
                        "node `{node}`: folder `{f}` was used by an earlier instance and may hold stale subscriber DLLs of an older version; use a new folder"
                    )));
                }
                if n.folder_state(&f)? == DirState::NotEmpty {
                    return Err(Error::Refused(format!(
                        "node `{node}`: folder `{}` exists and is not empty; choose a new, empty folder",
                        n.folder_path(&f)
                    )));
                }
                f
            }
            None => {
                let base = format!("{app_name}-{version}");
                let mut candidate = base.clone();
                let mut i = 1;
                while used.contains(&candidate) || n.folder_state(&candidate)? == DirState::NotEmpty
                {
                    i += 1;
                    candidate = format!("{base}-{i}");
                }
                candidate
            }
        };
        let rec = InstanceRecord {
            node: node.to_string(),
            app_name: app_name.clone(),
            version: version.clone(),
            folder: folder.clone(),
            created: now_rfc3339(),
            removed: None,
        };
        let description =
            format!("create instance {app_name} {version} on `{node}` in new folder `{folder}`");
        self.ensure_confirmed(&description, false)?;
        let intent = serde_json::to_value(&rec).unwrap_or_default();
        self.step(
            &key,
            "create_instance",
            description.clone(),
            Some(node),
            false,
            intent,
            || {
                if self.mode == Mode::Plan {
                    self.plan_current(node, Some(&rec));
                    return Ok((rec.clone(), description.clone()));
                }
                let bytes = n.create(
                    &rec,
                    &self.release.payload,
                    &self.instance_config(&rec),
                    &self.site.service,
                )?;
                self.mark_healthy(node);
                Ok((
                    rec.clone(),
                    format!("{description} ({bytes} bytes of payload)"),
                ))
            },
        )
    }

    /// An earlier attempt died while creating an instance: finish that very
    /// instance in its own folder (recorded in the journal, so the used-folder
    /// rail does not apply to it). Copying the payload again overwrites any
    /// partial files; start and health commands run again.
    fn finish_interrupted_create(
        &self,
        key: &str,
        node: &str,
        intent: serde_json::Value,
    ) -> Result<InstanceRecord> {
        let n = self.node(node)?;
        let rec: InstanceRecord = serde_json::from_value(intent.clone()).map_err(|e| {
            Error::Config(format!("journal entry `{key}` cannot be read back: {e}"))
        })?;
        let current = self.instance(node)?;
        match &current {
            Some(c) if c != &rec => {
                return Err(Error::Refused(format!(
                    "node `{node}`: an earlier attempt was creating {} {} in `{}`, but the node now runs {} {} in `{}`; check the node by hand (`uprun status`) before going on",
                    rec.app_name, rec.version, rec.folder, c.app_name, c.version, c.folder
                )))
            }
            _ => {}
        }
        let description = format!(
            "finish creating instance {} {} on `{node}` in `{}` (interrupted in an earlier attempt)",
            rec.app_name, rec.version, rec.folder
        );
        self.ensure_confirmed(&description, false)?;
        self.step(
            key,
            "create_instance",
            description.clone(),
            Some(node),
            false,
            intent,
            || {
                if self.mode == Mode::Plan {
                    self.plan_current(node, Some(&rec));
                    return Ok((rec.clone(), description.clone()));
                }
                if current.is_some() {
                    n.service_command(
                        "start",
                        self.site.service.start.as_deref(),
                        &rec,
                        &self.site.service,
                    )?;
                    n.service_command(
                        "health",
                        self.site.service.health.as_deref(),
                        &rec,
                        &self.site.service,
                    )?;
                } else {
                    // The folder is this run's own (announced in the
                    // journal): empty what the earlier attempt left half-copied.
                    n.transport.remove_tree(&n.folder_path(&rec.folder))?;
                    n.create(
                        &rec,
                        &self.release.payload,
                        &self.instance_config(&rec),
                        &self.site.service,
                    )?;
                }
                self.mark_healthy(node);
                Ok((rec.clone(), description.clone()))
            },
        )
    }

    /// The instance's own configuration file: what it is and which database it
    /// uses, never a secret.
    fn instance_config(&self, rec: &InstanceRecord) -> String {
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
            self.site.database.kind.as_str().into(),
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

pub(super) fn check_relative(node: &str, folder: &str) -> Result<()> {
    let p = Path::new(folder);
    if folder.is_empty() || folder.contains('\\') || !crate::nodes::local_is_contained(p) {
        return Err(Error::Config(format!(
            "create_instance on `{node}`: `folder` {folder:?} must be a relative path under the node's root, without `..`"
        )));
    }
    Ok(())
}
