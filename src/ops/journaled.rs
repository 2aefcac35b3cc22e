//! How a step happens: recorded, announced in the journal (durably) before
//! its change and closed after it, reported; replayed from an earlier
//! attempt's journal instead of redone; stopped by Ctrl-C or by `uprun
//! test`'s simulated crash between steps.

use std::time::Instant;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{lock, CrashPoint, Mode, Ops, Refusal, RefusedBy, StepKind, StepRecord, StepStatus};
use crate::db::now_rfc3339;
use crate::journal::Entry;
use crate::output::Event;
use crate::{Error, Result};

impl Ops {
    pub(super) fn begin_step(
        &self,
        kind: StepKind,
        description: String,
        node: Option<&str>,
        changes: bool,
        irreversible: bool,
    ) -> usize {
        let mut st = lock(&self.state);
        let index = st.steps.len() + 1;
        let status = if self.mode == Mode::Plan {
            StepStatus::Planned
        } else {
            StepStatus::Started
        };
        st.steps.push(StepRecord {
            index,
            kind,
            description: description.clone(),
            changes,
            irreversible,
            node: node.map(str::to_string),
            status,
        });
        drop(st);
        if self.mode == Mode::Run {
            self.reporter.event(Event::StepStarted {
                index,
                kind: kind.to_string(),
                description,
            });
        }
        index
    }

    /// A step that is over as soon as it is known (nothing to do, done in an
    /// earlier attempt): recorded and reported once, as done, with `text`.
    pub(super) fn noted_step(&self, kind: StepKind, node: Option<&str>, text: String) {
        let mut st = lock(&self.state);
        let index = st.steps.len() + 1;
        st.steps.push(StepRecord {
            index,
            kind,
            description: String::new(),
            changes: false,
            irreversible: false,
            node: node.map(str::to_string),
            status: if self.mode == Mode::Plan {
                StepStatus::Planned
            } else {
                StepStatus::Started
            },
        });
        drop(st);
        self.finish_step(index, Ok(text), 0);
    }

    /// Close a step; `Ok(text)` replaces its description with what happened.
    pub(super) fn finish_step(
        &self,
        index: usize,
        outcome: std::result::Result<String, &Error>,
        ms: u128,
    ) {
        let mut st = lock(&self.state);
        let Some(step) = st.steps.get_mut(index - 1) else {
            return;
        };
        let kind = step.kind.to_string();
        match outcome {
            Ok(text) => {
                step.description = text.clone();
                if self.mode == Mode::Plan {
                    let changes = step.changes;
                    let irreversible = step.irreversible;
                    drop(st);
                    self.reporter.event(Event::Planned {
                        index,
                        kind,
                        description: text,
                        changes,
                        irreversible,
                    });
                } else {
                    step.status = StepStatus::Done;
                    drop(st);
                    self.reporter.event(Event::StepDone {
                        index,
                        kind,
                        description: text,
                        ms,
                    });
                }
            }
            Err(e) => {
                step.status = match e {
                    Error::Refused(_) | Error::ScriptRefused(_) => StepStatus::Refused,
                    _ => StepStatus::Failed,
                };
                let description = step.description.clone();
                drop(st);
                if self.mode == Mode::Run {
                    self.reporter.event(Event::StepFailed {
                        index,
                        kind,
                        description,
                        error: e.to_string(),
                    });
                }
            }
        }
    }

    /// The journal key of this call of a changing function: `call:node#n`,
    /// counted per call and node so that parallel closures cannot shuffle it.
    pub(super) fn call_key(&self, call: impl std::fmt::Display, node: Option<&str>) -> String {
        let base = format!("{call}:{}", node.unwrap_or("-"));
        let mut st = lock(&self.state);
        let n = st.occurrences.entry(base.clone()).or_insert(0);
        *n += 1;
        format!("{base}#{n}")
    }

    /// A call the journal shows done in an earlier attempt: its recorded
    /// result, listed as done, without acting.
    pub(super) fn replayed<T: DeserializeOwned>(
        &self,
        key: &str,
        kind: StepKind,
        node: Option<&str>,
    ) -> Result<Option<T>> {
        let Some(value) = self.replay.done.get(key) else {
            return Ok(None);
        };
        let v: T = serde_json::from_value(value.clone()).map_err(|e| {
            Error::Journal(format!("journal entry `{key}` cannot be read back ({e}); the journal does not match this version of uprun"))
        })?;
        let what = self
            .replay
            .descriptions
            .get(key)
            .cloned()
            .unwrap_or_else(|| kind.as_str().replace('_', " "));
        self.noted_step(kind, node, format!("done in an earlier attempt: {what}"));
        self.mark_site_changed(kind);
        Ok(Some(v))
    }

    /// What the earlier attempt announced for a call it never closed.
    pub(super) fn in_flight(&self, key: &str) -> Option<&Value> {
        self.replay.in_flight.get(key)
    }

    /// Interrupted by the operator: stop before starting another change.
    pub(super) fn check_interrupt(&self) -> Result<()> {
        if lock(&self.state).crashed {
            return Err(Error::Interrupted(
                "interrupted: simulated crash (uprun test)".into(),
            ));
        }
        if self.mode == Mode::Run && crate::interrupt::stop_requested() {
            return Err(Error::Interrupted(
                "interrupted: stopped by the operator (Ctrl-C) before the next step".into(),
            ));
        }
        Ok(())
    }

