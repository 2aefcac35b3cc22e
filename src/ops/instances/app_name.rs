//! The rail on a new instance's application name: the prior one, so users
//! reconnect to the same URL, unless the site file declares a rename.

use super::super::Ops;
use crate::Result;

impl Ops {
    /// The application names found on the site, `node`'s own first (current,
    /// then removed last), then the other nodes' in site order.
    pub(super) fn found_names(&self, node: &str) -> Result<Vec<FoundName>> {
        let mut order: Vec<&str> = vec![node];
        order.extend(
            self.site
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .filter(|n| *n != node),
        );
        let mut found = Vec::new();
        for name in order {
            // A node's current instance says what it runs; its last removed
            // one only counts when it has none (an old name removed long ago
            // must not outvote what runs now).
            // The node being changed is read now; the others as this run
            // last read them (see `other_node_names`).
            let (current, removed) = if name == node {
                self.current_and_last_removed(name)?
            } else {
                self.other_node_names(name)?
            };
            let (rec, removed) = match current {
                Some(c) => (Some(c), false),
                None => (removed, true),
            };
            if let Some(r) = rec {
                found.push(FoundName {
                    node: name.to_string(),
                    app_name: r.app_name,
                    version: r.version,
                    removed,
                });
            }
        }
        Ok(found)
    }
}

/// An instance found on the site, for deciding the new instance's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FoundName {
    pub node: String,
    pub app_name: String,
    pub version: String,
    /// The node's instance removed last (else its current one).
    pub removed: bool,
}

impl FoundName {
    fn describe(&self) -> String {
        format!(
            "`{}` {} {} {} ({})",
            self.node,
            if self.removed { "had" } else { "runs" },
            self.app_name,
            self.version,
            if self.removed { "removed" } else { "current" },
        )
    }
}

/// Rail: the new instance keeps the prior application name, so users
/// reconnect to the same URL. `found` lists the instances on the site, the
/// node's own first; the first is the prior instance. Every name found must
/// be the site's `name`, or its `renamed_from` (a declared rename, whose
/// instances take `name`). A requested name must be the one decided.
/// Returns the name, or why it is refused.
pub(crate) fn decide_app_name(
    site_name: &str,
    renamed_from: Option<&str>,
    found: &[FoundName],
    requested: Option<&str>,
) -> std::result::Result<String, String> {
    const WHY: &str =
        "a new instance keeps the prior application name so that users reconnect to the same URL";
    let strays: Vec<&FoundName> = found
        .iter()
        .filter(|f| f.app_name != site_name && Some(f.app_name.as_str()) != renamed_from)
        .collect();
    if let Some(first) = strays.first() {
        let declared = match renamed_from {
            Some(r) => format!(" and `renamed_from = {r:?}`"),
            None => String::new(),
        };
        return Err(format!(
            "the site file says `[application] name = {site_name:?}`{declared}, but {}; {WHY}. Correct `name` to {:?}, or, to rename the application on purpose, set `renamed_from = {:?}` under `[application]` (instances named {:?} are then created again as {site_name:?})",
            strays.iter().map(|f| f.describe()).collect::<Vec<_>>().join(", "),
            first.app_name,
            first.app_name,
            first.app_name,
        ));
    }
    let (expected, source) = match found.first() {
        Some(p) if Some(p.app_name.as_str()) == renamed_from => (
            site_name.to_string(),
            format!(
                "{}, renamed by `[application] renamed_from = {:?}`",
                p.describe(),
                p.app_name
            ),
        ),
        Some(p) => (p.app_name.clone(), p.describe()),
        None => (
            site_name.to_string(),
            "no instance on the site: the site file's `[application] name`".to_string(),
        ),
    };
    match requested {
        Some(r) if r != expected && Some(r) == renamed_from => Err(format!(
            "`app_name` {r:?} is the name the site file renames away from (`[application] renamed_from`); the new instance is named {expected:?} ({source}): leave `app_name` out"
        )),
        Some(r) if r != expected => Err(format!(
            "`app_name` {r:?} differs from the prior application name {expected:?} ({source}); {WHY}. Leave `app_name` out, or, to rename the application on purpose, set `[application] name = {r:?}` and `renamed_from = {expected:?}` in the site file"
        )),
        _ => Ok(expected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(node: &str, app: &str, removed: bool) -> FoundName {
        FoundName {
            node: node.into(),
            app_name: app.into(),
            version: "1.0.0".into(),
            removed,
        }
    }

    #[test]
    fn the_prior_name_is_kept() {
        let f = [
            found("app01", "FastApp", true),
            found("app02", "FastApp", true),
        ];
        assert_eq!(
            decide_app_name("FastApp", None, &f, None),
            Ok("FastApp".into())
        );
        assert_eq!(
            decide_app_name("FastApp", None, &f, Some("FastApp")),
            Ok("FastApp".into())
        );
        let e = decide_app_name("FastApp", None, &f, Some("OtherApp")).unwrap_err();
        assert!(
            e.contains("\"OtherApp\" differs from the prior application name \"FastApp\""),
            "{e}"
        );
        assert!(e.contains("renamed_from = \"FastApp\""), "{e}");
    }

    #[test]
    fn a_fresh_site_uses_the_site_name() {
        assert_eq!(
            decide_app_name("FastApp", None, &[], None),
            Ok("FastApp".into())
        );
        assert!(decide_app_name("FastApp", None, &[], Some("Other")).is_err());
    }

    #[test]
    fn a_renamed_site_is_refused_unless_declared() {
        let f = [
            found("app01", "FastApp", true),
            found("app02", "FastApp", false),
        ];
        let e = decide_app_name("NewApp", None, &f, None).unwrap_err();
        assert!(e.contains("`app01` had FastApp 1.0.0 (removed)"), "{e}");
        assert!(e.contains("renamed_from = \"FastApp\""), "{e}");
        assert_eq!(
            decide_app_name("NewApp", Some("FastApp"), &f, None),
            Ok("NewApp".into())
        );
        // Half-way through a declared rename, both names are expected.
        let g = [
            found("app02", "FastApp", true),
            found("app01", "NewApp", false),
        ];
        assert_eq!(
            decide_app_name("NewApp", Some("FastApp"), &g, Some("NewApp")),
            Ok("NewApp".into())
        );
        let e = decide_app_name("NewApp", Some("FastApp"), &g, Some("FastApp")).unwrap_err();
        assert!(e.contains("renames away from"), "{e}");
        // A third name is not covered by the declaration.
        let h = [found("app01", "OldApp", true)];
        assert!(decide_app_name("NewApp", Some("FastApp"), &h, None).is_err());
    }
}
