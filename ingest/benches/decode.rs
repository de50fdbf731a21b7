//! Decoding throughput per format, in messages per second on one core
//! (`cargo bench -p ioc-ingest --bench decode`).
//!
//! One group per format, each over a small set of realistic payloads whose values vary (so
//! nothing is constant-folded and branch predictors see some variety). The v1 group also
//! measures, in the same run and over the same payloads, serde_json parse-only (the floor any
//! JSON decoder pays) and the whole per-message step of ingest (`Ingestor::process`: route,
//! registry look-up, decode, normalize, validate, build the bus records).
//!
//! Time is the benchmark thread's CPU time ([`ThreadCpuTime`]), not wall time: on a shared
//! machine a descheduled thread would otherwise count as a slow decoder, and "per core" is what
//! the target is stated in. Short measurement windows: the numbers are for comparing, not for
//! publishing to three digits.

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use ioc_bus::registry::RegistryView;
use ioc_contract::{Device, RegistryEvent, Topics};
use ioc_ingest::camera::{decode_camera, PlateKey};
use ioc_ingest::decode::DecodeContext;
use ioc_ingest::flat::Profile;
use ioc_ingest::{Format, Ingestor};

fn ctx() -> DecodeContext {
    DecodeContext {
        received_at: 1_795_680_300_000,
        max_future_skew_ms: 300_000,
        max_payload_bytes: 262_144,
        utc_offset_ms: 7 * 3_600_000,
    }
}

/// Four-metric v1 messages of about 200 bytes, as the issue's target names them: epoch and
/// RFC 3339 times, a channel, a firmware field ingest ignores, and sometimes a units map.
fn v1_payloads() -> Vec<Vec<u8>> {
    let values = [
        (35.2, 61.0, 21.4, 1180.5),
        (12.75, 20.5, 8.9, 640.25),
        (88.1, 140.3, 45.0, 2210.0),
        (4.0, 7.25, 3.1, 310.75),
        (150.6, 201.9, 60.2, 3050.5),
        (27.3, 49.8, 17.6, 905.0),
        (61.4, 99.9, 33.3, 1500.125),
        (9.9, 15.4, 5.5, 480.0),
    ];
    values
        .iter()
        .enumerate()
        .map(|(i, (pm25, pm10, no2, co))| {
            let seq = 40 + i * 7;
            let body = if i % 2 == 0 {
                format!(
                    r#"{{"ts":{},"seq":{seq},"site":"bmt-truong-chinh-0{i}","channel":"","interval_s":60,"fw":"aq-2.4.{i}","rssi":-7{i},"batt_v":3.7{i},"values":{{"pm25":{pm25},"pm10":{pm10},"no2":{no2},"co":{co}}}}}"#,
                    1_795_680_240_000i64 + i as i64 * 10_000
                )
            } else if i % 4 == 1 {
                format!(
                    r#"{{"ts":"2026-11-26T15:0{i}:00+07:00","seq":{seq},"site":"bmt-truong-chinh-0{i}","channel":"roof","interval_s":60,"rssi":-6{i},"values":{{"pm25":{pm25},"pm10":{pm10},"no2":{no2},"co":{}}},"units":{{"co":"mg/m3"}}}}"#,
                    co / 1000.0
                )
            } else {
                format!(
                    r#"{{"ts":"2026-11-26T08:0{i}:00Z","seq":{seq},"site":"bmt-truong-chinh-0{i}","channel":"inlet","interval_s":60,"fw":"aq-2.4.{i}","rssi":-7{i},"batt_v":3.7{i},"values":{{"pm25":{pm25},"pm10":{pm10},"no2":{no2},"co":{co}}}}}"#
                )
            };
            body.into_bytes()
        })
        .collect()
}

fn senml_payloads() -> Vec<Vec<u8>> {
    (0..8)
        .map(|i| {
            format!(
                r#"[{{"bn":"urn:dev:aq-001:","bt":{},"bu":"ug/m3","n":"pm25","v":{}}},{{"n":"pm10","v":{}}},{{"n":"no2","u":"ppb","v":{}}},{{"n":"co","u":"mg/m3","v":{}}}]"#,
                1_795_658_340 + i * 60,
                30.0 + i as f64 * 1.7,
                55 + i * 3,
                18.5 + i as f64,
                1.2 + i as f64 * 0.05
            )
            .into_bytes()
        })
        .collect()
}

