//! `uprun completions` and `uprun man`: generated from the CLI definition.

use clap::CommandFactory;

use crate::cli::Cli;
use crate::{Error, Result};

/// Write to stdout; a closed pipe (`| head`) is not an error.
fn emit(bytes: &[u8]) -> Result<i32> {
    super::output(false)
        .write_bytes(bytes)
        .map_err(|e| Error::io("write to", "stdout", e))?;
    Ok(0)
}

pub fn completions(shell: clap_complete::Shell) -> Result<i32> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "uprun", &mut buf);
    emit(&buf)
}

/// One page, `uprun(1)`, with every command in its COMMANDS section: clap's
/// default would refer to `uprun-demo(1)` and other pages nobody installs.
pub fn man() -> Result<i32> {
    man_page()
        .map_err(|e| Error::io("render the man page into", "memory", e))
        .and_then(|buf| emit(&buf))
}

fn man_page() -> std::io::Result<Vec<u8>> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let man = clap_mangen::Man::new(cmd.clone());
    let mut buf = Vec::new();
    man.render_title(&mut buf)?;
    man.render_name_section(&mut buf)?;
    man.render_synopsis_section(&mut buf)?;
    man.render_description_section(&mut buf)?;
    man.render_options_section(&mut buf)?;
    buf.extend_from_slice(b".SH COMMANDS\n");
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let mut sub = sub.clone();
        let usage = sub.render_usage().to_string();
        let usage = usage.trim_start_matches("Usage: ").trim();
        buf.extend_from_slice(format!(".SS \"{}\"\n", roff_text(usage)).as_bytes());
        if let Some(about) = sub.get_long_about().or_else(|| sub.get_about()) {
            for line in about.to_string().lines() {
                buf.extend_from_slice(format!("{}\n", roff_text(line)).as_bytes());
            }
        }
        let mut options = Vec::new();
        clap_mangen::Man::new(sub).render_options_section(&mut options)?;
        // The command's options under its own heading, not a second OPTIONS section.
        let options = String::from_utf8_lossy(&options);
        let options = options.replacen(".SH OPTIONS\n", "", 1);
        buf.extend_from_slice(b".RS\n");
        buf.extend_from_slice(options.as_bytes());
        buf.extend_from_slice(b".RE\n");
    }
    man.render_version_section(&mut buf)?;
    Ok(buf)
}

/// Text for a roff line: backslashes escaped, and no line starting with a
/// control character.
fn roff_text(s: &str) -> String {
    let s = s.replace('\\', "\\e").replace('"', "\\(dq");
    if s.starts_with('.') || s.starts_with('\'') {
        format!("\\&{s}")
    } else {
        s
    }
}
