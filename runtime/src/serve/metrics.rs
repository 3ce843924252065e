//! What `GET /metrics` reports, in the Prometheus (OpenMetrics) text format:
//! requests by path and status, errors by kind, the latency of predictions, images
//! scored, requests in flight and the size of each inference batch.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    path: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
}

/// The server's counters; cheap to update from any thread.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Histogram,
    images: Counter,
    in_flight: Gauge,
    batch_size: Histogram,
}

/// Paths reported as themselves; anything else is counted as `other`, so a
/// scanner probing random URLs cannot grow the label set.
const KNOWN_PATHS: &[&str] = &["/v1/predict", "/v1/model", "/healthz", "/metrics"];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("fennec");
        let requests = Family::<RequestLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        // 0.5 ms .. ~16 s.
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        let images = Counter::default();
        let in_flight = Gauge::default();
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register(
            "http_requests",
            "HTTP requests answered, by path and status",
            requests.clone(),
        );
        registry.register(
            "errors",
            "Failed requests and images, by kind (the `kind` of the JSON error)",
            errors.clone(),
        );
        registry.register(
            "predict_duration_seconds",
            "Time to answer POST /v1/predict, from headers read to answer ready",
            latency.clone(),
        );
        registry.register("images_scored", "Images scored", images.clone());
        registry.register(
            "requests_in_flight",
            "Prediction requests admitted and not yet answered",
            in_flight.clone(),
        );
        registry.register(
            "batch_images",
            "Images per inference call (requests batched together)",
            batch_size.clone(),
        );
        Metrics {
            registry,
            requests,
            errors,
            latency,
            images,
            in_flight,
            batch_size,
        }
    }
}

impl Metrics {
    pub fn request(&self, path: &str, status: u16) {
        let path = KNOWN_PATHS
            .iter()
            .find(|p| **p == path)
            .map_or("other", |p| p);
        self.requests
            .get_or_create(&RequestLabels {
                path: path.to_string(),
                status,
            })
            .inc();
    }

    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }

    pub fn predict_latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    pub fn images_scored(&self, n: usize) {
        self.images.inc_by(n as u64);
    }

    pub fn batch(&self, images: usize) {
        self.batch_size.observe(images as f64);
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric() {
        let m = Metrics::default();
        m.request("/v1/predict", 200);
        m.request("/wp-admin", 404);
        m.error("truncated");
        m.predict_latency(0.003);
        m.images_scored(3);
        m.batch(3);
        let guard = m.in_flight();
        let text = m.encode();
        drop(guard);
        for needle in [
            "fennec_http_requests_total{path=\"/v1/predict\",status=\"200\"} 1",
            "fennec_http_requests_total{path=\"other\",status=\"404\"} 1",
            "fennec_errors_total{kind=\"truncated\"} 1",
            "fennec_predict_duration_seconds_count 1",
            "fennec_images_scored_total 3",
            "fennec_requests_in_flight 1",
            "fennec_batch_images_sum 3.0",
            "# EOF",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        assert!(m.encode().contains("fennec_requests_in_flight 0"));
    }
}
