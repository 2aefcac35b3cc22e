//! Removing an instance (secondaries before the primary; its folder is
//! kept) and creating one in a new folder (staged, then, unless told
//! otherwise, started and health-checked).

use super::super::{lock, Mode, Ops, StepKind};
use super::app_name::decide_app_name;
use super::folders::check_folder_name;
use super::{state_name, CreateOptions, RemoveOptions};
use crate::config::Role;
use crate::db::now_rfc3339;
use crate::nodes::{InstanceRecord, InstanceState};
use crate::{Error, Result};

impl Ops {
    /// Remove the current instance on `node` (stop it, unregister it, keep its
    /// folder). Returns the removed instance, or `None` when there was none.
    pub fn remove_instance(
        &self,
        node: &str,
        _opts: RemoveOptions,
    ) -> Result<Option<InstanceRecord>> {
        let n = self.node(node)?;
        let _deciding = self.observe(node);
        self.require_recorded(node)?;
        self.record_group_change(StepKind::RemoveInstance, node);
        let key = self.call_key(StepKind::RemoveInstance, Some(node));
        if let Some(r) =
            self.replayed::<Option<InstanceRecord>>(&key, StepKind::RemoveInstance, Some(node))?
        {
            return Ok(r);
        }
        if let Some(intent) = self.in_flight(&key) {
            let intended: InstanceRecord = serde_json::from_value(intent.clone()).map_err(|e| {
                Error::Config(format!("journal entry `{key}` cannot be read back: {e}"))
            })?;
            let m = self.manifest_now(node)?;
            if !m
                .current
                .as_ref()
                .is_some_and(|c| c.same_instance(&intended))
            {
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
                    StepKind::RemoveInstance,
                    text.clone(),
                    Some(node),
                    false,
                    intent.clone(),
                    || Ok((Some(removed), text)),
                );
            }
        }
        let Some(current) = self.instance(node)? else {
            self.noted_step(
                StepKind::RemoveInstance,
                Some(node),
                format!("no instance on `{node}`: nothing to remove"),
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
        self.node_step(
            &key,
            StepKind::RemoveInstance,
            &description,
            node,
            &current,
            || {
                let removed = if self.mode == Mode::Plan {
                    self.plan_current(node, None);
                    let mut r = current.clone();
                    r.removed = Some("(planned)".into());
                    lock(&self.state)
                        .planned_removed
                        .insert(node.to_string(), r.clone());
                    Some(r)
                } else {
                    let r = n.remove(&self.site.service, &now_rfc3339());
                    // Its manifest changed: the name rail reads it again.
                    lock(&self.state).names_seen.remove(node);
                    r?
                };
                Ok((removed, description.clone()))
            },
        )
    }

    /// Create the release's instance on `node` in a new folder: stage it
    /// (files and config), then, unless `start: false`, start it and check
    /// its health; it counts as created only once healthy. Decided from what
    /// the node says now: an instance of the release already there is not
    /// created again (it is started when it is staged, failed or not healthy
    /// now), and one whose layout was cut off is finished in its own folder.
    pub fn create_instance(&self, node: &str, opts: CreateOptions) -> Result<InstanceRecord> {
        self.release.require("create_instance")?;
        let n = self.node(node)?;
        let _deciding = self.observe(node);
        self.require_recorded(node)?;
        self.record_group_change(StepKind::CreateInstance, node);
        let key = self.call_key(StepKind::CreateInstance, Some(node));
        let start = opts.start.unwrap_or(true);
        if let Some(a) = &opts.app_name {
            if a.is_empty() || a.contains(['/', '\\', '\0']) {
                return Err(Error::Config(format!(
                    "create_instance on `{node}`: `app_name` {a:?} must be a non-empty name without `/` or `\\`"
                )));
            }
        }
        if let Some(f) = &opts.folder {
            check_folder_name(node, f)?;
        }
        if let Some(r) = self.replay_if_observed(&key, StepKind::CreateInstance, node, start)? {
            return Ok(r);
        }
        let found = self.found_names(node)?;
        let app_name = decide_app_name(
            &self.site.app_name,
            self.site.renamed_from.as_deref(),
            &found,
            opts.app_name.as_deref(),
        )
        .map_err(|why| Error::Refused(format!("create_instance on `{node}`: {why}")))?;
        // Said in the plan, so the operator sees the rename before the window.
        let renamed = match found.first() {
            Some(p) if p.app_name != app_name => format!(
                " (renamed from {}, as `[application] renamed_from` declares)",
                p.app_name
            ),
            _ => String::new(),
        };
        let version = self.release.version.to_string();
        if let Some(current) = self.instance(node)? {
            if current.app_name == app_name && current.version == version {
                if start {
                    return self.ensure_running(&key, StepKind::CreateInstance, node, current);
                }
                self.noted_step(
                    StepKind::CreateInstance,
                    Some(node),
                    format!(
                        "`{node}` already has {app_name} {version} in `{}` ({}): nothing to stage",
                        current.folder,
                        state_name(current.state)
                    ),
                );
                return Ok(current);
            }
            return Err(Error::Refused(format!(
                "node `{node}` still has instance {} {} in `{}`: remove it first with `remove_instance`",
                current.app_name, current.version, current.folder
            )));
        }
        // A layout of this very instance that was cut off (this run's, or an
        // abandoned run's): finished in its own folder, emptied first.
        // Journals of older versions name it only in the in-flight intent.
        let announced = match self.in_flight(&key) {
            Some(intent) => serde_json::from_value::<InstanceRecord>(intent.clone()).ok(),
            None => None,
        };
        let unfinished = match self.pending(node)? {
            Some(p) => Some(p),
            None => match announced {
                Some(a) if !self.registered_folder(node, &a.folder)? => Some(a),
                _ => None,
            },
        }
        .filter(|p| p.node == node && p.app_name == app_name && p.version == version)
        .filter(|p| opts.folder.as_ref().is_none_or(|f| *f == p.folder));
        let (rec, fresh) = match unfinished {
            Some(p) => (p, true),
            None => {
                let folder =
                    self.choose_folder(node, opts.folder, &format!("{app_name}-{version}"))?;
                let rec = InstanceRecord {
                    node: node.to_string(),
                    app_name: app_name.clone(),
                    version: version.clone(),
                    folder,
                    created: now_rfc3339(),
                    removed: None,
                    state: None,
                };
                (rec, false)
            }
        };
        // Rail: the new application only starts against a database at its
        // version; checked before anything is laid out.
        if start {
            self.require_schema_for_start(node, &app_name, &version)?;
        }
        let verb = if start { "create" } else { "stage" };
        let description = if fresh {
            format!(
                "finish {verb} instance {app_name} {version} on `{node}` in `{}` (its layout was cut off){renamed}",
                rec.folder
            )
        } else {
            format!(
                "{verb} instance {app_name} {version} on `{node}` in new folder `{}`{}{renamed}",
                rec.folder,
                if start { "" } else { " (not started)" }
            )
        };
        self.node_step(&key, StepKind::CreateInstance, &description, node, &rec, || {
                let end = if start {
                    InstanceState::Healthy
                } else {
                    InstanceState::Staged
                };
                if self.mode == Mode::Plan {
                    let planned = rec.with_state(end);
                    self.plan_current(node, Some(&planned));
                    return Ok((planned, description.clone()));
                }
                let staged = crate::nodes::staging::payload_digest(node, &self.release.payload)?;
                let staged_into = n.stage(
                    &rec,
                    &self.release.payload,
                    &self.instance_config(&rec),
                    fresh,
                    Some(&staged),
                );
                // Its manifest changed: the name rail reads it again.
                lock(&self.state).names_seen.remove(node);
                let (bytes, renamed) = staged_into?;
                if start {
                    self.start_on(node, &rec)?;
                }
                let how = if renamed {
                    format!(
                        "the payload staged before the window ({} bytes), verified and renamed into place",
                        staged.bytes
                    )
                } else {
                    format!("{bytes} bytes of payload")
                };
                Ok((rec.with_state(end), format!("{description} ({how})")))
            },
        )
    }
}
