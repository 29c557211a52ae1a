//! Every engine operation through its public API, on a controlled clock.

use stile_engine::{
    CheckinRequest, Clock, CodeFormat, EngineConfig, EntryRule, Gate, MintError, MintRequest,
    OutcomeKind, Policy, Presented, TicketError, TicketState, Validity,
};
use stile_protocol::Outcome;

use crate::support::{engine, engine_with, mint, T0};

const G1: Gate = Gate::new(1, 1);
const G2: Gate = Gate::new(2, 1);

fn req(gate: Gate, scan_id: u64, code: stile_protocol::CodeBytes) -> CheckinRequest {
    CheckinRequest {
        gate,
        scan_id,
        code,
    }
}

#[test]
fn admit_then_already_used_names_gate_and_time() {
    let (e, clock) = engine();
    let (_, codes) = mint(&e, Policy::simple(1), 3);
    let first = e.checkin(&req(G1, 1, codes[0]));
    assert_eq!(
        (first.kind, first.gate, first.at_unix_s),
        (OutcomeKind::Admitted, 1, T0)
    );
    clock.advance(7);
    let second = e.checkin(&req(G2, 1, codes[0]));
    assert_eq!(
        (second.kind, second.gate, second.at_unix_s),
        (OutcomeKind::AlreadyUsed, 1, T0)
    );
    assert!(
        second.message().contains("by gate 1"),
        "{}",
        second.message()
    );
    assert_eq!(e.checkin(&req(G2, 2, codes[1])).kind, OutcomeKind::Admitted);
}

#[test]
fn retry_with_same_scan_id_gets_original_answer_not_already_used() {
    let (e, clock) = engine();
    let (_, codes) = mint(&e, Policy::simple(1), 1);
    let original = e.checkin(&req(G1, 42, codes[0]));
    assert_eq!(original.kind, OutcomeKind::Admitted);
    clock.advance(3);
    assert_eq!(e.checkin(&req(G1, 42, codes[0])), original, "retry");
    assert_eq!(
        e.checkin(&req(G1, 43, codes[0])).kind,
        OutcomeKind::AlreadyUsed,
        "new scan"
    );
    assert_eq!(
        e.checkin(&req(G2, 42, codes[0])).kind,
        OutcomeKind::AlreadyUsed,
        "other gate"
    );
}

#[test]
fn retry_of_multi_entry_admit_does_not_spend_a_second_entry() {
    let (e, _) = engine();
    let (_, codes) = mint(
        &e,
        Policy {
            entry: EntryRule::multi(2),
            ..Policy::simple(1)
        },
        1,
    );
    assert_eq!(e.checkin(&req(G1, 1, codes[0])).entries, 1);
    assert_eq!(
        e.checkin(&req(G1, 1, codes[0])).entries,
        1,
        "a retry counts nothing"
    );
    let second = e.checkin(&req(G1, 2, codes[0]));
    assert_eq!((second.kind, second.entries), (OutcomeKind::Admitted, 2));
    assert_eq!(
        e.checkin(&req(G1, 3, codes[0])).kind,
        OutcomeKind::AlreadyUsed
    );
}

#[test]
fn undo_by_admitting_gate_within_window_reopens_ticket() {
    let (e, clock) = engine();
    let (_, codes) = mint(&e, Policy::simple(1), 2);
    let t = Presented::Code(codes[0]);
    e.checkin(&req(G1, 1, codes[0]));
    assert_eq!(
        e.undo(&G2, 2, &t).kind,
        OutcomeKind::NotUndoable,
        "other gate"
    );
    assert_eq!(e.undo(&G1, 2, &t).kind, OutcomeKind::Undone);
    assert_eq!(
        e.undo(&G1, 3, &t).kind,
        OutcomeKind::NotUndoable,
        "only once"
    );
    assert_eq!(e.checkin(&req(G2, 4, codes[0])).kind, OutcomeKind::Admitted);
    // Past the window (60 s by default) the admit stands.
    e.checkin(&req(G1, 5, codes[1]));
    clock.advance(61);
    assert_eq!(
        e.undo(&G1, 6, &Presented::Code(codes[1])).kind,
        OutcomeKind::NotUndoable
    );
    assert_eq!(
        e.status(&Presented::Code(codes[1])).unwrap().word.state,
        TicketState::Used
    );
}

