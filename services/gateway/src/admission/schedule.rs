//! The pace model behind admission's deadline checks: the stages shared between the requests
//! in flight (processor sharing), learned from finished requests, and a simulation of when
//! each running and queued request would finish. Pure arithmetic, no clock.
//!
//! A request of `cost` units needs `cost × solo` seconds of work, `solo` being the seconds per
//! unit of a request running alone. With `n` requests in flight each progresses at
//! [`Estimate::speed`]`(n) = min(1, parallelism / n)` of its solo pace: up to `parallelism`
//! requests overlap without slowing each other (different stages, spare cores), past it they
//! share. A request's [`History`] (how long it spent at each number in flight) gives the work
//! the model says it has done; a finished request teaches `solo` when it ran (mostly) alone and
//! `parallelism` when it shared, and how much longer than modelled it took
//! ([`Estimate::misses`]): the worst of the recent misses is the safety margin of every
//! prediction.

/// The weight of a new sample in the EWMAs.
const EWMA_WEIGHT: f64 = 0.2;

/// Until a request has been seen sharing the stages, assume two overlap without slowing each
/// other (a request spends its time in different stages, and most machines have two cores):
/// an optimistic start that the first shared request corrects either way. A pessimistic one
/// (1) would never admit a second request beside a first under a tight deadline, so would
/// never learn otherwise.
pub const INITIAL_PARALLELISM: f64 = 2.0;

/// How many finished requests' misses the margin looks back on.
pub const MISS_WINDOW: usize = 64;

/// With fewer misses measured than this, the margin is at least [`INITIAL_MARGIN`].
pub const SETTLED: usize = 8;

/// The margin before enough misses have been measured.
pub const INITIAL_MARGIN: f64 = 1.3;

/// The margin is at least this factor...
pub const MIN_MARGIN: f64 = 1.06;

/// ... and at most this one.
pub const MAX_MARGIN: f64 = 2.0;

/// A request whose mean number in flight stayed below this ran (mostly) alone: it teaches
/// `solo`; above it, `parallelism`.
const ALONE: f64 = 1.25;

/// The range `parallelism` is kept in (below 1: the stages slowed even for a request alone).
const PARALLELISM_RANGE: (f64, f64) = (0.25, 256.0);

/// A running request whose modelled work is already done is assumed to have this share of
/// its work left (it is late against the model, so about to finish rather than done).
const LEFT_WHEN_OVERDUE: f64 = 0.1;

/// What admission has learned of how long work takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Seconds per unit of cost of a request running alone (EWMA); `None` before the first
    /// finished request.
    pub solo: Option<f64>,
    /// How many requests run at once without slowing each other; see the module docs.
    pub parallelism: f64,
    /// How much longer than modelled the last requests that ran (mostly) alone took.
    pub alone: Misses,
    /// The same for the requests that shared the stages: sharing varies more (which stages
    /// overlap, for how long), so it gets its own, usually wider, margin.
    pub shared: Misses,
}

/// The last [`MISS_WINDOW`] ratios of the work a finished request turned out to need to the
/// work the model said it needed (above 1: slower than modelled).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Misses {
    ratios: [f64; MISS_WINDOW],
    len: usize,
    next: usize,
}

impl Default for Misses {
    fn default() -> Self {
        Self {
            ratios: [0.0; MISS_WINDOW],
            len: 0,
            next: 0,
        }
    }
}

impl Misses {
    /// `count` requests that took exactly what was modelled (a settled estimate; tests and
    /// warm starts).
    pub fn exact(count: usize) -> Self {
        let mut misses = Self::default();
        for _ in 0..count {
            misses.push(1.0);
        }
        misses
    }

    /// Adds a finished request's ratio.
    pub fn push(&mut self, ratio: f64) {
        if !ratio.is_finite() || ratio <= 0.0 {
            return;
        }
        self.ratios[self.next] = ratio;
        self.next = (self.next + 1) % MISS_WINDOW;
        self.len = (self.len + 1).min(MISS_WINDOW);
    }

    /// The factor predictions are stretched by: the worst recent ratio, at least
    /// [`MIN_MARGIN`] (or [`INITIAL_MARGIN`] before [`SETTLED`] ratios), at most
    /// [`MAX_MARGIN`]. The worst rather than a mean: an admitted request that misses its
    /// deadline is the failure admission exists to avoid, and the window forgets an outlier
    /// after [`MISS_WINDOW`] requests.
    pub fn margin(&self) -> f64 {
        let worst = self.ratios[..self.len].iter().copied().fold(0.0, f64::max);
        let floor = if self.len < SETTLED {
            INITIAL_MARGIN
        } else {
            MIN_MARGIN
        };
        worst.max(floor).min(MAX_MARGIN)
    }
}

