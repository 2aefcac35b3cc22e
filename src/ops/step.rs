//! What a run is made of: its steps (kind, status, record), how a run ends
//! (`Outcome`, kept by the journal), and the counts `plan` and `run` show. The kinds and outcomes
//! are types here; the journal keeps them as the same strings it always had.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{lock, Ops, RefusedBy};
pub use crate::journal::Outcome;

/// What a step does. Serialised (in events and the journal's `call`) as the
/// name of the host function that makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// A named check query (a read).
    Check,
    /// A question of the procedure (`confirm`).
    Confirm,
    BackupDb,
    UpgradeDb,
    RemoveInstance,
    CreateInstance,
    StartInstance,
    StopInstance,
    /// Copies the release's payload into a node's staging area (no instance changes).
    StageRelease,
    NodeCommand,
}

impl StepKind {
    const ALL: [StepKind; 10] = [
        StepKind::Check,
        StepKind::Confirm,
        StepKind::BackupDb,
        StepKind::UpgradeDb,
        StepKind::RemoveInstance,
        StepKind::CreateInstance,
        StepKind::StartInstance,
        StepKind::StopInstance,
        StepKind::StageRelease,
        StepKind::NodeCommand,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Check => "check",
            StepKind::Confirm => "confirm",
            StepKind::BackupDb => "backup_db",
            StepKind::UpgradeDb => "upgrade_db",
            StepKind::RemoveInstance => "remove_instance",
            StepKind::CreateInstance => "create_instance",
            StepKind::StartInstance => "start_instance",
            StepKind::StopInstance => "stop_instance",
            StepKind::StageRelease => "stage_release",
            StepKind::NodeCommand => "node_command",
        }
    }

    /// The kind a journal's `call` (or key prefix) names, if any.
    pub fn from_call(call: &str) -> Option<StepKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == call)
    }

    /// Steps of these kinds change the site (an instance or the database).
    pub fn changes_site(self) -> bool {
        matches!(
            self,
            StepKind::RemoveInstance
                | StepKind::CreateInstance
                | StepKind::StartInstance
                | StepKind::StopInstance
                | StepKind::UpgradeDb
        )
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Planned,
    Started,
    Done,
    Failed,
    /// Refused by a rail or the procedure: nothing was changed by it.
    Refused,
}

/// One thing the procedure did (or would do), in order.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub index: usize,
    pub kind: StepKind,
    pub description: String,
    /// False for reads (checks), true for anything that changes the site.
    pub changes: bool,
    pub irreversible: bool,
    pub node: Option<String>,
    pub status: StepStatus,
}

impl StepRecord {
    /// Whether the operator's consent is needed for it: steps that change
    /// the site itself (a backup file does not).
    pub fn needs_consent(&self) -> bool {
        self.changes && self.kind != StepKind::BackupDb
    }

    /// Whether it is the database upgrade, done (irreversibly).
    pub fn upgraded_database(&self) -> bool {
        self.kind == StepKind::UpgradeDb && self.status == StepStatus::Done && self.irreversible
    }
}

/// Above this many done steps, the run summary counts them by kind.
const SUMMARY_DONE_LINES: usize = 20;

/// What `plan` and `run`'s question count: the steps that change something
/// (backups included; replayed steps, done in an earlier attempt, are not),
/// as "N change(s) (B backup(s), I irreversible)".
pub fn count_changes(steps: &[StepRecord]) -> (usize, String) {
    let changes = steps.iter().filter(|s| s.changes).count();
    let backups = steps
        .iter()
        .filter(|s| s.changes && s.kind == StepKind::BackupDb)
        .count();
    let irreversible = steps.iter().filter(|s| s.changes && s.irreversible).count();
    (
        changes,
        format!("{changes} change(s) ({backups} backup(s), {irreversible} irreversible)"),
    )
}

/// The planned changes an attempt never reached: each planned change is
/// matched with a step of the attempt of the same kind on the same node (in
/// order), so a step is listed once, as done, failed, refused or not done.
pub fn not_attempted<'a>(planned: &'a [StepRecord], done: &[StepRecord]) -> Vec<&'a StepRecord> {
    let mut attempted: std::collections::HashMap<(StepKind, Option<&str>), usize> =
        std::collections::HashMap::new();
    for s in done.iter().filter(|s| s.changes) {
        *attempted.entry((s.kind, s.node.as_deref())).or_default() += 1;
    }
    planned
        .iter()
        .filter(|s| s.changes)
        .filter(|s| match attempted.get_mut(&(s.kind, s.node.as_deref())) {
            Some(n) if *n > 0 => {
                *n -= 1;
                false
            }
            _ => true,
        })
        .collect()
}

impl Ops {
    /// What this run changed, for the end-of-run summary.
    pub fn summary(&self) -> Vec<String> {
        let st = lock(&self.state);
        let mut out = Vec::new();
        let changes: Vec<&StepRecord> = st.steps.iter().filter(|s| s.changes).collect();
        // At scale (200 nodes) the done steps are counted by kind, not listed
        // one per line: what did not go well stays listed in full.
        let done = changes
            .iter()
            .filter(|s| s.status == StepStatus::Done)
            .count();
        let count_done = done > SUMMARY_DONE_LINES;
        if count_done {
            let mut kinds: Vec<(StepKind, usize)> = Vec::new();
            for s in changes.iter().filter(|s| s.status == StepStatus::Done) {
                match kinds.iter_mut().find(|(k, _)| *k == s.kind) {
                    Some((_, n)) => *n += 1,
                    None => kinds.push((s.kind, 1)),
                }
            }
            let listed: Vec<String> = kinds
                .iter()
                .map(|(k, n)| format!("{n} x {}", k.as_str().replace('_', " ")))
                .collect();
            out.push(format!(
                "done: {done} steps ({}; each one is in the journal)",
                listed.join(", ")
            ));
        }
        for s in changes {
            let status = match s.status {
                StepStatus::Done if count_done => continue,
                StepStatus::Done => "done",
                StepStatus::Failed => "FAILED",
                StepStatus::Refused => "refused",
                StepStatus::Started => "interrupted",
                StepStatus::Planned => "planned",
            };
            out.push(format!("{status}: {}", s.description));
        }
        let caught: Vec<String> = st
            .refusals
            .iter()
            .filter(|r| !r.ended_run)
            .map(|r| match r.by {
                RefusedBy::Rail => r.message.clone(),
                RefusedBy::Procedure => format!("{} (by the procedure)", r.message),
            })
            .collect();
        if !caught.is_empty() {
            out.push(format!(
                "refusals caught by the procedure: {}",
                caught.join("; ")
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_outcomes_keep_their_journal_strings() {
        for k in StepKind::ALL {
            let json = serde_json::to_string(&k).expect("serialise");
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(StepKind::from_call(k.as_str()), Some(k));
        }
        assert_eq!(StepKind::from_call("print"), None);
        let json = serde_json::to_string(&Outcome::PlanFailed).expect("serialise");
        assert_eq!(json, "\"plan failed\"");
        assert_eq!(Outcome::Succeeded.to_string(), "succeeded");
    }

    #[test]
    fn consent_is_for_changes_other_than_backups() {
        let step = |kind, changes| StepRecord {
            index: 1,
            kind,
            description: String::new(),
            changes,
            irreversible: false,
            node: None,
            status: StepStatus::Planned,
        };
        assert!(step(StepKind::UpgradeDb, true).needs_consent());
        assert!(!step(StepKind::BackupDb, true).needs_consent());
        assert!(!step(StepKind::Check, false).needs_consent());
    }
}
