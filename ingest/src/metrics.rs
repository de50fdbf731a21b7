//! Ingest's Prometheus metrics. Names follow `ioc_ingest_<thing>_<unit>_total`; labels are
//! low-cardinality (a rejection code, never a device id).

use ioc_contract::RejectCode;
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Clone)]
pub struct IngestMetrics {
    pub messages_received: IntCounter,
    pub messages_acked: IntCounter,
    pub readings_produced: IntCounter,
    pub rejections: IntCounterVec,
    pub deadletters_produced: IntCounter,
    pub produce_errors: IntCounter,
    pub mqtt_connects: IntCounter,
    pub inflight_messages: IntGauge,
    /// 1 once the broker granted every subscription of the current connection, else 0: the
    /// stage's readiness (`/healthz` answers 503 until then).
    pub subscribed: IntGauge,
}

impl IngestMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<IngestMetrics> {
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let rejections = IntCounterVec::new(
            Opts::new(
                "ioc_ingest_rejections_total",
                "Messages or values rejected, by reason code",
            ),
            &["code"],
        )?;
        registry.register(Box::new(rejections.clone()))?;
        for code in RejectCode::ALL {
            rejections.with_label_values(&[code.as_str()]);
        }
        let inflight_messages = IntGauge::new(
            "ioc_ingest_inflight_messages",
            "Messages received and not yet acknowledged to the broker",
        )?;
        registry.register(Box::new(inflight_messages.clone()))?;
        let subscribed = IntGauge::new(
            "ioc_ingest_subscribed",
            "1 when the broker has granted every subscription of the current connection",
        )?;
        registry.register(Box::new(subscribed.clone()))?;
        Ok(IngestMetrics {
            messages_received: counter(
                "ioc_ingest_messages_received_total",
                "MQTT messages received",
            )?,
            messages_acked: counter(
                "ioc_ingest_messages_acked_total",
                "MQTT messages acknowledged to the broker",
            )?,
            readings_produced: counter(
                "ioc_ingest_readings_produced_total",
                "Readings confirmed by Kafka",
            )?,
            rejections,
            deadletters_produced: counter(
                "ioc_ingest_deadletters_produced_total",
                "Dead-letter records confirmed by Kafka",
            )?,
            produce_errors: counter(
                "ioc_ingest_kafka_produce_errors_total",
                "Kafka produce attempts that failed and were retried",
            )?,
            mqtt_connects: counter(
                "ioc_ingest_mqtt_connects_total",
                "MQTT connections established",
            )?,
            inflight_messages,
            subscribed,
        })
    }
}