impl Default for Estimate {
    fn default() -> Self {
        Self {
            solo: None,
            parallelism: INITIAL_PARALLELISM,
            alone: Misses::default(),
            shared: Misses::default(),
        }
    }
}

/// How long a request spent with each number of requests in flight (itself included).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// `seconds[n - 1]`: the seconds spent with `n` in flight.
    seconds: Vec<f64>,
}

impl History {
    /// Adds `dt` seconds spent with `in_flight` requests in flight.
    pub fn add(&mut self, in_flight: usize, dt: f64) {
        if in_flight == 0 || !dt.is_finite() || dt <= 0.0 {
            return;
        }
        if self.seconds.len() < in_flight {
            self.seconds.resize(in_flight, 0.0);
        }
        self.seconds[in_flight - 1] += dt;
    }

    /// The seconds recorded.
    pub fn elapsed(&self) -> f64 {
        self.seconds.iter().sum()
    }

    /// The time-averaged number in flight (0 with nothing recorded).
    pub fn mean_in_flight(&self) -> f64 {
        let elapsed = self.elapsed();
        if elapsed <= 0.0 {
            return 0.0;
        }
        self.levels().map(|(n, dt)| n * dt).sum::<f64>() / elapsed
    }

    /// The work done, in solo seconds, at `parallelism`: `Σ dt × min(1, parallelism / n)`.
    pub fn work_done(&self, parallelism: f64) -> f64 {
        self.levels()
            .map(|(n, dt)| dt * (parallelism / n).min(1.0))
            .sum()
    }

    /// The most requests in flight at once (0 with nothing recorded).
    fn most_in_flight(&self) -> f64 {
        self.levels()
            .filter(|&(_, dt)| dt > 0.0)
            .map(|(n, _)| n)
            .fold(0.0, f64::max)
    }

    fn levels(&self) -> impl Iterator<Item = (f64, f64)> + '_ {
        self.seconds
            .iter()
            .enumerate()
            .map(|(i, &dt)| ((i + 1) as f64, dt))
    }
}

impl Estimate {
    /// The pace of each of `in_flight` requests, relative to running alone.
    pub fn speed(&self, in_flight: usize) -> f64 {
        if in_flight == 0 {
            return 1.0;
        }
        (self.parallelism / in_flight as f64).min(1.0)
    }

    /// The factor the predictions of a schedule with at most `in_flight` requests at once are
    /// stretched by (see [`Misses::margin`]): the alone margin for one, the shared one for more.
    pub fn margin(&self, in_flight: usize) -> f64 {
        if in_flight <= 1 {
            self.alone.margin()
        } else {
            self.shared.margin()
        }
    }

    /// The solo seconds `cost` units need, stretched by `margin`; `None` without an estimate.
    pub fn work(&self, cost: u64, margin: f64) -> Option<f64> {
        Some(cost as f64 * self.solo? * margin)
    }

    /// The solo seconds a running request of `cost` units with `history` still needs,
    /// stretched by `margin`; `None` without an estimate.
    pub fn work_left(&self, cost: u64, history: &History, margin: f64) -> Option<f64> {
        let work = self.work(cost, margin)?;
        let left = work - history.work_done(self.parallelism);
        Some(left.max(work * LEFT_WHEN_OVERDUE))
    }

    /// Whether a request of `cost` units with `history` ran longer than the model said it
    /// would (so a failure of it still teaches, as a lower bound).
    pub fn overran(&self, cost: u64, history: &History) -> bool {
        self.solo
            .is_some_and(|solo| history.work_done(self.parallelism) > cost as f64 * solo)
    }

    /// Learns from a request of `cost` units that finished after `history`.
    pub fn learn(&mut self, cost: u64, history: &History) {
        let elapsed = history.elapsed();
        if cost == 0 || !elapsed.is_finite() || elapsed <= 0.0 {
            return;
        }
        let cost = cost as f64;
        let ewma = |old: f64, new: f64| old + EWMA_WEIGHT * (new - old);
        let Some(solo) = self.solo else {
            self.solo = Some(history.work_done(self.parallelism) / cost);
            return;
        };
        let needed = cost * solo;
        let done = history.work_done(self.parallelism);
        if history.mean_in_flight() < ALONE {
            self.alone.push(done / needed);
            self.solo = Some(ewma(solo, done / cost));
        } else {
            self.shared.push(done / needed);
            let sample = solve_parallelism(history, needed);
            self.parallelism =
                ewma(self.parallelism, sample).clamp(PARALLELISM_RANGE.0, PARALLELISM_RANGE.1);
        }
    }

