//! Many threads race to check in the same codes at different gates.

use std::sync::Barrier;

use stile_engine::{CheckinRequest, Gate, OutcomeKind, Policy, Presented};
use stile_protocol::Outcome;

use crate::support::{engine, mint};

const THREADS: usize = 4;
const ROUNDS: usize = 1500;
const CODES_PER_ROUND: usize = 32;

/// Every round mints fresh codes; every thread (gate 1..=THREADS) checks all of them in at
/// once, half through the batch path and half one by one. Exactly one admit per code, and
/// every loser is told the winner's gate.
#[test]
fn racing_gates_admit_each_code_exactly_once_and_losers_name_the_winner() {
    let (e, _) = engine();
    let policy = e.add_policy(Policy::simple(1)).unwrap();
    let barrier = Barrier::new(THREADS);
    let rounds: Vec<Vec<_>> = (0..ROUNDS)
        .map(|_| {
            e.mint(&stile_engine::MintRequest {
                policy,
                partition: 0,
                count: CODES_PER_ROUND as u32,
            })
            .unwrap()
        })
        .collect();
    let results: Vec<Vec<Vec<Outcome>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (e, barrier, rounds) = (&e, &barrier, &rounds);
                s.spawn(move || {
                    let gate = Gate::new(t as u16 + 1, 1);
                    let mut mine = Vec::with_capacity(ROUNDS);
                    for (r, codes) in rounds.iter().enumerate() {
                        let reqs: Vec<_> = codes
                            .iter()
                            .enumerate()
                            .map(|(i, c)| CheckinRequest {
                                gate,
                                scan_id: (r * 1000 + i) as u64,
                                code: *c,
                            })
                            .collect();
                        let mut out = vec![Outcome::FORGED; reqs.len()];
                        barrier.wait();
                        if t % 2 == 0 {
                            e.checkin_batch(&reqs, &mut out).wait();
                        } else {
                            // Walk the codes backwards so the racers meet in the middle.
                            for i in (0..reqs.len()).rev() {
                                out[i] = e.checkin(&reqs[i]);
                            }
                        }
                        mine.push(out);
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut admits_by_gate = [0usize; THREADS];
    for (r, i) in (0..ROUNDS).flat_map(|r| (0..CODES_PER_ROUND).map(move |i| (r, i))) {
        let answers: Vec<Outcome> = results.iter().map(|by_gate| by_gate[r][i]).collect();
        let winners: Vec<usize> = (0..THREADS)
            .filter(|&t| answers[t].kind == OutcomeKind::Admitted)
            .collect();
        assert_eq!(winners.len(), 1, "round {r} code {i}: {answers:?}");
        let winner_gate = winners[0] as u16 + 1;
        admits_by_gate[winners[0]] += 1;
        for (t, a) in answers.iter().enumerate() {
            if t != winners[0] {
                assert_eq!(a.kind, OutcomeKind::AlreadyUsed, "round {r} code {i}");
                assert_eq!(a.gate, winner_gate, "loser must name the winner");
            }
        }
    }
    assert_eq!(
        admits_by_gate.iter().sum::<usize>(),
        ROUNDS * CODES_PER_ROUND
    );
}

/// Check-ins race undos, exits and revokes on shared entry/exit tickets; afterwards every
/// ticket's version counts exactly the changes that were reported as made.
#[test]
fn racing_mixed_operations_lose_no_update() {
    use stile_engine::{EntryRule, Presented};
    let (e, _) = engine();
    let (_, codes) = mint(
        &e,
        Policy {
            entry: EntryRule::pairs(0),
            ..Policy::simple(1)
        },
        64,
    );
    let changes: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (e, codes) = (&e, &codes);
                s.spawn(move || {
                    let gate = Gate::new(t as u16 + 1, 1);
                    let mut made = 0usize;
                    for n in 0..3000u64 {
                        let code = codes[(n as usize * 7 + t) % codes.len()];
                        let ticket = Presented::Code(code);
                        let o = match (n + t as u64) % 3 {
                            0 => e.checkin(&CheckinRequest {
                                gate,
                                scan_id: n,
                                code,
                            }),
                            1 => e.exit(&gate, n, &ticket),
                            _ => e.undo(&gate, n, &ticket),
                        };
                        made += matches!(
                            o.kind,
                            OutcomeKind::Admitted | OutcomeKind::Exited | OutcomeKind::Undone
                        ) as usize;
                    }
                    made
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let versions: usize = codes
        .iter()
        .map(|c| {
            let w = e.status(&Presented::Code(*c)).unwrap().word;
            // Each ticket's version started at 1 and wraps at 256: count through the wrap.
            (w.version as usize + 256 - 1) % 256
        })
        .sum();
    // Per ticket changes stay under 256 here (3000 * 4 / 64 ops per ticket ~ 188).
    assert_eq!(versions, changes);
}

/// Threads transfer the same tickets at once: each ticket gets one successor, and every
/// thread is answered its code.
#[test]
fn racing_transfers_of_one_ticket_make_one_successor() {
    let (e, _) = engine();
    let (_, codes) = mint(&e, Policy::simple(1), 64);
    let minted = e.minted_tickets();
    let barrier = Barrier::new(THREADS);
    let answers: Vec<Vec<stile_protocol::CodeBytes>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let (e, barrier, codes) = (&e, &barrier, &codes);
                s.spawn(move || {
                    barrier.wait();
                    codes
                        .iter()
                        .map(|c| e.transfer(&Presented::Code(*c)).unwrap())
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for t in 1..THREADS {
        assert_eq!(answers[t], answers[0], "thread {t}");
    }
    assert_eq!(e.minted_tickets(), minted + codes.len() as u64);
    for (old, new) in codes.iter().zip(&answers[0]) {
        assert_eq!(
            e.status(&Presented::Code(*old)).unwrap().state_name(),
            "revoked"
        );
        assert_eq!(
            e.status(&Presented::Code(*new)).unwrap().state_name(),
            "valid"
        );
    }
}