#[test]
fn validity_not_before_deadline_and_interval() {
    let (e, clock) = engine();
    let validity = Validity {
        not_before_unix_s: Some(T0 + 100),
        not_after_unix_s: Some(T0 + 200),
        duration_from_first_scan_s: None,
    };
    let (_, codes) = mint(
        &e,
        Policy {
            validity,
            ..Policy::simple(1)
        },
        2,
    );
    let early = e.checkin(&req(G1, 1, codes[0]));
    assert_eq!(
        (early.kind, early.at_unix_s),
        (OutcomeKind::NotYetValid, T0 + 100)
    );
    clock.set(T0 + 100);
    assert_eq!(e.checkin(&req(G1, 2, codes[0])).kind, OutcomeKind::Admitted);
    clock.set(T0 + 201);
    let late = e.checkin(&req(G1, 3, codes[1]));
    assert_eq!(
        (late.kind, late.at_unix_s),
        (OutcomeKind::Expired, T0 + 200)
    );
    assert_eq!(
        e.status(&Presented::Code(codes[1])).unwrap().state_name(),
        "expired"
    );
}

#[test]
fn day_pass_counts_from_first_entry_and_does_not_slide() {
    let (e, clock) = engine();
    let validity = Validity {
        duration_from_first_scan_s: Some(86_400),
        ..Validity::ALWAYS
    };
    let (_, codes) = mint(
        &e,
        Policy {
            validity,
            entry: EntryRule::pairs(0),
            ..Policy::simple(1)
        },
        1,
    );
    let pass = Presented::Code(codes[0]);
    clock.set(T0 + 1000);
    assert_eq!(e.checkin(&req(G1, 1, codes[0])).kind, OutcomeKind::Admitted);
    assert_eq!(
        e.checkin(&req(G2, 2, codes[0])).kind,
        OutcomeKind::AlreadyUsed,
        "inside"
    );
    clock.set(T0 + 5000);
    assert_eq!(e.exit(&G2, 3, &pass).kind, OutcomeKind::Exited);
    assert_eq!(e.exit(&G2, 4, &pass).kind, OutcomeKind::NotInside);
    clock.set(T0 + 80_000);
    let again = e.checkin(&req(G1, 5, codes[0]));
    assert_eq!((again.kind, again.entries), (OutcomeKind::Admitted, 2));
    let status = e.status(&pass).unwrap();
    assert_eq!(status.first_scan_unix_s, Some(T0 + 1000));
    assert_eq!(status.valid_until_unix_s, Some(T0 + 1000 + 86_400));
    clock.set(T0 + 1000 + 86_400 + 1);
    assert_eq!(
        e.exit(&G2, 6, &pass).kind,
        OutcomeKind::Exited,
        "an expired pass still exits"
    );
    let expired = e.checkin(&req(G1, 7, codes[0]));
    assert_eq!(
        (expired.kind, expired.at_unix_s),
        (OutcomeKind::Expired, T0 + 1000 + 86_400)
    );
}

#[test]
fn exit_on_single_entry_ticket_is_not_inside() {
    let (e, _) = engine();
    let (_, codes) = mint(&e, Policy::simple(1), 1);
    e.checkin(&req(G1, 1, codes[0]));
    assert_eq!(
        e.exit(&G1, 2, &Presented::Code(codes[0])).kind,
        OutcomeKind::NotInside
    );
}

#[test]
fn wrong_provider_unknown_and_forged_touch_nothing() {
    let (e, _) = engine();
    let (_, codes) = mint(&e, Policy::simple(2), 1);
    assert_eq!(
        e.checkin(&req(G1, 1, codes[0])).kind,
        OutcomeKind::WrongProvider
    );
    let operator = Gate {
        id: 9,
        provider: None,
    };
    assert_eq!(
        e.checkin(&req(operator, 1, codes[0])).kind,
        OutcomeKind::Admitted
    );
    assert_eq!(
        e.checkin_text(&G1, 2, "not a code at all").kind,
        OutcomeKind::Forged
    );
    assert_eq!(e.checkin_text(&G1, 2, "").kind, OutcomeKind::Forged);
    assert_eq!(
        e.checkin_text(&G1, 2, &"Z".repeat(10_000)).kind,
        OutcomeKind::Forged
    );
}

