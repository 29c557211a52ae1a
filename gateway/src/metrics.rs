//! The gateway's Prometheus metrics. Label sets are bounded: routes are the router's
//! templates (never a code), outcomes and statuses are small fixed sets.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of an HTTP request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// HTTP method.
    pub method: String,
    /// Route template, such as `/v1/tickets/{code}`.
    pub route: String,
    /// Status code class and number, such as `200`.
    pub status: u16,
}

/// Labels of a route's latency.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LatencyLabels {
    /// Route template.
    pub route: String,
}

/// Labels of a check-in answer.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The engine's outcome word.
    pub outcome: String,
}

/// Labels of a refused staff check-in.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `wrong_pin` (a gate without a PIN included) or `locked`.
    pub reason: String,
}

/// Every metric the gateway keeps.
#[derive(Debug)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    registry: Mutex<Registry>,
    /// Requests by method, route and status.
    pub requests: Family<RouteLabels, Counter>,
    /// Request latency by route, seconds.
    pub latency: Family<LatencyLabels, Histogram>,
    /// Bookings made (replays not counted).
    pub bookings: Counter,
    /// Tickets issued by bookings and transfers.
    pub tickets_issued: Counter,
    /// HTTP check-ins by outcome.
    pub checkins: Family<OutcomeLabels, Counter>,
    /// Staff check-ins on holders' pages that reached the node, by outcome.
    pub staff_checkins: Family<OutcomeLabels, Counter>,
    /// Staff check-ins refused before the node: wrong PIN, a gate without a PIN, locked.
    pub staff_pin_refusals: Family<ReasonLabels, Counter>,
    /// Times wrong PINs locked staff check-in of a ticket or at a gate.
    pub staff_lockouts: Counter,
    /// Reminders delivered.
    pub reminders_delivered: Counter,
    /// Reminder attempts that failed.
    pub reminder_failures: Counter,
    /// Reminders given up after the last attempt.
    pub reminders_given_up: Counter,
    /// Open server-sent-event streams.
    pub sse_streams: Gauge,
    /// Times a live stream woke to re-read its ticket or account (one per change of its
    /// own, several changes between two reads counted once).
    pub sse_wakeups: Counter,
    /// Node events read.
    pub node_events: Counter,
    /// 1 while the default node's event stream is up.
    pub node_up: Gauge,
    /// Times a node event stream was followed again because the gateway fell behind it (the
    /// client drops a subscription whose reader lags), not because the node went away.
    pub resubscribes: Counter,
    /// Times a node event stream failed (the node unreachable, the connection lost); each
    /// sets `node_up` to 0 until the stream is followed again.
    pub node_stream_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("stile_gateway");
        let requests = Family::<RouteLabels, Counter>::default();
        let latency = Family::<LatencyLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
        });
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            requests,
            latency,
            bookings: Counter::default(),
            tickets_issued: Counter::default(),
            checkins: Family::default(),
            staff_checkins: Family::default(),
            staff_pin_refusals: Family::default(),
            staff_lockouts: Counter::default(),
            reminders_delivered: Counter::default(),
            reminder_failures: Counter::default(),
            reminders_given_up: Counter::default(),
            sse_streams: Gauge::default(),
            sse_wakeups: Counter::default(),
            node_events: Counter::default(),
            node_up: Gauge::default(),
            resubscribes: Counter::default(),
            node_stream_failures: Counter::default(),
        };
        r.register(
            "http_requests",
            "HTTP requests by method, route and status",
            m.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            m.latency.clone(),
        );
        r.register("bookings", "Bookings made", m.bookings.clone());
        r.register(
            "tickets_issued",
            "Tickets issued by bookings and transfers",
            m.tickets_issued.clone(),
        );
        r.register("checkins", "HTTP check-ins by outcome", m.checkins.clone());
        r.register(
            "staff_checkins",
            "Staff check-ins on holders' pages that reached the node, by outcome",
            m.staff_checkins.clone(),
        );
        r.register(
            "staff_pin_refusals",
            "Staff check-ins refused before the node, by reason (wrong_pin, locked)",
            m.staff_pin_refusals.clone(),
        );
        r.register(
            "staff_lockouts",
            "Times wrong PINs locked staff check-in of a ticket or at a gate",
            m.staff_lockouts.clone(),
        );
        r.register(
            "reminders_delivered",
            "Reminders delivered",
            m.reminders_delivered.clone(),
        );
        r.register(
            "reminder_failures",
            "Reminder attempts that failed",
            m.reminder_failures.clone(),
        );
        r.register(
            "reminders_given_up",
            "Reminders given up",
            m.reminders_given_up.clone(),
        );
        r.register(
            "sse_streams",
            "Open server-sent-event streams",
            m.sse_streams.clone(),
        );
        r.register(
            "sse_wakeups",
            "Times a live stream woke to re-read its ticket or account",
            m.sse_wakeups.clone(),
        );
        r.register(
            "node_events",
            "Ticket events read from nodes",
            m.node_events.clone(),
        );
        r.register(
            "node_up",
            "1 while the node event stream is up",
            m.node_up.clone(),
        );
        r.register(
            "resubscribes",
            "Node event streams followed again because the gateway fell behind them",
            m.resubscribes.clone(),
        );
        r.register(
            "node_stream_failures",
            "Node event streams that failed (node unreachable or connection lost)",
            m.node_stream_failures.clone(),
        );
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = r;
        m
    }

    /// The Prometheus text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}
