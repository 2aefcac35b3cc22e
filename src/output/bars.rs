//! What shows that work is going on: on a terminal, a spinner per running
//! step (or per node inside `for_each_node`), a summary bar for a large
//! `for_each_node`, a bar for a long copy; in plain mode, a "still running"
//! line now and then for a step that runs long.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::text::{escape_controls, prefixed};
use super::{Output, OutputMode, Writer};

/// The node the current thread works for, inside `for_each_node`.
struct NodeContext {
    name: String,
    /// Its own spinner line, on a terminal.
    bar: Option<ProgressBar>,
}

thread_local! {
    static NODE: RefCell<Option<NodeContext>> = const { RefCell::new(None) };
}

/// While alive, output of the current thread belongs to one node: human lines
/// are prefixed with `[node]`, JSON events carry `"node"`, and on a terminal
/// the node's steps show on its own spinner line. Restores the previous node
/// on drop (scopes nest).
pub struct NodeScope {
    previous: Option<NodeContext>,
    // Tied to the thread whose thread-local it set.
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for NodeScope {
    fn drop(&mut self) {
        let previous = self.previous.take();
        NODE.with(|n| {
            if let Some(ctx) = n.replace(previous) {
                if let Some(bar) = ctx.bar {
                    bar.finish_and_clear();
                }
            }
        });
    }
}

/// The node whose `for_each_node` closure the current thread runs, if any.
pub fn closure_node() -> Option<String> {
    current_node().map(|(name, _)| name)
}

pub(super) fn current_node() -> Option<(String, Option<ProgressBar>)> {
    NODE.with(|n| n.borrow().as_ref().map(|c| (c.name.clone(), c.bar.clone())))
}

/// Steps running now, by index.
pub(super) type Running = Arc<Mutex<HashMap<usize, RunningStep>>>;

/// A step that started and has not finished.
pub(super) struct RunningStep {
    /// What plain mode prints: `[node] [5] description`.
    label: String,
    started: Instant,
    /// Seconds of running after which the next "still running" line is due.
    next_note: u64,
    /// Its spinner, on a terminal (outside `for_each_node`, whose nodes have
    /// their own spinner line).
    spinner: Option<ProgressBar>,
}

/// Seconds between "still running" lines in plain mode. A hidden variable
/// shortens it for tests.
fn still_running_every() -> u64 {
    std::env::var("UPRUN_STILL_RUNNING_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .unwrap_or(10)
}

/// Plain mode: a background thread that writes `[5] still running (35 s):
/// ...` for every step running past the interval, and again after every
/// further interval. It ends with the output object.
pub(super) fn watch_running_steps(running: &Running, out: &Writer) {
    let every = still_running_every();
    let running = Arc::downgrade(running);
    let out = Arc::downgrade(out);
    let spawned = std::thread::Builder::new()
        .name("uprun-still-running".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            let (Some(running), Some(out)) = (running.upgrade(), out.upgrade()) else {
                return;
            };
            let mut notes = Vec::new();
            {
                let mut steps = lock(&running);
                let mut ids: Vec<usize> = steps.keys().copied().collect();
                ids.sort_unstable();
                for id in ids {
                    if let Some(step) = steps.get_mut(&id) {
                        let secs = step.started.elapsed().as_secs();
                        if secs >= step.next_note {
                            notes.push(format!("{} still running ({secs} s)", step.label));
                            step.next_note = (secs / every + 1) * every;
                        }
                    }
                }
            }
            if !notes.is_empty() {
                let mut out = lock(&out);
                for n in notes {
                    let _ = writeln!(out, "{n}");
                }
                let _ = out.flush();
            }
        });
    // Without the thread, steps are only quieter: nothing to fail for.
    drop(spawned);
}

pub(super) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// On a terminal, a `for_each_node` over more nodes than this shows one
/// summary bar (done, failed) plus a spinner per running node, instead of a
/// line per finished node; failures still get their own line.
pub const SUMMARY_BAR_NODES: usize = 8;

pub(super) struct NodesBar {
    bar: ProgressBar,
    failed: u64,
}

/// While alive, a large `for_each_node` is summarised on one bar (see
/// [`Output::nodes_bar`]); removes the bar on drop.
pub struct NodesBarGuard<'a> {
    output: &'a Output,
}

impl Drop for NodesBarGuard<'_> {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.output.nodes).take() {
            n.bar.finish_and_clear();
        }
    }
}

/// A progress bar (hidden when not on a terminal).
pub struct Bar(ProgressBar);

impl Bar {
    pub fn set(&self, done: u64, total: u64) {
        // A total of 0 is "not known yet", not "all done" (indicatif shows 100%).
        if total == 0 {
            return;
        }
        self.0.set_length(total);
        self.0.set_position(done);
    }
    pub fn finish(self) {
        self.0.finish_and_clear();
    }
}

