//! The one object that owns the terminal: run events (progress bars on a
//! terminal, plain lines otherwise, one JSON object per line with `--json`),
//! command output (reports, documents), the operator's prompt, notices and
//! errors on stderr. Nothing else in the program prints. It writes to any
//! writers, so tests construct it over buffers. Text that came from outside
//! (database rows, node output, manifests, error messages) has its control
//! characters escaped here; JSON output is escaped by serde.

mod bars;
mod error;
mod event;
mod text;

use std::collections::HashMap;
use std::io::{BufRead, IsTerminal, Write};
use std::sync::{Arc, Mutex, Once};

use indicatif::{MultiProgress, ProgressDrawTarget};
use serde::Serialize;

pub use bars::{closure_node, Bar, NodeScope, NodesBarGuard, SUMMARY_BAR_NODES};
pub use error::error_text;
pub use event::Event;
pub use text::{escape_controls, escape_controls_keep_lines, human_ms};

use bars::{lock, Running};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// Human lines; progress bars when `tty` is true.
    Human { tty: bool },
    /// One JSON object per line on stdout.
    Json,
    /// No run events at all (the planning pass of `run`).
    Quiet,
}

type Writer = Arc<Mutex<Box<dyn Write + Send>>>;

pub struct Output {
    mode: OutputMode,
    multi: Option<MultiProgress>,
    /// Run events and command output (stdout).
    out: Writer,
    /// Prompts, notices and errors (stderr).
    err: Writer,
    /// Where the operator's answers come from (stdin).
    input: Mutex<Box<dyn BufRead + Send>>,
    /// Steps running now, so that none runs in silence: a spinner with its
    /// elapsed time on a terminal, a "still running" line now and then in
    /// plain mode (started with the first step).
    running: Running,
    watcher: Once,
    /// The summary bar of a large `for_each_node`, on a terminal.
    nodes: Mutex<Option<bars::NodesBar>>,
}

impl Output {
    /// Over the process's stdout, stderr and stdin.
    pub fn new(mode: OutputMode) -> Self {
        Self::with_writers(
            mode,
            Box::new(std::io::stdout()),
            Box::new(std::io::stderr()),
            Box::new(std::io::BufReader::new(std::io::stdin())),
        )
    }

    /// Human output (bars when both stdout and stderr are terminals, so
    /// that `| tee run.log` keeps every line) or JSON lines.
    pub fn for_terminal(json: bool) -> Self {
        let mode = if json {
            OutputMode::Json
        } else {
            OutputMode::Human {
                tty: std::io::stdout().is_terminal() && std::io::stderr().is_terminal(),
            }
        };
        Self::new(mode)
    }

    /// Over any writers and reader (tests: buffers).
    pub fn with_writers(
        mode: OutputMode,
        out: Box<dyn Write + Send>,
        err: Box<dyn Write + Send>,
        input: Box<dyn BufRead + Send>,
    ) -> Self {
        let multi = match mode {
            OutputMode::Human { tty: true } => {
                Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
            }
            _ => None,
        };
        Output {
            mode,
            multi,
            out: Arc::new(Mutex::new(out)),
            err: Arc::new(Mutex::new(err)),
            input: Mutex::new(input),
            running: Arc::new(Mutex::new(HashMap::new())),
            watcher: Once::new(),
            nodes: Mutex::new(None),
        }
    }

    /// A line for humans (ignored in JSON and quiet modes).
    pub fn line(&self, text: &str) {
        if let OutputMode::Human { .. } = self.mode {
            match bars::current_node() {
                Some((node, _)) => self.write_line(&text::prefixed(&node, text)),
                None => self.write_line(text),
            }
        }
    }

    fn write_line(&self, text: &str) {
        self.write_to(&self.out, text, true);
    }

    fn write_to(&self, to: &Writer, text: &str, newline: bool) {
        let write = || {
            let mut w = lock(to);
            // A closed pipe (`uprun api | head`) ends the output quietly.
            let _ = w.write_all(text.as_bytes());
            if newline {
                let _ = w.write_all(b"\n");
            }
            let _ = w.flush();
        };
        match &self.multi {
            // Bars are taken off, the line written as it is, bars drawn
            // again: indicatif's own `println` pads every line with spaces
            // to the terminal's width, which a recorded session keeps.
            Some(m) => m.suspend(write),
            None => write(),
        }
    }

    /// Command output, in every mode: a line on stdout.
    pub fn say(&self, line: &str) {
        self.write_to(&self.out, line, true);
    }

    /// Command output, in every mode: a report (or document) as its
    /// `Display` writes it, on stdout.
    pub fn show(&self, report: &dyn std::fmt::Display) {
        self.write_to(&self.out, &report.to_string(), false);
    }

    /// Command output as bytes (a man page, a completion script), on
    /// stdout. A closed pipe (`| head`) is not an error.
    pub fn write_bytes(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut w = lock(&self.out);
        match w.write_all(bytes).and_then(|()| w.flush()) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    }

    /// Command output as a JSON document (pretty), on stdout.
    pub fn json(&self, value: &impl Serialize) {
        self.say(&serde_json::to_string_pretty(value).unwrap_or_default());
    }