#[test]
fn genuine_code_for_unminted_serial_or_foreign_partition_is_unknown() {
    let (e, _) = engine();
    let (_, codes) = mint(&e, Policy::simple(1), 1);
    let h = codes[0].header();
    let unminted = e
        .keys()
        .sign_static(&stile_protocol::CodeHeader { serial: 999, ..h });
    assert_eq!(e.checkin(&req(G1, 1, unminted)).kind, OutcomeKind::Unknown);
    let far = e.keys().sign_static(&stile_protocol::CodeHeader {
        serial: 5_000_000,
        ..h
    });
    assert_eq!(e.checkin(&req(G1, 2, far)).kind, OutcomeKind::Unknown);
    let foreign = e
        .keys()
        .sign_static(&stile_protocol::CodeHeader { partition: 7, ..h });
    assert_eq!(e.checkin(&req(G1, 3, foreign)).kind, OutcomeKind::Unknown);
    assert_eq!(
        e.status(&Presented::Code(foreign)).unwrap_err(),
        TicketError::Unknown
    );
}

#[test]
fn rotating_codes_live_one_step_either_side() {
    let (e, clock) = engine();
    let (_, codes) = mint(
        &e,
        Policy {
            format: CodeFormat::Rotating,
            ..Policy::simple(1)
        },
        2,
    );
    let t = Presented::Code(codes[0]);
    assert_eq!(codes[0].as_bytes().len(), 21);
    assert_eq!(codes[0].to_text().as_str().len(), 34);
    // A screenshot taken now is dead two steps later.
    clock.advance(61);
    assert_eq!(e.checkin(&req(G1, 1, codes[0])).kind, OutcomeKind::Forged);
    let fresh = e.code_at(&t, clock.now_unix_s()).unwrap();
    assert_ne!(fresh, codes[0]);
    clock.advance(29);
    assert_eq!(e.checkin(&req(G1, 2, fresh)).kind, OutcomeKind::Admitted);
    assert_eq!(
        e.status(&t).unwrap().word.state,
        TicketState::Used,
        "old step still names it"
    );
    // A static code for a rotating ticket is never accepted, even with a good tag.
    let header = stile_protocol::CodeHeader {
        format: CodeFormat::Static,
        ..codes[1].header()
    };
    let static_twin = e.keys().sign_static(&header);
    assert_eq!(
        e.checkin(&req(G1, 3, static_twin)).kind,
        OutcomeKind::Forged
    );
}

#[test]
fn imported_codes_obey_the_same_rules() {
    let (e, _) = engine();
    let id = e.add_policy(Policy::simple(1)).unwrap();
    let serials = e.import(id, 0, &["EXT-0001", "EXT-0002"]).unwrap();
    assert_eq!(serials.len(), 2);
    assert_eq!(
        e.checkin_text(&G1, 1, "EXT-0001").kind,
        OutcomeKind::Admitted
    );
    let again = e.checkin_text(&G2, 2, "EXT-0001");
    assert_eq!((again.kind, again.gate), (OutcomeKind::AlreadyUsed, 1));
    assert_eq!(
        e.checkin_text(&Gate::new(3, 2), 3, "EXT-0002").kind,
        OutcomeKind::WrongProvider
    );
    assert_eq!(e.checkin_text(&G1, 4, "EXT-0003").kind, OutcomeKind::Forged);
    assert_eq!(
        e.checkin_presented(&G1, 4, &Presented::Imported("EXT-0003"))
            .kind,
        OutcomeKind::Unknown
    );
    // Duplicates and junk refuse the whole batch.
    let dup = e.import(id, 0, &["EXT-0009", "EXT-0002"]).unwrap_err();
    assert!(
        matches!(dup, MintError::DuplicateImportedCode { index: 1, .. }),
        "{dup}"
    );
    assert_eq!(
        e.checkin_text(&G1, 5, "EXT-0009").kind,
        OutcomeKind::Forged,
        "not half-imported"
    );
    assert!(matches!(
        e.import(id, 0, &["a\nb"]),
        Err(MintError::BadImportedCode { .. })
    ));
    assert!(matches!(
        e.import(id, 0, &["x"; 2]),
        Err(MintError::DuplicateImportedCode { .. })
    ));
    // Transferring an imported ticket issues a stile code.
    let new = e.transfer(&Presented::Imported("EXT-0002")).unwrap();
    assert_eq!(
        e.checkin_text(&G1, 6, "EXT-0002").kind,
        OutcomeKind::Revoked
    );
    assert_eq!(
        e.checkin_text(&G1, 7, new.to_text().as_str()).kind,
        OutcomeKind::Admitted
    );
}

