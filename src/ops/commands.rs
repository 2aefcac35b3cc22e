//! Site-specific commands on a node (drain from a load balancer, warm a
//! cache...). A command that changes something is a journaled step like any
//! other; on resume, one that was in flight runs again, so such commands must
//! be idempotent (`uprun test` shows the ones that are not).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{lock, CommandPolicy, Mode, Ops, StepKind};
use crate::{Error, Result};

/// Options of `node_command`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandOptions {
    /// Working folder, relative to the node's root (default: the root).
    pub cwd: Option<String>,
    /// Seconds before the command is killed (default: the site's `service.timeout_secs`).
    pub timeout_secs: Option<u64>,
    /// Whether the command changes something (default true): changing commands
    /// are journaled steps and only described in plan mode; read-only ones run
    /// in plan mode too.
    #[serde(default = "yes")]
    pub changes: bool,
    /// Return a non-zero exit as a result instead of failing (default false).
    #[serde(default)]
    pub allow_failure: bool,
    /// Run in the folder of the node's current instance (default false: the
    /// node's root, or `cwd`). Refused when the node has no instance.
    #[serde(default)]
    pub in_instance: bool,
}

fn yes() -> bool {
    true
}

impl Default for CommandOptions {
    fn default() -> Self {
        CommandOptions {
            cwd: None,
            timeout_secs: None,
            changes: true,
            allow_failure: false,
            in_instance: false,
        }
    }
}

/// What a command did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandResult {
    pub node: String,
    pub command: String,
    /// Exit status; `()` in plan mode for a changing command.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ops {
    /// A command the script declares read-only (`changes: false`), listed as
    /// a read step. While planning (`plan`, and the planning pass of `run`,
    /// before the operator has said yes) it runs only where the site allows
    /// it (`service.read_commands_in_plan`); otherwise it returns status `()`
    /// and empty output, and the listing says it was not run.
    fn read_command(
        &self,
        node: &str,
        command: &str,
        execute: impl FnOnce() -> Result<CommandResult>,
    ) -> Result<CommandResult> {
        let plan_skip = self.mode == Mode::Plan && !self.site.service.read_commands_in_plan;
        let description = format!("read: run `{command}` on `{node}`");
        let idx = self.begin_step(
            StepKind::NodeCommand,
            description.clone(),
            Some(node),
            false,
            false,
        );
        if plan_skip {
            self.finish_step(
                idx,
                Ok(format!(
                    "{description} (not run while planning; `service.read_commands_in_plan = true` allows it)"
                )),
                0,
            );
            return Ok(CommandResult {
                node: node.to_string(),
                command: command.to_string(),
                status: None,
                stdout: String::new(),
                stderr: String::new(),
            });
        }
        let start = std::time::Instant::now();
        let r = execute();
        let ms = start.elapsed().as_millis();
        match &r {
            Ok(out) => self.finish_step(
                idx,
                Ok(format!(
                    "{description}: exit {}",
                    out.status
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into())
                )),
                ms,
            ),
            Err(e) => self.finish_step(idx, Err(e), ms),
        }
        r
    }

    /// Run `command` with the node's shell.
    pub fn node_command(
        &self,
        node: &str,
        command: &str,
        opts: CommandOptions,
    ) -> Result<CommandResult> {
        let n = self.node(node)?;
        let cwd = match &opts.cwd {
            Some(_) if opts.in_instance => {
                return Err(Error::Config(format!(
                    "node_command on `{node}`: give `cwd` or `in_instance`, not both"
                )))
            }
            None if opts.in_instance => match self.instance(node)? {
                Some(i) => n.folder_path(&i.folder),
                None => {
                    return Err(Error::Refused(format!(
                        "node_command on `{node}` with `in_instance: true`: the node has no instance (as planned, in plan mode)"
                    )))
                }
            },
            Some(rel) => {
                super::instances::check_relative(node, rel)?;
                n.folder_path(rel)
            }
            None => n.root.clone(),
        };
        let timeout =
            Duration::from_secs(opts.timeout_secs.unwrap_or(self.site.service.timeout_secs));
        let execute = || -> Result<CommandResult> {
            // Changing commands only: a read may run again on resume.
            if self.mode == Mode::Run && opts.changes {
                lock(&self.state)
                    .commands_run
                    .push((node.to_string(), command.to_string()));
            }
            if self.commands == CommandPolicy::Simulate {
                return Ok(CommandResult {
                    node: node.to_string(),
                    command: command.to_string(),
                    status: Some(0),
                    stdout: String::new(),
                    stderr: String::new(),
                });
            }
            let out = n.transport.exec(command, &cwd, timeout)?;
            if !out.success() && !opts.allow_failure {
                let code = out
                    .status
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "a signal".into());
                return Err(Error::node(
                    node,
                    format!(
                        "command `{command}` failed (exit {code}): {}",
                        out.stderr.trim()
                    ),
                ));
            }
            Ok(CommandResult {
                node: node.to_string(),
                command: command.to_string(),
                status: out.status,
                stdout: out.stdout,
                stderr: out.stderr,
            })
        };
        if !opts.changes {
            return self.read_command(node, command, execute);
        }
        // The command is part of the key: a procedure whose path depends on
        // what it observes (a node kept on resume) may skip a command, and the
        // next one must not take its recorded result.
        let key = self.call_key(
            format!("node_command[{}]", short_digest(command)),
            Some(node),
        );
        if let Some(r) = self.replayed::<CommandResult>(&key, StepKind::NodeCommand, Some(node))? {
            return Ok(r);
        }
        let description = format!("run `{command}` on `{node}`");
        let intent = serde_json::json!({ "command": command, "cwd": cwd });
        self.node_step(
            &key,
            StepKind::NodeCommand,
            &description,
            node,
            &intent,
            || {
                if self.mode == Mode::Plan {
                    let r = CommandResult {
                        node: node.to_string(),
                        command: command.to_string(),
                        status: None,
                        stdout: String::new(),
                        stderr: String::new(),
                    };
                    return Ok((r, description.clone()));
                }
                // Whatever the command does, the nodes' health is observed
                // again at the end of the run.
                self.forget_observations();
                let r = execute()?;
                Ok((r, description.clone()))
            },
        )
    }
}

/// The first 8 hex digits of the SHA-256 of `text`.
fn short_digest(text: &str) -> String {
    crate::config::release::sha256_hex(text.as_bytes())[..8].to_string()
}
