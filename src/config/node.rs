//! Nodes: their addresses (`local`, `ssh://user@host:port`), the checks a node
//! list must pass (names, roots, exactly one primary), and how two root folders
//! are compared by identity.

use std::fmt;

use super::env::expand;
use super::raw::{NodeSection, Role, Shell};
use super::source::Source;
use crate::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAddress {
    Local,
    /// `ssh://user@host:port` (port 22 when not given).
    Ssh {
        user: String,
        host: String,
        port: u16,
    },
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeAddress::Local => f.write_str("local"),
            NodeAddress::Ssh { user, host, port } if host.contains(':') => {
                write!(f, "ssh://{user}@[{host}]:{port}")
            }
            NodeAddress::Ssh { user, host, port } => write!(f, "ssh://{user}@{host}:{port}"),
        }
    }
}

impl NodeAddress {
    /// Parse `local` or `ssh://user@host[:port]`; the error says what is wrong.
    pub fn parse(text: &str) -> std::result::Result<NodeAddress, String> {
        if text == "local" {
            return Ok(NodeAddress::Local);
        }
        let Some(rest) = text.strip_prefix("ssh://") else {
            return Err("expected \"local\" or \"ssh://user@host:port\"".into());
        };
        let Some((user, hostport)) = rest.rsplit_once('@') else {
            return Err("the user is missing: write \"ssh://user@host:port\"".into());
        };
        if user.is_empty() || user.contains([':', '/', ' ']) {
            return Err(format!(
                "user {user:?} is not a valid user name (a password never goes in the address: use a key or the SSH agent)"
            ));
        }
        let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err("unterminated `[` in the host".into());
            };
            match after {
                "" => (host, None),
                p => match p.strip_prefix(':') {
                    Some(p) => (host, Some(p)),
                    None => return Err(format!("unexpected {p:?} after the host")),
                },
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() || host.contains(['/', '@', ' ', '?', '#']) {
            return Err(format!("host {host:?} is not a host name or IP address"));
        }
        let port = match port {
            None => 22,
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
            },
        };
        Ok(NodeAddress::Ssh {
            user: user.to_string(),
            host: host.to_string(),
            port,
        })
    }
}

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub role: Role,
    pub address: NodeAddress,
    /// Folder under which instance folders live, as a path on the node.
    pub root: String,
    pub shell: Shell,
}

/// Check the node sections of a site and turn them into nodes. `origin` names
/// where they came from (the site file, or its inventory); `from_inventory`
/// names hosts by name instead of by position.
pub(crate) fn nodes_from_sections(
    sections: Vec<NodeSection>,
    src: &Source,
    origin: &str,
    from_inventory: bool,
) -> Result<Vec<NodeConfig>> {
    let mut nodes = Vec::with_capacity(sections.len());
    for (i, n) in sections.into_iter().enumerate() {
        let key = if from_inventory {
            format!("host `{}`", n.name)
        } else {
            format!("node[{i}]")
        };
        let node = node_from_section(n, &key, src, origin, &nodes)?;
        nodes.push(node);
    }
    check_roots_apart(&nodes, origin)?;
    check_one_primary(&nodes, src)?;
    Ok(nodes)
}

/// One node section, checked against the nodes before it (`earlier`).
fn node_from_section(
    n: NodeSection,
    key: &str,
    src: &Source,
    origin: &str,
    earlier: &[NodeConfig],
) -> Result<NodeConfig> {
    if n.name.is_empty()
        || !n
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(Error::Config(format!(
            "{origin}: `{key}.name` = {:?}: use letters, digits, `-`, `_` and `.` only",
            n.name
        )));
    }
    if earlier.iter().any(|o| o.name == n.name) {
        return Err(Error::Config(format!(
            "{origin}: `{key}.name`: node `{}` is listed twice",
            n.name
        )));
    }
    let address = NodeAddress::parse(&n.address).map_err(|why| {
        Error::Config(format!(
            "{origin}: `{key}.address` = {:?} for node `{}`: {why}",
            n.address, n.name
        ))
    })?;
    let shell = n.shell.unwrap_or_default();
    let root = match address {
        NodeAddress::Local => {
            if shell != Shell::Posix {
                return Err(Error::Config(format!(
                        "{origin}: `{key}.shell` of node `{}`: only `ssh://` nodes may use shell {:?}; local nodes run `sh`",
                        n.name,
                        shell.as_str()
                    )));
            }
            let root = src.resolve(&n.root, &format!("{key}.root"))?;
            if !root.is_dir() {
                return Err(Error::Config(format!(
                        "{origin}: `{key}.root` of node `{}`: folder `{}` does not exist; create it or correct `root`",
                        n.name,
                        root.display()
                    )));
            }
            root.to_string_lossy().into_owned()
        }
        NodeAddress::Ssh { .. } => {
            let root = expand(&n.root, &format!("{origin}: `{key}.root`"))?;
            if !is_absolute_remote(&root, shell) {
                return Err(Error::Config(format!(
                        "{origin}: `{key}.root` = {root:?} of node `{}`: an ssh node's root is a path on the node and must be absolute ({})",
                        n.name,
                        match shell {
                            Shell::Posix => "starting with `/`",
                            Shell::Powershell => "like `C:/Apps/FastApp` or `D:\\Apps`",
                        }
                    )));
            }
            root
        }
    };
    Ok(NodeConfig {
        name: n.name,
        role: n.role,
        address,
        root,
        shell,
    })
}

