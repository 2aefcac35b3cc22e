//! Reading journals back: complete entries, a torn last line kept apart, and
//! the replay of an earlier attempt (what was done, what was in flight).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Entry;
use crate::{Error, Result};

/// A last line cut short by a crash or a full disk.
#[derive(Debug, Clone)]
pub struct Torn {
    /// 1-based line number.
    pub line: usize,
    /// Where the torn line starts: the length of the complete part.
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// A journal as read: its complete entries and a torn last line, if any.
#[derive(Debug, Clone)]
pub struct Content {
    pub entries: Vec<Entry>,
    pub torn: Option<Torn>,
    /// The last line is a complete entry without its newline.
    pub missing_newline: bool,
}

/// Read a journal. A torn last line (not valid JSON: the write was cut short)
/// is returned apart; a damaged line before the last is an error naming the
/// file and the line.
pub fn read_full(path: &Path) -> Result<Content> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("read journal", path, e))?;
    let mut out = Content {
        entries: Vec::new(),
        torn: None,
        missing_newline: false,
    };
    let mut offset = 0usize;
    let mut line_no = 0usize;
    while offset < bytes.len() {
        line_no += 1;
        let rest = &bytes[offset..];
        let (line, next, complete) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], offset + i + 1, true),
            None => (rest, bytes.len(), false),
        };
        let is_last = next >= bytes.len();
        if line.iter().all(u8::is_ascii_whitespace) {
            offset = next;
            continue;
        }
        match serde_json::from_slice::<Entry>(line) {
            Ok(e) => {
                out.entries.push(e);
                out.missing_newline = !complete;
            }
            Err(_) if is_last => {
                out.torn = Some(Torn {
                    line: line_no,
                    offset: offset as u64,
                    bytes: rest.to_vec(),
                });
                out.missing_newline = false;
            }
            Err(e) => {
                return Err(Error::Journal(format!(
                    "journal `{}` line {line_no}: {e}; the journal is damaged in the middle (not a torn last line). \
Keep a copy of it for the record; `uprun runs abandon` sets it aside so new runs may start",
                    path.display(),
                )))
            }
        }
        offset = next;
    }
    Ok(out)
}

/// Read a journal's complete entries; a torn last line is left out.
pub fn read(path: &Path) -> Result<Vec<Entry>> {
    Ok(read_full(path)?.entries)
}

/// A free name next to `path`: `<path>.<what>`, then `<path>.<what>-2`...
pub fn side_file(path: &Path, what: &str) -> PathBuf {
    let base = format!("{}.{what}", path.display());
    let mut candidate = PathBuf::from(&base);
    let mut n = 1;
    while candidate.exists() {
        n += 1;
        candidate = PathBuf::from(format!("{base}-{n}"));
    }
    candidate
}

/// What an earlier attempt of a run did, by call key.
#[derive(Debug, Default, Clone)]
pub struct Replay {
    pub done: HashMap<String, Value>,
    /// Calls announced but never closed: the process died during them.
    pub in_flight: HashMap<String, Value>,
    /// Calls that failed; they are retried.
    pub failed: HashMap<String, String>,
    /// What each call was announced as doing (its `started` description).
    pub descriptions: HashMap<String, String>,
}

