//! The operations a procedure can order, with their safety rails. Every rule
//! of the design (README, "Architecture") lives here, below the script
//! layer, so a custom script gets the same guarantees as the stock one. In plan mode reads are real and every
//! change is only described, and recorded in an overlay so that later reads
//! (and later rails) see the planned state.

mod audit;
mod commands;
mod database;
#[cfg(test)]
pub(crate) mod fakes;
mod groups;
mod instances;
mod journaled;
#[cfg(test)]
mod rail_tests;
mod step;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use semver::Version;
use serde::Serialize;

use crate::config::{Release, Role, Site};
use crate::db::{BackupReceipt, Database};
use crate::journal::{Journal, Replay};
use crate::nodes::{InstanceRecord, NodeInstances};
use crate::output::{Event, Output};
use crate::{Error, Result};

pub use audit::Audit;
pub use commands::{CommandOptions, CommandResult};
pub use database::{BackupOptions, UpgradeOptions, UpgradeReport};
pub use instances::check_folder_name;
pub use instances::{CreateOptions, RemoveOptions, StageOptions, StartOptions, StopOptions};
pub use step::{count_changes, not_attempted, Outcome, StepKind, StepRecord, StepStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plan,
    Run,
}

/// How changes get confirmed.
#[derive(Debug, Clone, Copy)]
pub struct Confirmation {
    /// `--yes`: every confirmation is answered yes.
    pub yes: bool,
    /// Standard input is a terminal we may ask on.
    pub interactive: bool,
}

impl Confirmation {
    /// Nobody to ask and every question answered yes: the planning pass of
    /// `run`, `plan` itself, and `uprun test`'s disposable copies.
    pub const UNATTENDED: Confirmation = Confirmation {
        yes: true,
        interactive: false,
    };
}

#[derive(Default)]
struct RunState {
    steps: Vec<StepRecord>,
    /// Verified backups taken in this run (planned ones in plan mode).
    backups: Vec<BackupReceipt>,
    /// Plan overlay: database version after planned upgrades.
    planned_version: Option<Version>,
    /// Plan overlay: node name -> current instance after planned changes.
    planned_current: HashMap<String, Option<InstanceRecord>>,
    /// Plan overlay: node name -> folders planned to be used.
    planned_used: HashMap<String, Vec<String>>,
    /// Plan overlay: node name -> instance planned to be removed last.
    planned_removed: HashMap<String, InstanceRecord>,
    /// Each node's current and last removed instance as this run last read
    /// them from its manifest (the application-name rail's view of the
    /// other nodes; a node's own manifest is always read again).
    names_seen: HashMap<String, (Option<InstanceRecord>, Option<InstanceRecord>)>,
    /// Nodes whose host call is deciding now (see [`Ops::observe`]), with
    /// the manifest read for that decision once read (inner `None`: the node
    /// has none).
    observing: HashMap<String, Option<Option<crate::nodes::instances::Manifest>>>,
    /// The operator accepted the run's changes (once, up front).
    changes_confirmed: bool,
    /// Calls of changing functions so far, by `call:node` (journal keys).
    occurrences: HashMap<String, usize>,
    /// Changes announced by this process (numbers the failpoints).
    announced: usize,
    /// A simulated crash happened: no further step may start.
    crashed: bool,
    /// Commands run (or simulated) by `node_command`, in order.
    commands_run: Vec<(String, String)>,
    /// Instance changes made inside parallel `for_each_node` calls.
    groups: groups::Groups,
    /// An instance or the database was changed by this run (any attempt).
    site_changed: bool,
    /// Nodes whose health command passed in this attempt.
    healthy: HashSet<String>,
    /// The run-end audit, once made.
    audit: Option<audit::Audit>,
    /// Every refusal raised in the script, caught or not, in order.
    refusals: Vec<Refusal>,
}

/// Who refused: a safety rail of the host, or the procedure (`refuse`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusedBy {
    Rail,
    Procedure,
}

impl RefusedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            RefusedBy::Rail => "rail",
            RefusedBy::Procedure => "procedure",
        }
    }
}

