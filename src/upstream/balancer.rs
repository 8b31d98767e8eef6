//! Choosing a target for each request: weighted round robin, least request
//! (power of two choices), weighted random, and weighted rendezvous hashing.
//!
//! Ejected targets are skipped; when every target is ejected all of them are
//! candidates again (Envoy's "panic mode"), so a fully failed upstream still
//! gets probed rather than answering every request without trying.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::Balance;

use super::target::Target;

/// A balancing strategy with its precomputed state.
#[derive(Debug)]
pub enum Balancer {
    /// `schedule` spreads each target `weight` times, interleaved (smooth WRR).
    RoundRobin {
        schedule: Vec<usize>,
        next: AtomicUsize,
    },
    LeastRequest,
    Random,
    Hash,
}

impl Balancer {
    pub fn new(kind: Balance, targets: &[impl std::ops::Deref<Target = Target>]) -> Self {
        match kind {
            Balance::RoundRobin => {
                let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
                Balancer::RoundRobin { schedule: smooth_schedule(&weights), next: AtomicUsize::new(0) }
            }
            Balance::LeastRequest => Balancer::LeastRequest,
            Balance::Random => Balancer::Random,
            Balance::Hash => Balancer::Hash,
        }
    }

    /// Index of the target for this request. `hash_input` is used by `Hash`
    /// only; `skip` excludes targets already tried for this request.
    pub fn pick(
        &self,
        targets: &[impl std::ops::Deref<Target = Target>],
        hash_input: &[u8],
        skip: &[usize],
    ) -> Option<usize> {
        let n = targets.len();
        let healthy_exists = (0..n).any(|i| !skip.contains(&i) && targets[i].is_healthy());
        let eligible = |i: usize| !skip.contains(&i) && (!healthy_exists || targets[i].is_healthy());
        if !(0..n).any(eligible) {
            return None;
        }
        if n == 1 {
            return Some(0);
        }
        match self {
            Balancer::RoundRobin { schedule, next } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..schedule.len()).map(|k| schedule[(start + k) % schedule.len()]).find(|&i| eligible(i))
            }
            Balancer::Random => weighted_random(targets, &eligible),
            Balancer::LeastRequest => {
                let a = weighted_random(targets, &eligible)?;
                let b = weighted_random(targets, &|i| eligible(i) && i != a).unwrap_or(a);
                // Compare in_flight / weight without division.
                let load = |i: usize| targets[i].in_flight() as u64 * targets[if i == a { b } else { a }].weight as u64;
                Some(if load(b) < load(a) { b } else { a })
            }
            Balancer::Hash => {
                // Weighted rendezvous hashing: score = weight / -ln(u), highest wins.
                // Removing or ejecting one target only moves the keys it held.
                let mut best = None;
                let mut best_score = f64::MIN;
                for i in (0..n).filter(|&i| eligible(i)) {
                    let mut hasher = std::hash::DefaultHasher::new();
                    hash_input.hash(&mut hasher);
                    targets[i].authority.as_str().hash(&mut hasher);
                    let u = ((hasher.finish() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                    let score = targets[i].weight as f64 / -u.ln();
                    if score > best_score {
                        best_score = score;
                        best = Some(i);
                    }
                }
                best
            }
        }
    }
}

fn weighted_random(
    targets: &[impl std::ops::Deref<Target = Target>],
    eligible: &dyn Fn(usize) -> bool,
) -> Option<usize> {
    let total: u64 = (0..targets.len()).filter(|&i| eligible(i)).map(|i| targets[i].weight as u64).sum();
    if total == 0 {
        return None;
    }
    let mut ticket = fastrand::u64(0..total);
    for i in (0..targets.len()).filter(|&i| eligible(i)) {
        let w = targets[i].weight as u64;
        if ticket < w {
            return Some(i);
        }
        ticket -= w;
    }
    None
}