fn flat_payloads() -> Vec<Vec<u8>> {
    (0..8)
        .map(|i| {
            format!(
                r#"{{"imei":"86123456789012{i}","time":"26/11/2026 08:0{i}:00","PM2_5":"{},{}","PM10":"{}","NO2":"{}","CO":"1,{}"}}"#,
                30 + i,
                i * 7 % 10,
                60 + i * 2,
                20 + i,
                i + 1
            )
            .into_bytes()
        })
        .collect()
}

fn tt10_payloads() -> Vec<Vec<u8>> {
    (0..8)
        .map(|i| {
            format!(
                "pH\t7.{}\tpH\t2026112608{i}500\t00\r\nCOD\t6{i},5\tmg/L\t2026112608{i}500\t00\r\nTSS\t{}\tmg/L\t2026112608{i}500\t00\r\nNH4+\t3.{i}\tmg/L\t2026112608{i}500\t00\r\n",
                10 + i * 3,
                40 + i * 2
            )
            .into_bytes()
        })
        .collect()
}

fn counter_payloads() -> Vec<Vec<u8>> {
    (0..8)
        .map(|i| {
            format!(
                r#"{{"sensor":"TC-77","end":{},"interval_s":60,"lanes":[{{"lane":1,"count":{},"avg_speed":{},"occupancy":0.{}}},{{"lane":2,"count":{},"avg_speed":{},"occupancy":0.0{}}}]}}"#,
                1_795_658_340 + i * 60,
                10 + i * 3,
                38.5 + i as f64,
                10 + i,
                4 + i,
                51.0 - i as f64,
                i + 1
            )
            .into_bytes()
        })
        .collect()
}