/// A refusal raised in the script.
#[derive(Debug, Clone)]
struct Refusal {
    by: RefusedBy,
    message: String,
    /// It ended the run (reported as the run's error, not listed again).
    ended_run: bool,
}

/// Whether commands (service commands, `node_command`) really run. `uprun
/// test` simulates them on its disposable copies unless told otherwise: they
/// may address real systems (a load balancer, a service manager).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandPolicy {
    Run,
    Simulate,
}

/// Where `uprun test` simulates a crash: the changing step number (as
/// announced by this process) and whether before or after its change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CrashPoint {
    pub step: usize,
    pub after_change: bool,
}

/// What a run is about: its inputs and how it may act.
pub struct RunSpec {
    pub site: Site,
    pub release: Release,
    pub mode: Mode,
    pub run_id: String,
    pub confirmation: Confirmation,
    /// Where changes are announced and recorded (run mode).
    pub journal: Option<Arc<Journal>>,
    /// What an earlier attempt of this run did (`--resume`).
    pub replay: Replay,
    pub commands: CommandPolicy,
    /// `uprun test`: stop as if the process died at this point.
    pub crash_at: Option<CrashPoint>,
    /// `uprun test`: run the closures of `for_each_node` one after the other,
    /// so that step numbers (the crash points) are the same in every attempt.
    pub closures_in_order: bool,
}

impl RunSpec {
    /// A spec with the defaults: commands run, no journal, nothing to replay.
    pub fn new(
        site: &Site,
        release: &Release,
        mode: Mode,
        run_id: &str,
        confirmation: Confirmation,
    ) -> RunSpec {
        RunSpec {
            site: site.clone(),
            release: release.clone(),
            mode,
            run_id: run_id.to_string(),
            confirmation,
            journal: None,
            replay: Replay::default(),
            commands: CommandPolicy::Run,
            crash_at: None,
            closures_in_order: false,
        }
    }

    /// What an earlier attempt of this run did (`--resume`).
    pub fn with_replay(self, replay: Replay) -> RunSpec {
        RunSpec { replay, ..self }
    }

    /// Where changes are announced and recorded.
    pub fn with_journal(self, journal: Arc<Journal>) -> RunSpec {
        RunSpec {
            journal: Some(journal),
            ..self
        }
    }
}

