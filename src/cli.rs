//! The command line (clap). Each command's help says what it does and what it
//! never does.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "uprun",
    version,
    about = "Run in-place upgrades of a database-backed application on a cluster of nodes",
    long_about = "uprun runs upgrade procedures written in Rhai against a site (site.toml: the database and the nodes) \
and a release (release.toml: version, payload, migrations). Safety rails hold for every procedure: no database upgrade \
without a verified backup taken in the same run, secondaries before the primary, a new instance never in an old folder, \
no downgrades.\n\nExit codes: 0 success; 1 the run failed (a failed step, a script error, past its time limit) or is \
incomplete (the run-end audit found a node or the database left behind); 2 bad input (a site or release file, an \
argument, a script's syntax, a missing database file; nothing changed); 3 refused by a safety rail or by the \
procedure, or not confirmed by the operator (nothing changed by the refused step); 130 interrupted by Ctrl-C (the \
journal says where)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Lay out a sandbox site (SQLite database at 1.0.0, three local nodes, a 2.0.0 release) and run the
    /// stock in-place upgrade on it, non-interactively.
    Demo(DemoArgs),
    /// Run a procedure against a site: plans it first, asks for confirmation on a terminal (or needs --yes),
    /// then does it.
    Run(RunArgs),
    /// Show, in order, what `run` would do. Reads are real (database version, check queries, node state);
    /// nothing is changed.
    Plan(PlanArgs),
    /// Compile a procedure with its imports and report errors as file:line:column with the source line.
    /// Also flags misspelled option keys of host functions.
    Check(CheckArgs),
    /// List the bundled procedures, or show one with `uprun scripts show NAME`.
    Scripts(ScriptsArgs),
    /// Show a site's current state: database version and, for each node, its current instance.
    Status(StatusArgs),
    /// Record instances that already run on the nodes (installed by hand or by another tool) in each
    /// node's manifest, after checking them on the node: the folder exists under the node's root and holds
    /// files; the health command runs. Without --yes, says what it would record and writes nothing.
    Adopt(AdoptArgs),
    /// Print the host API reference (every function, its options, results and errors), generated from the
    /// documentation registered with the engine; or write Rhai definition files for editors.
    Api(ApiArgs),
    /// Write a fully commented site.toml and a custom procedure (with a local module) into DIR to start
    /// from. Never overwrites a file.
    Init {
        /// The folder to write into.
        dir: PathBuf,
    },
    /// Rehearse a procedure on a disposable copy of the site (never the real one): a clean run, then for
    /// every changing step a crash before and after its change, a resume, and a comparison with the clean
    /// run's end state. Exits non-zero when a path diverges.
    Test(TestArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell, elvish), e.g.
    /// `uprun completions bash > /etc/bash_completion.d/uprun`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `uprun man > /usr/local/share/man/man1/uprun.1`.
    Man,
    /// List a site's runs (from their journals), show one run's steps, or abandon an unfinished run.
    Runs(RunsArgs),
    /// Internal: the demo sandbox's application (its start command checks the database version).
    #[command(hide = true, name = "sandbox-app")]
    SandboxApp {
        #[command(subcommand)]
        command: SandboxAppCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SandboxAppCommand {
    /// Succeed only when the sandbox's SQLite database records VERSION.
    CheckDb {
        #[arg(long)]
        database: PathBuf,
        #[arg(long)]
        version: String,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the sandbox.
    #[arg(long, default_value = "uprun-demo")]
    pub dir: PathBuf,
    /// Only lay out the sandbox; do not run the upgrade.
    #[arg(long)]
    pub setup_only: bool,
    /// Delete an existing sandbox in DIR and lay it out anew.
    #[arg(long)]
    pub recreate: bool,
    /// Print one JSON object per event instead of human output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct TargetArgs {
    /// A bundled procedure name (see `uprun scripts`) or a path to a .rhai file.
    pub script: String,
    /// The site file.
    #[arg(long)]
    pub site: PathBuf,
    /// The release folder (holding release.toml) or the path of its release.toml. Procedures that install
    /// nothing (backup, verify-cluster) run without one.
    #[arg(long)]
    pub release: Option<PathBuf>,
    /// Print one JSON object per event instead of human output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Show what `run --resume ID` would do: steps the journal shows done are listed as done.
    #[arg(long, value_name = "ID")]
    pub resume: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Answer yes to every confirmation. Required to change anything without a terminal.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Go on with run ID (see `uprun runs`): steps its journal shows done are not done again, the step
    /// that was in flight is checked against the real state, and the run goes on from there.
    #[arg(long, value_name = "ID")]
    pub resume: Option<String>,
    /// With --resume: go on even though the script, site file or release changed since the run started
    /// (recorded in the journal).
    #[arg(long, requires = "resume")]
    pub accept_changed_inputs: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// A bundled procedure name or a path to a .rhai file.
    pub script: String,
}

#[derive(Debug, Args)]
pub struct ScriptsArgs {
    #[command(subcommand)]
    pub command: Option<ScriptsCommand>,
}

#[derive(Debug, Subcommand)]
pub enum ScriptsCommand {
    /// Print a bundled procedure's source.
    Show {
        /// The bundled procedure's name.
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The site file (default: ./site.toml when it exists).
    #[arg(long)]
    pub site: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// The site file (default: ./site.toml when it exists).
    #[arg(long)]
    pub site: Option<PathBuf>,
    /// The nodes to adopt (repeat the option); default every node of the site.
    #[arg(long)]
    pub node: Vec<String>,
    /// The version the instances run.
    #[arg(long)]
    pub version: String,
    /// The instance folder, directly under each node's root (e.g. `FastApp-1.0.0`).
    #[arg(long)]
    pub folder: String,
    /// The application name the instances run under (default: the site's `[application] name`).
    #[arg(long)]
    pub app: Option<String>,
    /// Write the manifests (otherwise only say what would be recorded).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub command: Option<RunsCommand>,
    /// The site file.
    #[arg(long, global = true)]
    pub site: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Show the steps of one run.
    Show {
        /// The run id.
        id: String,
    },
    /// Mark an unfinished run (its process died) as abandoned, so that new runs may start. Check the
    /// site by hand first (`uprun status`): nothing is undone.
    Abandon {
        /// The run id.
        id: String,
    },
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Write `.d.rhai` definition files into DIR instead of printing the reference.
    #[arg(long, value_name = "DIR")]
    pub definitions: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Really run service commands and node_command in the copy (they may address real systems: only for
    /// sandbox sites whose commands act on their own folders).
    #[arg(long)]
    pub run_commands: bool,
}
