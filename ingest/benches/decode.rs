//! Decoding throughput per format, beside serde_json parse-only of the same payloads, in one
//! run (`cargo bench -p ioc-ingest --bench decode`). Plain timing, no harness: it prints
//! messages per second on one core for each. The sensor-zoo issue asks for criterion and
//! 1 000 000 msg/s on the v1 path; this is the measurement that work starts from.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ioc_bus::registry::RegistryView;
use ioc_contract::{Device, RegistryEvent, Topics};
use ioc_ingest::decode::DecodeContext;
use ioc_ingest::{process_message, Format};

fn ctx() -> DecodeContext {
    DecodeContext {
        received_at: 1_795_680_300_000,
        max_future_skew_ms: 300_000,
        max_payload_bytes: 262_144,
        utc_offset_ms: 7 * 3_600_000,
    }
}

/// Runs `f` for about a second and returns calls per second.
fn rate(mut f: impl FnMut()) -> f64 {
    for _ in 0..10_000 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        for _ in 0..1000 {
            f();
        }
        n += 1000;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // A 4-metric v1 payload of about 200 bytes.
    let v1 = br#"{"ts":"2026-11-26T15:05:00+07:00","seq":17,"channel":"","interval_s":60,"values":{"pm25":35.2,"pm10":61.0,"no2":21.4,"co":1180.5}}"#;
    let station = b"pH\t7.21\tpH\t20261126085500\t00\r\nCOD\t61,5\tmg/L\t20261126085500\t00\r\nTSS\t40\tmg/L\t20261126085500\t00\r\nNH4+\t3.2\tmg/L\t20261126085500\t00\r\n";
    let senml = br#"[{"bn":"urn:dev:aq-001:","bt":1795658340,"bu":"ug/m3","n":"pm25","v":35.2},{"n":"pm10","v":61},{"n":"no2","u":"ppb","v":21},{"n":"co","u":"mg/m3","v":1.2}]"#;
    let counter = br#"{"sensor":"TC-77","end":1795658340,"interval_s":60,"lanes":[{"lane":1,"count":17,"avg_speed":42.5,"occupancy":0.12}]}"#;
    let ctx = ctx();
    println!("{:<34} {:>6} {:>14}", "what", "bytes", "msg/s/core");
    let json_payloads: [(&str, &[u8]); 3] = [
        ("ioc-json", v1),
        ("senml", senml),
        ("traffic-counter", counter),
    ];
    for (name, payload) in json_payloads {
        let r = rate(|| {
            black_box(serde_json::from_slice::<serde_json::Value>(black_box(payload)).ok());
        });
        println!(
            "{:<34} {:>6} {:>14.0}",
            format!("serde_json parse only ({name})"),
            payload.len(),
            r
        );
    }
    for (format, payload) in [
        (Format::IocJson, &v1[..]),
        (Format::Tt10Station, &station[..]),
        (Format::Senml, &senml[..]),
        (Format::TrafficCounter, &counter[..]),
    ] {
        let r = rate(|| {
            black_box(format.decode("aq-001", black_box(payload), "m", &ctx).ok());
        });
        println!(
            "{:<34} {:>6} {:>14.0}",
            format!("decode {}", format.name()),
            payload.len(),
            r
        );
    }
    // The whole per-message step of ingest for v1: decode, validate, build and encode records.
    let registry = RegistryView::default();
    registry.apply(RegistryEvent::Registered {
        device: Device {
            device_id: "aq-001".into(),
            kind: "air_quality".into(),
            name: "a".into(),
            lat: 12.6,
            lon: 108.0,
            expected_interval_s: 60.0,
            registered_at: 0,
        },
    });
    let topics = Topics::with_prefix("ioc.");
    let r = rate(|| {
        black_box(process_message(
            "ioc/v1/devices/aq-001/telemetry",
            black_box(v1),
            &registry,
            &topics,
            &ctx,
        ));
    });
    println!(
        "{:<34} {:>6} {:>14.0}",
        "process_message ioc-json (+records)",
        v1.len(),
        r
    );
}
