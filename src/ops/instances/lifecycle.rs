//! An instance's lifecycle after it is laid out: start (only against a
//! database at its version), stop, health now, and replaying a journaled
//! step only when the node still says it is done.

use super::super::{lock, Mode, Ops, StepKind};
use super::{state_name, StartOptions, StopOptions};
use crate::nodes::{InstanceRecord, InstanceState, NodeInstances};
use crate::{Error, Result};

impl Ops {
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
        self.node_step(
            &key,
            StepKind::StopInstance,
            &description,
            node,
            &current,
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
                    self.forget_observations();
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
    pub(in crate::ops) fn health_of(
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
    pub(super) fn replay_if_observed(
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
    pub(super) fn ensure_running(
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
    pub(super) fn start_on(&self, node: &str, rec: &InstanceRecord) -> Result<()> {
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
    pub(super) fn require_schema_for_start(
        &self,
        node: &str,
        app: &str,
        version: &str,
    ) -> Result<()> {
        let db = self.db_version()?;
        if db.to_string() == version {
            return Ok(());
        }
        Err(Error::Refused(format!(
            "starting {app} {version} on `{node}` against database `{}` at {db}: the application only runs on a database at its own version. Stage it with `create_instance(node, #{{ start: false }})`, and start it with `start_instance(node)` after `upgrade_db()`",
            self.site.database.name
        )))
    }
}
