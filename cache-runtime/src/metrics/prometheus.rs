//! The Prometheus text exposition format (0.0.4) of [`Stats`]: `# HELP` and `# TYPE` once
//! per metric, counters as `_total`, histograms as cumulative `_bucket{le=...}` series with
//! `_sum` and `_count`. Written here rather than through an exporter crate, so `/metrics`
//! works whatever recorder the application installed (or none).

use std::fmt::Write as _;

use super::handles::{
    Def, BODY_SECONDS, CIRCUIT_OPEN, ERRORS, EVICTIONS, HITS, L1_BYTES, L1_ENTRIES, LOCK_WAITS,
    MISSES, POOL_CONNECTIONS, POOL_MAX_CONNECTIONS, READ_SECONDS, REFRESHES, SHAPE_MISMATCHES,
    STALE_SERVED, STORES, WRITE_SECONDS,
};
use super::histogram::HistogramSnapshot;
use super::Stats;
use crate::counters::NamespaceCounters;

/// A label value with `\`, `"` and line feeds escaped, as the format wants. Namespaces are
/// `[a-z0-9_-]` by the grammar; escaping anyway keeps the output parseable whatever comes.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.into()
}

fn header(out: &mut String, def: Def, kind: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {} {}", def.name, def.help);
    let _ = writeln!(out, "# TYPE {} {kind}", def.name);
}

/// A float as the format reads it (`+Inf` for the last bucket is written by the caller).
fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v.is_nan() {
        "NaN".to_owned()
    } else if v > 0.0 {
        "+Inf".to_owned()
    } else {
        "-Inf".to_owned()
    }
}

fn counter(out: &mut String, stats: &Stats, def: Def, value: impl Fn(&NamespaceCounters) -> u64) {
    header(out, def, "counter");
    for (ns, s) in &stats.namespaces {
        let _ = writeln!(
            out,
            "{}{{namespace=\"{}\"}} {}",
            def.name,
            escape(ns),
            value(&s.counters)
        );
    }
}

fn histogram(
    out: &mut String,
    stats: &Stats,
    def: Def,
    pick: impl Fn(&super::NamespaceStats) -> &HistogramSnapshot,
) {
    header(out, def, "histogram");
    for (ns, s) in &stats.namespaces {
        let h = pick(s);
        let ns = escape(ns);
        for (le, n) in h.cumulative() {
            let le = le.map_or_else(|| "+Inf".to_owned(), number);
            let _ = writeln!(
                out,
                "{}_bucket{{namespace=\"{ns}\",le=\"{le}\"}} {n}",
                def.name
            );
        }
        let _ = writeln!(
            out,
            "{}_sum{{namespace=\"{ns}\"}} {}",
            def.name,
            number(h.sum_seconds)
        );
        let _ = writeln!(out, "{}_count{{namespace=\"{ns}\"}} {}", def.name, h.count);
    }
}

fn gauge(out: &mut String, def: Def, value: Option<u64>) {
    if let Some(v) = value {
        header(out, def, "gauge");
        let _ = writeln!(out, "{} {v}", def.name);
    }
}

/// The whole exposition.
pub(crate) fn render(stats: &Stats) -> String {
    let mut out = String::with_capacity(2048 + stats.namespaces.len() * 6144);
    header(&mut out, HITS, "counter");
    for (ns, s) in &stats.namespaces {
        let ns = escape(ns);
        let c = &s.counters;
        let store = c.hits.saturating_sub(c.l1_hits);
        let _ = writeln!(
            out,
            "{}{{namespace=\"{ns}\",tier=\"l1\"}} {}",
            HITS.name, c.l1_hits
        );
        let _ = writeln!(
            out,
            "{}{{namespace=\"{ns}\",tier=\"store\"}} {store}",
            HITS.name
        );
    }
    counter(&mut out, stats, MISSES, |c| c.misses);
    counter(&mut out, stats, STORES, |c| c.stores);
    counter(&mut out, stats, ERRORS, |c| c.errors);
    counter(&mut out, stats, STALE_SERVED, |c| c.stale_served);
    counter(&mut out, stats, SHAPE_MISMATCHES, |c| c.shape_mismatches);
    counter(&mut out, stats, REFRESHES, |c| c.refreshes);
    counter(&mut out, stats, LOCK_WAITS, |c| c.lock_waits);
    histogram(&mut out, stats, READ_SECONDS, |s| &s.read);
    histogram(&mut out, stats, WRITE_SECONDS, |s| &s.write);
    histogram(&mut out, stats, BODY_SECONDS, |s| &s.body);
    let g = &stats.gauges;
    gauge(&mut out, CIRCUIT_OPEN, Some(u64::from(g.circuit_open)));
    gauge(&mut out, POOL_CONNECTIONS, g.pool_connections);
    gauge(&mut out, POOL_MAX_CONNECTIONS, g.pool_max_connections);
    gauge(&mut out, L1_ENTRIES, g.l1_entries);
    gauge(&mut out, L1_BYTES, g.l1_bytes);
    if let Some(n) = g.evictions {
        header(&mut out, EVICTIONS, "counter");
        let _ = writeln!(out, "{} {n}", EVICTIONS.name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Gauges, NamespaceStats};
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let mut stats = Stats::default();
        let mut ns = NamespaceStats::default();
        ns.counters.hits = 5;
        ns.counters.l1_hits = 2;
        ns.counters.misses = 1;
        ns.read.buckets = vec![0; 23];
        ns.read.buckets[3] = 4;
        ns.read.buckets[22] = 1;
        ns.read.count = 5;
        ns.read.sum_seconds = 60.5;
        stats.namespaces.insert("a\"b".to_owned(), ns);
        stats.gauges = Gauges {
            pool_connections: Some(2),
            ..Gauges::default()
        };
        let text = render(&stats);
        for line in [
            "# TYPE cache_hits_total counter",
            "cache_hits_total{namespace=\"a\\\"b\",tier=\"l1\"} 2",
            "cache_hits_total{namespace=\"a\\\"b\",tier=\"store\"} 3",
            "cache_misses_total{namespace=\"a\\\"b\"} 1",
            "# TYPE cache_read_duration_seconds histogram",
            "cache_read_duration_seconds_bucket{namespace=\"a\\\"b\",le=\"0.000005\"} 0",
            "cache_read_duration_seconds_bucket{namespace=\"a\\\"b\",le=\"0.00001\"} 4",
            "cache_read_duration_seconds_bucket{namespace=\"a\\\"b\",le=\"10\"} 4",
            "cache_read_duration_seconds_bucket{namespace=\"a\\\"b\",le=\"+Inf\"} 5",
            "cache_read_duration_seconds_sum{namespace=\"a\\\"b\"} 60.5",
            "cache_read_duration_seconds_count{namespace=\"a\\\"b\"} 5",
            "cache_circuit_open 0",
            "cache_pool_connections 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("cache_l1_entries"), "no L1: no L1 gauge");
        // Each metric is introduced once.
        let types = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let helps = text.lines().filter(|l| l.starts_with("# HELP ")).count();
        assert_eq!(types, helps);
    }
}
