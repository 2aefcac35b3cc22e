//! uprun: in-place upgrades of a database-backed application on a cluster of
//! nodes, as Rhai procedures with safety rails. See the README's
//! "Architecture" for the layers: cli -> commands -> script -> ops -> db /
//! nodes, with progress for output.

pub mod cli;
pub mod commands;
pub mod config;
pub mod db;
pub mod downtime;
mod error;
pub mod failpoint;
pub mod init;
pub mod interrupt;
pub mod journal;
pub mod lint;
pub mod lock;
pub mod nodes;
pub mod ops;
pub mod output;
pub mod phases;
pub mod reference;
pub mod rehearsal;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod script;

pub use error::{Error, Result};

/// Run one command and render its error, if any, on stderr; returns the
/// process exit code.
pub fn main(cli: cli::Cli) -> i32 {
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            output::Output::new(output::OutputMode::Human { tty: false }).error(&e);
            e.exit_code()
        }
    }
}

/// Run one command; returns the process exit code.
pub fn run(cli: cli::Cli) -> Result<i32> {
    use cli::Command;
    phases::start();
    let result = match cli.command {
        Command::Demo(a) => commands::demo::exec(a),
        Command::Run(a) => commands::run::exec(a),
        Command::Plan(a) => commands::plan::exec(a),
        Command::Check(a) => commands::check::exec(a),
        Command::Scripts(a) => commands::scripts::exec(a),
        Command::Status(a) => commands::status::exec(a),
        Command::Adopt(a) => commands::adopt::exec(a),
        Command::Runs(a) => commands::runs::exec(a),
        Command::Api(a) => commands::api::exec(a),
        Command::Completions { shell } => commands::docs::completions(shell),
        Command::Man => commands::docs::man(),
        Command::Test(a) => commands::test::exec(a),
        Command::Init { dir } => commands::init::exec(dir),
        Command::SandboxApp {
            command: cli::SandboxAppCommand::CheckDb { database, version },
        } => sandbox::check_db(&database, &version),
    };
    nodes::close_all();
    result
}
