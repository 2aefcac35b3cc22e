//! How a run ended (`Outcome`, what the journal's `end` entry records) and
//! how a run stands as its journal shows it (`RunOutcome`, what `uprun runs`
//! and `uprun status` list).

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// How a run (or a plan) ended. The journal's `end` entry and the
/// `run_finished` event carry [`Outcome::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    #[serde(rename = "succeeded")]
    Succeeded,
    #[serde(rename = "failed")]
    Failed,
    #[serde(rename = "interrupted")]
    Interrupted,
    /// The procedure ended but the run-end audit found the site unfinished.
    #[serde(rename = "incomplete")]
    Incomplete,
    /// Set aside by the operator (`uprun runs abandon`).
    #[serde(rename = "abandoned")]
    Abandoned,
    /// `uprun plan` went to its end.
    #[serde(rename = "planned")]
    Planned,
    #[serde(rename = "plan failed")]
    PlanFailed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
            Outcome::Incomplete => "incomplete",
            Outcome::Abandoned => "abandoned",
            Outcome::Planned => "planned",
            Outcome::PlanFailed => "plan failed",
        }
    }

    /// How a run that ended with `e` ended.
    pub fn of_error(e: &crate::Error) -> Outcome {
        match e {
            crate::Error::Interrupted(_) => Outcome::Interrupted,
            crate::Error::Incomplete(_) => Outcome::Incomplete,
            _ => Outcome::Failed,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Outcome {
    const ALL: [Outcome; 7] = [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::Interrupted,
        Outcome::Incomplete,
        Outcome::Abandoned,
        Outcome::Planned,
        Outcome::PlanFailed,
    ];

    /// The outcome written as `s` (as in a journal's `end` entry).
    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// How a run stands, from its journal. Serialised and shown as the journal's
/// words: the `end` entry's outcome, or `unfinished`, `never started`,
/// `damaged`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The journal's `end` entry says how the run ended.
    Ended(Outcome),
    /// An `end` entry with an outcome this version does not know (written by
    /// another version): shown as written.
    Other(String),
    /// The process died (killed, power loss) without closing the journal.
    Unfinished,
    /// The journal has no header: the process died before its first entry,
    /// so nothing was changed.
    NeverStarted,
    /// The journal cannot be read.
    Damaged,
}

impl RunOutcome {
    /// The outcome an `end` entry records as `s`.
    pub fn ended(s: &str) -> RunOutcome {
        Outcome::parse(s).map_or_else(|| RunOutcome::Other(s.to_string()), RunOutcome::Ended)
    }

    pub fn as_str(&self) -> &str {
        match self {
            RunOutcome::Ended(o) => o.as_str(),
            RunOutcome::Other(s) => s,
            RunOutcome::Unfinished => "unfinished",
            RunOutcome::NeverStarted => "never started",
            RunOutcome::Damaged => "damaged",
        }
    }
}

impl fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl Serialize for RunOutcome {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_reads_back_from_its_words() {
        for o in Outcome::ALL {
            assert_eq!(RunOutcome::ended(o.as_str()), RunOutcome::Ended(o));
        }
        assert_eq!(
            RunOutcome::ended("rolled back"),
            RunOutcome::Other("rolled back".into())
        );
    }

    #[test]
    fn run_outcomes_are_shown_and_serialised_as_the_journal_words() {
        let words = [
            (RunOutcome::Unfinished, "unfinished"),
            (RunOutcome::NeverStarted, "never started"),
            (RunOutcome::Damaged, "damaged"),
            (RunOutcome::Ended(Outcome::PlanFailed), "plan failed"),
            (RunOutcome::Other("odd".into()), "odd"),
        ];
        for (o, word) in words {
            assert_eq!(o.to_string(), word);
            assert_eq!(
                serde_json::to_string(&o).expect("json"),
                format!("\"{word}\"")
            );
        }
        assert_eq!(
            format!("[{:<12}]", RunOutcome::Unfinished),
            "[unfinished  ]"
        );
    }
}
