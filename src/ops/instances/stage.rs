//! Staging the release's payload on a node before the downtime window:
//! outside any instance folder, checked by hash on the node, resumable. The
//! vendor's order is unchanged: the instance is still created after the
//! removals, in a new folder; staging only moves the copy out of the window.

use serde::Deserialize;

use super::super::{Mode, Ops, StepKind};
use crate::nodes::staging::{payload_digest, StageReport, STAGING_DIR};
use crate::Result;

/// Options of `stage_release` (none yet; the map is still checked for typos).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageOptions {}

impl Ops {
    /// Copy the release's payload to `node`'s staging area
    /// (`<root>/.uprun-staging/<digest>/payload`), resuming what a killed
    /// staging left (files that verify by hash are kept), then verify it by
    /// hash on the node. A node whose instance already runs the release is
    /// not staged. `create_instance` renames a staging that verifies into
    /// the new folder, and removes what is left.
    pub fn stage_release(&self, node: &str, _opts: StageOptions) -> Result<StageReport> {
        self.release.require("stage_release")?;
        let n = self.node(node)?;
        self.require_recorded(node)?;
        let key = self.call_key(StepKind::StageRelease, Some(node));
        if let Some(r) = self.replayed::<StageReport>(&key, StepKind::StageRelease, Some(node))? {
            return Ok(r);
        }
        let pd = payload_digest(node, &self.release.payload)?;
        let version = self.release.version.to_string();
        let folder = format!("{STAGING_DIR}/{}", pd.digest);
        let nothing = |reason: Option<String>| StageReport::nothing(node, &pd, reason);
        if let Some(current) = self.instance(node)? {
            if current.version == version {
                let why = format!(
                    "`{node}` already has {} {version}: nothing to stage",
                    current.app_name
                );
                self.noted_step(StepKind::StageRelease, Some(node), why.clone());
                return Ok(nothing(Some(why)));
            }
        }
        let description = format!(
            "stage the payload of {version} on `{node}` in `{STAGING_DIR}/` ({} files, {}), outside any instance folder, before the window",
            pd.files,
            human_bytes(pd.bytes)
        );
        let intent = serde_json::json!({ "folder": folder });
        self.node_step(
            &key,
            StepKind::StageRelease,
            &description,
            node,
            &intent,
            || {
                if self.mode == Mode::Plan {
                    return Ok((nothing(None), description.clone()));
                }
                let r = n.stage_release(&pd)?;
                let text = match &r.reason {
                    Some(why) => format!("{description}: not staged ({why}); the create copies it"),
                    None => format!(
                        "{description}: {} file(s) sent, {} already staged and verified",
                        r.sent_files, r.kept_files
                    ),
                };
                Ok((r, text))
            },
        )
    }
}

fn human_bytes(b: u64) -> String {
    if b >= 1_000_000 {
        format!("{:.1} MB", b as f64 / 1e6)
    } else if b >= 1_000 {
        format!("{:.1} kB", b as f64 / 1e3)
    } else {
        format!("{b} bytes")
    }
}
