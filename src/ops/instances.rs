//! Instance operations with their rails: secondaries before the primary; a
//! new instance in a fresh folder directly under the node's root, never one
//! that is, holds or sits in an old instance's folder (compared by what the
//! node resolves, not by spelling); and under the prior application name
//! unless the site file declares a rename.

use std::path::Path;

use serde::Deserialize;

use super::{lock, Mode, Ops, StepKind};
use crate::config::Role;
use crate::config::{overlap, path_components, Overlap};
use crate::db::now_rfc3339;
use crate::nodes::{DirState, InstanceRecord, InstanceState, NodeInstances};
use crate::{Error, Result};

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
fn state_name(s: Option<InstanceState>) -> &'static str {
    s.map(InstanceState::as_str)
        .unwrap_or("in an unknown state")
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

    /// Every folder used on a node, including planned ones: the manifest's
    /// record of used folders and the folders of its current and removed
    /// instances.
    fn used_folders(&self, node: &str) -> Result<Vec<String>> {
        let m = self.node(node)?.manifest()?;
        let mut used = m.used_folders;
        used.extend(m.current.iter().chain(&m.removed).map(|r| r.folder.clone()));
        {
            let st = lock(&self.state);
            if let Some(p) = st.planned_used.get(node) {
                used.extend(p.iter().cloned());
            }
            if let Some(Some(r)) = st.planned_current.get(node) {
                used.push(r.folder.clone());
            }
        }
        let mut seen = std::collections::HashSet::new();
        used.retain(|f| seen.insert(f.clone()));
        Ok(used)
    }

    /// The current instance of a node and the one removed last (as planned,
    /// in plan mode), from one read of its manifest.
    fn current_and_last_removed(
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
        let m = self.node(node)?.manifest()?;
        Ok((
            current.unwrap_or(m.current),
            removed.or_else(|| m.removed.last().cloned()),
        ))
    }

    /// The application names found on the site, `node`'s own first (current,
    /// then removed last), then the other nodes' in site order.
    fn found_names(&self, node: &str) -> Result<Vec<FoundName>> {
        let mut order: Vec<&str> = vec![node];
        order.extend(
            self.site
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .filter(|n| *n != node),
        );
        let mut found = Vec::new();
        for name in order {
            // A node's current instance says what it runs; its last removed
            // one only counts when it has none (an old name removed long ago
            // must not outvote what runs now).
            let (current, removed) = self.current_and_last_removed(name)?;
            let (rec, removed) = match current {
                Some(c) => (Some(c), false),
                None => (removed, true),
            };
            if let Some(r) = rec {
                found.push(FoundName {
                    node: name.to_string(),
                    app_name: r.app_name,
                    version: r.version,
                    removed,
                });
            }
        }
        Ok(found)
    }

    /// A folder (relative to the root) as the node resolves it; a folder
    /// that does not exist is placed lexically under the resolved root.
    fn resolve_folder(&self, n: &NodeInstances, rel: &str, root: &Resolved) -> Result<Resolved> {
        let ignore_case = n.transport.paths_ignore_case();
        Ok(match n.transport.identity(&n.folder_path(rel))? {
            Some(id) => Resolved {
                parts: path_components(&id.canonical, ignore_case),
                file_id: id.file_id,
                link: id.link,
                shown: id.canonical,
            },
            None => {
                let mut parts = root.parts.clone();
                for c in path_components(rel, ignore_case) {
                    parts.push(c);
                }
                Resolved {
                    parts,
                    file_id: None,
                    link: false,
                    shown: n.transport.join(&root.shown, rel),
                }
            }
        })
    }

    /// The node's root as the node resolves it.
    fn resolve_root(&self, n: &NodeInstances) -> Result<Resolved> {
        let Some(id) = n.transport.identity(&n.root)? else {
            return Err(Error::node(
                n.node(),
                format!(
                    "the root folder `{}` does not exist; create it or correct `root` in the site file",
                    n.root
                ),
            ));
        };
        Ok(Resolved {
            parts: path_components(&id.canonical, n.transport.paths_ignore_case()),
            file_id: id.file_id,
            link: id.link,
            shown: id.canonical,
        })
    }

    /// Rail: pick or check the new instance's folder. It must be one plain
    /// name directly under the root, not a link, and, as the node resolves
    /// it, neither be nor hold nor sit inside any folder an instance used;
    /// and it must be missing or empty.
    fn choose_folder(&self, node: &str, requested: Option<String>, base: &str) -> Result<String> {
        let n = self.node(node)?;
        let root = self.resolve_root(n)?;
        let mut used = Vec::new();
        for f in self.used_folders(node)? {
            let r = self.resolve_folder(n, &f, &root)?;
            used.push((f, r));
        }
        if let Some(f) = requested {
            check_folder_name(node, &f)?;
            let candidate = self.resolve_folder(n, &f, &root)?;
            judge_folder(&f, &candidate, &root, &used)
                .map_err(|why| Error::Refused(format!("node `{node}`: {why}")))?;
            if n.folder_state(&f)? == DirState::NotEmpty {
                return Err(Error::Refused(format!(
                    "node `{node}`: folder `{}` exists and is not empty; choose a new, empty folder",
                    n.folder_path(&f)
                )));
            }
            return Ok(f);
        }
        check_folder_name(node, base).map_err(|_| {
            Error::Config(format!(
                "create_instance on `{node}`: the default folder name {base:?} (`<app>-<version>`) is not a plain folder name; give one with the `folder` option"
            ))
        })?;
        for i in 1..=MAX_SUFFIX {
            let candidate = if i == 1 {
                base.to_string()
            } else {
                format!("{base}-{i}")
            };
            let resolved = self.resolve_folder(n, &candidate, &root)?;
            if judge_folder(&candidate, &resolved, &root, &used).is_ok()
                && n.folder_state(&candidate)? != DirState::NotEmpty
            {
                return Ok(candidate);
            }
        }
        Err(Error::Refused(format!(
            "node `{node}`: `{base}` and its {MAX_SUFFIX} suffixed variants are all taken under `{}`; give a new folder with the `folder` option",
            n.root
        )))
    }

    /// Remove the current instance on `node` (stop it, unregister it, keep its
    /// folder). Returns the removed instance, or `None` when there was none.
    pub fn remove_instance(
        &self,
        node: &str,
        _opts: RemoveOptions,
    ) -> Result<Option<InstanceRecord>> {
        let n = self.node(node)?;
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
            let m = n.manifest()?;
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
        self.ensure_confirmed(&description, false)?;
        let intent = serde_json::to_value(&current).unwrap_or_default();
        self.step(
            &key,
            StepKind::RemoveInstance,
            description.clone(),
            Some(node),
            false,
            intent,
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
                    n.remove(&self.site.service, &now_rfc3339())?
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
        self.ensure_confirmed(&description, false)?;
        let intent = serde_json::to_value(&rec).unwrap_or_default();
        self.step(
            &key,
            StepKind::CreateInstance,
            description.clone(),
            Some(node),
            false,
            intent,
            || {
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
                let bytes = n.stage(
                    &rec,
                    &self.release.payload,
                    &self.instance_config(&rec),
                    fresh,
                )?;
                if start {
                    self.start_on(node, &rec)?;
                }
                Ok((
                    rec.with_state(end),
                    format!("{description} ({bytes} bytes of payload)"),
                ))
            },
        )
    }

    /// Start the instance staged on `node` and check its health (a staged,
    /// failed or unhealthy instance is started; a healthy one is left alone).
    pub fn start_instance(&self, node: &str, _opts: StartOptions) -> Result<InstanceRecord> {
        self.node(node)?;
        self.record_group_change(StepKind::StartInstance, node);
        let key = self.call_key(StepKind::StartInstance, Some(node));
        if let Some(r) = self.replay_if_observed(&key, StepKind::StartInstance, node, true)? {
            return Ok(r);
        }
        let Some(current) = self.instance(node)? else {
            return Err(Error::Refused(format!(
                "start_instance on `{node}`: the node has no instance to start; stage one first with `create_instance(node, #{{ start: false }})`"
            )));
        };
        self.ensure_running(&key, StepKind::StartInstance, node, current)
    }

    /// Stop the current instance on `node` with the site's stop command,
    /// keeping it as the node's instance (recorded `stopped`), to be started
    /// again with `start_instance` (a rolling restart, maintenance on a node).
    pub fn stop_instance(&self, node: &str, _opts: StopOptions) -> Result<InstanceRecord> {
        let n = self.node(node)?;
        self.require_recorded(node)?;
        self.record_group_change(StepKind::StopInstance, node);
        let key = self.call_key(StepKind::StopInstance, Some(node));
        if let Some(r) =
            self.replayed::<InstanceRecord>(&key, StepKind::StopInstance, Some(node))?
        {
            return Ok(r);
        }
        let Some(current) = self.instance(node)? else {
            return Err(Error::Refused(format!(
                "stop_instance on `{node}`: the node has no instance to stop"
            )));
        };
        let description = format!(
            "stop instance {} {} on `{node}` (in `{}`); it stays the node's instance",
            current.app_name, current.version, current.folder
        );
        self.ensure_confirmed(&description, false)?;
        let intent = serde_json::to_value(&current).unwrap_or_default();
        self.step(
            &key,
            StepKind::StopInstance,
            description.clone(),
            Some(node),
            false,
            intent,
            || {
                let stopped = InstanceRecord {
                    state: Some(InstanceState::Stopped),
                    ..current.clone()
                };
                if self.mode == Mode::Plan {
                    self.plan_current(node, Some(&stopped));
                } else {
                    // Recorded first: a stop cut off half-way is a stopped
                    // instance to start again, never a healthy one.
                    let mut m = n.manifest()?;
                    m.current = Some(stopped.clone());
                    n.write_manifest(&m)?;
                    self.forget_health();
                    n.service_command(
                        "stop",
                        self.site.service.stop.as_deref(),
                        &current,
                        &self.site.service,
                    )?;
                }
                Ok((stopped, description.clone()))
            },
        )
    }

    /// Whether `node`'s current instance is healthy now: it exists, its
    /// lifecycle reached `healthy` (not left staged, failed, or started with
    /// its health check cut off), and the site's health command passes now
    /// (in plan mode, an instance the plan changed is as planned). A `false`
    /// sends a procedure through `create_instance`/`start_instance`, which
    /// finish the lifecycle.
    pub fn healthy(&self, node: &str) -> Result<bool> {
        self.node(node)?;
        Ok(match self.instance(node)? {
            None => false,
            Some(rec) if rec.state == Some(InstanceState::Started) => false,
            Some(rec) => self.health_of(node, &rec)?.is_ok(),
        })
    }

    /// Why `rec`, `node`'s current instance, is not healthy now (`Ok` when it is).
    pub(super) fn health_of(
        &self,
        node: &str,
        rec: &InstanceRecord,
    ) -> Result<std::result::Result<(), String>> {
        let n = self.node(node)?;
        if self.mode == Mode::Plan && lock(&self.state).planned_current.contains_key(node) {
            return Ok(match rec.state {
                Some(InstanceState::Healthy) => Ok(()),
                s => Err(format!("it is planned to be {}", state_name(s))),
            });
        }
        if InstanceState::needs_start(rec.state) {
            return Ok(Err(format!(
                "its instance is {} (recorded on the node)",
                state_name(rec.state)
            )));
        }
        Ok(
            match n.service_command(
                "health",
                self.site.service.health.as_deref(),
                rec,
                &self.site.service,
            ) {
                Ok(()) => Ok(()),
                Err(e) => Err(e.to_string()),
            },
        )
    }

    /// A call the journal shows done, replayed only when the node still says
    /// so: the same instance is there and, when it must run, healthy now.
    /// Otherwise `None`, and the call acts on what the node says.
    fn replay_if_observed(
        &self,
        key: &str,
        kind: StepKind,
        node: &str,
        must_run: bool,
    ) -> Result<Option<InstanceRecord>> {
        let Some(value) = self.replay.done.get(key) else {
            return Ok(None);
        };
        let Ok(recorded) = serde_json::from_value::<InstanceRecord>(value.clone()) else {
            return Ok(None);
        };
        let Some(current) = self.instance(node)? else {
            return Ok(None);
        };
        if !current.same_instance(&recorded) {
            return Ok(None);
        }
        if must_run && self.health_of(node, &current)?.is_err() {
            return Ok(None);
        }
        if must_run {
            self.mark_healthy(node);
        }
        self.replayed::<InstanceRecord>(key, kind, Some(node))
            .map(|r| r.map(|_| current))
    }

    /// `rec` (node's current instance) is healthy now, or is started and
    /// health-checked as a journaled step.
    fn ensure_running(
        &self,
        key: &str,
        kind: StepKind,
        node: &str,
        rec: InstanceRecord,
    ) -> Result<InstanceRecord> {
        let why = match self.health_of(node, &rec)? {
            Ok(()) => {
                let text = format!(
                    "`{node}` runs {} {} in `{}`, healthy now: nothing to start",
                    rec.app_name, rec.version, rec.folder
                );
                self.mark_healthy(node);
                let healthy = rec.with_state(InstanceState::Healthy);
                if self.mode == Mode::Plan {
                    // Later reads in the plan see what this observation found.
                    self.plan_current(node, Some(&healthy));
                }
                let record = |n: &NodeInstances| {
                    if self.mode == Mode::Run && rec.state != Some(InstanceState::Healthy) {
                        n.set_state(&rec, InstanceState::Healthy)?;
                    }
                    Ok(())
                };
                if let Some(intent) = self.in_flight(key) {
                    // An earlier attempt died during this step, after the
                    // start: what the node says now closes it.
                    let n = self.node(node)?;
                    let text = format!(
                        "{text} (the earlier attempt stopped during this step; reconciled)"
                    );
                    return self.step(
                        key,
                        kind,
                        text.clone(),
                        Some(node),
                        false,
                        intent.clone(),
                        || {
                            record(n)?;
                            Ok((healthy.clone(), text.clone()))
                        },
                    );
                }
                record(self.node(node)?)?;
                self.noted_step(kind, Some(node), text);
                return Ok(healthy);
            }
            Err(why) => why,
        };
        self.require_schema_for_start(node, &rec.app_name, &rec.version)?;
        let description = format!(
            "start instance {} {} on `{node}` (in `{}`) and check its health",
            rec.app_name, rec.version, rec.folder
        );
        // Why it is started is news only when it once ran (a resume, a
        // failed or stopped instance): a staged one starts as planned.
        let shown = if self.mode == Mode::Plan || rec.state == Some(InstanceState::Staged) {
            description.clone()
        } else {
            format!("{description}; not healthy now: {why}")
        };
        self.ensure_confirmed(&description, false)?;
        let intent = serde_json::to_value(&rec).unwrap_or_default();
        self.step(key, kind, shown, Some(node), false, intent, || {
            let healthy = rec.with_state(InstanceState::Healthy);
            if self.mode == Mode::Plan {
                self.plan_current(node, Some(&healthy));
                return Ok((healthy, description.clone()));
            }
            self.start_on(node, &rec)?;
            Ok((
                healthy,
                format!(
                    "started {} {} on `{node}`; its health command passed",
                    rec.app_name, rec.version
                ),
            ))
        })
    }

    /// Start `rec` on `node` and check its health (run mode).
    fn start_on(&self, node: &str, rec: &InstanceRecord) -> Result<()> {
        let n = self.node(node)?;
        match n.start(rec, &self.site.service) {
            Ok(()) => {
                self.mark_healthy(node);
                Ok(())
            }
            Err(Error::Node { node, message }) => Err(Error::Node {
                message: format!(
                    "{message}. Instance {} {} in `{}` is recorded as failed on the node; fix the cause, then resume the run: the start and health commands run again (the instance is not created again)",
                    rec.app_name, rec.version, rec.folder
                ),
                node,
            }),
            Err(e) => Err(e),
        }
    }

    /// Rail: the new application cannot run on another schema (the vendor's
    /// wizard creates the web application and upgrades the database in one
    /// pass), so an instance only starts against a database at its version
    /// (as planned, in plan mode).
    fn require_schema_for_start(&self, node: &str, app: &str, version: &str) -> Result<()> {
        let db = self.db_version()?;
        if db.to_string() == version {
            return Ok(());
        }
        Err(Error::Refused(format!(
            "starting {app} {version} on `{node}` against database `{}` at {db}: the application only runs on a database at its own version. Stage it with `create_instance(node, #{{ start: false }})`, and start it with `start_instance(node)` after `upgrade_db()`",
            self.site.database.name
        )))
    }

    /// Whether an instance registered on `node` (current or removed) used `folder`.
    fn registered_folder(&self, node: &str, folder: &str) -> Result<bool> {
        let m = self.node(node)?.manifest()?;
        Ok(m.current
            .iter()
            .chain(&m.removed)
            .any(|r| r.folder == folder))
    }

    /// The instance whose layout was cut off on `node` (none in plan mode
    /// once the plan changed the node).
    fn pending(&self, node: &str) -> Result<Option<InstanceRecord>> {
        if lock(&self.state).planned_current.contains_key(node) {
            return Ok(None);
        }
        Ok(self.node(node)?.manifest()?.pending)
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

pub(super) fn check_relative(node: &str, folder: &str) -> Result<()> {
    let p = Path::new(folder);
    if folder.is_empty() || folder.contains('\\') || !crate::nodes::local_is_contained(p) {
        return Err(Error::Config(format!(
            "create_instance on `{node}`: `folder` {folder:?} must be a relative path under the node's root, without `..`"
        )));
    }
    Ok(())
}

/// How many suffixed variants of the default folder name are tried.
const MAX_SUFFIX: usize = 1000;

/// An instance found on the site, for deciding the new instance's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FoundName {
    pub node: String,
    pub app_name: String,
    pub version: String,
    /// The node's instance removed last (else its current one).
    pub removed: bool,
}

impl FoundName {
    fn describe(&self) -> String {
        format!(
            "`{}` {} {} {} ({})",
            self.node,
            if self.removed { "had" } else { "runs" },
            self.app_name,
            self.version,
            if self.removed { "removed" } else { "current" },
        )
    }
}

/// Rail: the new instance keeps the prior application name, so users
/// reconnect to the same URL. `found` lists the instances on the site, the
/// node's own first; the first is the prior instance. Every name found must
/// be the site's `name`, or its `renamed_from` (a declared rename, whose
/// instances take `name`). A requested name must be the one decided.
/// Returns the name, or why it is refused.
pub(crate) fn decide_app_name(
    site_name: &str,
    renamed_from: Option<&str>,
    found: &[FoundName],
    requested: Option<&str>,
) -> std::result::Result<String, String> {
    const WHY: &str =
        "a new instance keeps the prior application name so that users reconnect to the same URL";
    let strays: Vec<&FoundName> = found
        .iter()
        .filter(|f| f.app_name != site_name && Some(f.app_name.as_str()) != renamed_from)
        .collect();
    if let Some(first) = strays.first() {
        let declared = match renamed_from {
            Some(r) => format!(" and `renamed_from = {r:?}`"),
            None => String::new(),
        };
        return Err(format!(
            "the site file says `[application] name = {site_name:?}`{declared}, but {}; {WHY}. Correct `name` to {:?}, or, to rename the application on purpose, set `renamed_from = {:?}` under `[application]` (instances named {:?} are then created again as {site_name:?})",
            strays.iter().map(|f| f.describe()).collect::<Vec<_>>().join(", "),
            first.app_name,
            first.app_name,
            first.app_name,
        ));
    }
    let (expected, source) = match found.first() {
        Some(p) if Some(p.app_name.as_str()) == renamed_from => (
            site_name.to_string(),
            format!(
                "{}, renamed by `[application] renamed_from = {:?}`",
                p.describe(),
                p.app_name
            ),
        ),
        Some(p) => (p.app_name.clone(), p.describe()),
        None => (
            site_name.to_string(),
            "no instance on the site: the site file's `[application] name`".to_string(),
        ),
    };
    match requested {
        Some(r) if r != expected && Some(r) == renamed_from => Err(format!(
            "`app_name` {r:?} is the name the site file renames away from (`[application] renamed_from`); the new instance is named {expected:?} ({source}): leave `app_name` out"
        )),
        Some(r) if r != expected => Err(format!(
            "`app_name` {r:?} differs from the prior application name {expected:?} ({source}); {WHY}. Leave `app_name` out, or, to rename the application on purpose, set `[application] name = {r:?}` and `renamed_from = {expected:?}` in the site file"
        )),
        _ => Ok(expected),
    }
}

/// A folder as its node resolves it, for comparing by identity.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// Components of the canonical path (placed lexically when missing).
    pub parts: Vec<String>,
    /// Device and inode, where the node can tell.
    pub file_id: Option<(u64, u64)>,
    /// The name itself is a symbolic link.
    pub link: bool,
    /// The canonical path, for messages.
    pub shown: String,
}

