//! Order rails that do not depend on timing. The closures of one
//! `for_each_node` call with `parallel > 1` run concurrently, so a rule about
//! the order of two instance changes cannot hold if they are made by two
//! closures of that call: whichever finished first would decide. The host
//! records which closure changed which node and refuses such a call, in plan
//! mode (so `run` stops before anything changes) and in run mode alike,
//! whatever order the closures happened to run in.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::{lock, Ops, StepKind};
use crate::config::Role;
use crate::{Error, Result};

/// A closure of a parallel call: (group id, member index).
type Member = (usize, usize);

thread_local! {
    /// The parallel closures the current thread is running, outermost first.
    static MEMBERS: RefCell<Vec<Member>> = const { RefCell::new(Vec::new()) };
}

/// One instance change made inside a parallel call.
#[derive(Debug, Clone)]
pub(super) struct GroupChange {
    pub member: usize,
    pub kind: StepKind,
    pub node: String,
}

/// Changes recorded per parallel call.
#[derive(Debug, Default)]
pub(super) struct Groups {
    next: usize,
    changes: BTreeMap<usize, Vec<GroupChange>>,
}

/// While alive, the current thread runs closure `member` of a parallel call.
pub struct MemberScope {
    restore: Vec<Member>,
}

impl Drop for MemberScope {
    fn drop(&mut self) {
        let restore = std::mem::take(&mut self.restore);
        MEMBERS.with(|m| *m.borrow_mut() = restore);
    }
}

impl Ops {
    /// The parallel closures the calling thread is inside of (to hand to the
    /// worker threads of a nested call).
    pub fn parallel_context(&self) -> Vec<(usize, usize)> {
        MEMBERS.with(|m| m.borrow().clone())
    }

    /// Open a parallel call; returns its id.
    pub fn begin_parallel(&self) -> usize {
        let mut st = lock(&self.state);
        st.groups.next += 1;
        let id = st.groups.next;
        st.groups.changes.insert(id, Vec::new());
        id
    }

    /// Mark the current thread as running closure `member` of call `group`,
    /// inside the calls of `context` (from `parallel_context` on the caller).
    pub fn enter_member(
        &self,
        context: &[(usize, usize)],
        group: usize,
        member: usize,
    ) -> MemberScope {
        let restore = MEMBERS.with(|m| {
            let mut m = m.borrow_mut();
            let old = m.clone();
            *m = context.to_vec();
            m.push((group, member));
            old
        });
        MemberScope { restore }
    }

    /// Record an instance change for every parallel call the current thread
    /// is in. Recorded when the call is made, before any rail decides on it:
    /// whether another closure's rail refused first must not change what the
    /// call is judged on.
    pub(super) fn record_group_change(&self, kind: StepKind, node: &str) {
        let members = MEMBERS.with(|m| m.borrow().clone());
        if members.is_empty() {
            return;
        }
        let mut st = lock(&self.state);
        for (group, member) in members {
            if let Some(c) = st.groups.changes.get_mut(&group) {
                c.push(GroupChange {
                    member,
                    kind,
                    node: node.to_string(),
                });
            }
        }
    }

    /// Close a parallel call: refused when two of its closures made instance
    /// changes whose order a rule fixes. `call` names the call in the message.
    pub fn end_parallel(&self, group: usize, call: &str) -> Result<()> {
        let changes = lock(&self.state)
            .groups
            .changes
            .remove(&group)
            .unwrap_or_default();
        let primary = self.site.primary().name.clone();
        match order_conflict(&changes, &primary, |n| self.role(n)) {
            None => Ok(()),
            Some(why) => Err(Error::Refused(format!(
                "{call}: {why}; the closures of one call run at the same time, so their order would depend on timing. Remove the secondaries' instances in one call and the primary's after it, and change each node from one closure only"
            ))),
        }
    }
}

/// The first pair of changes, made by different closures of one parallel
/// call, whose order a rule fixes: two changes of one node's instance, or the
/// primary's instance removed while another closure changes a secondary's.
pub(super) fn order_conflict(
    changes: &[GroupChange],
    primary: &str,
    role: impl Fn(&str) -> Option<Role>,
) -> Option<String> {
    for a in changes {
        for b in changes.iter().filter(|b| b.member != a.member) {
            if a.node == b.node {
                return Some(format!(
                    "two closures change the instance on `{}` (`{}` and `{}`)",
                    a.node, a.kind, b.kind
                ));
            }
            if a.kind == StepKind::RemoveInstance
                && a.node == primary
                && role(&b.node) == Some(Role::Secondary)
            {
                return Some(format!(
                    "one closure removes the primary `{primary}`'s instance while another runs `{}` on secondary `{}` (secondaries must be done first)",
                    b.kind, b.node
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    use StepKind::{CreateInstance as Create, RemoveInstance as Remove};

    /// Whether closures making these changes (member, kind, node), in this
    /// order, conflict on a site whose primary is `p`.
    fn conflicts(changes: &[(usize, StepKind, &str)]) -> bool {
        let changes: Vec<GroupChange> = changes
            .iter()
            .map(|&(member, kind, node)| GroupChange {
                member,
                kind,
                node: node.into(),
            })
            .collect();
        let role = |n: &str| {
            Some(if n == "p" {
                Role::Primary
            } else {
                Role::Secondary
            })
        };
        order_conflict(&changes, "p", role).is_some()
    }

    #[test]
    fn primary_removed_beside_secondaries_conflicts_in_any_order() {
        assert!(conflicts(&[(0, Remove, "p"), (1, Remove, "s1")]));
        assert!(conflicts(&[(1, Remove, "s1"), (0, Remove, "p")]));
        assert!(conflicts(&[(0, Remove, "p"), (1, Create, "s1")]));
    }

    #[test]
    fn one_node_changed_by_two_closures_conflicts() {
        assert!(conflicts(&[(0, Remove, "s1"), (1, Create, "s1")]));
    }

    #[test]
    fn disjoint_secondaries_and_own_sequences_do_not_conflict() {
        assert!(!conflicts(&[
            (0, Remove, "s1"),
            (0, Create, "s1"),
            (1, Remove, "s2"),
            (1, Create, "s2"),
        ]));
        // One closure doing the secondaries then the primary, in order, is fine.
        assert!(!conflicts(&[(0, Remove, "s1"), (0, Remove, "p")]));
    }
}