    /// When each request would start and finish, in seconds from now: `running` (work left,
    /// in solo seconds) all run now; `queued` (work, first come first) each start as one
    /// finishes, so the number in flight never grows. Returns `(start, finish)` of `running`,
    /// then of `queued`, in their order. With nothing running, the first queued starts at once.
    pub fn schedule(&self, running: &[f64], queued: &[f64]) -> Vec<(f64, f64)> {
        let total = running.len() + queued.len();
        let mut times = vec![(0.0, 0.0); total];
        // (index into `finish`, work left)
        let mut active: Vec<(usize, f64)> = running.iter().copied().enumerate().collect();
        let mut next = 0;
        if active.is_empty() && !queued.is_empty() {
            active.push((running.len(), queued[0]));
            next = 1;
        }
        let mut now = 0.0;
        while !active.is_empty() {
            let speed = self.speed(active.len());
            let least = active
                .iter()
                .map(|&(_, left)| left)
                .fold(f64::INFINITY, f64::min)
                .max(0.0);
            let dt = least / speed;
            now += dt;
            let mut finished = 0;
            active.retain_mut(|(index, left)| {
                *left -= dt * speed;
                if *left <= least * 1e-9 + 1e-12 {
                    times[*index].1 = now;
                    finished += 1;
                    false
                } else {
                    true
                }
            });
            for _ in 0..finished {
                if next < queued.len() {
                    times[running.len() + next].0 = now;
                    active.push((running.len() + next, queued[next]));
                    next += 1;
                }
            }
        }
        times
    }
}

