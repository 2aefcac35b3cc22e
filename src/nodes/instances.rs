//! Instances on a node. A manifest in the node's root folder records the
//! current instance with its lifecycle state (`staged` -> `started` ->
//! `healthy`, or `failed`), an instance whose files were being laid out
//! (`pending`), and every folder any instance ever used, so that a new
//! instance never lands in an old folder (stale subscriber DLLs) and both
//! removal and creation are idempotent.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::staging::PayloadDigest;
use super::{DirState, NodeTransport};
use crate::config::ServiceConfig;
use crate::config::Shell;
use crate::{Error, Result};

/// File name of the manifest in the node's root folder.
pub const MANIFEST: &str = ".uprun-node.json";
/// File name of the instance's configuration in its folder.
pub const INSTANCE_CONFIG: &str = "uprun-instance.toml";

/// Where an instance is in its lifecycle, as recorded on its node. What
/// counts is observed (the health command, run now); the state says what was
/// last done, so that a staged or failed instance is started again rather
/// than believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Files and configuration are in the instance folder; never started.
    Staged,
    /// The start command passed; the health command has not yet.
    Started,
    /// The start and health commands passed.
    Healthy,
    /// The start or health command failed.
    Failed,
    /// Stopped on purpose (`stop_instance`): still the node's instance, to be
    /// started again with `start_instance`.
    Stopped,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Staged => "staged",
            InstanceState::Started => "started",
            InstanceState::Healthy => "healthy",
            InstanceState::Failed => "failed",
            InstanceState::Stopped => "stopped",
        }
    }

    /// The instance was never started, its last start or health check
    /// failed, or it was stopped: it must be started again, whatever its
    /// health command says.
    pub fn needs_start(state: Option<InstanceState>) -> bool {
        matches!(
            state,
            Some(InstanceState::Staged | InstanceState::Failed | InstanceState::Stopped)
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRecord {
    pub node: String,
    pub app_name: String,
    pub version: String,
    /// The instance folder, relative to the node's root.
    pub folder: String,
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<String>,
    /// Lifecycle state; absent in manifests and journals of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<InstanceState>,
}

impl InstanceRecord {
    /// The same instance (node, name, version, folder), whatever its state.
    pub fn same_instance(&self, other: &InstanceRecord) -> bool {
        self.node == other.node
            && self.app_name == other.app_name
            && self.version == other.version
            && self.folder == other.folder
    }

    pub fn with_state(&self, state: InstanceState) -> InstanceRecord {
        InstanceRecord {
            state: Some(state),
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub current: Option<InstanceRecord>,
    /// Earlier instances, oldest first.
    #[serde(default)]
    pub removed: Vec<InstanceRecord>,
    /// Every folder an instance was ever created in (relative to the root).
    #[serde(default)]
    pub used_folders: Vec<String>,
    /// An instance whose files were being laid out when its run stopped: it
    /// is finished in its own folder (emptied first), not in a new one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<InstanceRecord>,
}

/// The instances of one node, reached through its transport.
pub struct NodeInstances {
    pub transport: Box<dyn NodeTransport>,
    pub root: String,
    /// The shell that runs its service commands: placeholders are quoted for it.
    pub shell: Shell,
    /// False on `uprun test`'s disposable copies: service commands are
    /// skipped there, since they may address the real service.
    pub run_service_commands: bool,
}

/// Quote `value` as one word for `shell`: single quotes, with embedded quotes
/// escaped (`'\''` for sh; doubled for PowerShell, which also takes the
/// typographic single quotes as quotes). A value no quoting carries safely
/// (NUL anywhere; line breaks and other control characters in PowerShell) is
/// refused with the reason.
pub fn quote_for_shell(shell: Shell, value: &str) -> std::result::Result<String, String> {
    if value.contains('\0') {
        return Err("it contains a NUL character".into());
    }
    match shell {
        Shell::Posix => Ok(format!("'{}'", value.replace('\'', "'\\''"))),
        Shell::Powershell => {
            if let Some(c) = value.chars().find(|c| c.is_control()) {
                return Err(format!(
                    "it contains the control character `{}`, which a PowerShell command cannot carry",
                    c.escape_default()
                ));
            }
            let mut out = String::with_capacity(value.len() + 2);
            out.push('\'');
            for c in value.chars() {
                if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}') {
                    out.push(c);
                }
                out.push(c);
            }
            out.push('\'');
            Ok(out)
        }
    }
}

/// Substitute `{app}`, `{version}`, `{folder}`, `{node}` in a command template,
/// each as one word quoted for the node's `shell`, so that no value runs as
/// shell code. One pass: a value that contains a placeholder stays literal.
pub fn expand_template(
    template: &str,
    rec: &InstanceRecord,
    folder_path: &str,
    shell: Shell,
) -> Result<String> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let found = [
            ("{app}", rec.app_name.as_str()),
            ("{version}", rec.version.as_str()),
            ("{folder}", folder_path),
            ("{node}", rec.node.as_str()),
        ]
        .into_iter()
        .find(|(p, _)| tail.starts_with(p));
        match found {
            Some((placeholder, value)) => {
                let quoted = quote_for_shell(shell, value).map_err(|why| {
                    Error::Config(format!(
                        "node `{}`: the value of {placeholder} ({value:?}) cannot be passed to its {} shell: {why}",
                        rec.node,
                        shell.as_str()
                    ))
                })?;
                out.push_str(&quoted);
                rest = &tail[placeholder.len()..];
            }
            None => {
                out.push('{');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl NodeInstances {
    /// The instances on `node`, reached through `transport`; service commands
    /// run only when `run_service_commands` (false for reading a site).
    pub fn new(
        node: &crate::config::NodeConfig,
        transport: Box<dyn NodeTransport>,
        run_service_commands: bool,
    ) -> NodeInstances {
        NodeInstances {
            transport,
            root: node.root.clone(),
            shell: node.shell,
            run_service_commands,
        }
    }

    pub fn node(&self) -> &str {
        self.transport.node()
    }

    fn manifest_path(&self) -> String {
        self.transport.join(&self.root, MANIFEST)
    }

    pub fn folder_path(&self, folder: &str) -> String {
        self.transport.join(&self.root, folder)
    }

    pub fn manifest(&self) -> Result<Manifest> {
        Ok(self.read_manifest()?.unwrap_or_default())
    }

    /// The manifest, or `None` when the node has none.
    pub fn read_manifest(&self) -> Result<Option<Manifest>> {
        match self.transport.read_file(&self.manifest_path())? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Error::node(
                    self.node(),
                    format!(
                        "manifest `{}` is damaged ({e}); restore it from the journal or remove it after checking the node by hand",
                        self.manifest_path()
                    ),
                )
            }),
        }
    }

    /// Whether the node has a manifest at all (a node never touched by uprun
    /// has none).
    pub fn has_manifest(&self) -> Result<bool> {
        Ok(self.transport.read_file(&self.manifest_path())?.is_some())
    }

    pub fn write_manifest(&self, m: &Manifest) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(m).map_err(|e| Error::node(self.node(), e.to_string()))?;
        self.transport.write_file(&self.manifest_path(), &bytes)
    }

    pub fn folder_state(&self, folder: &str) -> Result<DirState> {
        self.transport.dir_state(&self.folder_path(folder))
    }

    /// Run one service command for `rec`; `what` names it in errors.
    pub fn service_command(
        &self,
        what: &str,
        template: Option<&str>,
        rec: &InstanceRecord,
        service: &ServiceConfig,
    ) -> Result<()> {
        let Some(t) = template.filter(|_| self.run_service_commands) else {
            return Ok(());
        };
        let folder = self.folder_path(&rec.folder);
        let cmd = expand_template(t, rec, &folder, self.shell)?;
        let out = self
            .transport
            .exec(&cmd, &folder, Duration::from_secs(service.timeout_secs))?;
        if !out.success() {
            let detail = out.stderr.trim();
            let code = out
                .status
                .map(|c| c.to_string())
                .unwrap_or_else(|| "a signal".into());
            return Err(Error::node(
                self.node(),
                format!(
                    "{what} command `{cmd}` failed (exit {code}){}{}",
                    if detail.is_empty() { "" } else { ": " },
                    detail
                ),
            ));
        }
        Ok(())
    }

    /// Stop and unregister the current instance; its folder is kept.
    pub fn remove(&self, service: &ServiceConfig, now: &str) -> Result<Option<InstanceRecord>> {
        let mut m = self.manifest()?;
        let Some(current) = m.current.clone() else {
            return Ok(None);
        };
        if self.folder_state(&current.folder)? != DirState::Missing {
            self.service_command("stop", service.stop.as_deref(), &current, service)?;
        }
        let mut removed = current;
        removed.removed = Some(now.to_string());
        m.current = None;
        m.removed.push(removed.clone());
        self.write_manifest(&m)?;
        Ok(Some(removed))
    }

    /// Lay out a new instance in `rec.folder` and register it as `staged`
    /// (not started). The folder is recorded as used, and the instance as
    /// pending, before anything is laid out; `fresh` empties the folder first
    /// (finishing a layout that was cut off). With `staged` (the release's
    /// payload, hashed), a staging of it that verifies by hash on the node now
    /// becomes the folder by a rename; otherwise the payload is copied.
    /// Returns the bytes copied (0 after a rename) and whether it was renamed.
    pub fn stage(
        &self,
        rec: &InstanceRecord,
        payload: &Path,
        config: &str,
        fresh: bool,
        staged: Option<&PayloadDigest>,
    ) -> Result<(u64, bool)> {
        let mut m = self.manifest()?;
        if !m.used_folders.contains(&rec.folder) {
            m.used_folders.push(rec.folder.clone());
        }
        m.pending = Some(rec.clone());
        // The staging is proved (read only) while the pending record is
        // written: both are on the window's path, neither needs the other.
        let (written, tree) = std::thread::scope(|scope| {
            let proof = staged.map(|pd| scope.spawn(|| self.verified_staging(pd)));
            let written = self.write_manifest(&m);
            let tree = match proof {
                Some(p) => p.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
                None => Ok(None),
            };
            (written, tree)
        });
        written?;
        let tree = tree?;
        let folder = self.folder_path(&rec.folder);
        if fresh {
            self.transport.remove_tree(&folder)?;
        }
        let mut renamed = false;
        if let Some(tree) = &tree {
            // `ops` checked that the folder is missing or empty: an empty
            // one gives way to the staged tree (a rename never replaces).
            if self.transport.dir_state(&folder)? == DirState::Empty
                && !self.transport.identity(&folder)?.is_some_and(|id| id.link)
            {
                self.transport.remove_tree(&folder)?;
            }
            renamed = self.transport.rename(tree, &folder).is_ok();
        }
        let bytes = if renamed {
            0
        } else {
            self.transport.create_dir_all(&folder)?;
            // `ops` checked the folder; a link put there since is not followed.
            if self.transport.identity(&folder)?.is_some_and(|id| id.link) {
                return Err(Error::node(
                    self.node(),
                    format!("`{folder}` became a symbolic link after it was checked; nothing was copied into it. Check the node by hand"),
                ));
            }
            self.transport.upload_tree(payload, &folder)?
        };
        crate::failpoint::inner();
        self.transport.write_file(
            &self.transport.join(&folder, INSTANCE_CONFIG),
            config.as_bytes(),
        )?;
        m.current = Some(rec.with_state(InstanceState::Staged));
        m.pending = None;
        self.write_manifest(&m)?;
        // The staging is used up (or stale): it goes.
        if let Some(pd) = staged {
            if pd.unstageable.is_none() && !(renamed && self.drop_used_staging(&pd.digest)?) {
                self.clean_staging(None)?;
            }
        }
        Ok((bytes, renamed))
    }

    /// Record the current instance's state (when it is still `rec`).
    pub fn set_state(&self, rec: &InstanceRecord, state: InstanceState) -> Result<()> {
        self.record_state(&mut self.manifest()?, rec, state)
    }

    /// `set_state` on `m`, the node's manifest as this call read or last
    /// wrote it (written only when the state changes).
    fn record_state(
        &self,
        m: &mut Manifest,
        rec: &InstanceRecord,
        state: InstanceState,
    ) -> Result<()> {
        match &mut m.current {
            Some(c) if c.same_instance(rec) => {
                if c.state == Some(state) {
                    return Ok(());
                }
                c.state = Some(state);
            }
            _ => return Ok(()),
        }
        self.write_manifest(m)
    }

    /// Start the instance and check its health, recording each state on the
    /// node: `started` once the start command passed, `healthy` once the
    /// health command passed, `failed` when either failed. The manifest is
    /// read once, before the start command (under the site lock only this
    /// run writes it), and each state written over what was written last.
    pub fn start(&self, rec: &InstanceRecord, service: &ServiceConfig) -> Result<()> {
        let mut m = self.manifest()?;
        if let Err(e) = self.service_command("start", service.start.as_deref(), rec, service) {
            self.record_state(&mut m, rec, InstanceState::Failed)?;
            return Err(e);
        }
        self.record_state(&mut m, rec, InstanceState::Started)?;
        crate::failpoint::inner();
        self.health_into(&mut m, rec, service)
    }

    /// Run the health command now; record `healthy` or `failed`.
    pub fn check_health(&self, rec: &InstanceRecord, service: &ServiceConfig) -> Result<()> {
        self.health_into(&mut self.manifest()?, rec, service)
    }

    fn health_into(
        &self,
        m: &mut Manifest,
        rec: &InstanceRecord,
        service: &ServiceConfig,
    ) -> Result<()> {
        let health = self.service_command("health", service.health.as_deref(), rec, service);
        match health {
            Ok(()) => self.record_state(m, rec, InstanceState::Healthy),
            Err(e) => {
                self.record_state(m, rec, InstanceState::Failed)?;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &[&str] = &[
        "$(touch PWNED)",
        "`touch PWNED`",
        "a; touch PWNED",
        "it's",
        "'; touch PWNED; '",
        "\"double\" $HOME",
        "line\nbreak",
        "tab\there",
        "back\\slash",
        "{node}",
        "",
    ];

    fn record(app: &str) -> InstanceRecord {
        InstanceRecord {
            node: "app01".into(),
            app_name: app.into(),
            version: "2.0.0".into(),
            folder: "x".into(),
            created: String::new(),
            removed: None,
            state: None,
        }
    }

    #[cfg(unix)]
    #[test]
    fn posix_quoting_gives_back_the_value_and_runs_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        for value in HOSTILE {
            let q = quote_for_shell(Shell::Posix, value).expect("quotable");
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {q}"))
                .current_dir(dir.path())
                .output()
                .expect("sh");
            assert!(out.status.success(), "{value:?} -> {q}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), *value, "{q}");
        }
        assert!(!dir.path().join("PWNED").exists());
    }

    #[test]
    fn posix_quoting_escapes_single_quotes_and_refuses_nul() {
        assert_eq!(
            quote_for_shell(Shell::Posix, "it's").as_deref(),
            Ok("'it'\\''s'")
        );
        assert_eq!(
            quote_for_shell(Shell::Posix, "$(touch PWNED)").as_deref(),
            Ok("'$(touch PWNED)'")
        );
        assert!(quote_for_shell(Shell::Posix, "a\0b").is_err());
    }

    #[test]
    fn powershell_quoting_doubles_every_single_quote_and_refuses_line_breaks() {
        let q = |v: &str| quote_for_shell(Shell::Powershell, v);
        assert_eq!(q("$(touch PWNED)").as_deref(), Ok("'$(touch PWNED)'"));
        assert_eq!(q("`touch PWNED`; x").as_deref(), Ok("'`touch PWNED`; x'"));
        assert_eq!(q("it's").as_deref(), Ok("'it''s'"));
        assert_eq!(q("'; rm x; '").as_deref(), Ok("'''; rm x; '''"));
        // PowerShell ends a single-quoted string at typographic quotes too.
        assert_eq!(q("a\u{2019}b").as_deref(), Ok("'a\u{2019}\u{2019}b'"));
        assert_eq!(q("a\u{2018}b").as_deref(), Ok("'a\u{2018}\u{2018}b'"));
        assert_eq!(q("C:\\Apps\\x y").as_deref(), Ok("'C:\\Apps\\x y'"));
        for bad in ["line\nbreak", "cr\rhere", "nul\0", "esc\u{1b}[2J"] {
            assert!(q(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn templates_substitute_quoted_words_in_one_pass() {
        let t = "echo running {app} {version} on {node} in {folder} {other}";
        let cmd = expand_template(t, &record("$(touch PWNED)"), "/opt/a b", Shell::Posix)
            .expect("expands");
        assert_eq!(
            cmd,
            "echo running '$(touch PWNED)' '2.0.0' on 'app01' in '/opt/a b' {other}"
        );
        // A value holding a placeholder is not expanded again.
        let cmd = expand_template("x {app} {node}", &record("{node}"), "/f", Shell::Posix)
            .expect("expands");
        assert_eq!(cmd, "x '{node}' 'app01'");
        let cmd = expand_template(
            "Start-App {app}",
            &record("it's"),
            "C:\\f",
            Shell::Powershell,
        )
        .expect("expands");
        assert_eq!(cmd, "Start-App 'it''s'");
    }

    #[test]
    fn a_value_that_cannot_be_quoted_is_refused_with_the_placeholder_named() {
        let e = expand_template("run {app}", &record("a\nb"), "C:\\f", Shell::Powershell)
            .expect_err("refused");
        let text = e.to_string();
        assert!(
            text.contains("{app}") && text.contains("powershell"),
            "{text}"
        );
        assert_eq!(e.exit_code(), 2);
    }
}
