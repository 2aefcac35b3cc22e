//! The run-end audit (vendor step 6: every node configured after the
//! primary). A run that changed an instance or the database ends `succeeded`
//! only if the host observes, at its end, the database at the target version
//! and every node running the application at that version, healthy now. What
//! the procedure did or claims does not matter; `continue_on_error` cannot
//! turn a node left behind into a success.

use std::collections::HashSet;

use serde::Serialize;

use super::{lock, Mode, Ops};
use crate::nodes::InstanceState;
use crate::Result;

/// What the audit found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Audit {
    /// The run (this attempt or an earlier one) changed an instance or the database.
    pub changed: bool,
    /// The version every node and the database must be at.
    pub target: Option<String>,
    /// One line per node or database not as it must be.
    pub problems: Vec<String>,
}

impl Audit {
    pub fn complete(&self) -> bool {
        self.problems.is_empty()
    }
}

impl Ops {
    /// Record that a step changed the site (an instance or the database), in
    /// this attempt or, replayed, in an earlier one.
    pub(super) fn mark_site_changed(&self, kind: super::StepKind) {
        if kind.changes_site() {
            lock(&self.state).site_changed = true;
        }
    }

    /// Record that `node`'s health command passed in this attempt.
    pub(super) fn mark_healthy(&self, node: &str) {
        lock(&self.state).healthy.insert(node.to_string());
    }

    /// A command that may change any node ran: no earlier health check in
    /// this attempt speaks for now, so the audit runs every node's again;
    /// and the application-name rail reads every node's manifest again (the
    /// command may have changed one).
    pub(super) fn forget_observations(&self) {
        let mut st = lock(&self.state);
        st.healthy.clear();
        st.names_seen.clear();
    }

    /// Observe the site as it is now (as planned, in plan mode). In run mode a
    /// node whose health command has not passed in this attempt runs it now.
    pub fn audit(&self) -> Result<Audit> {
        let changed = lock(&self.state).site_changed;
        if !changed {
            return Ok(Audit::default());
        }
        let db_version = self.db_version()?;
        // Without a release (a procedure that installs nothing) the target is
        // the database's version.
        let target = if self.release.present {
            self.release.version.clone()
        } else {
            db_version.clone()
        };
        let mut problems = Vec::new();
        if db_version != target {
            problems.push(format!(
                "database `{}` is at {db_version}, not {target}",
                self.site.database.name
            ));
        }
        let healthy: HashSet<String> = lock(&self.state).healthy.clone();
        let app = &self.site.app_name;
        for n in &self.nodes {
            let name = n.node();
            match self.instance(name)? {
                None => problems.push(format!("node `{name}` has no instance")),
                Some(i) if i.app_name != *app || i.version != target.to_string() => {
                    problems.push(format!(
                        "node `{name}` runs {} {}, not {app} {target}",
                        i.app_name, i.version
                    ))
                }
                Some(i) => {
                    // Observed now, unless its health command passed in this
                    // attempt; a staged or failed instance never counts.
                    let observe = self.mode == Mode::Run && !healthy.contains(name)
                        || InstanceState::needs_start(i.state);
                    if observe {
                        match self.health_of(name, &i)? {
                            Err(why) => {
                                problems.push(format!("node `{name}` is not healthy: {why}"))
                            }
                            // What was observed is recorded on the node (an
                            // instance whose health check was cut off).
                            Ok(()) if self.mode == Mode::Run => {
                                n.set_state(&i, InstanceState::Healthy)?
                            }
                            Ok(()) => {}
                        }
                    }
                }
            }
        }
        let audit = Audit {
            changed,
            target: Some(target.to_string()),
            problems,
        };
        lock(&self.state).audit = Some(audit.clone());
        Ok(audit)
    }

    /// What the run-end audit observed, when it found the site complete.
    pub fn audited(&self) -> Option<String> {
        let st = lock(&self.state);
        let a = st.audit.as_ref().filter(|a| a.changed && a.complete())?;
        let target = a.target.as_deref().unwrap_or_default();
        Some(format!(
            "observed at the end: every node ({}) runs {} {target}, healthy, against a database at {target}",
            self.nodes.len(),
            self.site.app_name
        ))
    }
}
