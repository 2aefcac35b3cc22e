//! The one place that writes run output: progress bars on a terminal
//! (indicatif), plain lines otherwise, or one JSON object per event (`--json`).
//! Nothing else in the library prints. Text that came from outside (database
//! rows, node output, manifests, error messages) has its control characters
//! escaped here, so that it cannot forge a line or drive the terminal; JSON
//! output is escaped by serde.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Human lines; progress bars when `tty` is true.
    Human { tty: bool },
    /// One JSON object per line on stdout.
    Json,
    /// Nothing at all (the planning pass of `run`).
    Quiet,
}

/// Something that happened during a run.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
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
        #[serde(default)]
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

fn current_node() -> Option<(String, Option<ProgressBar>)> {
    NODE.with(|n| n.borrow().as_ref().map(|c| (c.name.clone(), c.bar.clone())))
}

pub struct Reporter {
    mode: OutputMode,
    multi: Option<MultiProgress>,
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    /// Steps running now, so that none runs in silence: a spinner with its
    /// elapsed time on a terminal, a "still running" line now and then in
    /// plain mode (see `watch_running_steps`).
    running: Arc<Mutex<HashMap<usize, RunningStep>>>,
    /// The summary bar of a large `for_each_node`, on a terminal.
    nodes: Mutex<Option<NodesBar>>,
}

/// A step that started and has not finished.
struct RunningStep {
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
/// further interval. It ends with the reporter.
fn watch_running_steps(
    running: &Arc<Mutex<HashMap<usize, RunningStep>>>,
    out: &Arc<Mutex<Box<dyn Write + Send>>>,
) {
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
                let mut steps = running.lock().unwrap_or_else(|e| e.into_inner());
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
                let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                for n in notes {
                    let _ = writeln!(out, "{n}");
                }
                let _ = out.flush();
            }
        });
    // Without the thread, steps are only quieter: nothing to fail for.
    drop(spawned);
}

/// On a terminal, a `for_each_node` over more nodes than this shows one
/// summary bar (done, failed) plus a spinner per running node, instead of a
/// line per finished node; failures still get their own line.
pub const SUMMARY_BAR_NODES: usize = 8;

struct NodesBar {
    bar: ProgressBar,
    failed: u64,
}

/// While alive, a large `for_each_node` is summarised on one bar (see
/// [`Reporter::nodes_bar`]); removes the bar on drop.
pub struct NodesBarGuard<'a> {
    reporter: &'a Reporter,
}

