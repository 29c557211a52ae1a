//! What each gate presents, scenario by scenario, decided before the clock starts.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use stile_protocol::CodeBytes;

use crate::{Config, Scenario, REPLAY_FANOUT};

/// `Item::ticket` of a code that is no minted ticket (forged).
pub const NOT_GENUINE: u32 = u32::MAX;
/// Rail: share of the tickets that are day passes, percent (the rest are single journeys).
pub const RAIL_PASS_PERCENT: u32 = 30;
/// Rail: journeys a day pass makes (entry and exit each).
pub const RAIL_PASS_TRIPS: u32 = 3;
/// Mixed: one ticket in this many is presented a second time, at another gate, later.
pub const MIXED_REPLAY_EVERY: u32 = 10;
/// Mixed: one ticket in this many also has a forged copy presented.
pub const MIXED_FORGED_EVERY: u32 = 20;
/// Mixed: how many tickets later in the arrival order a replayed code comes back (at most;
/// a quarter of the tickets when there are fewer, so that a small run has replays too).
pub const MIXED_REPLAY_LAG: usize = 2_048;

/// Mixed: the replay lag for `tickets` tickets.
pub fn mixed_replay_lag(tickets: usize) -> usize {
    MIXED_REPLAY_LAG.min(tickets / 4)
}

/// The kinds of ticket a scenario needs minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One entry, no exit (an event ticket).
    Single,
    /// One entry then one exit (a rail single journey).
    Journey,
    /// Unlimited entries, each followed by an exit, valid a day from the first scan.
    DayPass,
}

impl Kind {
    /// Admits one ticket of this kind may get in a run's plan.
    fn admits_allowed(self) -> u8 {
        match self {
            Kind::Single | Kind::Journey => 1,
            Kind::DayPass => RAIL_PASS_TRIPS as u8,
        }
    }
}

/// The `n` tickets to mint for `scenario`: `(kind, count)` in minting order.
pub fn tickets(scenario: Scenario, n: u32) -> Vec<(Kind, u32)> {
    match scenario {
        Scenario::Rail => {
            let passes = (u64::from(n) * u64::from(RAIL_PASS_PERCENT) / 100) as u32;
            vec![(Kind::Journey, n - passes), (Kind::DayPass, passes)]
        }
        _ => vec![(Kind::Single, n)],
    }
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect()
}

/// One presentation of a code at a gate.
#[derive(Debug, Clone, Copy)]
pub struct Item {
    /// The code as the gate reads it.
    pub code: CodeBytes,
    /// The ticket's index in minting order, or [`NOT_GENUINE`].
    pub ticket: u32,
    /// An exit rather than an entry.
    pub exit: bool,
    /// How many of this ticket's earlier scans must be answered before this one is sent (a
    /// rail passenger exits only once through the entry gate): 0 but in `rail`.
    pub after: u8,
    /// The gate's scan id for it: 1, 2, … in the gate's order, so that a resend after a
    /// lost connection carries the same one and gets the original answer.
    pub scan_id: u64,
}

/// Every gate's queue, and how many admits each ticket may get.
#[derive(Debug)]
pub struct Plan {
    /// Gate `i + 1`'s codes, in order.
    pub gates: Vec<Vec<Item>>,
    /// Admits allowed per ticket: more is a double admit.
    pub allowed: Vec<u8>,
}

/// Presentations a scenario makes of each ticket minted for it, on average (`gates` gates):
/// what sizes a run's tickets to the scans it sends.
pub fn scans_per_ticket(scenario: Scenario, gates: u16) -> f64 {
    let pass = f64::from(RAIL_PASS_PERCENT) / 100.0;
    match scenario {
        // A forged copy of each ticket, never the ticket itself.
        Scenario::Stadium | Scenario::Forged | Scenario::Outage => 1.0,
        Scenario::Replay => REPLAY_FANOUT.min(usize::from(gates.max(1))) as f64,
        // Single journeys enter and leave; day passes make their trips.
        Scenario::Rail => (1.0 - pass) * 2.0 + pass * 2.0 * f64::from(RAIL_PASS_TRIPS),
        Scenario::Mixed => {
            1.0 + 1.0 / f64::from(MIXED_REPLAY_EVERY) + 1.0 / f64::from(MIXED_FORGED_EVERY)
        }
    }
}

