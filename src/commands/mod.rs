//! One module per subcommand, each a few lines over the library: `run` (the
//! run), `script` (the `Session` wiring a procedure to a site), `rehearsal`,
//! `journal`, `ops`.

pub mod adopt;
pub mod api;
pub mod check;
pub mod demo;
pub mod docs;
pub mod init;
pub mod plan;
pub mod run;
pub mod runs;
pub mod scripts;
pub mod status;
pub mod test;

use std::sync::Arc;

use crate::output::Output;
use crate::Result;

/// The output object of a command: human (bars on a terminal) or JSON lines.
pub fn output(json: bool) -> Arc<Output> {
    Arc::new(Output::for_terminal(json))
}

/// The site file given with `--site`, else `./site.toml` when it exists
/// (said on stderr, so that the operator knows which site was read).
pub fn site_or_default(
    site: Option<std::path::PathBuf>,
    command: &str,
    out: &Output,
) -> Result<std::path::PathBuf> {
    if let Some(site) = site {
        return Ok(site);
    }
    let default = std::path::PathBuf::from("site.toml");
    if default.is_file() {
        out.notice("(no --site given: using ./site.toml)");
        return Ok(default);
    }
    Err(crate::Error::Config(format!(
        "`{command}` needs --site FILE: no --site given and there is no site.toml in the current folder"
    )))
}