#[test]
fn transfer_voids_old_keeps_counters_and_refuses_spent() {
    let (e, clock) = engine();
    let (_, codes) = mint(
        &e,
        Policy {
            entry: EntryRule::multi(3),
            ..Policy::simple(1)
        },
        2,
    );
    e.checkin(&req(G1, 1, codes[0]));
    clock.advance(5);
    let new = e.transfer(&Presented::Code(codes[0])).unwrap();
    assert_eq!(e.checkin(&req(G1, 2, codes[0])).kind, OutcomeKind::Revoked);
    let s = e.status(&Presented::Code(new)).unwrap();
    assert_eq!((s.word.entries, s.first_scan_unix_s), (1, Some(T0)));
    assert_eq!(e.checkin(&req(G1, 3, new)).entries, 2);
    e.checkin(&req(G1, 4, new));
    let refused = e.transfer(&Presented::Code(new)).unwrap_err();
    assert!(refused.to_string().contains("already used"), "{refused}");
    // Transferring the old code again answers the successor it was given, minting nothing:
    // a caller whose first answer was lost asks again and gets the same code.
    let minted = e.minted_tickets();
    assert_eq!(e.transfer(&Presented::Code(codes[0])).unwrap(), new);
    assert_eq!(e.minted_tickets(), minted);
    // A revoked ticket was never transferred: it has no successor to answer.
    e.revoke(&Presented::Code(codes[1])).unwrap();
    assert!(matches!(
        e.transfer(&Presented::Code(codes[1])),
        Err(TicketError::NotTransferable(_))
    ));
}

#[test]
fn revoke_is_final_and_idempotent() {
    let (e, clock) = engine();
    let (_, codes) = mint(&e, Policy::simple(1), 1);
    let t = Presented::Code(codes[0]);
    let first = e.revoke(&t).unwrap();
    clock.advance(10);
    assert_eq!(e.revoke(&t).unwrap().at_unix_s, first.at_unix_s);
    let o = e.checkin(&req(G1, 1, codes[0]));
    assert_eq!((o.kind, o.at_unix_s), (OutcomeKind::Revoked, T0));
    assert_eq!(e.undo(&G1, 2, &t).kind, OutcomeKind::Revoked);
    assert_eq!(e.status(&t).unwrap().state_name(), "revoked");
}

#[test]
fn operator_errors_say_what_happened() {
    let (e, _) = engine();
    let (id, codes) = mint(&e, Policy::simple(1), 1);
    let mut raw = codes[0].as_bytes().to_vec();
    raw[15] ^= 0x40;
    let forged = Presented::Code(stile_protocol::CodeBytes::from_slice(&raw).unwrap());
    assert_eq!(e.status(&forged).unwrap_err(), TicketError::Forged);
    assert!(e
        .revoke(&forged)
        .unwrap_err()
        .to_string()
        .contains("forged or mistyped"));
    let err = e
        .mint(&MintRequest {
            policy: id,
            partition: 5,
            count: 1,
        })
        .unwrap_err();
    assert_eq!(err.to_string(), "partition 5 is not served by this node");
    let err = e
        .mint(&MintRequest {
            policy: id,
            partition: 0,
            count: 0,
        })
        .unwrap_err();
    assert!(err.to_string().contains("1 to 1000000"), "{err}");
    let err = e.mint(&MintRequest {
        policy: stile_engine::PolicyId(99),
        partition: 0,
        count: 1,
    });
    assert_eq!(err.unwrap_err().to_string(), "no policy with id 99");
}

