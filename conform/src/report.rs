//! What a run found: one [`CaseResult`] per case, rendered as a table or JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// What a case rests on.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "basis", content = "reference", rename_all = "snake_case")]
pub enum Basis {
    /// A rule of ETSI GS QKD 014 V1.1.1; the clause.
    Spec(&'static str),
    /// A policy of ours where the spec is silent; where it is written down.
    Decision(&'static str),
}

/// A case's result.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The KME behaved as the rule says.
    Pass,
    /// It did not.
    Fail,
    /// Not run: not applicable (e.g. no third SAE, no multicast), read-only mode or key budget.
    Skip,
}

/// One case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// Short stable name, e.g. `dec-keys-at-most-once`.
    pub id: &'static str,
    /// What is checked, in words.
    pub title: &'static str,
    /// The clause or decision it rests on.
    #[serde(flatten)]
    pub basis: Basis,
    /// Pass, fail or skip.
    pub outcome: Outcome,
    /// What was seen (status codes, messages, counts; never key bytes).
    pub seen: String,
    /// A known vendor quirk this behaviour matches, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quirk: Option<&'static str>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The master's KME URL.
    pub target: String,
    /// Whether the run was read-only.
    pub read_only: bool,
    /// Keys the run announced it would consume at most.
    pub planned_keys: u32,
    /// Keys actually delivered to the tester by enc_keys.
    pub consumed_keys: u32,
    /// Every case, in the order run.
    pub cases: Vec<CaseResult>,
    /// The vendor quirks observed (names as in the emulator and the adapter's documentation).
    pub quirks: Vec<&'static str>,
}

impl Report {
    /// Cases that failed a rule of the spec.
    pub fn spec_failures(&self) -> impl Iterator<Item = &CaseResult> {
        self.cases
            .iter()
            .filter(|c| c.outcome == Outcome::Fail && matches!(c.basis, Basis::Spec(_)))
    }

    /// Cases that failed one of our decisions (the spec is silent there).
    pub fn decision_failures(&self) -> impl Iterator<Item = &CaseResult> {
        self.cases
            .iter()
            .filter(|c| c.outcome == Outcome::Fail && matches!(c.basis, Basis::Decision(_)))
    }

    /// The case with this ID.
    pub fn case(&self, id: &str) -> Option<&CaseResult> {
        self.cases.iter().find(|c| c.id == id)
    }

    /// Process exit status for CI: 0 nothing failed, 1 a spec rule failed, 2 only decisions
    /// failed.
    pub fn exit_code(&self) -> i32 {
        if self.spec_failures().next().is_some() {
            1
        } else if self.decision_failures().next().is_some() {
            2
        } else {
            0
        }
    }

    /// A table for people: one line per case, spec and decision failures counted apart.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "ETSI GS QKD 014 conformance of {}{}",
            self.target,
            if self.read_only { " (read-only)" } else { "" }
        );
        let _ = writeln!(
            out,
            "keys: planned at most {}, consumed {}\n",
            self.planned_keys, self.consumed_keys
        );
        let _ = writeln!(out, "{:<5} {:<34} {:<24} SEEN", "", "CASE", "BASIS");
        for c in &self.cases {
            let mark = match c.outcome {
                Outcome::Pass => "pass",
                Outcome::Fail => "FAIL",
                Outcome::Skip => "skip",
            };
            let basis = match c.basis {
                Basis::Spec(clause) => clause.to_string(),
                Basis::Decision(_) => "decision".to_string(),
            };
            let quirk = c.quirk.map(|q| format!(" [quirk {q}]")).unwrap_or_default();
            let _ = writeln!(out, "{mark:<5} {:<34} {basis:<24} {}{quirk}", c.id, c.seen);
        }
        let count = |o| self.cases.iter().filter(|c| c.outcome == o).count();
        let _ = writeln!(
            out,
            "\n{} passed, {} spec failures, {} decision failures, {} skipped",
            count(Outcome::Pass),
            self.spec_failures().count(),
            self.decision_failures().count(),
            count(Outcome::Skip)
        );
        if !self.quirks.is_empty() {
            let _ = writeln!(out, "vendor quirks seen: {}", self.quirks.join(", "));
        }
        out
    }
}
