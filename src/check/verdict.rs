//! The checklist: one line per check with its verdict, and what to do about a problem.

use std::fmt;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Fine (or fine for now, as the detail says).
    Ok,
    /// Worth a look; the move can still work.
    Warn,
    /// `up`, or the move, would fail.
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The verdict.
    pub verdict: Verdict,
    /// What was checked, e.g. `forwarding`.
    pub what: String,
    /// What was found.
    pub detail: String,
    /// What to do about it (warn and FAIL lines).
    pub fix: Option<String>,
}

impl Line {
    /// An ok line.
    pub fn ok(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::new(Verdict::Ok, what, detail, None)
    }

    /// A warn line with its remedy.
    pub fn warn(
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(Verdict::Warn, what, detail, Some(fix.into()))
    }

    /// A FAIL line with its remedy.
    pub fn fail(
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::new(Verdict::Fail, what, detail, Some(fix.into()))
    }

    fn new(
        verdict: Verdict,
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: Option<String>,
    ) -> Self {
        Self {
            verdict,
            what: what.into(),
            detail: detail.into(),
            fix,
        }
    }
}

/// All lines of one check run, in the order they were checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checklist {
    /// The lines.
    pub lines: Vec<Line>,
}

impl Checklist {
    /// How many lines have this verdict.
    pub fn count(&self, verdict: Verdict) -> usize {
        self.lines.iter().filter(|l| l.verdict == verdict).count()
    }

    /// True when nothing would make `up` or the move fail.
    pub fn passed(&self) -> bool {
        self.count(Verdict::Fail) == 0
    }

    /// The line about `what`, for tests.
    pub fn line(&self, what: &str) -> Option<&Line> {
        self.lines.iter().find(|l| l.what == what)
    }
}

impl fmt::Display for Checklist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.lines {
            writeln!(f, "{:<5} {}: {}", l.verdict.to_string(), l.what, l.detail)?;
            if let Some(fix) = &l.fix {
                writeln!(f, "      -> {fix}")?;
            }
        }
        let (fails, warns) = (self.count(Verdict::Fail), self.count(Verdict::Warn));
        if fails == 0 {
            writeln!(f, "result: ready ({warns} warning(s))")
        } else {
            writeln!(
                f,
                "result: {fails} FAIL, {warns} warning(s): up or the move would fail; fix the FAIL lines"
            )
        }
    }
}
