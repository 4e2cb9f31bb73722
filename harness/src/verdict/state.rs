//! The three states of every verdict and how several combine: the bottom of the verdict
//! layer, which every rule above it returns.

use serde::{Deserialize, Serialize};

/// The three states of every verdict (docs/STATISTICS.md rule 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Regression,
    Inconclusive,
}

impl Verdict {
    /// The name the results database stores it under.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Regression => "regression",
            Verdict::Inconclusive => "inconclusive",
        }
    }

    pub fn from_name(name: &str) -> Option<Verdict> {
        [Verdict::Pass, Verdict::Regression, Verdict::Inconclusive]
            .into_iter()
            .find(|v| v.name() == name)
    }

    /// Worst of several: regression > inconclusive > pass.
    pub fn worst(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        verdicts
            .into_iter()
            .fold(Verdict::Pass, |acc, v| match (acc, v) {
                (Verdict::Regression, _) | (_, Verdict::Regression) => Verdict::Regression,
                (Verdict::Inconclusive, _) | (_, Verdict::Inconclusive) => Verdict::Inconclusive,
                _ => Verdict::Pass,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_verdict_wins() {
        use Verdict::*;
        assert_eq!(Verdict::worst([Pass, Inconclusive, Pass]), Inconclusive);
        assert_eq!(Verdict::worst([Pass, Regression, Inconclusive]), Regression);
        assert_eq!(Verdict::worst([Pass, Pass]), Pass);
    }

    #[test]
    fn a_verdict_is_read_back_from_its_stored_name() {
        for v in [Verdict::Pass, Verdict::Regression, Verdict::Inconclusive] {
            assert_eq!(Verdict::from_name(v.name()), Some(v));
            // The name is serde's, so JSON results and the database agree.
            assert_eq!(
                serde_json::to_string(&v).unwrap(),
                format!("\"{}\"", v.name())
            );
        }
        assert_eq!(Verdict::from_name("failed"), None);
    }
}