impl Drop for NodesBarGuard<'_> {
    fn drop(&mut self) {
        let taken = self
            .reporter
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(n) = taken {
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

impl Reporter {
    pub fn new(mode: OutputMode) -> Self {
        Self::with_writer(mode, Box::new(std::io::stdout()))
    }

    pub fn with_writer(mode: OutputMode, out: Box<dyn Write + Send>) -> Self {
        let multi = match mode {
            OutputMode::Human { tty: true } => {
                Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
            }
            _ => None,
        };
        let out = Arc::new(Mutex::new(out));
        let running = Arc::new(Mutex::new(HashMap::new()));
        if mode == (OutputMode::Human { tty: false }) {
            watch_running_steps(&running, &out);
        }
        Reporter {
            mode,
            multi,
            out,
            running,
            nodes: Mutex::new(None),
        }
    }

    /// On a terminal, for a `for_each_node` over more than
    /// [`SUMMARY_BAR_NODES`] nodes: one bar counting the nodes done and
    /// failed, kept while the guard lives. `None` elsewhere (plain lines and
    /// JSON keep one line per node) and inside another such call.
    pub fn nodes_bar(&self, total: usize) -> Option<NodesBarGuard<'_>> {
        let m = self.multi.as_ref()?;
        if total <= SUMMARY_BAR_NODES {
            return None;
        }
        let mut slot = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
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
        Some(NodesBarGuard { reporter: self })
    }

    fn nodes_bar_active(&self) -> bool {
        self.nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Count a finished node on the summary bar; whether its line is to be
    /// left out (it succeeded and the bar counts it).
    fn count_on_nodes_bar(&self, ok: bool) -> bool {
        let mut slot = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
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

    pub fn mode(&self) -> OutputMode {
        self.mode
    }

    /// Print a line for humans (ignored in JSON and quiet modes).
    pub fn line(&self, text: &str) {
        if let OutputMode::Human { .. } = self.mode {
            match current_node() {
                Some((node, _)) => self.write_line(&prefixed(&node, text)),
                None => self.write_line(text),
            }
        }
    }

    /// Attribute the current thread's output to `node` until the scope drops.
    pub fn node_scope(&self, node: &str) -> NodeScope {
        let bar = self.multi.as_ref().map(|m| {
            let pb = m.add(ProgressBar::new_spinner());
            pb.set_style(
                ProgressStyle::with_template("{spinner} [{prefix}] {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
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

    fn write_line(&self, text: &str) {
        let write = || {
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(out, "{text}");
            let _ = out.flush();
        };
        match &self.multi {
            // Bars are taken off, the line written as it is, bars drawn
            // again: indicatif's own `println` pads every line with spaces
            // to the terminal's width, which a recorded session keeps.
            Some(m) => m.suspend(write),
            None => write(),
        }
    }

    pub fn event(&self, ev: Event) {
        let node = match self.mode {
            OutputMode::Quiet => return,
            _ => current_node(),
        };
        match self.mode {
            OutputMode::Quiet => {}
            OutputMode::Json => {
                if let Ok(s) = serde_json::to_string(&ev) {
                    // Events inside `for_each_node` say which node they are
                    // about, after `event` (kept first for readers).
                    let tagged = match (&node, s.split_once(',')) {
                        (Some((name, _)), Some((first, rest)))
                            if !s.contains("\"node\":") && first.starts_with("{\"event\":") =>
                        {
                            serde_json::to_string(name)
                                .map(|n| format!("{first},\"node\":{n},{rest}"))
                                .unwrap_or(s)
                        }
                        _ => s,
                    };
                    self.write_line(&tagged);
                }
            }
            OutputMode::Human { tty } => {
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
                        for (_, step) in lock_running(&self.running).drain() {
                            if let Some(pb) = step.spinner {
                                pb.finish_and_clear();
                            }
                        }
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
        }
    }

    /// A step started: a spinner with its elapsed time on a terminal (on
    /// its node's line inside `for_each_node`), and the step is watched for
    /// "still running" lines in plain mode.
    fn step_started(
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
                pb.set_style(
                    ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
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
        let every = still_running_every();
        lock_running(&self.running).insert(
            index,
            RunningStep {
                label,
                started: Instant::now(),
                next_note: every,
                spinner,
            },
        );
    }

    fn step_ended(&self, index: usize) {
        if let Some(step) = lock_running(&self.running).remove(&index) {
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

    /// Ask a yes/no question on the terminal (stderr), default no.
    pub fn ask(&self, question: &str) -> bool {
        use std::io::BufRead;
        let mut err = std::io::stderr();
        let _ = write!(err, "{question} [y/N] ");
        let _ = err.flush();
        let mut answer = String::new();
        match std::io::stdin().lock().read_line(&mut answer) {
            // Input closed (Ctrl-D) or unreadable: the answer is no, and the
            // line the question left open is ended so that what follows
            // starts at the left margin.
            Ok(0) | Err(_) => {
                let _ = writeln!(err);
                false
            }
            Ok(_) => matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
        }
    }

    /// A spinner for a step in progress on a terminal.
    pub fn spinner(&self, message: &str) -> Option<Bar> {
        let m = self.multi.as_ref()?;
        let pb = m.add(ProgressBar::new_spinner());
        pb.set_message(escape_controls(message).into_owned());
        pb.enable_steady_tick(Duration::from_millis(120));
        Some(Bar(pb))
    }
}

fn lock_running(
    m: &Mutex<HashMap<usize, RunningStep>>,
) -> std::sync::MutexGuard<'_, HashMap<usize, RunningStep>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prefix every line of `text` with `[node] `.
fn prefixed(node: &str, text: &str) -> String {
    let node = escape_controls(node);
    text.lines()
        .map(|l| format!("[{node}] {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` with every control character escaped (newline as `\n`, carriage
/// return as `\r`, ESC as `\u{1b}`...), and the bidirectional overrides too,
/// so that text from a database, a node or a manifest prints as one inert
/// line. Tabs stay.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        (c.is_control() && c != '\t')
            || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `text` escaped as [`escape_controls`] does, keeping its line breaks: for
/// messages that are several lines by design (a site file's parse error with
/// its snippet).
pub fn escape_controls_keep_lines(text: &str) -> String {
    text.split('\n')
        .map(|l| escape_controls(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// An error as printed on stderr: a rendered script error as it is (its
/// message was escaped when rendered), anything else after `error: `, with
/// text from outside escaped. Errors about local input (a site file) keep
/// their line breaks.
pub fn error_text(e: &crate::Error) -> String {
    match e {
        _ if e.is_rendered() => e.to_string(),
        crate::Error::Config(_) | crate::Error::Io { .. } => {
            format!("error: {}", escape_controls_keep_lines(&e.to_string()))
        }
        _ => format!("error: {}", escape_controls(&e.to_string())),
    }
}

impl Reporter {
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

pub fn human_ms(ms: u128) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// Write command output (a report, a reference, a JSON document) to stdout.
/// A closed pipe (`uprun api | head`) ends it quietly instead of panicking
/// as `println!` would.
pub fn write_out(args: std::fmt::Arguments<'_>, newline: bool) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(args);
    if newline {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

/// `println!` for command output, through [`write_out`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::progress::write_out(format_args!($($arg)*), true) };
}

/// `print!` for command output, through [`write_out`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::progress::write_out(format_args!($($arg)*), false) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain text\tok"), "plain text\tok");
        assert_eq!(
            escape_controls("evil\nrun succeeded"),
            "evil\\nrun succeeded"
        );
        assert_eq!(escape_controls("a\r\x1b[2Jb"), "a\\r\\u{1b}[2Jb");
        assert_eq!(escape_controls("\u{7f}\u{9b}\0"), "\\u{7f}\\u{9b}\\u{0}");
        assert_eq!(escape_controls("abc\u{202e}cba"), "abc\\u{202e}cba");
        assert_eq!(escape_controls("é ü 漢字"), "é ü 漢字");
        assert_eq!(escape_controls_keep_lines("a\nb\x1b"), "a\nb\\u{1b}");
    }

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn plain_lines_cannot_be_forged_from_event_text() {
        let out = Captured::default();
        let r = Reporter::with_writer(OutputMode::Human { tty: false }, Box::new(out.clone()));
        r.event(Event::Log {
            level: "info".into(),
            message: "row: evil\nrun succeeded".into(),
        });
        r.event(Event::RunFinished {
            outcome: "failed".into(),
            summary: vec!["refused: x\nrun succeeded\x1b[2J".into()],
        });
        let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("utf8");
        assert!(!text.lines().any(|l| l.trim() == "run succeeded"), "{text}");
        assert!(text.contains("evil\\nrun succeeded"), "{text}");
        assert!(
            text.contains("\\u{1b}[2J") && !text.contains('\x1b'),
            "{text}"
        );
        assert!(text.contains("run failed\n  refused: x"), "{text}");
    }
}