fn spinner_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl Output {
    /// On a terminal, for a `for_each_node` over more than
    /// [`SUMMARY_BAR_NODES`] nodes: one bar counting the nodes done and
    /// failed, kept while the guard lives. `None` elsewhere (plain lines and
    /// JSON keep one line per node) and inside another such call.
    pub fn nodes_bar(&self, total: usize) -> Option<NodesBarGuard<'_>> {
        let m = self.multi.as_ref()?;
        if total <= SUMMARY_BAR_NODES {
            return None;
        }
        let mut slot = lock(&self.nodes);
        if slot.is_some() {
            return None;
        }
        let pb = m.insert(0, ProgressBar::new(total as u64));
        pb.set_style(
            ProgressStyle::with_template("nodes [{bar:30}] {pos}/{len} done{msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.enable_steady_tick(Duration::from_millis(120));
        *slot = Some(NodesBar { bar: pb, failed: 0 });
        Some(NodesBarGuard { output: self })
    }

    pub(super) fn nodes_bar_active(&self) -> bool {
        lock(&self.nodes).is_some()
    }

    /// Count a finished node on the summary bar; whether its line is to be
    /// left out (it succeeded and the bar counts it).
    pub(super) fn count_on_nodes_bar(&self, ok: bool) -> bool {
        let mut slot = lock(&self.nodes);
        let Some(n) = slot.as_mut() else {
            return false;
        };
        n.bar.inc(1);
        if !ok {
            n.failed += 1;
            n.bar.set_message(format!(", {} FAILED", n.failed));
        }
        ok
    }

    /// Attribute the current thread's output to `node` until the scope drops.
    pub fn node_scope(&self, node: &str) -> NodeScope {
        let bar = self.multi.as_ref().map(|m| {
            let pb = m.add(ProgressBar::new_spinner());
            pb.set_style(spinner_style("{spinner} [{prefix}] {msg} ({elapsed})"));
            pb.set_prefix(escape_controls(node).into_owned());
            pb.set_message("started");
            pb.enable_steady_tick(Duration::from_millis(120));
            pb
        });
        let previous = NODE.with(|n| {
            n.replace(Some(NodeContext {
                name: node.to_string(),
                bar,
            }))
        });
        NodeScope {
            previous,
            _not_send: std::marker::PhantomData,
        }
    }

    /// A step started: a spinner with its elapsed time on a terminal (on
    /// its node's line inside `for_each_node`), and the step is watched for
    /// "still running" lines in plain mode.
    pub(super) fn step_started(
        &self,
        index: usize,
        description: &str,
        node: Option<&(String, Option<ProgressBar>)>,
    ) {
        let text = format!("[{index}] {}", escape_controls(description));
        let spinner = match (node, &self.multi) {
            (Some((_, Some(bar))), _) => {
                bar.set_message(text.clone());
                bar.reset_elapsed();
                None
            }
            (None, Some(m)) => {
                let pb = m.add(ProgressBar::new_spinner());
                pb.set_style(spinner_style("{spinner} {msg} ({elapsed})"));
                pb.set_message(text.clone());
                pb.enable_steady_tick(Duration::from_millis(120));
                Some(pb)
            }
            _ => None,
        };
        let label = match node {
            Some((name, _)) => prefixed(name, &text),
            None => text,
        };
        if self.mode == (OutputMode::Human { tty: false }) {
            self.watcher
                .call_once(|| watch_running_steps(&self.running, &self.out));
        }
        let every = still_running_every();
        lock(&self.running).insert(
            index,
            RunningStep {
                label,
                started: Instant::now(),
                next_note: every,
                spinner,
            },
        );
    }

    pub(super) fn step_ended(&self, index: usize) {
        if let Some(step) = lock(&self.running).remove(&index) {
            if let Some(pb) = step.spinner {
                pb.finish_and_clear();
            }
        }
    }

    /// The run is over: nothing runs any more.
    pub(super) fn steps_over(&self) {
        for (_, step) in lock(&self.running).drain() {
            if let Some(pb) = step.spinner {
                pb.finish_and_clear();
            }
        }
    }

    /// A bar for a long step (bytes copied, pages backed up).
    pub fn bar(&self, message: &str) -> Bar {
        match &self.multi {
            Some(m) => {
                // Length 1 until the real total is known: 0 of 0 shows as 100%.
                let pb = m.add(ProgressBar::new(1));
                pb.set_style(
                    ProgressStyle::with_template(
                        "{spinner} {msg} [{bar:30}] {percent:>3}% {elapsed}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                pb.set_message(escape_controls(message).into_owned());
                pb.enable_steady_tick(Duration::from_millis(120));
                Bar(pb)
            }
            None => Bar(ProgressBar::hidden()),
        }
    }
}
