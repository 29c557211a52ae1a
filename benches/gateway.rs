//! The ticket image: one SVG and one PNG rendered from a 32-symbol code with a realistic label.
//! Target: at least 5,000 PNG images per second per core (under 200 µs each).
//!
//! `cargo bench --bench gateway`; ids `gateway/qr_svg`, `gateway/qr_png`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stile_gateway::qr::{self, TicketLabel};

/// A static code: 32 symbols, the whole alphabet.
const CODE: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

fn gateway_benches(c: &mut Criterion) {
    let label = TicketLabel {
        event: "Cup Final",
        seat: "Block C, Row 12, Seat 7",
        holder: "Ada Lovelace",
        validity: "2026-12-01 18:00 to 23:00 UTC",
    };
    let mut g = c.benchmark_group("gateway");
    g.throughput(Throughput::Elements(1));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("qr_svg", |b| {
        b.iter(|| qr::svg(black_box(CODE), black_box(&label)).expect("a valid code"))
    });
    g.bench_function("qr_png", |b| {
        b.iter(|| qr::png(black_box(CODE), black_box(&label)).expect("a valid code"))
    });
    g.finish();
}

criterion_group!(benches, gateway_benches);
criterion_main!(benches);
