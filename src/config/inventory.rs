//! Nodes from an Ansible inventory (`[inventory]` in the site file), so a site
//! does not write its host list twice. Reads a YAML inventory or the JSON of
//! `ansible-inventory --list`; hosts of the primary group become the primary
//! node, hosts of the secondary group the secondaries. Owns only the mapping
//! to node sections: validation is the site file's.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde_norway::{Mapping, Value};

use super::raw::{InventorySection, NodeSection, Role, Shell};
use crate::{Error, Result};

/// What the inventory says about groups and hosts, in file order.
#[derive(Default)]
struct Inventory {
    /// Host names in the order they first appear.
    hosts: Vec<String>,
    /// Variables set on each host (inventory host entry and `_meta.hostvars`).
    host_vars: BTreeMap<String, Mapping>,
    /// group -> (direct hosts, child groups, group vars)
    groups: BTreeMap<String, Group>,
}

#[derive(Default)]
struct Group {
    hosts: Vec<String>,
    children: Vec<String>,
    vars: Mapping,
}

fn as_name(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Inventory {
    fn add_host(&mut self, name: &str, vars: Option<&Mapping>) {
        if !self.hosts.iter().any(|h| h == name) {
            self.hosts.push(name.to_string());
        }
        let entry = self.host_vars.entry(name.to_string()).or_default();
        if let Some(v) = vars {
            for (k, val) in v {
                entry.insert(k.clone(), val.clone());
            }
        }
    }

    /// One group body: `hosts`, `children`, `vars`; each may be a mapping (YAML
    /// inventory) or, for hosts and children, a list (`ansible-inventory --list`).
    fn read_group(&mut self, file: &Path, name: &str, body: &Value) -> Result<()> {
        let bad = |what: &str| {
            Error::Config(format!(
                "{}: group `{name}`: {what}; expected an Ansible YAML inventory or the JSON of `ansible-inventory --list`",
                file.display()
            ))
        };
        let body = match body {
            Value::Null => {
                self.groups.entry(name.to_string()).or_default();
                return Ok(());
            }
            Value::Mapping(m) => m,
            _ => return Err(bad("is not a mapping")),
        };
        let mut group = Group::default();
        for (key, value) in body {
            match key.as_str() {
                Some("hosts") => match value {
                    Value::Mapping(hosts) => {
                        for (h, vars) in hosts {
                            let h = as_name(h).ok_or_else(|| bad("a host name is not a string"))?;
                            let vars = match vars {
                                Value::Mapping(m) => Some(m),
                                Value::Null => None,
                                _ => {
                                    return Err(bad(&format!(
                                        "host `{h}` has vars that are not a mapping"
                                    )))
                                }
                            };
                            self.add_host(&h, vars);
                            group.hosts.push(h);
                        }
                    }
                    Value::Sequence(hosts) => {
                        for h in hosts {
                            let h = as_name(h).ok_or_else(|| bad("a host name is not a string"))?;
                            self.add_host(&h, None);
                            group.hosts.push(h);
                        }
                    }
                    Value::Null => {}
                    _ => return Err(bad("`hosts` is neither a mapping nor a list")),
                },
                Some("children") => match value {
                    Value::Mapping(children) => {
                        for (c, cbody) in children {
                            let c = as_name(c)
                                .ok_or_else(|| bad("a child group name is not a string"))?;
                            self.read_group(file, &c, cbody)?;
                            group.children.push(c);
                        }
                    }
                    Value::Sequence(children) => {
                        for c in children {
                            let c = as_name(c)
                                .ok_or_else(|| bad("a child group name is not a string"))?;
                            group.children.push(c);
                        }
                    }
                    Value::Null => {}
                    _ => return Err(bad("`children` is neither a mapping nor a list")),
                },
                Some("vars") => match value {
                    Value::Mapping(v) => group.vars = v.clone(),
                    Value::Null => {}
                    _ => return Err(bad("`vars` is not a mapping")),
                },
                _ => {}
            }
        }
        // A group may be described in several places (YAML allows it): merge.
        let g = self.groups.entry(name.to_string()).or_default();
        g.hosts.extend(group.hosts);
        g.children.extend(group.children);
        for (k, v) in group.vars {
            g.vars.insert(k, v);
        }
        Ok(())
    }

    /// Every host of `group`, including through child groups, in order.
    fn members(&self, group: &str, seen: &mut HashSet<String>, out: &mut Vec<String>) {
        if !seen.insert(group.to_string()) {
            return;
        }
        let Some(g) = self.groups.get(group) else {
            return;
        };
        for h in &g.hosts {
            if !out.contains(h) {
                out.push(h.clone());
            }
        }
        for c in &g.children {
            self.members(c, seen, out);
        }
    }

    /// The variables a host sees: `all`'s, then every group it belongs to
    /// (parents before children), then its own.
    fn vars_of(&self, host: &str) -> Mapping {
        let mut out = Mapping::new();
        let mut order: Vec<&str> = Vec::new();
        fn walk<'a>(inv: &'a Inventory, g: &'a str, order: &mut Vec<&'a str>, depth: usize) {
            if depth > 32 || order.contains(&g) {
                return;
            }
            order.push(g);
            if let Some(group) = inv.groups.get(g) {
                for c in &group.children {
                    walk(inv, c, order, depth + 1);
                }
            }
        }
        if self.groups.contains_key("all") {
            walk(self, "all", &mut order, 0);
        }
        for name in self.groups.keys() {
            walk(self, name, &mut order, 0);
        }
        for g in order {
            let mut members = Vec::new();
            self.members(g, &mut HashSet::new(), &mut members);
            if g == "all" || members.iter().any(|m| m == host) {
                if let Some(group) = self.groups.get(g) {
                    for (k, v) in &group.vars {
                        out.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        if let Some(v) = self.host_vars.get(host) {
            for (k, val) in v {
                out.insert(k.clone(), val.clone());
            }
        }
        out
    }
}

fn parse(file: &Path, text: &str) -> Result<Inventory> {
    let doc: Value = serde_norway::from_str(text).map_err(|e| {
        Error::Config(format!(
            "{}: not a YAML or JSON inventory: {e}",
            file.display()
        ))
    })?;
    let Value::Mapping(top) = doc else {
        return Err(Error::Config(format!(
            "{}: an inventory is a mapping of groups (e.g. `all:` with `children:`)",
            file.display()
        )));
    };
    let mut inv = Inventory::default();
    for (key, body) in &top {
        let Some(name) = as_name(key) else { continue };
        if name == "_meta" {
            if let Some(Value::Mapping(hv)) = body.get("hostvars") {
                for (h, vars) in hv {
                    if let (Some(h), Value::Mapping(vars)) = (as_name(h), vars) {
                        let entry = inv.host_vars.entry(h).or_default();
                        for (k, v) in vars {
                            entry.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            continue;
        }
        inv.read_group(file, &name, body)?;
    }
    Ok(inv)
}

fn var_string(vars: &Mapping, key: &str) -> Option<String> {
    vars.get(key).and_then(as_name)
}

/// Read the inventory and produce the site's node sections: the primary
/// group's hosts (as primary), then the secondary group's.
pub(crate) fn load(file: &Path, section: &InventorySection) -> Result<Vec<NodeSection>> {
    let text = std::fs::read_to_string(file).map_err(|e| Error::io("read inventory", file, e))?;
    nodes_from(file, &text, section)
}

fn nodes_from(file: &Path, text: &str, section: &InventorySection) -> Result<Vec<NodeSection>> {
    let inv = parse(file, text)?;
    let f = file.display();
    let group_hosts = |g: &str| -> Result<Vec<String>> {
        if !inv.groups.contains_key(g) {
            let mut known: Vec<&str> = inv.groups.keys().map(String::as_str).collect();
            known.retain(|k| *k != "all" && *k != "ungrouped");
            return Err(Error::Config(format!(
                "{f}: no group `{g}`; groups in the inventory: {}. Set `[inventory] primary_group` / `secondary_group` in the site file",
                if known.is_empty() { "none".into() } else { known.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ") }
            )));
        }
        let mut out = Vec::new();
        inv.members(g, &mut HashSet::new(), &mut out);
        Ok(out)
    };
    let primaries = group_hosts(&section.primary_group)?;
    let secondaries: Vec<String> = match group_hosts(&section.secondary_group) {
        Ok(s) => s,
        // A one-node site may have no secondary group at all.
        Err(_) if !inv.groups.contains_key(&section.secondary_group) => Vec::new(),
        Err(e) => return Err(e),
    };
    if primaries.len() != 1 {
        return Err(Error::Config(format!(
            "{f}: group `{}` must hold exactly one host (the primary node), it holds {}",
            section.primary_group,
            if primaries.is_empty() {
                "none".to_string()
            } else {
                primaries
                    .iter()
                    .map(|h| format!("`{h}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )));
    }
    if let Some(both) = secondaries.iter().find(|s| primaries.contains(s)) {
        return Err(Error::Config(format!(
            "{f}: host `{both}` is in both `{}` and `{}`; a node is either the primary or a secondary",
            section.primary_group, section.secondary_group
        )));
    }
    let mut out = Vec::new();
    for (host, role) in primaries
        .iter()
        .map(|h| (h, Role::Primary))
        .chain(secondaries.iter().map(|h| (h, Role::Secondary)))
    {
        let vars = inv.vars_of(host);
        // A host variable, else the `[inventory]` default, else an error.
        let required = |var: &str, default: &Option<String>, missing: &str| {
            var_string(&vars, var)
                .or_else(|| default.clone())
                .ok_or_else(|| Error::Config(format!("{f}: host `{host}` has {missing}")))
        };
        let shell = match var_string(&vars, "ansible_shell_type").as_deref() {
            Some("powershell") => Some(Shell::Powershell),
            _ => None,
        };
        let address = if var_string(&vars, "ansible_connection").as_deref() == Some("local") {
            "local".to_string()
        } else {
            let user = required(
                "ansible_user",
                &section.user,
                "no `ansible_user`; set it in the inventory or `[inventory] user` in the site file",
            )?;
            let addr = var_string(&vars, "ansible_host").unwrap_or_else(|| host.clone());
            let port = var_string(&vars, "ansible_port").unwrap_or_else(|| "22".into());
            if addr.contains(':') {
                format!("ssh://{user}@[{addr}]:{port}")
            } else {
                format!("ssh://{user}@{addr}:{port}")
            }
        };
        let root = required(
            "uprun_root",
            &section.root,
            "no root folder; set `[inventory] root` in the site file or the host variable `uprun_root`",
        )?;
        out.push(NodeSection {
            name: host.clone(),
            role,
            address,
            root,
            shell,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw::{default_primary, default_secondaries};

    fn section() -> InventorySection {
        InventorySection {
            file: "inv".into(),
            primary_group: default_primary(),
            secondary_group: default_secondaries(),
            root: Some("/opt/fastapp".into()),
            user: Some("deploy".into()),
        }
    }

    #[test]
    fn yaml_inventory_with_nested_groups_and_vars() {
        let yaml = r#"
all:
  vars:
    ansible_port: 2222
  children:
    primary:
      hosts:
        app01:
          ansible_host: 10.0.0.1
          ansible_user: admin
    secondaries:
      vars:
        uprun_root: /srv/app
      children:
        web:
          hosts:
            app02:
            app03: { ansible_host: 10.0.0.3, ansible_port: 22 }
        windows:
          vars: { ansible_shell_type: powershell }
          hosts:
            win01: { uprun_root: "C:/Apps" }
    other:
      hosts:
        db01:
"#;
        let nodes = nodes_from(Path::new("inv.yml"), yaml, &section()).unwrap();
        let got: Vec<_> = nodes
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.role,
                    n.address.as_str(),
                    n.root.as_str(),
                    n.shell,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "app01",
                    Role::Primary,
                    "ssh://admin@10.0.0.1:2222",
                    "/opt/fastapp",
                    None
                ),
                (
                    "app02",
                    Role::Secondary,
                    "ssh://deploy@app02:2222",
                    "/srv/app",
                    None
                ),
                (
                    "app03",
                    Role::Secondary,
                    "ssh://deploy@10.0.0.3:22",
                    "/srv/app",
                    None
                ),
                (
                    "win01",
                    Role::Secondary,
                    "ssh://deploy@win01:2222",
                    "C:/Apps",
                    Some(Shell::Powershell)
                ),
            ]
        );
    }

    #[test]
    fn ansible_inventory_list_json() {
        let json = r#"{
    "_meta": {"hostvars": {"app01": {"ansible_host": "127.0.0.1", "ansible_port": 2200},
                           "app02": {"ansible_connection": "local", "uprun_root": "nodes/app02"}}},
    "all": {"children": ["ungrouped", "primary", "secondaries"]},
    "primary": {"hosts": ["app01"]},
    "secondaries": {"hosts": ["app02"]}
}"#;
        let nodes = nodes_from(Path::new("inv.json"), json, &section()).unwrap();
        assert_eq!(nodes[0].address, "ssh://deploy@127.0.0.1:2200");
        assert_eq!(nodes[1].address, "local");
        assert_eq!(nodes[1].root, "nodes/app02");
    }

    #[test]
    fn errors_name_the_file_and_what_to_set() {
        let err = nodes_from(
            Path::new("inv.yml"),
            "all:\n  children:\n    web:\n      hosts:\n        a:\n",
            &section(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("inv.yml") && err.contains("no group `primary`") && err.contains("`web`"),
            "{err}"
        );
        let two = "primary:\n  hosts:\n    a:\n    b:\n";
        let err = nodes_from(Path::new("inv.yml"), two, &section())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exactly one host") && err.contains("`a`, `b`"),
            "{err}"
        );
        let mut s = section();
        s.user = None;
        let err = nodes_from(Path::new("inv.yml"), "primary:\n  hosts:\n    a:\n", &s)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("host `a`") && err.contains("ansible_user"),
            "{err}"
        );
    }
}
