//! The downtime window of a run, from its journal: from the first instance
//! stopped (the first `remove_instance` started) to the last node healthy
//! (the last `create_instance` or `start_instance` that left an instance
//! healthy: its start and health commands are part of it), and how that time
//! splits between the kinds of step inside it (removals, creates, database
//! upgrade, backup...). Parallel steps of one kind count once (the union of
//! their intervals): the parts are wall time.

use std::collections::{BTreeMap, HashMap};

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::journal::Entry;

/// The window and its parts, in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub ms: f64,
    /// Step kind (`remove_instance`, `create_instance`, `upgrade_db`, ...) and
    /// the wall time its steps took inside the window, largest first.
    pub parts: Vec<(String, f64)>,
    /// Time inside the window in no journaled step (the procedure between
    /// steps, the journal's own writes).
    pub other_ms: f64,
    /// The window is still open: an instance was removed and not every
    /// removal was followed by a finished create.
    pub open: bool,
}

fn at(s: &str) -> Option<f64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e6)
}

/// Total length of the union of `intervals`.
fn union_ms(mut intervals: Vec<(f64, f64)>) -> f64 {
    intervals.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut total = 0.0;
    let mut cur: Option<(f64, f64)> = None;
    for (s, e) in intervals {
        match cur {
            Some((cs, ce)) if s <= ce => cur = Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total += ce - cs;
                cur = Some((s, e));
            }
            None => cur = Some((s, e)),
        }
    }
    if let Some((cs, ce)) = cur {
        total += ce - cs;
    }
    total
}

/// The window of the run whose journal holds `entries`; `None` when no
/// instance was removed.
pub fn window(entries: &[Entry]) -> Option<Window> {
    let mut started: HashMap<&str, (&str, f64)> = HashMap::new();
    // (call, start, end) of every finished step.
    let mut steps: Vec<(String, f64, f64)> = Vec::new();
    let mut first_removal: Option<f64> = None;
    let mut removals = 0usize;
    let mut creates = 0usize;
    let mut last_create: Option<f64> = None;
    let mut last_at: Option<f64> = None;
    for e in entries {
        match e {
            Entry::Started {
                key, call, at: a, ..
            } => {
                let Some(t) = at(a) else { continue };
                if call == "remove_instance" && first_removal.is_none() {
                    first_removal = Some(t);
                }
                started.insert(key.as_str(), (call.as_str(), t));
                last_at = Some(t);
            }
            Entry::Done {
                key, at: a, result, ..
            } => {
                let Some(t) = at(a) else { continue };
                if let Some((call, s)) = started.remove(key.as_str()) {
                    // A node is back once its instance is healthy: a create
                    // that only staged it does not count, its start does.
                    let staged = result.get("state").and_then(|v| v.as_str()) == Some("staged");
                    match call {
                        "remove_instance" => removals += 1,
                        "create_instance" | "start_instance" if !staged => {
                            creates += 1;
                            last_create = Some(t);
                        }
                        _ => {}
                    }
                    steps.push((call.to_string(), s, t));
                }
                last_at = Some(t);
            }
            Entry::Failed { at: a, .. } | Entry::End { at: a, .. } => {
                if let Some(t) = at(a) {
                    last_at = Some(t);
                }
            }
            _ => {}
        }
    }
    let start = first_removal?;
    let open = creates < removals || last_create.is_none();
    let end = match (open, last_create, last_at) {
        (false, Some(c), _) => c,
        (_, _, Some(l)) => l,
        (_, Some(c), None) => c,
        (_, None, None) => start,
    };
    let ms = (end - start).max(0.0);
    let mut by_kind: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut all = Vec::new();
    for (call, s, e) in steps {
        let (s, e) = (s.max(start), e.min(end));
        if e > s {
            by_kind.entry(call).or_default().push((s, e));
            all.push((s, e));
        }
    }
    let mut parts: Vec<(String, f64)> =
        by_kind.into_iter().map(|(k, v)| (k, union_ms(v))).collect();
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    let other_ms = (ms - union_ms(all)).max(0.0);
    Some(Window {
        ms,
        parts,
        other_ms,
        open,
    })
}

