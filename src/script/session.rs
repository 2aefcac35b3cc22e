//! A procedure wired to a site and a release (database, nodes, engine):
//! what `run`, `plan` and the rehearsal of `uprun test` drive.

use std::sync::Arc;

use rhai::{Engine, AST};

use super::{Procedure, Sources};
use crate::config::{Release, Site};
use crate::journal::Replay;
use crate::nodes::plan_reads::PlanReads;
use crate::nodes::{ConnectMode, NodeInstances};
use crate::ops::{CommandPolicy, Confirmation, Mode, Ops, RunSpec};
use crate::output::Output;
use crate::Result;

/// A procedure wired to a site and a release, ready to run in one mode.
pub struct Session {
    pub ops: Arc<Ops>,
    engine: Engine,
    ast: AST,
    proc: Procedure,
    sources: Sources,
}

impl Session {
    /// A session that plans: reads are real, changes only described, nobody
    /// asked. `plan`, and the planning pass of `run`.
    pub fn plan(
        site: &Site,
        release: &Release,
        proc: &Procedure,
        run_id: &str,
        replay: Replay,
        reporter: Arc<Output>,
    ) -> Result<Session> {
        let spec = RunSpec::new(site, release, Mode::Plan, run_id, Confirmation::UNATTENDED)
            .with_replay(replay);
        Session::open(spec, proc, reporter)
    }

    /// Connect to the site's database and nodes as `spec` says, and compile
    /// the procedure against the host API bound to them.
    pub fn open(spec: RunSpec, proc: &Procedure, reporter: Arc<Output>) -> Result<Session> {
        let site = &spec.site;
        // Opened on first use: a procedure that never touches the database
        // runs without one (in run mode the opener also takes its run lock).
        let db = {
            let site = site.clone();
            let mode = spec.mode;
            let run_id = spec.run_id.clone();
            crate::db::LazyDatabase::new(
                &site.database.name.clone(),
                Box::new(move || {
                    let mut db = crate::phases::time("database", || {
                        crate::db::open(&site, mode == Mode::Plan)
                    })?;
                    if mode == Mode::Run {
                        crate::phases::time("database_lock", || db.lock_for_run(&run_id))?;
                    }
                    Ok(db)
                }),
            )
        };
        let db: Box<dyn crate::db::Database> = Box::new(db);
        // Every node is reached (and its host key checked) before the script
        // starts, so an unreachable or unverified node stops the run before
        // any change anywhere.
        let connect_mode = match spec.mode {
            Mode::Plan => ConnectMode::ReadOnly,
            Mode::Run => ConnectMode::ReadWrite,
        };
        let transports =
            crate::phases::time("connect", || crate::nodes::connect_all(site, connect_mode))?;
        let nodes = site
            .nodes
            .iter()
            .zip(transports)
            .map(|(n, transport)| {
                // The planning pass remembers its reads (it changes nothing);
                // the run reads every node again.
                let transport: Box<dyn crate::nodes::NodeTransport> = match spec.mode {
                    Mode::Plan => Box::new(PlanReads::new(transport)),
                    Mode::Run => transport,
                };
                NodeInstances::new(n, transport, spec.commands == CommandPolicy::Run)
            })
            .collect::<Vec<_>>();
        if spec.mode == Mode::Plan {
            // The reads every plan makes, all nodes at once.
            crate::phases::time("prefetch", || crate::nodes::plan_reads::warm(&nodes));
        }
        let ops = Arc::new(Ops::new(spec, db, nodes, reporter));
        let sources = Sources::default();
        let began = std::time::Instant::now();
        let engine = super::engine(proc.base.clone(), Some(ops.clone()), &sources);
        let ast = super::compile(&engine, proc, &sources)?;
        crate::phases::record("compile", began);
        Ok(Session {
            ops,
            engine,
            ast,
            proc: proc.clone(),
            sources,
        })
    }

    /// Run the procedure to its end, then the run-end audit: a run that
    /// changed an instance or the database must leave every node and the
    /// database at the target (see `ops::audit`). In plan mode a procedure
    /// that would leave the site incomplete is refused, so `run` stops before
    /// changing anything.
    pub fn run(&self) -> Result<()> {
        super::run(
            &self.engine,
            &self.ast,
            &self.proc,
            &self.sources,
            &self.ops,
        )?;
        let audit = self.ops.audit()?;
        if audit.complete() {
            return Ok(());
        }
        let target = audit.target.unwrap_or_default();
        let problems = audit.problems.join("; ");
        let finish = format!(
            "uprun run in-place-upgrade --site {}{} --yes",
            self.ops.site.file.display(),
            self.ops.release.arg()
        );
        match self.ops.mode {
            Mode::Plan => Err(crate::Error::Refused(format!(
                "procedure `{}` would change the site and leave it incomplete: {problems}. Every node must run the application at {target} against a database at {target} once an instance or the database changes (vendor: nodes left behind cause errors); configure every node in the procedure, or run the stock procedure: {finish}",
                self.proc.name
            ))),
            Mode::Run => Err(crate::Error::Incomplete(format!(
                "the run is incomplete: {problems}. Every node must run the application at {target}, healthy, against a database at {target} (vendor: nodes left behind cause errors). Fix the cause, then finish with: {finish}"
            ))),
        }
    }
}
