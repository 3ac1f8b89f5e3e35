//! Prometheus metrics of the API server, served as text on `/metrics` of the API port.

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::time::Duration;

pub struct Metrics {
    registry: Registry,
    requests: HistogramVec,
    pub watchers: IntGaugeVec,
    pub watch_events: IntCounterVec,
    pub watch_cutoffs: IntCounterVec,
    pub watch_latency: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // 50 µs to ~13 s.
        let buckets = exponential_buckets(50e-6, 2.0, 19).expect("valid buckets");
        let requests = HistogramVec::new(
            HistogramOpts::new(
                "flotilla_api_request_duration_seconds",
                "API request latency by verb and resource",
            )
            .buckets(buckets.clone()),
            &["verb", "resource"],
        )
        .expect("valid metric");
        let watchers = IntGaugeVec::new(
            Opts::new("flotilla_api_watchers", "Open watches by resource"),
            &["resource"],
        )
        .expect("valid metric");
        let watch_events = IntCounterVec::new(
            Opts::new("flotilla_api_watch_events_total", "Events sent to watchers by resource"),
            &["resource"],
        )
        .expect("valid metric");
        let watch_cutoffs = IntCounterVec::new(
            Opts::new("flotilla_api_watch_cutoffs_total", "Watchers cut off for falling behind"),
            &["resource"],
        )
        .expect("valid metric");
        let watch_latency = HistogramVec::new(
            HistogramOpts::new(
                "flotilla_api_watch_event_latency_seconds",
                "From the store's event reaching the watch cache to the event leaving for a watcher",
            )
            .buckets(buckets),
            &["resource"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(watchers.clone()),
            Box::new(watch_events.clone()),
            Box::new(watch_cutoffs.clone()),
            Box::new(watch_latency.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Metrics { registry, requests, watchers, watch_events, watch_cutoffs, watch_latency }
    }

    pub fn observe_request(&self, verb: &str, resource: &str, took: Duration) {
        self.requests.with_label_values(&[verb, resource]).observe(took.as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // The process's default registry holds the in-process controllers' metrics.
        let mut families = self.registry.gather();
        families.extend(prometheus::gather());
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