    /// `uprun test`: at the chosen point, stop as a dead process would: the
    /// journal keeps the step in flight and no further step starts.
    pub(super) fn simulated_crash(&self, seq: usize, after_change: bool) -> Result<()> {
        if self.mode != Mode::Run
            || self.crash_at
                != Some(CrashPoint {
                    step: seq,
                    after_change,
                })
        {
            return Ok(());
        }
        lock(&self.state).crashed = true;
        Err(Error::Interrupted(format!(
            "interrupted: simulated crash {} step {seq} (uprun test)",
            if after_change { "after" } else { "before" }
        )))
    }

    /// Record a refusal about to be raised in the script, journaled in run
    /// mode; returns its number. Recorded before the script can catch it, so
    /// a caught refusal still shows in the journal and the summary.
    pub fn record_refusal(&self, by: RefusedBy, message: &str) -> usize {
        let n = {
            let mut st = lock(&self.state);
            st.refusals.push(Refusal {
                by,
                message: message.to_string(),
                ended_run: false,
            });
            st.refusals.len() - 1
        };
        // The refusal itself is what the script sees; a journal that cannot
        // be written fails the next step's announcement.
        let _ = self.announce(Entry::Refusal {
            by: by.as_str().to_string(),
            message: message.to_string(),
            at: now_rfc3339(),
        });
        n
    }

    /// The refusal numbered `n` ended the run: the run's error reports it.
    pub fn refusal_ended_run(&self, n: usize) {
        if let Some(r) = lock(&self.state).refusals.get_mut(n) {
            r.ended_run = true;
        }
    }

    /// Whether `for_each_node` runs its closures one after the other: always
    /// in plan mode (what the plan reports must not depend on timing; the order
    /// rails hold for any interleaving), and in `uprun test`'s attempts.
    pub fn closures_in_order(&self) -> bool {
        self.mode == Mode::Plan || self.closures_in_order
    }

    /// Changing commands run (or simulated) by `node_command` so far.
    pub fn commands_run(&self) -> Vec<(String, String)> {
        lock(&self.state).commands_run.clone()
    }

    pub(super) fn announce(&self, entry: Entry) -> Result<()> {
        match &self.journal {
            Some(j) if self.mode == Mode::Run => j.append(&entry),
            _ => Ok(()),
        }
    }

    /// A change on `node` that can be undone: refused without the operator's
    /// consent (`ensure_confirmed`), then run as a `step` shown as `description`,
    /// announcing `intent`.
    pub(super) fn node_step<T: Serialize>(
        &self,
        key: &str,
        kind: StepKind,
        description: &str,
        node: &str,
        intent: &impl Serialize,
        work: impl FnOnce() -> Result<(T, String)>,
    ) -> Result<T> {
        self.ensure_confirmed(description, false)?;
        let description = description.to_string();
        let intent = serde_json::to_value(intent).unwrap_or_default();
        self.step(key, kind, description, Some(node), false, intent, work)
    }

    /// Run `work` as a changing step: announce it in the journal (durably)
    /// before acting, record its result after. Failpoints `step<n>:before`,
    /// `step<n>:inner` (inside `work`, see `inner_failpoint`) and
    /// `step<n>:after` bracket the change.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn step<T: Serialize>(
        &self,
        key: &str,
        kind: StepKind,
        description: String,
        node: Option<&str>,
        irreversible: bool,
        intent: Value,
        work: impl FnOnce() -> Result<(T, String)>,
    ) -> Result<T> {
        self.check_interrupt()?;
        if kind.changes_site() {
            self.require_customizations_acknowledged(&description)?;
        }
        // The decision is made: what the change does is read again.
        if let Some(n) = node {
            self.end_observation(n);
        }
        let idx = self.begin_step(kind, description.clone(), node, true, irreversible);
        let start = Instant::now();
        let seq = {
            let mut st = lock(&self.state);
            st.announced += 1;
            st.announced
        };
        let announced = self.announce(Entry::Started {
            key: key.to_string(),
            call: kind.to_string(),
            node: node.map(str::to_string),
            description,
            intent,
            at: now_rfc3339(),
            within: crate::output::closure_node(),
        });
        if let Err(e) = announced {
            self.finish_step(idx, Err(&e), 0);
            return Err(e);
        }
        if self.mode == Mode::Run {
            crate::failpoint::hit(&format!("step{seq}:before"));
        }
        if let Err(e) = self.simulated_crash(seq, false) {
            self.finish_step(idx, Err(&e), 0);
            return Err(e);
        }
        crate::failpoint::set_step(seq);
        let outcome = work();
        if self.mode == Mode::Run {
            crate::failpoint::hit(&format!("step{seq}:after"));
        }
        if outcome.is_ok() {
            if let Err(e) = self.simulated_crash(seq, true) {
                self.finish_step(idx, Err(&e), 0);
                return Err(e);
            }
        }
        let ms = start.elapsed().as_millis();
        match outcome {
            Ok((value, text)) => {
                self.mark_site_changed(kind);
                let result = serde_json::to_value(&value).unwrap_or(Value::Null);
                let recorded = self.announce(Entry::Done {
                    key: key.to_string(),
                    result,
                    ms: ms as u64,
                    at: now_rfc3339(),
                });
                if let Err(e) = recorded {
                    self.finish_step(idx, Err(&e), ms);
                    return Err(e);
                }
                self.finish_step(idx, Ok(text), ms);
                Ok(value)
            }
            Err(e) => {
                let _ = self.announce(Entry::Failed {
                    key: key.to_string(),
                    error: e.to_string(),
                    at: now_rfc3339(),
                });
                self.finish_step(idx, Err(&e), ms);
                Err(e)
            }
        }
    }
}
