//! `/`: the status page, plain HTML and CSS (no script): the connected
//! clients and how far each is from in sync, the recent changes, and each
//! path's current version. Every name on it (labels, paths) comes from a
//! peer, so every one goes through [`escape`].

use std::fmt::Write as _;

use crate::metrics::Change;
use crate::server::Server;
use crate::views::{self, ClientView, PathView, STALLED_AFTER};

/// Most clients listed; a "N more" line stands for the rest.
pub const MAX_CLIENT_ROWS: usize = 1000;

/// Most paths listed (the most recently changed); a "N more" line stands
/// for the rest. The server keeps no version history yet: each path shows
/// its current version only.
pub const MAX_PATH_ROWS: usize = 1000;

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;background:#fafafa}\
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .4em}\
.sub{color:#666;margin:0 0 1em}\
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0001}\
th,td{padding:.3em .8em;border-bottom:1px solid #e5e5e5;text-align:left;vertical-align:top}\
th{background:#f0f0f0;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}\
.path{font-family:ui-monospace,monospace;word-break:break-all}\
.ok{color:#176f2c}.busy{color:#8a5a00}.bad{color:#b00020;font-weight:600}.del{color:#999}\
.more{color:#666;font-style:italic}";

/// The page for `server` now.
pub fn render(server: &Server) -> String {
    let clients = views::clients(server, MAX_CLIENT_ROWS);
    let recent = server.metrics.recent();
    let paths = views::paths(server, MAX_PATH_ROWS);
    let mut h = String::with_capacity(16 * 1024 + 200 * paths.rows.len());
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>dropsync server</title>\
         <style>{STYLE}</style></head><body>\n<h1>dropsync server</h1>\n<p class=\"sub\">{} client(s) connected \
         &middot; {} file(s), {} &middot; {} deleted path(s) &middot; as of {} UTC</p>\n",
        clients.total,
        paths.files,
        human_bytes(paths.bytes),
        paths.deleted,
        utc(crate::clock::now_ns()),
    );
    clients_table(&mut h, &clients);
    recent_table(&mut h, &recent);
    paths_table(&mut h, &paths);
    h.push_str("</body></html>\n");
    h
}

fn clients_table(h: &mut String, clients: &views::Clients) {
    h.push_str("<h2>Connected clients</h2>\n");
    if clients.total == 0 {
        h.push_str("<p class=\"more\">No client is connected.</p>\n");
        return;
    }
    h.push_str(
        "<table id=\"clients\"><tr><th>Label</th><th>Address</th><th>Kind</th><th>State</th><th>Connected since</th></tr>\n",
    );
    for c in &clients.shown {
        let class = match (c.pending, c.stalled) {
            (0, _) => "ok",
            (_, false) => "busy",
            (_, true) => "bad",
        };
        let _ = writeln!(
            h,
            "<tr class=\"client\"><td class=\"label\">{}</td><td>{}</td><td>{}</td><td class=\"{class}\"{}>{}</td><td>{}</td></tr>",
            escape(&c.label),
            escape(&c.addr.to_string()),
            kind(c),
            if c.stalled { stalled_title() } else { String::new() },
            escape(&c.state()),
            utc(c.since_ns),
        );
    }
    h.push_str("</table>\n");
    more(h, clients.total.saturating_sub(clients.shown.len()), "client");
}

fn kind(c: &ClientView) -> &'static str {
    match (c.legacy, c.tls, c.read_only) {
        (true, false, _) => "legacy",
        (true, true, _) => "legacy, TLS",
        (false, false, _) => "HELLO",
        (false, true, false) => "TLS",
        (false, true, true) => "TLS, read-only",
    }
}

fn stalled_title() -> String {
    format!(" title=\"work waiting and no reply for {} s or more\"", STALLED_AFTER.as_secs())
}

fn recent_table(h: &mut String, recent: &[Change]) {
    let _ = writeln!(h, "<h2>Recent changes <small>(last {})</small></h2>", crate::metrics::RECENT_CHANGES);
    if recent.is_empty() {
        h.push_str("<p class=\"more\">No change since the server started.</p>\n");
        return;
    }
    h.push_str("<table id=\"recent\"><tr><th>Time (UTC)</th><th>Change</th><th>Path</th><th>Version</th><th>Client</th></tr>\n");
    for c in recent {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td{}>{}</td><td class=\"path\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            utc(c.at_ns),
            if c.deleted { " class=\"del\"" } else { "" },
            if c.deleted { "deleted" } else { "written" },
            escape(&c.path),
            c.version,
            escape(&c.client),
        );
    }
    h.push_str("</table>\n");
}

fn paths_table(h: &mut String, paths: &views::Paths) {
    h.push_str("<h2>Paths <small>(current version and the earlier ones kept; most recently changed first)</small></h2>\n");
    if paths.rows.is_empty() {
        h.push_str("<p class=\"more\">No file yet.</p>\n");
        return;
    }
    h.push_str("<table id=\"paths\"><tr><th>Path</th><th>Version</th><th>Size</th><th>Modified (UTC)</th><th>Earlier versions</th></tr>\n");
    for PathView { path, version, size, mtime_ns, deleted, earlier } in &paths.rows {
        let mut kept: Vec<String> =
            earlier.0.iter().map(|(v, del)| if *del { format!("{v} (deleted)") } else { v.to_string() }).collect();
        if earlier.1 > 0 {
            kept.push(format!("+{}", earlier.1));
        }
        let _ = writeln!(
            h,
            "<tr{}><td class=\"path\">{}</td><td class=\"n\">{version}</td><td class=\"n\">{}</td><td>{}</td><td class=\"kept\">{}</td></tr>",
            if *deleted { " class=\"del\"" } else { "" },
            escape(path),
            if *deleted { "deleted".into() } else { human_bytes(*size) },
            utc(*mtime_ns),
            kept.join(", "),
        );
    }
    h.push_str("</table>\n");
    more(h, (paths.files + paths.deleted).saturating_sub(paths.rows.len()), "path");
}

fn more(h: &mut String, n: usize, what: &str) {
    if n > 0 {
        let _ = writeln!(h, "<p class=\"more\">{n} more {what}(s) not shown.</p>");
    }
}

/// `s` as HTML text or attribute content: a name from a peer can hold
/// `<script>`, quotes or ampersands.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A byte count for people: "512 B", "1.5 KiB", "3.2 GiB".
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Nanoseconds since the Unix epoch as "YYYY-MM-DD HH:MM:SS" (UTC).
pub fn utc(ns: i64) -> String {
    dropsync_core::utc::format(ns.div_euclid(1_000_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_peers_are_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400 * 1_000_000_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_700_000_000 * 1_000_000_000 + 5), "2023-11-14 22:13:20");
        assert_eq!(utc(-1_000_000_000), "1969-12-31 23:59:59");
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