/// Rail: exactly one node is the primary.
fn check_one_primary(nodes: &[NodeConfig], src: &Source) -> Result<()> {
    let primaries: Vec<&str> = nodes
        .iter()
        .filter(|n| n.role == Role::Primary)
        .map(|n| n.name.as_str())
        .collect();
    match primaries.len() {
        1 => {}
        0 => {
            return Err(src.error(
                "`node.role`: no node has `role = \"primary\"`; mark exactly one node as primary",
            ))
        }
        _ => {
            return Err(src.error(format!(
            "`node.role`: nodes {} are all `role = \"primary\"`; exactly one node may be primary",
            primaries
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        )))
        }
    }
    Ok(())
}

/// The named components of a path, lexically normalised: `.` and empty
/// components dropped, `..` resolved, `\\` a separator and case folded on
/// Windows nodes (`windows`). `/C:/x` and `C:\\x` give the same components.
/// Meant for absolute paths, whose leading root it drops.
pub fn path_components(path: &str, windows: bool) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let seps: &[char] = if windows { &['/', '\\'] } else { &['/'] };
    for c in path.split(seps) {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c if windows => out.push(c.to_lowercase()),
            c => out.push(c.to_string()),
        }
    }
    out
}

/// How the root folders of two nodes overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    Same,
    /// The first is inside the second.
    Inside,
    /// The first contains the second.
    Contains,
}

/// How two normalised paths overlap, if they do.
pub fn overlap(a: &[String], b: &[String]) -> Option<Overlap> {
    if a == b {
        Some(Overlap::Same)
    } else if a.starts_with(b) {
        Some(Overlap::Inside)
    } else if b.starts_with(a) {
        Some(Overlap::Contains)
    } else {
        None
    }
}

/// Rail: every node has a root folder of its own. Two nodes whose roots are
/// the same folder, or one inside the other, would take each other's manifest
/// and instance folders: removing "a secondary" would remove the primary's
/// instance. Local roots are compared as this machine resolves them (links
/// followed); SSH roots when the nodes share host and port, lexically.
fn check_roots_apart(nodes: &[NodeConfig], origin: &str) -> Result<()> {
    // Where a root lives (None: this machine) and its normalised components.
    let place = |n: &NodeConfig| -> (Option<(String, u16)>, Vec<String>) {
        match &n.address {
            NodeAddress::Local => {
                let resolved = std::fs::canonicalize(&n.root)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_else(|_| n.root.clone());
                (None, path_components(&resolved, cfg!(windows)))
            }
            NodeAddress::Ssh { host, port, .. } => (
                Some((host.to_lowercase(), *port)),
                path_components(&n.root, n.shell == Shell::Powershell),
            ),
        }
    };
    let placed: Vec<_> = nodes.iter().map(|n| (n, place(n))).collect();
    for (i, (a, (host_a, pa))) in placed.iter().enumerate() {
        for (b, (host_b, pb)) in placed.iter().skip(i + 1) {
            if host_a != host_b {
                continue;
            }
            let why = "each node needs a root folder of its own, or one node's manifest and instance folders would be taken for the other's (removing one node's instance would remove the other's)";
            match overlap(pa, pb) {
                None => {}
                Some(Overlap::Same) => {
                    return Err(Error::Config(format!(
                        "{origin}: nodes `{}` and `{}` share the root folder `{}` (`{}`): {why}",
                        a.name, b.name, a.root, b.root
                    )))
                }
                Some(o) => {
                    let (inner, outer) = if o == Overlap::Inside { (a, b) } else { (b, a) };
                    return Err(Error::Config(format!(
                        "{origin}: the root of node `{}` (`{}`) is inside the root of node `{}` (`{}`): {why}",
                        inner.name, inner.root, outer.name, outer.root
                    )));
                }
            }
        }
    }
    Ok(())
}

/// An absolute path on a remote node: `/x` anywhere, `C:/x` or `C:\\x` on Windows.
fn is_absolute_remote(path: &str, shell: Shell) -> bool {
    let b = path.as_bytes();
    path.starts_with('/')
        || (shell == Shell::Powershell
            && b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && (b[2] == b'/' || b[2] == b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_node_addresses() {
        assert_eq!(NodeAddress::parse("local"), Ok(NodeAddress::Local));
        assert_eq!(
            NodeAddress::parse("ssh://deploy@app02.example.com"),
            Ok(NodeAddress::Ssh {
                user: "deploy".into(),
                host: "app02.example.com".into(),
                port: 22
            })
        );
        assert_eq!(
            NodeAddress::parse("ssh://root@127.0.0.1:2222"),
            Ok(NodeAddress::Ssh {
                user: "root".into(),
                host: "127.0.0.1".into(),
                port: 2222
            })
        );
        let v6 = NodeAddress::parse("ssh://u@[::1]:2200").unwrap();
        assert_eq!(v6.to_string(), "ssh://u@[::1]:2200");
        for bad in [
            "ssh://host",
            "ssh://u@host:0",
            "ssh://u@host:99999",
            "ssh://u@:22",
            "ssh://u:pw@host",
            "sftp://u@h",
            "remote",
        ] {
            assert!(NodeAddress::parse(bad).is_err(), "{bad}");
        }
    }
}
