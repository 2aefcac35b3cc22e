//! What happens during a run, and how each event is shown: one JSON object
//! per line (`--json`), or a human line.

use serde::Serialize;

use super::bars::current_node;
use super::text::{escape_controls, human_ms, prefixed};
use super::{Output, OutputMode};

/// Something that happened during a run. Serialised as its fields; the JSON
/// line adds `event` (its name) first, and `node` inside `for_each_node`.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Event {
    RunStarted {
        run_id: String,
        mode: String,
        script: String,
        site: String,
    },
    StepStarted {
        index: usize,
        kind: String,
        description: String,
    },
    StepDone {
        index: usize,
        kind: String,
        description: String,
        ms: u128,
    },
    StepFailed {
        index: usize,
        kind: String,
        description: String,
        error: String,
    },
    Planned {
        index: usize,
        kind: String,
        description: String,
        changes: bool,
        /// The change cannot be undone (the database upgrade).
        irreversible: bool,
    },
    Log {
        level: String,
        message: String,
    },
    RunFinished {
        outcome: String,
        summary: Vec<String>,
    },
    /// A phase of the command's start finished (`--json` only): where the
    /// time before the first change goes.
    Phase {
        phase: String,
        pass: String,
        ms: f64,
        at_ms: f64,
    },
    /// `for_each_node` finished its closure for one node.
    NodeFinished {
        node: String,
        ok: bool,
        ms: u128,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl Event {
    /// The `event` field of its JSON line.
    pub fn name(&self) -> &'static str {
        match self {
            Event::RunStarted { .. } => "run_started",
            Event::StepStarted { .. } => "step_started",
            Event::StepDone { .. } => "step_done",
            Event::StepFailed { .. } => "step_failed",
            Event::Planned { .. } => "planned",
            Event::Log { .. } => "log",
            Event::RunFinished { .. } => "run_finished",
            Event::Phase { .. } => "phase",
            Event::NodeFinished { .. } => "node_finished",
        }
    }

    /// Its JSON line: `event` first, then `node` (the node whose
    /// `for_each_node` closure it happened in, unless the event names its
    /// node itself), then its fields.
    pub fn json_line(&self, node: Option<&str>) -> serde_json::Result<String> {
        #[derive(Serialize)]
        struct JsonLine<'a> {
            event: &'static str,
            #[serde(skip_serializing_if = "Option::is_none")]
            node: Option<&'a str>,
            #[serde(flatten)]
            fields: &'a Event,
        }
        let node = match self {
            Event::NodeFinished { .. } => None,
            _ => node,
        };
        serde_json::to_string(&JsonLine {
            event: self.name(),
            node,
            fields: self,
        })
    }
}

impl Output {
    pub fn event(&self, ev: Event) {
        let tty = match self.mode {
            OutputMode::Quiet => return,
            OutputMode::Json => {
                let node = current_node().map(|(name, _)| name);
                if let Ok(line) = ev.json_line(node.as_deref()) {
                    self.write_line(&line);
                }
                return;
            }
            OutputMode::Human { tty } => tty,
        };
        let node = current_node();
        let e = escape_controls;
        let text = match &ev {
            Event::Phase { .. } => return,
            Event::RunStarted {
                run_id,
                mode,
                script,
                site,
            } => {
                // A plan is no run: it gets no id and no journal.
                if mode == "plan" {
                    format!(
                        "uprun plan {} on {} (a plan: reads are real, nothing is changed)",
                        e(script),
                        e(site)
                    )
                } else {
                    format!(
                        "uprun {mode} {} on {} (run {})",
                        e(script),
                        e(site),
                        e(run_id)
                    )
                }
            }
            Event::StepStarted {
                index, description, ..
            } => {
                self.step_started(*index, description, node.as_ref());
                if tty {
                    return;
                }
                format!("[{index}] {} ...", e(description))
            }
            Event::StepDone {
                index,
                description,
                ms,
                ..
            } => {
                self.step_ended(*index);
                if tty && self.nodes_bar_active() {
                    if let Some((_, Some(bar))) = &node {
                        bar.set_message(format!("[{index}] done: {}", e(description)));
                        return;
                    }
                }
                format!("[{index}] done: {} ({})", e(description), human_ms(*ms))
            }
            Event::StepFailed {
                index,
                description,
                error,
                ..
            } => {
                self.step_ended(*index);
                format!("[{index}] FAILED: {}: {}", e(description), e(error))
            }
            Event::Planned {
                index,
                kind,
                description,
                changes,
                irreversible,
            } => {
                let mark = if *changes { "change" } else { "read" };
                let tag = if *irreversible { "IRREVERSIBLE: " } else { "" };
                format!(
                    "{index:>3}. [{mark:<6}] {:<16} {tag}{}",
                    e(kind),
                    e(description)
                )
            }
            Event::Log { level, message } => match level.as_str() {
                "info" => e(message).into_owned(),
                l => format!("{}: {}", e(l), e(message)),
            },
            Event::RunFinished { outcome, summary } => {
                // Nothing is running once the run is over.
                self.steps_over();
                let mut s = format!("run {}", e(outcome));
                for l in summary {
                    s.push_str("\n  ");
                    s.push_str(&e(l));
                }
                s
            }
            Event::NodeFinished {
                node: name,
                ok,
                ms,
                error,
            } => {
                if tty && self.count_on_nodes_bar(*ok) {
                    return;
                }
                let text = match (ok, error) {
                    (true, _) => format!("done ({})", human_ms(*ms)),
                    (false, Some(err)) => {
                        format!("FAILED after {}: {}", human_ms(*ms), e(err))
                    }
                    (false, None) => format!("FAILED after {}", human_ms(*ms)),
                };
                // Said of its own node, whatever the thread's scope.
                self.write_line(&prefixed(name, &text));
                return;
            }
        };
        match &node {
            Some((name, _)) => self.write_line(&prefixed(name, &text)),
            None => self.write_line(&text),
        }
    }

    /// A `phase` event for each phase recorded since the last call.
    pub fn phases(&self) {
        for p in crate::phases::take() {
            self.event(Event::Phase {
                phase: p.phase,
                pass: p.pass.to_string(),
                ms: (p.ms * 1000.0).round() / 1000.0,
                at_ms: (p.at_ms * 1000.0).round() / 1000.0,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_name_the_event_first_then_the_node() {
        let ev = Event::StepDone {
            index: 3,
            kind: "create_instance".into(),
            description: "create".into(),
            ms: 12,
        };
        assert_eq!(
            ev.json_line(None).expect("json"),
            r#"{"event":"step_done","index":3,"kind":"create_instance","description":"create","ms":12}"#
        );
        assert_eq!(
            ev.json_line(Some("app01")).expect("json"),
            r#"{"event":"step_done","node":"app01","index":3,"kind":"create_instance","description":"create","ms":12}"#
        );
        let finished = Event::NodeFinished {
            node: "app02".into(),
            ok: true,
            ms: 5,
            error: None,
        };
        assert_eq!(
            finished.json_line(Some("app01")).expect("json"),
            r#"{"event":"node_finished","node":"app02","ok":true,"ms":5}"#
        );
    }
}