/// Each gate's codes for the scenario. `genuine` holds the minted codes in the order and the
/// kinds [`tickets`] gave.
pub fn plan(config: &Config, genuine: &[CodeBytes]) -> Plan {
    let gates = config.gates as usize;
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let mut work: Vec<Vec<Item>> = vec![Vec::new(); gates];
    let mut allowed = Vec::with_capacity(genuine.len());
    for (kind, n) in tickets(config.scenario, genuine.len() as u32) {
        allowed.extend(std::iter::repeat_n(kind.admits_allowed(), n as usize));
    }
    let entry = |code: CodeBytes, t: usize| Item {
        code,
        ticket: t as u32,
        exit: false,
        after: 0,
        scan_id: 0,
    };
    match config.scenario {
        // The outage scenario's gates take their queues from [`outage`]; dealt here as
        // stadium's would be.
        Scenario::Stadium | Scenario::Outage => {
            for (i, c) in genuine.iter().enumerate() {
                work[i % gates].push(entry(*c, i));
            }
        }
        Scenario::Replay => {
            // Code i goes to gates i, i+1, …: the same position in each queue, so the copies
            // arrive at about the same moment.
            let fanout = REPLAY_FANOUT.min(gates);
            for (i, c) in genuine.iter().enumerate() {
                for k in 0..fanout {
                    work[(i + k) % gates].push(entry(*c, i));
                }
            }
        }
        Scenario::Forged => {
            for (i, c) in genuine.iter().enumerate() {
                work[i % gates].push(Item {
                    code: forge(&mut rng, c, i % 2 == 0),
                    ticket: NOT_GENUINE,
                    exit: false,
                    after: 0,
                    scan_id: 0,
                });
            }
        }
        Scenario::Mixed => {
            // One arrival order, dealt round robin: first scans, with a replay of an earlier
            // ticket now and then (it must get already_used) and a forged copy now and then.
            let mut order = Vec::with_capacity(genuine.len() * 23 / 20);
            let lag = mixed_replay_lag(genuine.len());
            for (i, c) in genuine.iter().enumerate() {
                order.push(entry(*c, i));
                if i % MIXED_FORGED_EVERY as usize == 7 {
                    order.push(Item {
                        code: forge(&mut rng, c, i % 40 == 7),
                        ticket: NOT_GENUINE,
                        exit: false,
                        after: 0,
                        scan_id: 0,
                    });
                }
                if let Some(j) = i.checked_sub(lag) {
                    if j % MIXED_REPLAY_EVERY as usize == 3 {
                        order.push(entry(genuine[j], j));
                    }
                }
            }
            for (k, item) in order.into_iter().enumerate() {
                work[k % gates].push(item);
            }
        }
        Scenario::Rail => {
            // Rounds: every ticket's first entry, then every first exit, then second entries
            // of the day passes, … Each step at a gate of its own (stations differ), in the
            // same ticket order each round, so a ticket's exit comes about a round after its
            // entry; and it is sent only once the entry is answered, however far one gate
            // runs ahead of another.
            let steps_of = |t: usize| {
                if allowed[t] > 1 {
                    2 * RAIL_PASS_TRIPS
                } else {
                    2
                }
            };
            for round in 0..2 * RAIL_PASS_TRIPS {
                for (t, c) in genuine.iter().enumerate() {
                    if round < steps_of(t) {
                        work[rng.gen_range(0..gates)].push(Item {
                            code: *c,
                            ticket: t as u32,
                            exit: round % 2 == 1,
                            after: round as u8,
                            scan_id: 0,
                        });
                    }
                }
            }
        }
    }
    for queue in &mut work {
        for (n, item) in queue.iter_mut().enumerate() {
            item.scan_id = n as u64 + 1;
        }
    }
    Plan {
        gates: work,
        allowed,
    }
}

