//! `uprun completions` and `uprun man`: generated from the CLI definition.

use std::io::Write;

use clap::CommandFactory;

use crate::cli::Cli;
use crate::{Error, Result};

/// Write to stdout; a closed pipe (`| head`) is not an error.
fn emit(bytes: &[u8]) -> Result<i32> {
    match std::io::stdout().write_all(bytes) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(Error::io("write to", "stdout", e)),
    }
}

pub fn completions(shell: clap_complete::Shell) -> Result<i32> {
    let mut buf = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "uprun", &mut buf);
    emit(&buf)
}

pub fn man() -> Result<i32> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut buf)
        .map_err(|e| Error::io("render the man page into", "memory", e))?;
    emit(&buf)
}
