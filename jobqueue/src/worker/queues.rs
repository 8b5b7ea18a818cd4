//! Which queues a worker takes jobs from, and in which order on each fetch.

use std::collections::HashSet;

use rand::seq::SliceRandom;

use crate::error::Error;

/// The queues a worker consumes, as Sidekiq's `-q` options choose them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queues(Mode);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Mode {
    /// Every queue in the `queues` set, in random order (a Celery worker without `-Q`).
    All,
    /// Always in the given order: a later queue runs only when the earlier ones are empty.
    Strict(Vec<String>),
    /// Queue `q` is tried first on `weight(q) / sum(weights)` of fetches.
    Weighted(Vec<(String, u32)>),
}

impl Queues {
    /// Every queue that exists, including ones created after the worker started.
    pub fn all() -> Self {
        Queues(Mode::All)
    }

    /// The given queues in strict priority order.
    pub fn strict<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Queues(Mode::Strict(names.into_iter().map(Into::into).collect()))
    }

    /// The given queues, each tried first in proportion to its weight (at least 1).
    pub fn weighted<I, S>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (S, u32)>,
        S: Into<String>,
    {
        Queues(Mode::Weighted(
            pairs
                .into_iter()
                .map(|(name, weight)| (name.into(), weight.max(1)))
                .collect(),
        ))
    }

    /// Parses Sidekiq's `-q` syntax: `["critical,2", "default"]`. As in Sidekiq, all weights
    /// absent or 0 means strict order, and any weight above 0 makes it weighted.
    pub fn parse<I, S>(specs: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut pairs = Vec::new();
        for spec in specs {
            let spec = spec.as_ref();
            let (name, weight) = match spec.split_once(',') {
                Some((name, weight)) => {
                    let weight = weight.trim().parse::<u32>().map_err(|_| {
                        Error::Config(format!(
                            "queue `{spec}`: the weight after the comma must be a whole number, as in `critical,2`"
                        ))
                    })?;
                    (name.trim(), weight)
                }
                None => (spec.trim(), 0),
            };
            pairs.push((name.to_owned(), weight));
        }
        Ok(if pairs.iter().all(|(_, w)| *w == 0) {
            Queues::strict(pairs.into_iter().map(|(n, _)| n))
        } else {
            Queues::weighted(pairs)
        })
    }

    /// The queue names named by this selection; empty for [`Queues::all`].
    pub fn names(&self) -> Vec<String> {
        match &self.0 {
            Mode::All => Vec::new(),
            Mode::Strict(names) => names.clone(),
            Mode::Weighted(pairs) => pairs.iter().map(|(n, _)| n.clone()).collect(),
        }
    }

    /// Whether this selection follows the `queues` set.
    pub fn is_all(&self) -> bool {
        self.0 == Mode::All
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let names = self.names();
        if !self.is_all() && names.is_empty() {
            return Err(Error::Config(
                "no queues given; name at least one, or use Queues::all()".into(),
            ));
        }
        if let Some(bad) = names
            .iter()
            .find(|n| n.is_empty() || n.chars().any(char::is_whitespace))
        {
            return Err(Error::Config(format!(
                "queue name `{bad}` is empty or has white space"
            )));
        }
        Ok(())
    }

    /// The order to try the queues in on one fetch; `known` is the `queues` set, used by
    /// [`Queues::all`].
    pub(crate) fn fetch_order(&self, known: &[String]) -> Vec<String> {
        let mut rng = rand::rng();
        match &self.0 {
            Mode::Strict(names) => names.clone(),
            Mode::All => {
                let mut names = known.to_vec();
                names.shuffle(&mut rng);
                names
            }
            Mode::Weighted(pairs) => {
                let mut expanded: Vec<&str> = pairs
                    .iter()
                    .flat_map(|(name, weight)| std::iter::repeat_n(name.as_str(), *weight as usize))
                    .collect();
                expanded.shuffle(&mut rng);
                let mut seen = HashSet::new();
                expanded
                    .into_iter()
                    .filter(|n| seen.insert(*n))
                    .map(str::to_owned)
                    .collect()
            }
        }
    }
}

/// Sidekiq's `-q` syntax: `critical,2 default,1`, or `*` for all queues.
impl std::fmt::Display for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Mode::All => f.write_str("*"),
            Mode::Strict(names) => f.write_str(&names.join(" ")),
            Mode::Weighted(pairs) => {
                let specs: Vec<String> = pairs.iter().map(|(n, w)| format!("{n},{w}")).collect();
                f.write_str(&specs.join(" "))
            }
        }
    }
}

impl Default for Queues {
    fn default() -> Self {
        Queues::all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sidekiq_syntax() {
        assert_eq!(
            Queues::parse(["critical", "default"]).unwrap(),
            Queues::strict(["critical", "default"])
        );
        assert_eq!(
            Queues::parse(["critical,2", "default"]).unwrap(),
            Queues::weighted([("critical", 2), ("default", 1)])
        );
        assert!(Queues::parse(["critical,x"]).is_err());
    }

    #[test]
    fn strict_order_is_fixed() {
        let q = Queues::strict(["a", "b", "c"]);
        for _ in 0..10 {
            assert_eq!(q.fetch_order(&[]), ["a", "b", "c"]);
        }
    }

    #[test]
    fn weights_decide_how_often_a_queue_comes_first() {
        let q = Queues::weighted([("critical", 3), ("default", 1)]);
        let firsts = (0..4000)
            .filter(|_| q.fetch_order(&[])[0] == "critical")
            .count();
        // Expected 3000 of 4000; the bound is over 10 standard deviations wide.
        assert!(
            (2700..3300).contains(&firsts),
            "critical first {firsts} times"
        );
        assert_eq!(q.fetch_order(&[]).len(), 2);
    }

    #[test]
    fn all_follows_the_known_queues() {
        let known = vec!["a.b.c".to_owned(), "d".to_owned()];
        let mut order = Queues::all().fetch_order(&known);
        order.sort();
        assert_eq!(order, known);
    }
}