impl Replay {
    pub fn from_entries(entries: &[Entry]) -> Replay {
        let mut r = Replay::default();
        for e in entries {
            match e {
                Entry::Started {
                    key,
                    intent,
                    description,
                    ..
                } => {
                    r.in_flight.insert(key.clone(), intent.clone());
                    r.descriptions.insert(key.clone(), description.clone());
                    r.failed.remove(key);
                }
                Entry::Done { key, result, .. } => {
                    r.in_flight.remove(key);
                    r.done.insert(key.clone(), result.clone());
                }
                Entry::Failed { key, error, .. } => {
                    r.in_flight.remove(key);
                    r.failed.insert(key.clone(), error.clone());
                }
                _ => {}
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::journal::summarize;

    fn started(key: &str, intent: Value) -> Entry {
        Entry::Started {
            key: key.into(),
            call: "c".into(),
            node: None,
            description: format!("step {key}"),
            intent,
            at: "t".into(),
            within: None,
        }
    }
    fn done(key: &str, result: Value) -> Entry {
        Entry::Done {
            key: key.into(),
            result,
            ms: 1,
            at: "t".into(),
        }
    }
    fn failed(key: &str) -> Entry {
        Entry::Failed {
            key: key.into(),
            error: format!("{key} broke"),
            at: "t".into(),
        }
    }

    #[test]
    fn replay_sorts_calls_into_done_in_flight_and_failed() {
        let r = Replay::from_entries(&[
            started("a", json!({"intent": "a"})),
            done("a", json!({"result": "a"})),
            started("b", json!({"intent": "b"})),
            started("c", json!(null)),
            failed("c"),
            Entry::Note {
                at: "t".into(),
                message: "ignored".into(),
            },
        ]);
        assert_eq!(r.done.get("a"), Some(&json!({"result": "a"})));
        assert!(!r.in_flight.contains_key("a"), "closed by its done");
        assert_eq!(r.in_flight.get("b"), Some(&json!({"intent": "b"})));
        assert_eq!(r.in_flight.len(), 1, "{:?}", r.in_flight);
        assert_eq!(r.failed.get("c").map(String::as_str), Some("c broke"));
        assert_eq!(r.descriptions.get("b").map(String::as_str), Some("step b"));
        assert_eq!(r.descriptions.len(), 3);
    }

    #[test]
    fn replay_retry_of_a_failed_call_clears_its_failure() {
        // A call that failed in one attempt and was started again by the next:
        // it is in flight, no longer failed; done by a third, it is done.
        let entries = [started("k", json!(1)), failed("k"), started("k", json!(2))];
        let r = Replay::from_entries(&entries);
        assert!(r.failed.is_empty(), "{:?}", r.failed);
        assert_eq!(r.in_flight.get("k"), Some(&json!(2)));
        let mut more = entries.to_vec();
        more.push(done("k", json!("ok")));
        let r = Replay::from_entries(&more);
        assert!(r.in_flight.is_empty() && r.failed.is_empty());
        assert_eq!(r.done.get("k"), Some(&json!("ok")));
        assert!(Replay::from_entries(&[]).done.is_empty());
    }

    #[test]
    fn refusals_and_unknown_entry_kinds_are_read() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("r.jsonl");
        std::fs::write(
            &path,
            concat!(
                "{\"type\":\"refusal\",\"by\":\"rail\",\"message\":\"no\",\"at\":\"t\"}\n",
                "{\"type\":\"written_by_a_newer_uprun\",\"x\":1}\n",
                "{\"type\":\"end\",\"outcome\":\"succeeded\",\"at\":\"t\"}\n",
            ),
        )
        .expect("write");
        let entries = read(&path).expect("readable");
        assert!(matches!(&entries[0], Entry::Refusal { by, .. } if by == "rail"));
        assert!(matches!(entries[1], Entry::Unknown));
        assert_eq!(
            summarize("r", &entries).outcome,
            crate::journal::RunOutcome::Ended(crate::journal::Outcome::Succeeded)
        );
    }

    #[test]
    fn a_torn_last_line_is_kept_apart_and_a_damaged_middle_line_is_an_error() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("r.jsonl");
        let note = "{\"type\":\"note\",\"at\":\"t\",\"message\":\"m\"}";
        std::fs::write(&path, format!("{note}\n{note}\n{{\"type\":\"no")).expect("write");
        let c = read_full(&path).expect("readable");
        assert_eq!(c.entries.len(), 2);
        let torn = c.torn.expect("torn");
        assert_eq!(
            (torn.line, torn.bytes.as_slice()),
            (3, &b"{\"type\":\"no"[..])
        );
        assert_eq!(torn.offset as usize, 2 * (note.len() + 1));

        std::fs::write(&path, note).expect("write");
        let c = read_full(&path).expect("readable");
        assert!(c.torn.is_none() && c.missing_newline && c.entries.len() == 1);

        std::fs::write(&path, format!("{note}\n{{bad\n{note}\n")).expect("write");
        let e = read_full(&path).expect_err("damaged").to_string();
        assert!(e.contains("line 2") && e.contains("r.jsonl"), "{e}");
    }
}