/// The site, release and connections of one run, and what it has done so far.
pub struct Ops {
    pub site: Site,
    pub release: Release,
    pub mode: Mode,
    pub run_id: String,
    db: Mutex<Box<dyn Database>>,
    nodes: Vec<NodeInstances>,
    reporter: Arc<Output>,
    confirmation: Confirmation,
    journal: Option<Arc<Journal>>,
    replay: Replay,
    commands: CommandPolicy,
    crash_at: Option<CrashPoint>,
    closures_in_order: bool,
    state: Mutex<RunState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ops {
    pub fn new(
        spec: RunSpec,
        db: Box<dyn Database>,
        nodes: Vec<NodeInstances>,
        reporter: Arc<Output>,
    ) -> Self {
        let r = &spec.replay;
        let site_changed = r
            .done
            .keys()
            .chain(r.in_flight.keys())
            .chain(r.failed.keys())
            .filter_map(|k| StepKind::from_call(k.split(':').next().unwrap_or_default()))
            .any(StepKind::changes_site);
        Ops {
            site: spec.site,
            release: spec.release,
            mode: spec.mode,
            run_id: spec.run_id,
            db: Mutex::new(db),
            nodes,
            reporter,
            confirmation: spec.confirmation,
            journal: spec.journal,
            replay: spec.replay,
            commands: spec.commands,
            crash_at: spec.crash_at,
            closures_in_order: spec.closures_in_order,
            state: Mutex::new(RunState {
                // A resumed run changed the site if an earlier attempt did,
                // even when this attempt has nothing left to do.
                site_changed,
                ..RunState::default()
            }),
        }
    }

    pub fn reporter(&self) -> &Output {
        &self.reporter
    }

    /// Every step so far, in order.
    pub fn steps(&self) -> Vec<StepRecord> {
        lock(&self.state).steps.clone()
    }

    /// Record that the operator accepted the run's changes up front.
    pub fn accept_changes(&self) {
        lock(&self.state).changes_confirmed = true;
    }

    fn node(&self, name: &str) -> Result<&NodeInstances> {
        self.nodes.iter().find(|n| n.node() == name).ok_or_else(|| {
            Error::Config(format!(
                "unknown node `{name}`; the site `{}` has {}",
                self.site.file.display(),
                self.site
                    .nodes
                    .iter()
                    .map(|n| format!("`{}`", n.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// Rail: a node whose root holds files but that uprun has no record of
    /// (no manifest) may run an instance uprun does not know: removing
    /// "nothing" or creating beside it would silently ignore it. The operator
    /// records it first (`uprun adopt`).
    fn require_recorded(&self, node: &str) -> Result<()> {
        let n = self.node(node)?;
        if self.read_manifest(node)?.is_some() || !n.root_holds_files()? {
            return Ok(());
        }
        Err(Error::Refused(format!(
            "node `{node}`: its root `{}` holds files but uprun has no record of an instance there (no `{}`): an instance installed by other means would be ignored. Record it first: `uprun adopt --site {} --node {node} --version VERSION --folder FOLDER --yes`",
            n.root,
            crate::nodes::instances::MANIFEST,
            self.site.file.display()
        )))
    }

    fn role(&self, name: &str) -> Option<Role> {
        self.site.node(name).map(|n| n.role)
    }

    /// The current instance on a node (as planned, in plan mode).
    pub fn instance(&self, node: &str) -> Result<Option<InstanceRecord>> {
        self.node(node)?;
        if let Some(planned) = lock(&self.state).planned_current.get(node) {
            return Ok(planned.clone());
        }
        Ok(self.manifest_now(node)?.current)
    }

    /// `node`'s manifest (`None`: it has none), read now; while a host call
    /// decides about `node` ([`Ops::observe`]), read once for that decision.
    pub(crate) fn read_manifest(
        &self,
        node: &str,
    ) -> Result<Option<crate::nodes::instances::Manifest>> {
        if let Some(Some(m)) = lock(&self.state).observing.get(node) {
            return Ok(m.clone());
        }
        let m = self.node(node)?.read_manifest()?;
        if let Some(slot) = lock(&self.state).observing.get_mut(node) {
            *slot = Some(m.clone());
        }
        Ok(m)
    }

    /// [`Ops::read_manifest`], an empty manifest when the node has none.
    pub(crate) fn manifest_now(&self, node: &str) -> Result<crate::nodes::instances::Manifest> {
        Ok(self.read_manifest(node)?.unwrap_or_default())
    }

    /// A host call decides about `node` from now on: its manifest is read
    /// once for that decision (not once per rail: one `create_instance` read
    /// it 6 times). The observation ends when the call's change starts
    /// ([`Ops::step`]) or the returned guard drops, whichever comes first;
    /// reads after that go to the node again.
    pub(crate) fn observe(&self, node: &str) -> Observation<'_> {
        lock(&self.state).observing.insert(node.to_string(), None);
        Observation {
            ops: self,
            node: node.to_string(),
        }
    }

    /// The observation of `node` ends: the node is about to change.
    pub(crate) fn end_observation(&self, node: &str) {
        lock(&self.state).observing.remove(node);
    }

    /// The database's schema version (as planned, in plan mode).
    pub fn db_version(&self) -> Result<Version> {
        if let Some(v) = &lock(&self.state).planned_version {
            return Ok(v.clone());
        }
        lock(&self.db).version()
    }

    /// Run a named check query from the site's `[checks]` and return its rows
    /// (rows are problems). Recorded as a read step.
    pub fn run_check(&self, name: &str) -> Result<Vec<crate::db::Row>> {
        let sql = self.site.checks.get(name).ok_or_else(|| {
            Error::Config(format!(
                "{}: no check named `{name}` in `[checks]`; defined: {}",
                self.site.file.display(),
                if self.site.checks.is_empty() {
                    "none".to_string()
                } else {
                    self.site
                        .checks
                        .keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ))
        })?;
        let idx = self.begin_step(
            StepKind::Check,
            format!("check `{name}`"),
            None,
            false,
            false,
        );
        let rows = lock(&self.db).query_readonly(sql);
        match &rows {
            Ok(r) => self.finish_step(idx, Ok(format!("check `{name}`: {} row(s)", r.len())), 0),
            Err(e) => self.finish_step(idx, Err(e), 0),
        }
        rows
    }

    /// Whether the procedure used the database (it is opened on first use).
    pub fn database_used(&self) -> bool {
        lock(&self.db).opened()
    }

    /// The newest full backup the database server knows of (SQL Server: msdb).
    pub fn latest_full_backup(&self) -> Result<Option<String>> {
        lock(&self.db).latest_full_backup()
    }

    /// Run a read-only query against the database.
    pub fn query(&self, sql: &str) -> Result<Vec<crate::db::Row>> {
        lock(&self.db).query_readonly(sql)
    }

    /// A line from the procedure. In plan mode it describes the planned state,
    /// and says so.
    pub fn log(&self, level: &str, message: &str) {
        let message = if self.mode == Mode::Plan {
            format!("(as planned) {message}")
        } else {
            message.to_string()
        };
        self.reporter.event(Event::Log {
            level: level.to_string(),
            message,
        });
    }

    /// Ask the operator a yes/no question. In plan mode the question is listed
    /// and answered yes; `run` asks it up front with the plan (one answer for
    /// the whole run), or `--yes` answers yes; otherwise the answer is no.
    pub fn confirm(&self, question: &str) -> Result<bool> {
        if self.mode == Mode::Plan {
            let idx = self.begin_step(
                StepKind::Confirm,
                format!("ask: {question}"),
                None,
                false,
                false,
            );
            self.finish_step(idx, Ok(format!("ask: {question}")), 0);
            return Ok(true);
        }
        if self.confirmation.yes {
            self.log("info", &format!("{question} yes (--yes)"));
            return Ok(true);
        }
        if lock(&self.state).changes_confirmed {
            // The plan the operator accepted listed this question.
            self.log("info", &format!("{question} yes (accepted with the plan)"));
            return Ok(true);
        }
        if self.confirmation.interactive {
            // Nothing is asked mid-run: the question was not in the plan the
            // operator saw (the procedure took another path).
            self.log(
                "warn",
                &format!(
                    "{question} no (not in the plan asked up front; nothing is asked mid-run)"
                ),
            );
        }
        Ok(false)
    }

    /// Rail: a change needs the operator's consent, given once, up front, for
    /// the whole plan (`run` shows every change, the irreversible one marked,
    /// and asks once), or `--yes`. Nothing is asked mid-run: a change without
    /// that consent is refused before it starts.
    fn ensure_confirmed(&self, description: &str, _irreversible: bool) -> Result<()> {
        if self.mode == Mode::Plan || self.confirmation.yes || lock(&self.state).changes_confirmed {
            return Ok(());
        }
        Err(Error::Refused(format!(
            "{description}: this changes the site and was not in the plan the operator accepted{}; read `uprun plan`, then re-run with --yes",
            if self.confirmation.interactive {
                ""
            } else {
                " (there is no terminal to confirm on)"
            }
        )))
    }

    /// Rail (vendor step 7): SDK customisations are upgraded separately, and
    /// the site says so before any instance or the database changes.
    fn require_customizations_acknowledged(&self, description: &str) -> Result<()> {
        if self.site.customizations.is_some() {
            return Ok(());
        }
        Err(Error::Refused(format!(
            "{description}: the site does not say how its SDK customisations (workflows, custom web applications, service-bus integrations) are upgraded; they are not upgraded by this procedure. Add `customizations = \"none\"` or `customizations = \"upgraded-separately\"` under `[application]` in `{}`",
            self.site.file.display()
        )))
    }
}

/// See [`Ops::observe`].
pub(crate) struct Observation<'a> {
    ops: &'a Ops,
    node: String,
}

impl Drop for Observation<'_> {
    fn drop(&mut self) {
        self.ops.end_observation(&self.node);
    }
}