/// The `outage` scenario's presentations, by ticket index in minting order.
#[derive(Debug)]
pub struct OutagePlan {
    /// Gate `i + 1`'s tickets, in order: every ticket but the planted duplicates, each at
    /// one gate.
    pub queues: Vec<Vec<u32>>,
    /// Gate `i + 1`'s planted duplicates, presented as soon as the node is cut off.
    pub planted: Vec<Vec<u32>>,
    /// The planted duplicates: tickets `0..duplicates`, each at two different gates.
    pub duplicates: u32,
}

/// The `outage` scenario's plan for `tickets` tickets at `gates` gates (2 or more): the first
/// `duplicates` tickets are the planted duplicates, their two presentations each dealt round
/// robin (so at gates `2k mod G` and `2k + 1 mod G`, never one gate twice, and no gate more
/// than `ceil(2 duplicates / G)` of them); the rest are dealt round robin, once each.
pub fn outage(tickets: u32, gates: u16, duplicates: u32) -> OutagePlan {
    let g = usize::from(gates);
    assert!(g >= 2, "planted duplicates need two gates");
    assert!(
        duplicates < tickets,
        "tickets beside the planted duplicates"
    );
    let mut planted = vec![Vec::new(); g];
    for j in 0..2 * duplicates {
        planted[j as usize % g].push(j / 2);
    }
    let mut queues = vec![Vec::new(); g];
    for (i, t) in (duplicates..tickets).enumerate() {
        queues[i % g].push(t);
    }
    OutagePlan {
        queues,
        planted,
        duplicates,
    }
}