fn camera_payloads() -> Vec<Vec<u8>> {
    (0..8)
        .map(|i| {
            format!(
                r#"{{"camera_id":"CAM-1","event_id":"CAM-1-{}","event_time":"2026-11-26T15:0{i}:00+07:00","type":"speeding","plate":"47A-12{i}.4{}","speed_kmh":{},"lane":{},"image_ref":"s3://evidence/2026/11/26/{}.jpg"}}"#,
                4200 + i,
                9 - i,
                65.5 + i as f64 * 2.25,
                i % 3 + 1,
                4200 + i
            )
            .into_bytes()
        })
        .collect()
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`), in nanoseconds.
struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec to write into; the clock id is a constant Linux knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

/// Nanoseconds of CPU time shown as criterion shows wall time, and throughput per CPU second.
struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match ns {
            ns if ns < 1e3 => (1.0, "ns"),
            ns if ns < 1e6 => (1e-3, "µs"),
            ns if ns < 1e9 => (1e-6, "ms"),
            _ => (1e-9, "s"),
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(&self, typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let per_iter = match *t {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => n,
            Throughput::Bits(n) => n,
        } as f64;
        let (denominator, unit) = match per_iter * 1e9 / typical {
            r if r < 1e3 => (1.0, "/s"),
            r if r < 1e6 => (1e3, "K/s"),
            _ => (1e6, "M/s"),
        };
        values
            .iter_mut()
            .for_each(|v| *v = per_iter * 1e9 / *v / denominator);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn configure(group: &mut BenchmarkGroup<'_, ThreadCpuTime>) {
    group
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20)
        .throughput(Throughput::Elements(1));
}

/// Benchmarks `f` over `payloads` in turn; each iteration is one message.
fn each<'p>(payloads: &'p [Vec<u8>]) -> impl FnMut() -> &'p [u8] {
    let mut i = 0;
    move || {
        i = (i + 1) % payloads.len();
        black_box(&payloads[i][..])
    }
}

fn registry() -> RegistryView {
    let view = RegistryView::default();
    view.apply(RegistryEvent::Registered {
        device: Device {
            device_id: "aq-001".into(),
            kind: "air_quality".into(),
            name: "Buôn Ma Thuột, Trường Chinh".into(),
            lat: 12.68,
            lon: 108.04,
            expected_interval_s: 60.0,
            ..Default::default()
        },
    });
    // A registry of realistic size, so the look-up is not into a one-entry map.
    for i in 0..500 {
        view.apply(RegistryEvent::Registered {
            device: Device {
                device_id: format!("aq-{:03}", 100 + i),
                kind: "air_quality".into(),
                name: "x".into(),
                expected_interval_s: 60.0,
                ..Default::default()
            },
        });
    }
    view
}

fn ioc_json(c: &mut Criterion<ThreadCpuTime>) {
    let payloads = v1_payloads();
    let ctx = ctx();
    let profile = Profile::flat_gateway();
    for p in &payloads {
        let d = Format::IocJson.decode("aq-001", p, "m", &ctx, &profile);
        assert_eq!(
            d.map(|d| d.readings.len()).ok(),
            Some(4),
            "{}",
            String::from_utf8_lossy(p)
        );
    }
    let mean = payloads.iter().map(Vec::len).sum::<usize>() / payloads.len();
    let mut group = c.benchmark_group(format!("ioc-json ({mean} B, 4 metrics)"));
    configure(&mut group);
    group.bench_function("serde_json parse-only (Value)", |b| {
        let mut next = each(&payloads);
        b.iter(|| serde_json::from_slice::<serde_json::Value>(next()).ok())
    });
    group.bench_function("decode (normalize, validate)", |b| {
        let mut next = each(&payloads);
        b.iter(|| {
            Format::IocJson
                .decode("aq-001", next(), "0123456789abcdef", &ctx, &profile)
                .ok()
        })
    });
    let mut config = ioc_config::load_str(None, Vec::new())
        .expect("default config loads")
        .ingest;
    config.plate_secret = "bench".into();
    let ingestor = Ingestor::new(&config, registry(), Topics::with_prefix("ioc."))
        .expect("default ingest config is valid");
    // At one fixed receive time the default flood guard (1 000 messages/s per device, bursts of
    // 20 000) would dead-letter all but the first 20 000 messages, and this would measure the
    // rate_limited path. Each message is received 1 ms after the one before instead: one device
    // at exactly its allowed rate, so every message is admitted and the guard still counts.
    let mut clock = ctx.clone();
    group.bench_function(
        "Ingestor::process (route, registry, decode, records)",
        |b| {
            let mut next = each(&payloads);
            b.iter(|| {
                clock.received_at += 1;
                let out = ingestor.process("ioc/v1/devices/aq-001/telemetry", next(), &clock);
                assert!(
                    out.rejections.is_empty() && out.records.len() == 1,
                    "every message becomes one readings record: {:?}",
                    out.rejections
                );
                out
            })
        },
    );
    group.finish();
}

fn other_formats(c: &mut Criterion<ThreadCpuTime>) {
    let ctx = ctx();
    let profile = Profile::flat_gateway();
    for (format, payloads) in [
        (Format::Senml, senml_payloads()),
        (Format::VendorFlat, flat_payloads()),
        (Format::Tt10Station, tt10_payloads()),
        (Format::TrafficCounter, counter_payloads()),
    ] {
        assert!(payloads
            .iter()
            .all(|p| format.decode("d", p, "m", &ctx, &profile).is_ok()));
        let mean = payloads.iter().map(Vec::len).sum::<usize>() / payloads.len();
        let mut group = c.benchmark_group(format!("{} ({mean} B)", format.name()));
        configure(&mut group);
        group.bench_function("decode", |b| {
            let mut next = each(&payloads);
            b.iter(|| {
                format
                    .decode("aq-001", next(), "0123456789abcdef", &ctx, &profile)
                    .ok()
            })
        });
        group.finish();
    }

    let payloads = camera_payloads();
    let key = PlateKey::new("bench").expect("a non-empty key");
    let mean = payloads.iter().map(Vec::len).sum::<usize>() / payloads.len();
    let mut group = c.benchmark_group(format!("camera-event ({mean} B)"));
    configure(&mut group);
    group.bench_function("decode + plate pseudonym", |b| {
        let mut next = each(&payloads);
        b.iter(|| {
            let event = decode_camera(next(), &ctx).expect("camera payloads decode");
            key.pseudonym(&event.plate)
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = ioc_json, other_formats
}
criterion_main!(benches);