/// Rail (spelling): a new instance folder is one plain name directly under
/// the node's root. Anything else is a configuration error.
pub fn check_folder_name(node: &str, folder: &str) -> Result<()> {
    let why = if folder.is_empty() {
        Some("it is empty")
    } else if folder == "." || folder == ".." {
        Some("it names the root or its parent")
    } else if folder.contains(['/', '\\']) {
        Some("it is a path, not one folder name")
    } else if folder.contains('\0') {
        Some("it contains a NUL character")
    } else if folder.contains(':') {
        Some("it contains `:` (a drive or stream on Windows nodes)")
    } else if folder.starts_with(".uprun") {
        Some("names starting with `.uprun` are uprun's own files in the root (the manifest)")
    } else if folder.ends_with(['.', ' ']) || folder.starts_with(' ') {
        Some("it starts with a space or ends with `.` or a space (Windows nodes drop those, so it would name another folder)")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(Error::Config(format!(
            "create_instance on `{node}`: `folder` {folder:?} is not allowed: {why}. Give one plain folder name, without `/`, `\\`, `:`, `.` or `..`, created directly under the node's root, e.g. \"FastApp-2.0.0\""
        ))),
    }
}

/// Rail (identity): may a new instance go in `candidate` (spelled `folder`)?
/// It must resolve to a folder directly under `root`, must not be, hold or
/// sit inside any `used` folder (same device and inode, or same canonical
/// path), and must not be a link. Returns why not.
pub(crate) fn judge_folder(
    folder: &str,
    candidate: &Resolved,
    root: &Resolved,
    used: &[(String, Resolved)],
) -> std::result::Result<(), String> {
    let stale = "an old instance's folder may hold stale subscriber DLLs of an older version; use a new folder";
    if !candidate.parts.starts_with(&root.parts) || candidate.parts.len() <= root.parts.len() {
        return Err(format!(
            "folder `{folder}` resolves to `{}`, outside the node's root `{}`; an instance folder is created directly under the root",
            candidate.shown, root.shown
        ));
    }
    for (spelled, u) in used {
        let same_file = matches!((candidate.file_id, u.file_id), (Some(a), Some(b)) if a == b);
        let relation = if same_file {
            Some(Overlap::Same)
        } else {
            overlap(&candidate.parts, &u.parts)
        };
        let what = match relation {
            None => continue,
            Some(Overlap::Same) => "is",
            Some(Overlap::Inside) => "is inside",
            Some(Overlap::Contains) => "contains",
        };
        return Err(format!(
            "folder `{folder}` (`{}`) {what} `{spelled}` (`{}`), which was used by an earlier instance; {stale}",
            candidate.shown, u.shown
        ));
    }
    if candidate.parts.len() != root.parts.len() + 1 {
        return Err(format!(
            "folder `{folder}` resolves to `{}`, not a folder directly under the node's root `{}`",
            candidate.shown, root.shown
        ));
    }
    if candidate.link {
        return Err(format!(
            "folder `{folder}` is a symbolic link (to `{}`); a new instance goes in a real folder that uprun creates",
            candidate.shown
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(node: &str, app: &str, removed: bool) -> FoundName {
        FoundName {
            node: node.into(),
            app_name: app.into(),
            version: "1.0.0".into(),
            removed,
        }
    }

    #[test]
    fn the_prior_name_is_kept() {
        let f = [
            found("app01", "FastApp", true),
            found("app02", "FastApp", true),
        ];
        assert_eq!(
            decide_app_name("FastApp", None, &f, None),
            Ok("FastApp".into())
        );
        assert_eq!(
            decide_app_name("FastApp", None, &f, Some("FastApp")),
            Ok("FastApp".into())
        );
        let e = decide_app_name("FastApp", None, &f, Some("OtherApp")).unwrap_err();
        assert!(
            e.contains("\"OtherApp\" differs from the prior application name \"FastApp\""),
            "{e}"
        );
        assert!(e.contains("renamed_from = \"FastApp\""), "{e}");
    }

    #[test]
    fn a_fresh_site_uses_the_site_name() {
        assert_eq!(
            decide_app_name("FastApp", None, &[], None),
            Ok("FastApp".into())
        );
        assert!(decide_app_name("FastApp", None, &[], Some("Other")).is_err());
    }

    #[test]
    fn a_renamed_site_is_refused_unless_declared() {
        let f = [
            found("app01", "FastApp", true),
            found("app02", "FastApp", false),
        ];
        let e = decide_app_name("NewApp", None, &f, None).unwrap_err();
        assert!(e.contains("`app01` had FastApp 1.0.0 (removed)"), "{e}");
        assert!(e.contains("renamed_from = \"FastApp\""), "{e}");
        assert_eq!(
            decide_app_name("NewApp", Some("FastApp"), &f, None),
            Ok("NewApp".into())
        );
        // Half-way through a declared rename, both names are expected.
        let g = [
            found("app02", "FastApp", true),
            found("app01", "NewApp", false),
        ];
        assert_eq!(
            decide_app_name("NewApp", Some("FastApp"), &g, Some("NewApp")),
            Ok("NewApp".into())
        );
        let e = decide_app_name("NewApp", Some("FastApp"), &g, Some("FastApp")).unwrap_err();
        assert!(e.contains("renames away from"), "{e}");
        // A third name is not covered by the declaration.
        let h = [found("app01", "OldApp", true)];
        assert!(decide_app_name("NewApp", Some("FastApp"), &h, None).is_err());
    }

    fn at(path: &str, id: Option<(u64, u64)>, link: bool) -> Resolved {
        Resolved {
            parts: path_components(path, false),
            file_id: id,
            link,
            shown: path.into(),
        }
    }

    #[test]
    fn folders_are_compared_by_identity() {
        let root = at("/n/app01", Some((1, 1)), false);
        let used = vec![(
            "FastApp-1.0.0".to_string(),
            at("/n/app01/FastApp-1.0.0", Some((1, 2)), false),
        )];
        let judge = |c: &Resolved| judge_folder("x", c, &root, &used);
        assert!(judge(&at("/n/app01/FastApp-2.0.0", None, false)).is_ok());
        // Same canonical path, or same inode under another path (a mount).
        assert!(judge(&at("/n/app01/FastApp-1.0.0", None, false))
            .unwrap_err()
            .contains(") is `FastApp-1.0.0`"));
        assert!(judge(&at("/n/app01/mnt", Some((1, 2)), false))
            .unwrap_err()
            .contains("which was used by an earlier instance"));
        // A link to the old folder, inside it, or to its parent.
        assert!(judge(&at("/n/app01/FastApp-1.0.0", Some((1, 2)), true)).is_err());
        assert!(judge(&at("/n/app01/FastApp-1.0.0/next", None, false))
            .unwrap_err()
            .contains("is inside"));
        assert!(judge(&at("/n/app01", Some((1, 1)), true))
            .unwrap_err()
            .contains("outside the node's root"));
        // Outside the root, or a link at all.
        assert!(judge(&at("/elsewhere/x", Some((2, 2)), true))
            .unwrap_err()
            .contains("outside the node's root"));
        assert!(judge(&at("/n/app01/fresh", Some((1, 9)), true))
            .unwrap_err()
            .contains("symbolic link"));
        // An old nested folder is held by the candidate.
        let nested = vec![("a/b".to_string(), at("/n/app01/a/b", None, false))];
        assert!(
            judge_folder("a", &at("/n/app01/a", None, false), &root, &nested)
                .unwrap_err()
                .contains("contains")
        );
    }

    #[test]
    fn folder_names_are_one_plain_component() {
        for bad in [
            "",
            ".",
            "..",
            "./FastApp-1.0.0",
            "FastApp-1.0.0/",
            "FastApp-1.0.0/next",
            "a\\b",
            "/abs",
            "C:x",
            "a\0b",
            "trailing.",
            "trailing ",
            ".uprun-node.json",
        ] {
            let e = check_folder_name("app01", bad).unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{bad:?}");
            assert!(e.to_string().contains("app01"), "{e}");
        }
        for good in ["FastApp-2.0.0", "fresh", ".hidden", "FastApp-2.0.0+build.1"] {
            assert!(check_folder_name("app01", good).is_ok(), "{good:?}");
        }
    }
}