/// A forged copy of `code`: one bit of the tag flipped, or a random tag.
fn forge(rng: &mut SmallRng, code: &CodeBytes, flip_one_bit: bool) -> CodeBytes {
    let mut bytes = code.as_bytes().to_vec();
    if flip_one_bit {
        let last = bytes.len() - 1;
        bytes[last] ^= 1 << rng.gen_range(0..8);
    } else {
        let tag_at = bytes.len() - 10;
        rng.fill(&mut bytes[tag_at..]);
    }
    CodeBytes::from_slice(&bytes).unwrap_or(*code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn config(scenario: Scenario, tickets: u32) -> Config {
        Config {
            partition: stile_protocol::limits::LOADTEST_PARTITION,
            program: "stile".into(),
            scenario,
            target: "inproc".into(),
            gates: 8,
            inflight: 4,
            duration: Duration::from_secs(1),
            warmup: Duration::ZERO,
            rate: None,
            shape: crate::Shape::Flat,
            tickets: Some(tickets),
            seed: 7,
            data: PathBuf::from("."),
            sync: stile_engine::SyncMode::None,
            log_runway: 0,
            spawn_redis: false,
            admin: None,
            progress: false,
            stop: Default::default(),
            history: None,
            node: None,
            faults: Default::default(),
            outage: Default::default(),
        }
    }

    fn codes(n: u32) -> Vec<CodeBytes> {
        (0..n)
            .map(|i| {
                let mut b = [0u8; 20];
                b[0] = 1;
                b[6..10].copy_from_slice(&i.to_be_bytes());
                b[10] = 0x55;
                CodeBytes::from_slice(&b).expect("format 1")
            })
            .collect()
    }

    #[test]
    fn rail_sends_each_exit_a_round_after_its_entry() {
        let c = config(Scenario::Rail, 1000);
        let kinds = tickets(c.scenario, 1000);
        assert_eq!(kinds, vec![(Kind::Journey, 700), (Kind::DayPass, 300)]);
        let p = plan(&c, &codes(1000));
        let all: Vec<Item> = p.gates.iter().flatten().copied().collect();
        assert_eq!(all.len(), 700 * 2 + 300 * 6);
        let exits = all.iter().filter(|i| i.exit).count();
        assert_eq!(exits, 700 + 300 * 3);
        // What sizes a rail run: its scans per ticket.
        let per = scans_per_ticket(Scenario::Rail, c.gates);
        assert!((per * 1000.0 - all.len() as f64).abs() < 1e-6, "{per}");
        // Each scan of a ticket waits for all its earlier ones.
        for t in [0, 699, 700, 999] {
            let mut afters: Vec<u8> = all
                .iter()
                .filter(|i| i.ticket == t)
                .map(|i| i.after)
                .collect();
            afters.sort_unstable();
            let steps = if t < 700 {
                2
            } else {
                2 * RAIL_PASS_TRIPS as u8
            };
            assert_eq!(afters, (0..steps).collect::<Vec<_>>(), "ticket {t}");
        }
        assert_eq!(p.allowed[0], 1);
        assert_eq!(p.allowed[999], RAIL_PASS_TRIPS as u8);
    }

    #[test]
    fn the_outage_plants_each_duplicate_at_two_gates_and_deals_the_rest_once() {
        for (tickets, gates, dups) in [(100u32, 4u16, 10u32), (50, 3, 7), (10, 2, 1), (9, 5, 0)] {
            let p = outage(tickets, gates, dups);
            let mut seen = vec![Vec::new(); tickets as usize];
            for (g, q) in p.queues.iter().enumerate() {
                q.iter().for_each(|&t| seen[t as usize].push(g));
            }
            let mut planted_at = vec![Vec::new(); tickets as usize];
            for (g, q) in p.planted.iter().enumerate() {
                q.iter().for_each(|&t| planted_at[t as usize].push(g));
                assert!(q.len() <= (2 * dups).div_ceil(u32::from(gates)) as usize);
            }
            for t in 0..tickets as usize {
                if (t as u32) < dups {
                    assert!(seen[t].is_empty(), "planted {t} in a queue");
                    assert_eq!(planted_at[t].len(), 2, "{t}");
                    assert_ne!(planted_at[t][0], planted_at[t][1], "{t} twice at one gate");
                } else {
                    assert_eq!(seen[t].len(), 1, "ticket {t}");
                    assert!(planted_at[t].is_empty());
                }
            }
        }
    }

    #[test]
    fn mixed_holds_replays_and_forgeries() {
        let n = 30_000;
        let c = config(Scenario::Mixed, n);
        let genuine = codes(n);
        let p = plan(&c, &genuine);
        let all: Vec<Item> = p.gates.iter().flatten().copied().collect();
        let forged = all.iter().filter(|i| i.ticket == NOT_GENUINE).count();
        assert_eq!(forged, (n / MIXED_FORGED_EVERY) as usize);
        for f in all.iter().filter(|i| i.ticket == NOT_GENUINE) {
            assert!(
                !genuine.contains(&f.code),
                "a forged code equals a genuine one"
            );
        }
        let replays = all.len() - forged - n as usize;
        assert_eq!(replays, (n as usize - MIXED_REPLAY_LAG) / 10);
        // Sized at a scan and a little more per ticket: an upper bound of what it sends.
        let per = scans_per_ticket(Scenario::Mixed, c.gates);
        assert!(all.len() as f64 <= per * f64::from(n), "{per}");
        // A run of fewer tickets than the lag still has its replays.
        let small = 2_000;
        let p = plan(&config(Scenario::Mixed, small), &codes(small));
        let all: Vec<Item> = p.gates.iter().flatten().copied().collect();
        let forged = all.iter().filter(|i| i.ticket == NOT_GENUINE).count();
        let replays = all.len() - forged - small as usize;
        assert_eq!(
            replays,
            (small as usize - mixed_replay_lag(small as usize)) / 10
        );
        assert!(replays > 100, "{replays}");
    }
}
