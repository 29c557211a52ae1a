//! The frame codec on the hot path: one check-in frame encoded, one decoded (both passes).
//!
//! `cargo bench --bench protocol`; ids `protocol/encode_checkin`, `protocol/decode_checkin`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stile_protocol::frame::{split_frame, RawCode, Request, CHECKIN_FRAME_LEN};

fn protocol_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("protocol");
    g.throughput(Throughput::Elements(1));
    let code = RawCode::new(&[1u8; 20]).expect("20 bytes");
    let req = Request::Checkin {
        scan_id: 0x0123_4567_89ab_cdef,
        code,
    };
    let mut out = Vec::with_capacity(64);
    g.bench_function("encode_checkin", |b| {
        let mut id = 0u32;
        b.iter(|| {
            out.clear();
            id = id.wrapping_add(1);
            black_box(&req).encode(id, &mut out);
            black_box(out.len())
        })
    });
    let mut frame = Vec::new();
    req.encode(7, &mut frame);
    assert_eq!(frame.len(), CHECKIN_FRAME_LEN);
    g.bench_function("decode_checkin", |b| {
        b.iter(|| {
            let (n, body) = split_frame(black_box(&frame))
                .expect("valid")
                .expect("whole");
            let (id, req) = Request::decode(body).expect("valid");
            black_box((n, id, req))
        })
    });
    g.finish();
}

criterion_group!(benches, protocol_benches);
criterion_main!(benches);
