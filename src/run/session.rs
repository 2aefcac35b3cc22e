//! A procedure wired to a site and a release (database, nodes, engine), and
//! the few facts about this process a run records: its id, its operator,
//! whether there is a terminal to ask on.

use std::sync::Arc;

use rhai::{Engine, AST};

use crate::config::{Release, Site};
use crate::journal::Replay;
use crate::nodes::plan_reads::PlanReads;
use crate::nodes::{ConnectMode, NodeInstances};
use crate::ops::{CommandPolicy, Confirmation, Mode, Ops, RunSpec};
use crate::output::Output;
use crate::script::{self, Procedure, Sources};
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
        let transports = crate::phases::time("connect", || {
            crate::nodes::connect_all(&site.nodes, &site.ssh, connect_mode)
        })?;
        let nodes = site
            .nodes
            .iter()
            .zip(transports)
            .map(|(n, transport)| NodeInstances {
                // The planning pass remembers its reads (it changes nothing);
                // the run reads every node again.
                transport: match spec.mode {
                    Mode::Plan => Box::new(PlanReads::new(transport)),
                    Mode::Run => transport,
                },
                root: n.root.clone(),
                shell: n.shell,
                run_service_commands: spec.commands == CommandPolicy::Run,
            })
            .collect::<Vec<_>>();
        if spec.mode == Mode::Plan {
            // The reads every plan makes, all nodes at once.
            crate::phases::time("prefetch", || crate::nodes::plan_reads::warm(&nodes));
        }
        let ops = Arc::new(Ops::new(spec, db, nodes, reporter));
        let sources = Sources::default();
        let began = std::time::Instant::now();
        let engine = script::engine(proc.base.clone(), Some(ops.clone()), &sources);
        let ast = script::compile(&engine, proc, &sources)?;
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
        script::run(
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

/// Before a read-only command (`status`, `plan`) opens the database: roll
/// back a transaction left by a killed process, holding the site lock for
/// that moment. When a run holds the lock its transaction is alive, not
/// left over, and nothing is done. Returns the line to show.
pub fn recover_for_reading(site: &Site) -> Result<Option<String>> {
    if !crate::db::may_need_recovery(site) {
        return Ok(None);
    }
    match crate::lock::SiteLock::try_brief(site)? {
        Some(_lock) => crate::db::recover(site),
        None => Ok(None),
    }
}

/// Whether we may ask questions: both stdin and stderr are terminals.
pub fn interactive() -> bool {
    crate::output::Output::interactive()
}

/// Who runs uprun, for the journal: `$USER`, else the login name of the
/// process's user (a service or `env -i` leaves `$USER` unset), else `uid N`.
pub fn operator_name() -> String {
    if let Ok(user) = std::env::var("USER") {
        if !user.is_empty() {
            return user;
        }
    }
    login_name().unwrap_or_else(|| format!("uid {}", real_uid()))
}

fn real_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// The login name of the process's real user, from the password database.
fn login_name() -> Option<String> {
    let uid = real_uid();
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the reads
    // of `pwd.pw_name` below, which points into it.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r succeeded, so `pw_name` is a NUL-terminated string in `buf`.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    let name = name.to_string_lossy().into_owned();
    (!name.is_empty()).then_some(name)
}

/// A run id: UTC time plus a few bits of the process id, sortable by start.
pub fn new_run_id() -> String {
    let now = time::OffsetDateTime::now_utc();
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]-[hour][minute][second]"
        ))
        .unwrap_or_default();
    format!(
        "{stamp}-{:04x}",
        (std::process::id() ^ now.nanosecond()) & 0xffff
    )
}
