//! Which queues a worker takes jobs from, and in which order on each fetch.

use rand::seq::SliceRandom;
use rand::Rng;

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
    /// The largest weight [`Queues::parse`] takes (`-q name,1000`). Weights are relative:
    /// `a,3 b,1` and `a,300 b,100` fetch alike, and no deployment needs a ratio over 1000
    /// to 1. The cost of a fetch's order does not grow with the weights.
    pub const MAX_WEIGHT: u32 = 1000;

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
                    let weight = weight
                        .trim()
                        .parse::<u32>()
                        .ok()
                        .filter(|w| *w <= Self::MAX_WEIGHT)
                        .ok_or_else(|| {
                            Error::Config(format!(
                                "queue `{spec}`: the weight after the comma must be a whole number \
                                 from 0 to {}, as in `critical,2`",
                                Self::MAX_WEIGHT
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
            Mode::Weighted(pairs) => weighted_order(pairs, &mut rng),
        }
    }
}

/// The queues in the order Sidekiq's weighted fetch gives them (each name repeated by its
/// weight, shuffled, duplicates dropped), drawn without building that list: the first queue
/// is drawn with probability proportional to its weight, the next among those left in
/// proportion to theirs, and so on. The work grows with the number of queues, never with
/// their weights.
fn weighted_order(pairs: &[(String, u32)], rng: &mut impl Rng) -> Vec<String> {
    let mut left: Vec<(&str, u64)> = pairs
        .iter()
        .map(|(name, weight)| (name.as_str(), u64::from((*weight).max(1))))
        .collect();
    let mut order = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let total: u64 = left.iter().map(|(_, w)| w).sum();
        let mut draw = rng.random_range(0..total);
        let mut chosen = left.len() - 1;
        for (i, (_, weight)) in left.iter().enumerate() {
            if draw < *weight {
                chosen = i;
                break;
            }
            draw -= weight;
        }
        let (name, _) = left.remove(chosen);
        // A name given twice keeps its first place, as Sidekiq's `uniq` does.
        if !order.iter().any(|n: &String| n == name) {
            order.push(name.to_owned());
        }
    }
    order
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
    fn weights_over_the_maximum_are_refused() {
        assert!(Queues::parse(["a,1000", "b"]).is_ok());
        for spec in ["a,1001", "a,4000000000", "a,99999999999", "a,-1"] {
            let err = Queues::parse([spec]).unwrap_err().to_string();
            assert!(
                err.contains(spec) && err.contains("from 0 to 1000"),
                "{spec}: {err}"
            );
        }
    }

    /// A random source that counts how often it is drawn from.
    struct Counting(rand::rngs::StdRng, usize);

    impl rand::RngCore for Counting {
        fn next_u32(&mut self) -> u32 {
            self.1 += 1;
            self.0.next_u32()
        }
        fn next_u64(&mut self) -> u64 {
            self.1 += 1;
            self.0.next_u64()
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            self.1 += 1;
            self.0.fill_bytes(dest);
        }
    }

    #[test]
    fn the_weighted_order_costs_nothing_per_unit_of_weight() {
        use rand::SeedableRng;
        let mut rng = Counting(rand::rngs::StdRng::seed_from_u64(7), 0);
        let heavy = [("a", 1000), ("b", 1000), ("c", 999)].map(|(n, w)| (n.to_owned(), w));
        for _ in 0..100 {
            let mut order = weighted_order(&heavy, &mut rng);
            order.sort();
            assert_eq!(order, ["a", "b", "c"]);
        }
        // One draw per queue per order (a draw is rarely repeated by rejection sampling),
        // however large the weights: 100 orders of 3 queues, where a shuffle of the
        // queues repeated by their weights would draw about 3000 times per order.
        assert!(rng.1 <= 2 * 300, "{} draws", rng.1);
        // The largest weights a `Queues` holds, in no memory to speak of.
        let huge = [("a", u32::MAX), ("b", 1), ("c", u32::MAX)].map(|(n, w)| (n.to_owned(), w));
        let order = weighted_order(&huge, &mut rng);
        assert_eq!(order.len(), 3);
    }

    #[test]
    fn every_place_follows_the_weights() {
        // Weights 3, 2, 1: `a b c` comes with probability 3/6 * 2/3 = 1/3, as Sidekiq's
        // shuffle of `a a a b b c` without duplicates gives it; `c b a` with 1/6 * 2/5.
        let q = Queues::weighted([("a", 3), ("b", 2), ("c", 1)]);
        let mut abc = 0;
        let mut cba = 0;
        for _ in 0..6000 {
            match q.fetch_order(&[]).join(" ").as_str() {
                "a b c" => abc += 1,
                "c b a" => cba += 1,
                _ => {}
            }
        }
        // Expected 2000 and 400; each bound is over 6 standard deviations wide.
        assert!((1700..2300).contains(&abc), "a b c {abc} times");
        assert!((280..520).contains(&cba), "c b a {cba} times");
    }

    #[test]
    fn all_follows_the_known_queues() {
        let known = vec!["a.b.c".to_owned(), "d".to_owned()];
        let mut order = Queues::all().fetch_order(&known);
        order.sort();
        assert_eq!(order, known);
    }
}