    /// A line on stderr, beside the command's output: what the operator
    /// should know (a recovered transaction, the site file chosen, Ctrl-C).
    pub fn notice(&self, line: &str) {
        self.write_to(&self.err, line, true);
    }

    /// Ask a yes/no question (on stderr), default no.
    pub fn ask(&self, question: &str) -> bool {
        self.write_to(&self.err, &format!("{question} [y/N] "), false);
        let mut answer = String::new();
        match lock(&self.input).read_line(&mut answer) {
            // Input closed (Ctrl-D) or unreadable: the answer is no, and the
            // line the question left open is ended so that what follows
            // starts at the left margin.
            Ok(0) | Err(_) => {
                self.write_to(&self.err, "", true);
                false
            }
            Ok(_) => matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes"),
        }
    }

    /// Whether the operator can be asked: both stdin and stderr are
    /// terminals.
    pub fn interactive() -> bool {
        std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
    }

    /// An error, rendered once with its `error:` heading, on stderr.
    pub fn error(&self, e: &crate::Error) {
        self.notice(&error_text(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    pub(crate) struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Captured {
        pub(crate) fn text(&self) -> String {
            String::from_utf8(lock(&self.0).clone()).expect("utf8")
        }
    }

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// An output object over buffers, with `input` as the operator's answers.
    fn over_buffers(mode: OutputMode, input: &str) -> (Output, Captured, Captured) {
        let (out, err) = (Captured::default(), Captured::default());
        let o = Output::with_writers(
            mode,
            Box::new(out.clone()),
            Box::new(err.clone()),
            Box::new(std::io::Cursor::new(input.as_bytes().to_vec())),
        );
        (o, out, err)
    }

    #[test]
    fn plain_lines_cannot_be_forged_from_event_text() {
        let (r, out, _) = over_buffers(OutputMode::Human { tty: false }, "");
        r.event(Event::Log {
            level: "info".into(),
            message: "row: evil\nrun succeeded".into(),
        });
        r.event(Event::RunFinished {
            outcome: "failed".into(),
            summary: vec!["refused: x\nrun succeeded\x1b[2J".into()],
        });
        let text = out.text();
        assert!(!text.lines().any(|l| l.trim() == "run succeeded"), "{text}");
        assert!(text.contains("evil\\nrun succeeded"), "{text}");
        assert!(
            text.contains("\\u{1b}[2J") && !text.contains('\x1b'),
            "{text}"
        );
        assert!(text.contains("run failed\n  refused: x"), "{text}");
    }

    #[test]
    fn the_question_goes_to_stderr_and_the_answer_is_read() {
        let (o, out, err) = over_buffers(OutputMode::Human { tty: false }, "yes\n");
        assert!(o.ask("Proceed?"));
        assert_eq!(err.text(), "Proceed? [y/N] ");
        assert_eq!(out.text(), "");
        // Input closed: no, and the open line is ended.
        let (o, _, err) = over_buffers(OutputMode::Human { tty: false }, "");
        assert!(!o.ask("Proceed?"));
        assert_eq!(err.text(), "Proceed? [y/N] \n");
        let (o, _, _) = over_buffers(OutputMode::Human { tty: false }, "n\n");
        assert!(!o.ask("Proceed?"));
    }

    #[test]
    fn modes_decide_what_shows_and_command_output_always_does() {
        let (o, out, err) = over_buffers(OutputMode::Json, "");
        o.line("for humans");
        o.event(Event::Log {
            level: "warn".into(),
            message: "m".into(),
        });
        o.say("report line");
        o.notice("notice");
        assert_eq!(
            out.text(),
            "{\"event\":\"log\",\"level\":\"warn\",\"message\":\"m\"}\nreport line\n"
        );
        assert_eq!(err.text(), "notice\n");
        let (o, out, _) = over_buffers(OutputMode::Quiet, "");
        o.line("x");
        o.event(Event::Log {
            level: "info".into(),
            message: "m".into(),
        });
        assert_eq!(out.text(), "");
        let (o, out, _) = over_buffers(OutputMode::Human { tty: false }, "");
        o.event(Event::Log {
            level: "warn".into(),
            message: "m".into(),
        });
        o.event(Event::Planned {
            index: 2,
            kind: "upgrade_db".into(),
            description: "upgrade".into(),
            changes: true,
            irreversible: true,
        });
        o.show(&"no newline added");
        assert_eq!(
            out.text(),
            "warn: m\n  2. [change] upgrade_db       IRREVERSIBLE: upgrade\nno newline added"
        );
    }

    #[test]
    fn node_scopes_prefix_lines_and_tag_json() {
        let (o, out, _) = over_buffers(OutputMode::Human { tty: false }, "");
        {
            let _scope = o.node_scope("app01");
            o.line("two\nlines");
        }
        o.line("after");
        assert_eq!(out.text(), "[app01] two\n[app01] lines\nafter\n");
        let (o, out, _) = over_buffers(OutputMode::Json, "");
        {
            let _scope = o.node_scope("app01");
            o.event(Event::Log {
                level: "info".into(),
                message: "m".into(),
            });
        }
        assert_eq!(
            out.text(),
            "{\"event\":\"log\",\"node\":\"app01\",\"level\":\"info\",\"message\":\"m\"}\n"
        );
    }
}