/// The parallelism at which `history`'s work done equals `needed` solo seconds (the work done
/// grows with the parallelism up to the elapsed time, so bisect). A request that took no
/// longer than its solo time saw no slowdown: the most in flight it ran with.
fn solve_parallelism(history: &History, needed: f64) -> f64 {
    let most = history.most_in_flight().max(1.0);
    if history.elapsed() <= needed {
        return most;
    }
    let (mut low, mut high) = (PARALLELISM_RANGE.0, most);
    if history.work_done(low) >= needed {
        return low;
    }
    for _ in 0..60 {
        let mid = (low + high) / 2.0;
        if history.work_done(mid) < needed {
            low = mid;
        } else {
            high = mid;
        }
    }
    (low + high) / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    fn history(levels: &[(usize, f64)]) -> History {
        let mut history = History::default();
        for &(n, dt) in levels {
            history.add(n, dt);
        }
        history
    }

    /// An estimate whose margin is its minimum (settled, every request as modelled).
    fn estimate(solo: f64, parallelism: f64) -> Estimate {
        Estimate {
            solo: Some(solo),
            parallelism,
            alone: Misses::exact(SETTLED),
            shared: Misses::exact(SETTLED),
        }
    }

    #[test]
    fn speed_shares_past_the_parallelism() {
        let e = estimate(0.01, 1.6);
        assert!(close(e.speed(1), 1.0));
        assert!(close(e.speed(2), 0.8));
        assert!(close(e.speed(4), 0.4));
    }

    #[test]
    fn the_margin_is_the_worst_recent_miss_within_bounds() {
        let mut misses = Misses::default();
        assert!(close(misses.margin(), INITIAL_MARGIN));
        misses.push(1.1);
        assert!(close(misses.margin(), INITIAL_MARGIN), "not settled yet");
        let mut misses = Misses::exact(SETTLED);
        assert!(close(misses.margin(), MIN_MARGIN));
        misses.push(1.4);
        misses.push(0.9);
        misses.push(f64::NAN);
        assert!(close(misses.margin(), 1.4));
        misses.push(5.0);
        assert!(close(misses.margin(), MAX_MARGIN));
        // The worst is forgotten after a window of others.
        for _ in 0..MISS_WINDOW {
            misses.push(1.1);
        }
        assert!(close(misses.margin(), 1.1));
        assert_eq!(Estimate::default().work(10, 1.0), None);
    }

    #[test]
    fn history_integrates_time_by_number_in_flight() {
        let h = history(&[(1, 2.0), (2, 2.0)]);
        assert!(close(h.elapsed(), 4.0));
        assert!(close(h.mean_in_flight(), 1.5));
        assert!(close(h.work_done(1.0), 3.0));
        assert!(close(h.work_done(2.0), 4.0));
        assert!(close(h.most_in_flight(), 2.0));
        assert!(close(History::default().mean_in_flight(), 0.0));
    }

    /// The first request sets `solo`; alone it teaches `solo`, sharing it teaches the
    /// parallelism; each records the model's miss.
    #[test]
    fn learning_solo_and_parallelism() {
        let mut e = Estimate::default();
        e.learn(100, &history(&[(1, 1.0)]));
        assert_eq!(e.solo, Some(0.01));
        assert_eq!(e.alone, Misses::default(), "nothing to compare yet");

        // Alone, 1.2 s: solo moves a fifth of the way to 0.012; the model missed by 20%.
        e.learn(100, &history(&[(1, 1.2)]));
        assert!(close(e.solo.unwrap(), 0.0104));
        let mut expected = Misses::default();
        expected.push(1.2);
        assert_eq!(e.alone, expected);
        assert_eq!(e.shared, Misses::default());

        // Beside one other all along, 1.3 s for 1.04 s of solo work: parallelism 1.6.
        let mut shared = estimate(0.0104, 2.0);
        shared.learn(100, &history(&[(2, 1.3)]));
        assert!(close(shared.parallelism, 2.0 + 0.2 * (1.6 - 2.0)));
        assert_eq!(shared.solo, Some(0.0104), "sharing does not teach solo");
        // The model (parallelism 2: no slowdown) said 1.3 s of work done for 1.04 needed.
        assert!(close(shared.margin(2), 1.25));
        assert!(
            close(shared.margin(1), MIN_MARGIN),
            "the alone margin is apart"
        );

        // Sharing and no slower than alone: the parallelism is at least the most in flight.
        let mut quick = estimate(0.01, 1.0);
        quick.learn(100, &history(&[(3, 0.9)]));
        assert!(close(quick.parallelism, 1.0 + 0.2 * (3.0 - 1.0)));

        // Nothing learned from nothing.
        let before = quick;
        quick.learn(0, &history(&[(1, 1.0)]));
        quick.learn(10, &History::default());
        assert_eq!(quick, before);
    }

    #[test]
    fn a_machine_that_slowed_lowers_the_parallelism_below_one() {
        let mut e = estimate(0.01, 1.0);
        // Two in flight all along, 4 s for 1 s of solo work: each at a quarter of solo pace.
        e.learn(100, &history(&[(2, 4.0)]));
        assert!(close(e.parallelism, 1.0 + 0.2 * (0.5 - 1.0)));
    }

    #[test]
    fn work_left_and_overrun() {
        let e = estimate(0.01, 2.0);
        let h = history(&[(1, 0.5)]);
        assert!(close(e.work_left(100, &h, 1.06).unwrap(), 1.06 - 0.5));
        let late = history(&[(1, 2.0)]);
        assert!(close(
            e.work_left(100, &late, 1.06).unwrap(),
            1.06 * LEFT_WHEN_OVERDUE
        ));
        assert!(e.overran(100, &late));
        assert!(!e.overran(100, &h));
        assert!(
            !Estimate::default().overran(100, &late),
            "no estimate, no overrun"
        );
    }

    fn finishes(t: &[(f64, f64)]) -> Vec<f64> {
        t.iter().map(|&(_, finish)| finish).collect()
    }

    /// Processor sharing: two running at 0.8 each, the queued one starting when the first
    /// finishes, the number in flight never growing.
    #[test]
    fn the_schedule_shares_the_stages() {
        let e = estimate(0.01, 1.6);
        let t = e.schedule(&[0.4, 0.8], &[0.8]);
        // 0.4 at 0.8/s: 0.5 s. Then 0.4 and 0.8 left at 0.8/s: 0.5 s more, then 0.4 more
        // alone at 1.0/s: 0.4 s.
        let f = finishes(&t);
        assert!(
            close(f[0], 0.5) && close(f[1], 1.0) && close(f[2], 1.4),
            "{t:?}"
        );
        assert!(close(t[0].0, 0.0) && close(t[2].0, 0.5), "{t:?}");
        // Alone.
        assert_eq!(e.schedule(&[0.3], &[]), vec![(0.0, 0.3)]);
        // Nothing running: the queue runs one at a time.
        let t = e.schedule(&[], &[0.2, 0.3]);
        assert!(
            close(t[0].1, 0.2) && close(t[1].0, 0.2) && close(t[1].1, 0.5),
            "{t:?}"
        );
        assert!(e.schedule(&[], &[]).is_empty());
        // Ties finish together and each hands its place on.
        let f = finishes(&e.schedule(&[0.4, 0.4], &[0.4, 0.4]));
        assert!(close(f[0], 0.5) && close(f[1], 0.5), "{f:?}");
        assert!(close(f[2], 1.0) && close(f[3], 1.0), "{f:?}");
    }
}