fn label(kind: &str) -> &str {
    match kind {
        "remove_instance" => "removals (stop, unregister)",
        "create_instance" => "creates (payload copy or staged rename, config, start, health)",
        "start_instance" => "starts (start, health)",
        "stop_instance" => "stops",
        "stage_release" => "payload staging",
        "upgrade_db" => "database upgrade",
        "backup_db" => "backup",
        "node_command" => "node commands",
        other => other,
    }
}

impl Window {
    /// One line for the run summary and the journal.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .parts
            .iter()
            .map(|(k, ms)| format!("{} {}", label(k), crate::output::human_ms(*ms as u128)))
            .collect();
        if self.other_ms >= 1.0 {
            parts.push(format!(
                "between steps {}",
                crate::output::human_ms(self.other_ms as u128)
            ));
        }
        format!(
            "downtime window{}: {} from the first instance stopped to {}; {}",
            if self.open { " (still open)" } else { "" },
            crate::output::human_ms(self.ms as u128),
            if self.open {
                "the last step"
            } else {
                "the last node healthy"
            },
            parts.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn started(key: &str, call: &str, at: &str) -> Entry {
        Entry::Started {
            key: key.into(),
            call: call.into(),
            node: None,
            description: String::new(),
            intent: json!(null),
            at: at.into(),
            within: None,
        }
    }

    fn done(key: &str, at: &str) -> Entry {
        Entry::Done {
            key: key.into(),
            result: json!(null),
            ms: 0,
            at: at.into(),
        }
    }

    const T: &str = "2026-12-02T12:00:00";

    #[test]
    fn window_runs_from_first_removal_to_last_create_with_parallel_parts_once() {
        let e = vec![
            started("b", "backup_db", &format!("{T}.000Z")),
            done("b", &format!("{T}.500Z")),
            started("r2", "remove_instance", &format!("{T}.600Z")),
            started("r3", "remove_instance", &format!("{T}.610Z")),
            done("r2", &format!("{T}.700Z")),
            done("r3", &format!("{T}.710Z")),
            started("r1", "remove_instance", &format!("{T}.720Z")),
            done("r1", &format!("{T}.800Z")),
            started("c1", "create_instance", &format!("{T}.800Z")),
            done("c1", &format!("{T}.900Z")),
            started("u", "upgrade_db", &format!("{T}.900Z")),
            done("u", "2026-12-02T12:00:01.100Z"),
            started("c2", "create_instance", "2026-12-02T12:00:01.100Z"),
            started("c3", "create_instance", "2026-12-02T12:00:01.100Z"),
            done("c2", "2026-12-02T12:00:01.300Z"),
            done("c3", "2026-12-02T12:00:01.400Z"),
        ];
        let w = window(&e).expect("window");
        assert!(!w.open);
        assert!((w.ms - 800.0).abs() < 0.01, "{w:?}");
        let part = |k: &str| w.parts.iter().find(|p| p.0 == k).map(|p| p.1);
        assert!((part("remove_instance").unwrap_or(0.0) - 190.0).abs() < 0.01);
        assert!((part("create_instance").unwrap_or(0.0) - 400.0).abs() < 0.01);
        assert!((part("upgrade_db").unwrap_or(0.0) - 200.0).abs() < 0.01);
        assert_eq!(part("backup_db"), None, "the backup is before the window");
        assert!((w.other_ms - 10.0).abs() < 0.01, "{w:?}");
        let text = w.describe();
        assert!(text.starts_with("downtime window: 800 ms"), "{text}");
        assert!(text.contains("database upgrade 200 ms"), "{text}");
    }

    #[test]
    fn no_removal_no_window_and_an_unfinished_run_leaves_it_open() {
        assert_eq!(window(&[started("b", "backup_db", &format!("{T}Z"))]), None);
        let e = vec![
            started("r1", "remove_instance", &format!("{T}.000Z")),
            done("r1", &format!("{T}.100Z")),
            Entry::Failed {
                key: "c1".into(),
                error: "x".into(),
                at: format!("{T}.300Z"),
            },
        ];
        let w = window(&e).expect("window");
        assert!(w.open && (w.ms - 300.0).abs() < 0.01, "{w:?}");
        assert!(w.describe().contains("(still open)"));
    }
}