#[test]
fn full_partition_refuses_mint_and_keeps_going() {
    let (e, _) = engine_with(EngineConfig {
        serials_per_partition_max: 3,
        ..EngineConfig::default()
    });
    let (id, codes) = mint(&e, Policy::simple(1), 2);
    let err = e
        .mint(&MintRequest {
            policy: id,
            partition: 0,
            count: 2,
        })
        .unwrap_err();
    assert!(matches!(
        err,
        MintError::PartitionFull {
            partition: 0,
            count: 2
        }
    ));
    assert_eq!(
        e.mint(&MintRequest {
            policy: id,
            partition: 0,
            count: 1
        })
        .unwrap()
        .len(),
        1
    );
    assert_eq!(e.checkin(&req(G1, 1, codes[1])).kind, OutcomeKind::Admitted);
}

#[test]
fn retired_key_codes_are_forged_rotated_key_codes_live() {
    let (e, _) = engine();
    let (id, old) = mint(&e, Policy::simple(1), 2);
    e.keys().rotate().unwrap();
    let new = e
        .mint(&MintRequest {
            policy: id,
            partition: 0,
            count: 1,
        })
        .unwrap();
    assert_eq!(new[0].key_id(), 2);
    assert_eq!(e.checkin(&req(G1, 1, old[0])).kind, OutcomeKind::Admitted);
    e.keys().retire(1).unwrap();
    assert_eq!(e.checkin(&req(G1, 2, old[1])).kind, OutcomeKind::Forged);
    assert_eq!(e.checkin(&req(G1, 3, new[0])).kind, OutcomeKind::Admitted);
}

#[test]
fn batch_answers_match_single_answers_in_order() {
    let (e, _) = engine();
    let (_, codes) = mint(&e, Policy::simple(1), 200);
    let mut raw = codes[3].as_bytes().to_vec();
    raw[12] ^= 1;
    let bad = stile_protocol::CodeBytes::from_slice(&raw).unwrap();
    let mut reqs: Vec<_> = codes
        .iter()
        .enumerate()
        .map(|(i, c)| req(G1, i as u64, *c))
        .collect();
    reqs.push(req(G1, 1000, bad));
    reqs.push(req(G1, 1001, codes[0]));
    let mut out = vec![Outcome::FORGED; reqs.len()];
    e.checkin_batch(&reqs, &mut out).wait();
    assert!(out[..200].iter().all(|o| o.kind == OutcomeKind::Admitted));
    assert_eq!(out[200].kind, OutcomeKind::Forged);
    assert_eq!(out[201].kind, OutcomeKind::AlreadyUsed);
}

#[test]
fn data_dir_keys_and_tickets_survive_reopen_and_missing_keys_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let clock = std::sync::Arc::new(stile_engine::ManualClock::new(T0));
    let open = || stile_engine::Engine::open(dir.path(), EngineConfig::default(), clock.clone());
    let code = {
        let e = open().unwrap();
        mint(&e, Policy::simple(1), 1).1[0]
    };
    assert_eq!(
        open().unwrap().checkin(&req(G1, 1, code)).kind,
        OutcomeKind::Admitted
    );
    let again = open().unwrap().checkin(&req(G2, 2, code));
    assert_eq!((again.kind, again.gate), (OutcomeKind::AlreadyUsed, 1));
    std::fs::rename(dir.path().join("keys"), dir.path().join("keys.moved")).unwrap();
    let err = open().unwrap_err();
    assert!(err.to_string().contains("no key ring"), "{err}");
    assert!(!dir.path().join("keys").exists(), "no new key was made");
}

/// Regression: with the clock set right after running two hours ahead, the engine's held
/// time made every rotating code drawn by the wall clock `forged`. Rotating steps follow the
/// wall clock; state changes still follow the held time.
#[test]
fn rotating_codes_follow_the_wall_clock_while_time_is_held() {
    let (e, clock) = engine();
    let (_, codes) = mint(
        &e,
        Policy {
            format: CodeFormat::Rotating,
            ..Policy::simple(1)
        },
        1,
    );
    let t = Presented::Code(codes[0]);
    clock.advance(7_200);
    assert_eq!(e.now_unix_s(), T0 + 7_200);
    clock.set(T0 + 10);
    assert_eq!(e.now_unix_s(), T0 + 7_200, "held");
    let drawn_now = e.code_at(&t, T0 + 10).unwrap();
    let admitted = e.checkin(&req(G1, 1, drawn_now));
    assert_eq!(admitted.kind, OutcomeKind::Admitted);
    assert_eq!(
        admitted.at_unix_s,
        T0 + 7_200,
        "the held time is what is recorded"
    );
}
