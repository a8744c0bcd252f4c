//! `/metrics`: the server's counters in the Prometheus text format, written
//! by `prometheus-client`'s encoder. A fresh registry is filled from
//! [`Metrics`](crate::metrics::Metrics) and the client list on every scrape,
//! so a client that left has no series left behind and nothing but the
//! scrape itself pays for the encoding.

use std::sync::atomic::Ordering;

use dropsync_core::meta_server::Catalog;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::metrics::{NotAdmitted, SessionKind};
use crate::server::Server;
use crate::views;

/// Most `dropsync_client_queue_depth` series in one scrape: a server with
/// more clients reports the first this many (by label) and the rest in
/// `dropsync_client_series_dropped`, so that a peer opening sessions by the
/// thousand cannot make every scrape (and the scraper's database) grow
/// without bound.
pub const MAX_CLIENT_SERIES: usize = 1000;

/// A label set with one label.
type One = [(&'static str, String); 1];

/// The Prometheus text for `server` now.
pub fn render(server: &Server) -> String {
    let m = &server.metrics;
    let mut reg = Registry::with_prefix("dropsync");
    let views::Clients { shown: clients, total: connected, legacy, secure } = views::clients(server, MAX_CLIENT_SERIES);

    reg.register("clients_connected", "Clients connected now", ConstGauge::new(gauge(connected)));
    let by_kind = Family::<One, Gauge>::default();
    let started = Family::<One, Counter>::default();
    let hello = connected.saturating_sub(legacy + secure);
    for (kind, name, now) in
        [(SessionKind::Hello, "hello", hello), (SessionKind::Legacy, "legacy", legacy), (SessionKind::Secure, "secure", secure)]
    {
        // Every kind is listed, at zero too, so a dashboard sees the series.
        by_kind.get_or_create(&[("kind", name.into())]).set(gauge(now));
        started.get_or_create(&[("kind", name.into())]).inc_by(m.sessions_started(kind));
    }
    reg.register("sessions_connected", "Sessions connected now, by kind (HELLO, legacy, or HELLO over TLS)", by_kind);
    reg.register("sessions_started", "Sessions started since the server started, by kind", started);

    let refused = Family::<One, Counter>::default();
    for why in NotAdmitted::ALL {
        refused.get_or_create(&[("reason", why.label().into())]).inc_by(m.not_admitted_count(why));
    }
    reg.register("connections_not_admitted", "Connections closed before admission (secure mode), by reason", refused);
    reg.register("clients_enrolled", "Client keys enrolled", ConstGauge::new(gauge(server.gate.enrolled())));
    reg.register(
        "secure_mode",
        "1 when only enrolled clients get in, over TLS; 0 for the open protocol",
        ConstGauge::new(i64::from(server.gate.secure())),
    );

    let counters: [(&str, &str, &std::sync::atomic::AtomicU64); 9] = [
        ("bytes_in", "Chunk payload bytes received from clients and written", &m.bytes_in),
        ("files_in", "Uploads committed (a new version or an identical one)", &m.files_in),
        ("commits", "Uploads that made a new version", &m.commits),
        ("deletes_in", "DELETEs from clients that deleted a path", &m.deletes_in),
        ("bytes_out", "Chunk payload bytes sent to clients (META-DATA included)", &m.bytes_out),
        ("files_out", "Files delivered to clients and acknowledged", &m.files_out),
        ("deletes_out", "DELETEs delivered to clients and acknowledged", &m.deletes_out),
        ("copies_in", "COPYs from clients that made a new version without its bytes", &m.copies_in),
        ("copies_out", "COPYs delivered to clients and acknowledged, without the bytes", &m.copies_out),
    ];
    for (name, help, value) in counters {
        reg.register(name, help, ConstCounter::new(value.load(Ordering::Relaxed)));
    }

    let open = Family::<One, Gauge>::default();
    open.get_or_create(&[("direction", "in".into())]).set(m.uploads_open.load(Ordering::Relaxed));
    open.get_or_create(&[("direction", "out".into())]).set(m.deliveries_open.load(Ordering::Relaxed));
    reg.register("transfers_open", "Transfers in progress: uploads (in) and deliveries to clients (out)", open);
    reg.register("locks_held", "Per-file write locks held now", ConstGauge::new(gauge(server.library.locks().held())));

    let depth = Family::<One, Gauge>::default();
    for c in &clients {
        depth.get_or_create(&[("client", label_value(&c.series_name()))]).set(gauge(c.pending));
    }
    reg.register("client_queue_depth", "Paths queued or being sent to a client (label#session)", depth);
    let dropped = connected.saturating_sub(clients.len());
    reg.register(
        "client_series_dropped",
        "Clients left out of client_queue_depth (more than its cap)",
        ConstGauge::new(gauge(dropped)),
    );

    reg.register("commit_duration_seconds", "Time to finish, store and journal an upload", m.commit_histogram());
    let refusals = Family::<One, Counter>::default();
    for (code, n) in m.refusals() {
        refusals.get_or_create(&[("code", code)]).inc_by(n);
    }
    reg.register("refusals", "Replies to clients other than OK, by status code", refusals);

    reg.register(
        "paths",
        "Paths in the META-DATA, deleted ones included",
        ConstGauge::new(gauge(server.library.catalog().len())),
    );
    let kept = server.library.catalog().history_size();
    reg.register(
        "history_versions",
        "Versions the history keeps for restores (overwritten and deleted ones)",
        ConstGauge::new(gauge(kept.versions)),
    );
    reg.register(
        "history_bytes",
        "Bytes of the file versions the history keeps",
        ConstGauge::new(gauge(usize::try_from(kept.bytes).unwrap_or(usize::MAX))),
    );
    reg.register(
        "stored_blobs",
        "Distinct contents in the blob store (identical files share one)",
        ConstGauge::new(gauge(server.library.blobs().blob_count())),
    );

    let mut out = String::with_capacity(4096 + 64 * clients.len());
    if encode(&mut out, &reg).is_err() {
        // Writing to a String does not fail; an encoder error would be a bug.
        log::error!("cannot encode the metrics");
    }
    out
}

/// A count as a gauge value.
fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `s` made safe as a label value: `prometheus-client` writes label values
/// as they are, and a label comes from a peer, so a quote, a backslash or a
/// line break in it would break the whole exposition. Those and other
/// control characters become `_`.
pub fn label_value(s: &str) -> String {
    s.chars().map(|c| if c == '"' || c == '\\' || c.is_control() { '_' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_value_cannot_break_out_of_its_quotes() {
        assert_eq!(label_value("a\"b\\c\nd\u{7f}é"), "a_b_c_d_é");
        assert_eq!(label_value("laptop#3"), "laptop#3");
    }
}