/// Nginx-style smooth weighted round robin, unrolled into one cycle so each
/// pick is a single atomic increment: weights 5,1,1 give a,a,b,a,c,a,a.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let weights: Vec<i64> = weights.iter().map(|&w| (w / divisor) as i64).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current.iter().enumerate().max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i))).expect("targets");
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn targets(weights: &[u32]) -> Vec<Arc<Target>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Arc::new(Target::new(format!("127.0.0.1:{}", 9000 + i).parse().unwrap(), w, None)))
            .collect()
    }

    fn counts(balancer: &Balancer, ts: &[Arc<Target>], picks: usize, key: impl Fn(usize) -> Vec<u8>) -> Vec<usize> {
        let mut counts = vec![0; ts.len()];
        for k in 0..picks {
            counts[balancer.pick(ts, &key(k), &[]).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn smooth_schedule_interleaves_by_weight() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[2, 2]), vec![0, 1]);
    }

    #[test]
    fn round_robin_follows_weights_exactly() {
        let ts = targets(&[3, 1]);
        let b = Balancer::new(Balance::RoundRobin, &ts);
        assert_eq!(counts(&b, &ts, 400, |_| vec![]), vec![300, 100]);
    }

    #[test]
    fn random_follows_weights_roughly() {
        let ts = targets(&[3, 1]);
        let b = Balancer::new(Balance::Random, &ts);
        let c = counts(&b, &ts, 4000, |_| vec![]);
        assert!((2700..3300).contains(&c[0]), "{c:?}");
    }

    #[tokio::test]
    async fn least_request_prefers_the_less_loaded_target() {
        let pair = vec![
            Arc::new(Target::new("127.0.0.1:9000".parse().unwrap(), 1, None)),
            Arc::new(Target::new("127.0.0.1:9001".parse().unwrap(), 1, None)),
        ];
        let mut busy = Vec::new();
        for _ in 0..5 {
            busy.push(pair[0].acquire(Duration::from_secs(1)).await.unwrap());
        }
        let b = Balancer::new(Balance::LeastRequest, &pair);
        for _ in 0..50 {
            assert_eq!(b.pick(&pair, b"", &[]), Some(1));
        }
    }

    #[test]
    fn hash_is_sticky_and_only_moves_keys_of_an_ejected_target() {
        let ts = targets(&[1, 1, 1]);
        let b = Balancer::new(Balance::Hash, &ts);
        let before: Vec<usize> =
            (0..300).map(|k| b.pick(&ts, format!("client-{k}").as_bytes(), &[]).unwrap()).collect();
        let again: Vec<usize> = (0..300).map(|k| b.pick(&ts, format!("client-{k}").as_bytes(), &[]).unwrap()).collect();
        assert_eq!(before, again);
        let c = counts(&b, &ts, 3000, |k| format!("k{k}").into_bytes());
        assert!(c.iter().all(|&n| (800..1200).contains(&n)), "{c:?}");
        ts[1].record_connect_failure(1, Duration::from_secs(60));
        for (k, &was) in before.iter().enumerate() {
            let now = b.pick(&ts, format!("client-{k}").as_bytes(), &[]).unwrap();
            if was != 1 {
                assert_eq!(now, was, "keys of healthy targets stay put");
            } else {
                assert_ne!(now, 1);
            }
        }
    }

    #[test]
    fn ejected_targets_are_skipped_until_all_are_ejected() {
        let ts = targets(&[1, 1]);
        let b = Balancer::new(Balance::RoundRobin, &ts);
        ts[0].record_connect_failure(1, Duration::from_secs(60));
        assert_eq!(counts(&b, &ts, 10, |_| vec![]), vec![0, 10]);
        ts[1].record_connect_failure(1, Duration::from_secs(60));
        assert_eq!(counts(&b, &ts, 10, |_| vec![]), vec![5, 5], "panic mode uses every target");
        assert_eq!(b.pick(&ts, b"", &[0, 1]), None);
    }
}
