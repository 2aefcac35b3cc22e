//! Running a command on its own channel: output kept up to a limit, the
//! timeout and the operator's abort (second Ctrl-C), and killing the
//! command with its process group on the node.

use std::time::Duration;

use russh::client;
use russh::{ChannelMsg, Sig};

use super::pool::Op;
use super::shell::{command_line, sh_quote, take_pid};
use super::SshTransport;
use crate::config::Shell;
use std::collections::BTreeMap;

use crate::nodes::{ExecOutput, TreeEntry, TreeHashes};
use crate::{Error, Result};

/// Output kept from one remote command (each of stdout and stderr).
pub(super) const MAX_OUTPUT: usize = 4 * 1024 * 1024;
/// How often a running command checks whether the operator aborted it.
pub(super) const ABORT_POLL: Duration = Duration::from_millis(100);

/// How a remote command's wait ended.
pub(super) enum End {
    /// The channel closed, or the connection did after the exit status came.
    Finished,
    /// The channel went away before the command reported how it exited.
    Lost,
    TimedOut,
    Aborted,
}

impl SshTransport {
    /// Stop a command (past its timeout, or aborted): the SSH `signal`
    /// request (sshd honours it for non-root logins only), then `kill` of
    /// the shell's process group on a second channel. True when the
    /// channel closed.
    pub(super) async fn kill(
        &self,
        op: &Op,
        channel: &mut russh::Channel<client::Msg>,
        pid: Option<u32>,
    ) -> bool {
        let _ = channel.signal(Sig::KILL).await;
        if let (Some(pid), Shell::Posix) = (pid, self.shell) {
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                let ch = op.conn.handle.channel_open_session().await.ok()?;
                ch.exec(
                    true,
                    // `-s KILL --`: the form dash, bash and busybox all accept.
                    format!("kill -s KILL -- -{pid} 2>/dev/null || kill -s KILL {pid}"),
                )
                .await
                .ok()?;
                let mut ch = ch;
                while let Some(msg) = ch.wait().await {
                    if let ChannelMsg::Close = msg {
                        break;
                    }
                }
                Some(())
            })
            .await;
        }
        let stopped = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(msg) = channel.wait().await {
                if let ChannelMsg::ExitStatus { .. }
                | ChannelMsg::ExitSignal { .. }
                | ChannelMsg::Close = msg
                {
                    return true;
                }
            }
            true
        })
        .await
        .unwrap_or(false);
        let _ = channel.close().await;
        stopped
    }

    pub(super) fn exec_command(
        &self,
        command: &str,
        cwd: &str,
        timeout: Duration,
    ) -> Result<ExecOutput> {
        if crate::interrupt::abort_requested() {
            return Err(Error::Interrupted(format!(
                "interrupted: `{command}` was not started on node `{}`: the operator aborted the run (second Ctrl-C)",
                self.node
            )));
        }
        let line = &command_line(self.shell, command, cwd);
        self.run(&format!("running `{command}`"), |op| async move {
            let mut channel = op
                .conn
                .handle
                .channel_open_session()
                .await
                .map_err(|e| self.err(format!("cannot open a channel for `{command}`: {e}")))?;
            op.changes();
            channel
                .exec(true, line.as_bytes())
                .await
                .map_err(|e| self.err(format!("cannot start `{command}`: {e}")))?;
            let mut stdout = Vec::new();
            let mut stderr = Vec::new();
            let mut status = None;
            let mut exited = false;
            let keep = |buf: &mut Vec<u8>, data: &[u8]| {
                let room = MAX_OUTPUT.saturating_sub(buf.len());
                buf.extend_from_slice(&data[..data.len().min(room)]);
            };
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            // The abort flag is set by the Ctrl-C handler thread: polled.
            let mut tick = tokio::time::interval(ABORT_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let end = loop {
                tokio::select! {
                    msg = channel.wait() => match msg {
                        Some(ChannelMsg::Data { data }) => keep(&mut stdout, &data),
                        Some(ChannelMsg::ExtendedData { data, ext: 1 }) => keep(&mut stderr, &data),
                        Some(ChannelMsg::ExitStatus { exit_status }) => {
                            exited = true;
                            status = Some(exit_status as i32);
                        }
                        Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                            exited = true;
                            keep(
                                &mut stderr,
                                format!("killed by signal {signal_name:?}").as_bytes(),
                            );
                        }
                        Some(ChannelMsg::Close) => break End::Finished,
                        Some(_) => {}
                        None if exited => break End::Finished,
                        None => break End::Lost,
                    },
                    () = &mut deadline => break End::TimedOut,
                    _ = tick.tick() => {
                        if crate::interrupt::abort_requested() {
                            break End::Aborted;
                        }
                    }
                }
            };
            let (pid, rest) = take_pid(&stderr);
            let killed = |stopped: bool| {
                if stopped {
                    "it was killed on the node"
                } else {
                    "uprun asked the node to kill it, but it may still be running there: check the node"
                }
            };
            match end {
                End::Finished => {}
                End::TimedOut => {
                    let stopped = self.kill(&op, &mut channel, pid).await;
                    return Err(self.err(format!(
                        "`{command}` did not finish within {} s; {}",
                        timeout.as_secs(),
                        killed(stopped)
                    )));
                }
                End::Aborted => {
                    let stopped = self.kill(&op, &mut channel, pid).await;
                    return Err(Error::Interrupted(format!(
                        "interrupted: `{command}` on node `{}` ({}) was aborted by the operator (second Ctrl-C); {}",
                        self.node,
                        self.target(),
                        killed(stopped)
                    )));
                }
                End::Lost => {
                    return Err(self.err(format!(
                        "the channel of `{command}` closed before the command reported how it exited; it may or may not have finished on the node, and uprun does not run it again on its own. Check the node, then resume the run (`--resume`)"
                    )));
                }
            }
            let stderr = rest.to_vec();
            Ok(ExecOutput {
                status,
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
            })
        })
    }

    /// Every entry under `dir` with the SHA-256 of each plain file, hashed on
    /// the node by `sha256sum` (POSIX nodes; PowerShell nodes are not hashed:
    /// their payloads are copied inside the window as before).
    pub(super) fn hash_tree(&self, dir: &str) -> Result<TreeHashes> {
        if self.shell != Shell::Posix {
            return Ok(TreeHashes::Unsupported(
                "payloads are staged on POSIX nodes only".into(),
            ));
        }
        let d = sh_quote(dir);
        let script = format!(
            "cd -- {d} 2>/dev/null || {{ if [ -e {d} ] || [ -L {d} ]; then echo uprun-notdir; else echo uprun-missing; fi; exit 0; }}\n\
             command -v sha256sum >/dev/null 2>&1 || {{ echo uprun-nohash; exit 0; }}\n\
             find . ! -name . -type d -print | sed 's/^/d /'\n\
             find . ! -name . ! -type d ! -type f -print | sed 's/^/o /'\n\
             find . -type f -exec sha256sum -- {{}} + | sed 's/^/f /'\n"
        );
        let out = self.exec_command(
            &script,
            "/",
            self.file_timeout.max(Duration::from_secs(300)),
        )?;
        if !out.success() {
            return Err(self.err(format!(
                "cannot hash the files under `{dir}` (exit {:?}): {}",
                out.status,
                out.stderr.trim()
            )));
        }
        if out.stdout.len() >= MAX_OUTPUT {
            return Ok(TreeHashes::Unsupported(format!(
                "the listing of `{dir}` is larger than {MAX_OUTPUT} bytes"
            )));
        }
        match out.stdout.trim() {
            "uprun-missing" => return Ok(TreeHashes::Missing),
            "uprun-nohash" => {
                return Ok(TreeHashes::Unsupported(
                    "the node has no `sha256sum`".into(),
                ))
            }
            "uprun-notdir" => {
                return Ok(TreeHashes::Entries(BTreeMap::from([(
                    String::new(),
                    TreeEntry::Other,
                )])))
            }
            _ => {}
        }
        let mut entries = BTreeMap::new();
        for line in out.stdout.lines() {
            let rel = |p: &str| p.strip_prefix("./").unwrap_or(p).to_string();
            if let Some(p) = line.strip_prefix("d ") {
                entries.insert(rel(p), TreeEntry::Dir);
            } else if let Some(p) = line.strip_prefix("o ") {
                entries.insert(rel(p), TreeEntry::Other);
            } else if let Some((hash, p)) = line
                .strip_prefix("f ")
                .and_then(|l| l.split_once("  "))
                .filter(|(h, _)| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                entries.insert(rel(p), TreeEntry::File(hash.to_ascii_lowercase()));
            } else {
                // A name the listing cannot carry: never taken as verified.
                entries.insert(
                    format!("(unreadable listing line) {line}"),
                    TreeEntry::Other,
                );
            }
        }
        Ok(TreeHashes::Entries(entries))
    }

    /// `tree_fingerprint` on POSIX nodes with GNU find (`-printf`, times to
    /// the nanosecond); `None` elsewhere. The node runs one `find` (the shell
    /// execs it: no pipeline, no other process); its listing is sorted and
    /// hashed here.
    pub(super) fn fingerprint_tree(&self, dir: &str) -> Result<Option<String>> {
        if self.shell != Shell::Posix {
            return Ok(None);
        }
        let script = format!(
            "exec find {} -mindepth 1 -printf '%P %y %m %s %T@ %C@ %i\\0'",
            sh_quote(&format!("{}/", dir.trim_end_matches('/'))),
        );
        let out = self.exec_command(&script, "/", self.file_timeout)?;
        if !out.success() || out.stdout.len() >= MAX_OUTPUT {
            return Ok(None);
        }
        Ok(Some(listing_digest(&out.stdout)))
    }
}

/// The SHA-256 (hex) of a listing's NUL-ended records in byte order: the
/// same listing, whatever order `find` gave it in, has the same digest (a
/// name may hold a line break, never a NUL).
fn listing_digest(listing: &str) -> String {
    let mut records: Vec<&str> = listing.split_terminator('\0').collect();
    records.sort_unstable();
    let mut sorted = records.join("\0");
    sorted.push('\0');
    crate::config::release::sha256_hex(sorted.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::listing_digest;

    #[test]
    fn a_listing_digest_ignores_order_and_tells_names_with_line_breaks_apart() {
        let a = listing_digest("b f 644 1\0a f 644 2\0");
        assert_eq!(a, listing_digest("a f 644 2\0b f 644 1\0"));
        assert_ne!(a, listing_digest("a f 644 2\0b f 644 3\0"));
        // One name holding a line break is not two entries.
        assert_ne!(
            listing_digest("x\ny f 644 1\0"),
            listing_digest("x\0y f 644 1\0")
        );
        assert_eq!(a.len(), 64);
    }
}
