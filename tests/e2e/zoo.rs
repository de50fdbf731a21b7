//! Every payload format through the real pipeline (Mosquitto, ingest, tansu, stream,
//! ClickHouse), faults on: every message is accounted for as stored, absorbed as a duplicate, or
//! dead-lettered (or quarantined) with a reason, and nothing else appears.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use anyhow::Result;
use ioc_bus::registry::RegistryView;
use ioc_contract::{DeadLetter, Device, ReadingBatch, RegistryEvent, Topics};
use ioc_ingest::decode::DecodeContext;
use rdkafka::Message;
use rumqttc::QoS;

use crate::harness::Env;
use crate::pipeline::{register_sim_fleet, start_pipeline};

const MESSAGES: usize = 1200;

/// The registry as the API shows it, folded like ingest folds it.
async fn registry_from_api(env: &Env) -> Result<RegistryView> {
    let list = env.get_json("/api/v1/devices").await?;
    let view = RegistryView::default();
    for d in list["devices"].as_array().expect("devices") {
        let strings = |key: &str| -> std::collections::BTreeMap<String, String> {
            d[key]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default()
        };
        view.apply(RegistryEvent::Registered {
            device: Device {
                device_id: d["device_id"].as_str().unwrap().into(),
                kind: d["kind"].as_str().unwrap().into(),
                external_ids: strings("external_ids"),
                decoder: d["decoder"].as_str().map(str::to_string),
                vendor_profile: d["vendor_profile"].as_str().map(str::to_string),
                ..Default::default()
            },
        });
    }
    Ok(view)
}

/// What the pipeline must end up holding, from ingest's own decision for each distinct message.
#[derive(Default)]
struct Expected {
    readings: BTreeSet<(String, String, String, i64)>,
    /// Dead letters as a multiset: a resent message that is rejected is rejected each time.
    letters: BTreeMap<(String, String, String), usize>,
    events: BTreeSet<String>,
    quarantined: BTreeSet<String>,
    /// Message ids that produced at least one of the above.
    accounted: BTreeSet<String>,
    /// Readings and events ingest writes (resends included), to count the duplicates among them.
    readings_written: usize,
    events_written: usize,
}

/// Every dead letter on the topic, counted by (message id, code, metric), read until `want` have
/// come and then for two quiet seconds more, so a letter written twice shows as a count of two.
async fn dead_letters(env: &Env, want: usize) -> Result<BTreeMap<(String, String, String), usize>> {
    let mut seen = BTreeMap::new();
    for letter in read_dead_letters(env, want).await? {
        let key = (
            letter.message_id,
            letter.code.as_str().to_string(),
            letter.metric.unwrap_or_default(),
        );
        *seen.entry(key).or_insert(0) += 1;
    }
    Ok(seen)
}

/// Every dead letter on the topic, in the order read, read until `want` have come and then for
/// two quiet seconds more; each must give a reason.
async fn read_dead_letters(env: &Env, want: usize) -> Result<Vec<DeadLetter>> {
    let consumer = env.topic_reader("deadletter")?;
    let mut letters = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let wait = if letters.len() < want {
            tokio::time::timeout_at(deadline, consumer.recv()).await
        } else {
            tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await
        };
        let Ok(m) = wait else { break };
        let letter: DeadLetter = serde_json::from_slice(m?.payload().unwrap_or_default())?;
        assert!(
            letter.reason.len() > 5,
            "every dead letter has a reason: {letter:?}"
        );
        letters.push(letter);
    }
    Ok(letters)
}

/// A published message: topic, payload, format.
type Published = (String, Vec<u8>, &'static str);

/// Ingest's decision for each message published (resends are byte-identical: one id), and the
/// format of each distinct message by id.
fn expectation(
    config: &ioc_config::Config,
    registry: RegistryView,
    published: &[Published],
) -> Result<(Expected, HashMap<String, &'static str>)> {
    let ingestor = ioc_ingest::Ingestor::new(&config.ingest, registry, Topics::with_prefix("x."))
        .map_err(anyhow::Error::msg)?;
    let mut expected = Expected::default();
    let mut ids: HashMap<String, &'static str> = HashMap::new();
    let ctx = DecodeContext {
        received_at: ioc_contract::time::now_ms(),
        max_future_skew_ms: config.ingest.max_future_skew.as_millis() as i64,
        max_payload_bytes: config.ingest.max_payload_bytes,
        utc_offset_ms: config.ingest.utc_offset_ms(),
    };
    for (topic, payload, format) in published {
        let id = ioc_ingest::decode::message_id(topic, payload);
        let first = ids.insert(id.clone(), *format).is_none();
        for record in ingestor.process(topic, payload, &ctx).records {
            match &*record.topic {
                "x.readings" => expected.readings_written += record.readings,
                "x.events" => expected.events_written += 1,
                _ => {}
            }
            if !first {
                // A resend is stored once (by key), but each rejection of it is a letter.
                if &*record.topic == "x.deadletter" {
                    let l: DeadLetter = serde_json::from_slice(&record.payload)?;
                    let key = (
                        l.message_id,
                        l.code.as_str().into(),
                        l.metric.unwrap_or_default(),
                    );
                    *expected.letters.entry(key).or_insert(0) += 1;
                }
                continue;
            }
            match &*record.topic {
                "x.readings" => {
                    let batch: ReadingBatch = serde_json::from_slice(&record.payload)?;
                    for r in batch.readings {
                        expected
                            .readings
                            .insert((r.device_id, r.channel, r.metric, r.ts));
                    }
                }
                "x.deadletter" => {
                    let l: DeadLetter = serde_json::from_slice(&record.payload)?;
                    let key = (
                        l.message_id,
                        l.code.as_str().into(),
                        l.metric.unwrap_or_default(),
                    );
                    *expected.letters.entry(key).or_insert(0) += 1;
                }
                "x.events" => {
                    let e: ioc_contract::Event = serde_json::from_slice(&record.payload)?;
                    expected.events.insert(e.event_id);
                }
                "x.quarantine" => {
                    expected.quarantined.insert(id.clone());
                }
                "x.evidence" => {}
                other => panic!("unexpected topic {other}"),
            }
            expected.accounted.insert(id.clone());
        }
    }
    Ok((expected, ids))
}

/// The stored readings are exactly the expected ones, each once, and the stream counted every
/// reading written again with a key already seen.
async fn readings_stored_once_and_resends_counted(env: &Env, expected: &Expected) -> Result<()> {
    let stored = env
        .eventually("every reading stored", Duration::from_secs(120), || async {
            let rows = env
                .clickhouse("SELECT device_id, channel, metric, ts FROM readings FINAL")
                .await?;
            Ok((rows.len() >= expected.readings.len()).then_some(rows))
        })
        .await?;
    // A list, not a set: a reading that FINAL still shows twice must fail here.
    let mut stored: Vec<(String, String, String, i64)> = stored
        .into_iter()
        .map(|r| {
            (
                r[0].clone(),
                r[1].clone(),
                r[2].clone(),
                r[3].parse().unwrap(),
            )
        })
        .collect();
    stored.sort();
    let want: Vec<_> = expected.readings.iter().cloned().collect();
    assert_eq!(stored.len(), want.len(), "no reading twice or extra");
    assert!(
        stored == want,
        "stored readings differ from ingest's decisions"
    );

    // Resends are counted where the device's partition is read: every reading written again
    // with a key already stored, and every event id written again.
    let resent_readings = expected.readings_written - expected.readings.len();
    assert!(resent_readings > 0);
    env.eventually(
        "resent readings counted",
        Duration::from_secs(30),
        || async {
            let n = env
                .metric(
                    env.stream_metrics_port,
                    "ioc_stream_duplicate_readings_total",
                )
                .await?;
            Ok((n as usize == resent_readings).then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_with_faults_is_stored_absorbed_or_dead_lettered() -> Result<()> {
    let env = Env::new(
        "zoo",
        "[sim]\nair_quality = 2\nwastewater = 2\ntraffic_counters = 1\nsenml_air = 1\nflat_gateways = 1\nflat_sensors_per_gateway = 2\ncameras = 2\nseed = 11\n",
    )?;
    let (_api, _stream, _ingest) = start_pipeline(&env).await?;
    register_sim_fleet(&env)?;
    let config = ioc_config::load(Some(&env.config_path), Vec::<(String, String)>::new())?;
    let registry = registry_from_api(&env).await?;
    env.wait_ingest_knows_registered().await?;
    assert_eq!(registry.len(), 10);

    // The simulated fleet with every fault on, plus messages from devices nobody registered: a
    // sensor behind a gateway, and a new station.
    let mut fleet = sensor_sim::Fleet::with_faults(&config.sim, sensor_sim::Faults::all(0.08));
    let mut published: Vec<Published> = Vec::new();
    let (mqtt, _poll) = env.mqtt_client("zoo-devices");
    // Ten minutes of device time ending now: devices that report at most once a second (station
    // files, counters, cameras) get their share of messages too.
    let start = ioc_contract::time::now_ms() - 600_000;
    for i in 0..MESSAGES {
        let m = fleet.next_message(start + i as i64 * 500);
        published.push((m.topic, m.payload, m.format.name()));
    }
    // A camera's first three events, resent by hand, so event resends are surely counted.
    let events: Vec<_> = published
        .iter()
        .filter(|m| m.2 == "camera-event")
        .take(3)
        .cloned()
        .collect();
    published.extend(events);
    // Resends no open window sees: a bad reading, and a backfilled one whose window closed long
    // ago, each sent twice. Only the stream's memory of recent keys counts them.
    let v1 = fleet
        .devices
        .iter()
        .find(|d| d.format == sensor_sim::Format::IocJson)
        .expect("a v1 device")
        .device_id
        .clone();
    for payload in [
        format!(r#"{{"ts":{},"values":{{"pm25":5000}}}}"#, start + 1),
        format!(
            r#"{{"ts":{},"values":{{"pm25":12}}}}"#,
            start - 2 * 86_400_000 + 1
        ),
    ] {
        for _ in 0..2 {
            published.push((
                format!("ioc/v1/devices/{v1}/telemetry"),
                payload.clone().into_bytes(),
                "ioc-json",
            ));
        }
    }
    // One of each rejection by hand as well: the faults are seeded, but which device is due
    // when depends on the wall clock, so a run of the fleet alone can miss a kind.
    for payload in [
        format!(
            r#"{{"ts":{},"values":{{"pm25":12,"co":0.8}},"units":{{"co":"furlong"}}}}"#,
            start + 2
        ),
        format!(r#"{{"ts":{},"values":{{"pm25":"#, start + 3),
    ] {
        published.push((
            format!("ioc/v1/devices/{v1}/telemetry"),
            payload.into_bytes(),
            "ioc-json",
        ));
    }
    published.push((
        "ioc/v1/gateways/gw-001/flat".into(),
        br#"{"imei":"869999999999999","time":"26/11/2026 08:05:00","PM2_5":"35,2"}"#.to_vec(),
        "vendor-flat",
    ));
    published.push((
        "ioc/v1/cameras/CAM-BMT-001/events".into(),
        br#"{"camera_id":"CAM-BMT-001","event_id":"x","type":"red_light","plate":"47A-999.99"}"#
            .to_vec(),
        "camera-event",
    ));
    published.push((
        "ioc/v1/stations/DLK_NEW_999/file".into(),
        b"COD\t61,5\tmg/L\t20261126085500\t00\n".to_vec(),
        "tt10-station",
    ));
    for (topic, payload, _) in &published {
        mqtt.publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
            .await?;
    }

    let (expected, ids) = expectation(&config, registry, &published)?;
    let duplicates = published.len() - ids.len();
    eprintln!(
        "zoo: {} messages ({} resends), {} readings, {} dead letters, {} events, {} quarantined",
        published.len(),
        duplicates,
        expected.readings.len(),
        expected.letters.values().sum::<usize>(),
        expected.events.len(),
        expected.quarantined.len()
    );
    // Nothing vanishes: every distinct message produced something.
    let unaccounted: Vec<_> = ids
        .keys()
        .filter(|id| !expected.accounted.contains(*id))
        .collect();
    assert!(
        unaccounted.is_empty(),
        "messages that produced nothing: {unaccounted:?}"
    );
    // Every format was stored, and the faults made rejections of several kinds.
    let mut stored_formats: BTreeSet<&str> = BTreeSet::new();
    for (topic, payload, format) in &published {
        let id = ioc_ingest::decode::message_id(topic, payload);
        if !expected.letters.keys().any(|l| l.0 == id) && !expected.quarantined.contains(&id) {
            stored_formats.insert(*format);
        }
    }
    assert_eq!(stored_formats.len(), 6, "{stored_formats:?}");
    let codes: BTreeSet<&str> = expected.letters.keys().map(|l| l.1.as_str()).collect();
    for code in ["malformed", "unknown_unit", "unknown_device"] {
        assert!(codes.contains(code), "{code} among {codes:?}");
    }
    assert!(duplicates > 0 && !expected.quarantined.is_empty());

    // What the pipeline holds is exactly that.
    readings_stored_once_and_resends_counted(&env, &expected).await?;

    let letters = dead_letters(&env, expected.letters.values().sum()).await?;
    assert_eq!(letters, expected.letters);

    let events = env
        .eventually(
            "every camera event stored",
            Duration::from_secs(60),
            || async {
                let rows = env
                    .clickhouse("SELECT event_id, attributes FROM events FINAL")
                    .await?;
                Ok((rows.len() >= expected.events.len()).then_some(rows))
            },
        )
        .await?;
    let mut event_ids: Vec<String> = events.iter().map(|r| r[0].clone()).collect();
    event_ids.sort();
    assert_eq!(
        event_ids,
        Vec::from_iter(expected.events.iter().cloned()),
        "each event once"
    );
    let resent_events = expected.events_written - expected.events.len();
    assert!(resent_events > 0);
    env.eventually("resent events counted", Duration::from_secs(30), || async {
        let n = env
            .metric(env.stream_metrics_port, "ioc_stream_duplicate_events_total")
            .await?;
        Ok((n as usize == resent_events).then_some(()))
    })
    .await?;
    let evidence = env
        .clickhouse("SELECT event_id, plate FROM evidence FINAL")
        .await?;
    assert_eq!(evidence.len(), expected.events.len());
    // Plates are in the evidence table only: never in events, readings or dead letters.
    let plates: BTreeSet<String> = evidence.iter().map(|r| r[1].clone()).collect();
    for row in &events {
        assert!(
            !plates.iter().any(|p| row[1].contains(p.as_str())),
            "{row:?}"
        );
        assert!(row[1].contains("plate_pseudonym"));
    }
    let quarantined = env
        .eventually(
            "quarantined camera messages stored",
            Duration::from_secs(60),
            || async {
                let rows = env
                    .clickhouse("SELECT message_id FROM camera_quarantine FINAL")
                    .await?;
                Ok((rows.len() >= expected.quarantined.len()).then_some(rows))
            },
        )
        .await?;
    let mut quarantined: Vec<String> = quarantined.into_iter().map(|r| r[0].clone()).collect();
    quarantined.sort();
    assert_eq!(
        quarantined,
        Vec::from_iter(expected.quarantined.iter().cloned()),
        "each quarantined message once"
    );
    Ok(())
}

/// Two ingest processes on one shared subscription: the broker spreads the fleet's messages, a
/// device's resends among them, over both; each reading is still stored once and each resend
/// counted once, where the device's partition is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingest_processes_on_a_shared_subscription_store_once_and_count_each_resend(
) -> Result<()> {
    let env = Env::new(
        "zoo2",
        "[sim]\nair_quality = 3\nwastewater = 1\ntraffic_counters = 1\nsenml_air = 1\nflat_gateways = 1\nflat_sensors_per_gateway = 1\ncameras = 1\nseed = 5\n",
    )?;
    let (_api, _stream, _ingest) = start_pipeline(&env).await?;
    let (_second, second_port) = start_second_ingest(&env).await?;
    register_sim_fleet(&env)?;
    let config = ioc_config::load(Some(&env.config_path), Vec::<(String, String)>::new())?;
    let registry = registry_from_api(&env).await?;
    let mqtt = both_ingests_receive(&env, second_port).await?;
    // Messages each member has received, to measure the shares of what follows.
    let received = || async {
        let metric = "ioc_ingest_messages_received_total";
        anyhow::Ok((
            env.metric(env.ingest_metrics_port, metric).await?,
            env.metric(second_port, metric).await?,
        ))
    };
    let before = received().await?;

    let faults = sensor_sim::Faults::only(&[sensor_sim::Fault::Duplicate])
        .with_rate(0.2)
        .expect("a rate");
    let mut fleet = sensor_sim::Fleet::with_faults(&config.sim, faults);
    let start = ioc_contract::time::now_ms() - 300_000;
    let published: Vec<Published> = (0..600)
        .map(|i| {
            let m = fleet.next_message(start + i * 500);
            (m.topic, m.payload, m.format.name())
        })
        .collect();
    for (topic, payload, _) in &published {
        mqtt.publish(topic.as_str(), QoS::AtLeastOnce, false, payload.clone())
            .await?;
    }
    let (expected, ids) = expectation(&config, registry, &published)?;
    assert!(published.len() > ids.len(), "resends were published");

    readings_stored_once_and_resends_counted(&env, &expected).await?;
    // The broker did spread them: each member took a real share.
    let after = received().await?;
    let shares = (after.0 - before.0, after.1 - before.1);
    eprintln!("zoo2: {} messages, received {shares:?}", published.len());
    // (At least: a last probe may land after the count before.)
    assert!(shares.0 + shares.1 >= published.len() as f64, "{shares:?}");
    assert!(
        shares.0 > 0.2 * published.len() as f64 && shares.1 > 0.2 * published.len() as f64,
        "{shares:?}"
    );
    Ok(())
}

/// Devices flooding two ingest processes on one shared subscription: each process's guard lets
/// its share through up to the limit, so together they pass about twice a device's rate; the
/// stream, where the device's partition is read, holds each device to its rate once, fleet-wide
/// (a sensor's readings and a camera's events alike), and is SIGKILLed and restarted halfway: its
/// replay decides as before. Every flood message is stored or rejected as `rate_limited`, never
/// both, and a quiet device beside them loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flooding_devices_are_held_to_their_rate_across_two_ingest_processes() -> Result<()> {
    const FLOOD: usize = 400;
    const CAMERA_FLOOD: usize = FLOOD / 2;
    // No more than the burst: on a loaded machine ingest may read a backlog of the quiet
    // device's messages at once, and their receipt times then come close together.
    const QUIET: usize = FLOOD_BURST as usize;
    let env = Env::new("flood2", "")?;
    env.insert_config(
        "ingest",
        &format!("device_rate_limit = {FLOOD_RATE:.1}\ndevice_burst = {FLOOD_BURST:.1}"),
    )?;
    let (_api, mut stream, _ingest) = start_pipeline(&env).await?;
    let (_second, second_port) = start_second_ingest(&env).await?;
    env.register("flood-1", "air_quality").await?;
    env.register("cam-1", "traffic_camera").await?;
    env.register("quiet-1", "air_quality").await?;
    let mqtt = both_ingests_receive(&env, second_port).await?;

    // 400 readings messages about 5 ms apart (about 200 a second, ten times the rate), a
    // second of event time apart so that windows close and the checkpoint moves during the
    // flood, a camera's 200 events among them, and a quiet device's five.
    let start = ioc_contract::time::now_ms() - 600_000;
    let mut quiet_sent = 0;
    for i in 0..FLOOD {
        let ts = start + i as i64 * 1_000;
        let body = format!(r#"{{"ts":{ts},"values":{{"pm25":{i}}}}}"#);
        let topic = "ioc/v1/devices/flood-1/telemetry";
        mqtt.publish(topic, QoS::AtLeastOnce, false, body.into_bytes())
            .await?;
        if i % 2 == 0 {
            let body = format!(
                r#"{{"camera_id":"cam-1","event_id":"cam-1-{i}","event_time":{ts},"type":"red_light","plate":"47A-123.45","lane":1}}"#
            );
            let topic = "ioc/v1/cameras/cam-1/events";
            mqtt.publish(topic, QoS::AtLeastOnce, false, body.into_bytes())
                .await?;
        }
        if i % (FLOOD / QUIET) == 0 {
            let body = format!(r#"{{"ts":{ts},"values":{{"pm25":7}}}}"#);
            let topic = "ioc/v1/devices/quiet-1/telemetry";
            mqtt.publish(topic, QoS::AtLeastOnce, false, body.into_bytes())
                .await?;
            quiet_sent += 1;
        }
        if i == FLOOD / 2 {
            // Killed once it has checkpointed the flooder's bucket (not full, so saved): the
            // new stream must restore it to decide the replay as before.
            env.eventually(
                "a readings checkpoint holding the flooder's bucket",
                Duration::from_secs(10),
                || async {
                    let rows = env
                        .clickhouse(&format!(
                            "SELECT count() FROM stream_offsets WHERE topic = '{}.readings' \
                             AND position(limiter, 'flood-1') > 0",
                            env.id
                        ))
                        .await?;
                    Ok((rows[0][0] != "0").then_some(()))
                },
            )
            .await?;
            stream.kill();
            stream = env.ioc("stream-2", &["stream"])?;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(quiet_sent, QUIET);

    // Stored message ids and their receive times: a sensor's readings, a camera's events.
    let stored = |table: &'static str, device: &'static str| {
        let env = &env;
        async move {
            let rows = env
                .clickhouse(&format!(
                    "SELECT DISTINCT message_id, received_at FROM {table} FINAL WHERE device_id = '{device}'"
                ))
                .await?;
            anyhow::Ok(
                rows.into_iter()
                    .map(|r| Ok((r[0].clone(), r[1].parse::<i64>()?)))
                    .collect::<Result<BTreeMap<String, i64>>>()?,
            )
        }
    };
    // Rejections as rate_limited, by message id (a replay writes the stream's again): a sensor's
    // on the dead-letter topic, a camera's on the quarantine topic.
    let dead_letters = env.topic_reader("deadletter")?;
    let quarantine = env.topic_reader("quarantine")?;
    let mut limited: BTreeMap<String, Vec<DeadLetter>> = BTreeMap::new();
    let mut limited_cam: BTreeMap<String, Vec<DeadLetter>> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        drain_rate_limited(&dead_letters, &mut limited).await?;
        drain_rate_limited(&quarantine, &mut limited_cam).await?;
        let readings = stored("readings", "flood-1").await?.len() + limited.len();
        let events = stored("events", "cam-1").await?.len() + limited_cam.len();
        if readings >= FLOOD && events >= CAMERA_FLOOD {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "flood messages unaccounted for: {readings} of {FLOOD}, {events} of {CAMERA_FLOOD}"
        );
    }
    // A little longer, so a message stored after its letter (or rejected twice) would show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drain_rate_limited(&dead_letters, &mut limited).await?;
    drain_rate_limited(&quarantine, &mut limited_cam).await?;

    let readings_topic = format!("{}.readings", env.id);
    held_to_the_rate(
        "flood-1",
        &stored("readings", "flood-1").await?,
        &limited,
        FLOOD,
        &readings_topic,
    )?;
    let events_topic = format!("{}.events", env.id);
    held_to_the_rate(
        "cam-1",
        &stored("events", "cam-1").await?,
        &limited_cam,
        CAMERA_FLOOD,
        &events_topic,
    )?;
    assert_eq!(
        stored("readings", "quiet-1").await?.len(),
        QUIET,
        "the quiet device lost nothing"
    );
    // Aggregates count the stored readings only (the last window closes on the idle timeout).
    let flood_stored = stored("readings", "flood-1").await?.len();
    env.eventually(
        "the flooder's aggregates to count its stored readings",
        Duration::from_secs(30),
        || async {
            let rows = env
                .clickhouse(
                    "SELECT sum(value_count) FROM aggregates FINAL WHERE device_id = 'flood-1'",
                )
                .await?;
            Ok((rows[0][0] == flood_stored.to_string()).then_some(()))
        },
    )
    .await?;
    drop(stream);
    Ok(())
}

/// Reads what `consumer` has now (until 300 ms of quiet), keeping the `rate_limited` letters by
/// message id.
async fn drain_rate_limited(
    consumer: &rdkafka::consumer::StreamConsumer,
    into: &mut BTreeMap<String, Vec<DeadLetter>>,
) -> Result<()> {
    while let Ok(m) = tokio::time::timeout(Duration::from_millis(300), consumer.recv()).await {
        let l: DeadLetter = serde_json::from_slice(m?.payload().unwrap_or_default())?;
        if l.code == ioc_contract::RejectCode::RateLimited {
            into.entry(l.message_id.clone()).or_default().push(l);
        }
    }
    Ok(())
}

const FLOOD_RATE: f64 = 20.0;
const FLOOD_BURST: f64 = 5.0;

/// Checks one flooding device's accounting: every one of its `sent` messages stored or limited,
/// never both; at most the burst plus the rate over the span of receive times stored; and more
/// than that let through by the two ingest guards together (so the stream's limit did the work:
/// its rejections are those naming `stream_topic`, the bus topic it read the record from).
fn held_to_the_rate(
    device: &str,
    stored: &BTreeMap<String, i64>,
    limited: &BTreeMap<String, Vec<DeadLetter>>,
    sent: usize,
    stream_topic: &str,
) -> Result<()> {
    let mut by_stream = 0;
    for (id, copies) in limited {
        assert!(
            !stored.contains_key(id),
            "{id} both stored and rate-limited"
        );
        let l = &copies[0];
        assert_eq!(l.device_id.as_deref(), Some(device), "{l:?}");
        if l.topic == stream_topic {
            by_stream += 1;
            assert!(copies.iter().all(|c| c.topic == stream_topic), "{copies:?}");
            let raw =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &l.raw_base64)?;
            let record: serde_json::Value = serde_json::from_slice(&raw)?;
            assert_eq!(
                record["message_id"],
                id.as_str(),
                "the letter holds the bus record"
            );
        } else {
            // An ingest guard decides once per message (ingest was not restarted).
            assert_eq!(copies.len(), 1, "{copies:?}");
        }
    }
    assert_eq!(
        stored.len() + limited.len(),
        sent,
        "{device}: every message, once"
    );

    // The rule's bound over the span (two ingest clocks that disagree a little can add one or
    // two).
    let times: Vec<i64> = stored
        .values()
        .copied()
        .chain(limited.values().map(|c| c[0].received_at))
        .collect();
    let span_s = (times.iter().max().unwrap() - times.iter().min().unwrap()) as f64 / 1000.0;
    let bound = FLOOD_BURST + FLOOD_RATE * span_s;
    let stored_n = stored.len() as f64;
    let from_ingests = (stored.len() + by_stream) as f64;
    // The rule itself over what passed the guards, in receive order (the partition's order but
    // for two ingest clocks' interleaving): what the stream must have stored.
    let rule = ioc_contract::rate::RateRule::new(FLOOD_RATE, FLOOD_BURST).expect("a limit");
    let mut passed: Vec<i64> = stored
        .values()
        .copied()
        .chain(
            limited
                .values()
                .filter(|c| c[0].topic == stream_topic)
                .map(|c| c[0].received_at),
        )
        .collect();
    passed.sort();
    let mut tat = None;
    let by_rule = passed
        .iter()
        .filter(|t| rule.admit(tat, **t).map(|next| tat = Some(next)).is_some())
        .count() as f64;
    eprintln!(
        "flood2 {device}: {sent} in {span_s:.2} s; ingests passed {from_ingests}, stored {stored_n} (by the rule {by_rule}, bound {bound:.1}); the stream limited {by_stream}"
    );
    assert!(
        stored_n <= bound + 2.0,
        "{device}: {stored_n} stored, bound {bound:.1}"
    );
    assert!(
        (stored_n - by_rule).abs() <= 2.0,
        "{device}: {stored_n} stored, the rule admits {by_rule}"
    );
    assert!(
        from_ingests > bound + 10.0,
        "{device}: {from_ingests} passed both ingest guards"
    );
    Ok(())
}

/// A second ingest process on the same shared subscription (its own client id and metrics
/// port), once it answers; its metrics port.
async fn start_second_ingest(env: &Env) -> Result<(crate::harness::Proc, u16)> {
    let port = crate::harness::free_port();
    let mut second = env.ioc_with_env(
        "ingest-2",
        &["ingest"],
        &[
            ("IOC_INGEST__CLIENT_ID", format!("{}-ingest-2", env.id)),
            ("IOC_INGEST__METRICS_LISTEN", format!("127.0.0.1:{port}")),
        ],
    )?;
    env.wait_http(
        &format!("http://127.0.0.1:{port}/healthz"),
        Duration::from_secs(60),
    )
    .await?;
    anyhow::ensure!(second.is_running(), "the second ingest exited at start");
    Ok((second, port))
}

/// Waits until both ingest processes know every registered device and the broker gives the
/// second one messages (probes from an unregistered device until it has one); a publishing
/// client for the test.
async fn both_ingests_receive(env: &Env, second_port: u16) -> Result<rumqttc::AsyncClient> {
    env.wait_ingest_knows_registered().await?;
    env.wait_ingest_knows_registered_at(second_port).await?;
    // Dropping the event loop's handle detaches it: the client works until the test ends.
    let (mqtt, _) = env.mqtt_client(&format!("{}-devices", env.id));
    env.eventually(
        "the second ingest to receive messages",
        Duration::from_secs(30),
        || async {
            mqtt.publish(
                "ioc/v1/devices/probe-1/telemetry",
                QoS::AtLeastOnce,
                false,
                br#"{"ts":1795680000000,"values":{"pm25":1}}"#.to_vec(),
            )
            .await?;
            let n = env
                .metric(second_port, "ioc_ingest_messages_received_total")
                .await?;
            Ok((n > 0.0).then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(mqtt)
}

/// The simulated fleet registered in a registry view, as `ioc sim --register-with` does.
fn fleet_registry(fleet: &sensor_sim::Fleet) -> RegistryView {
    let view = RegistryView::default();
    for d in &fleet.devices {
        view.apply(RegistryEvent::Registered {
            device: Device {
                device_id: d.device_id.clone(),
                kind: d.kind.as_str().into(),
                decoder: Some(d.format.name().into()),
                external_ids: d
                    .external_id
                    .iter()
                    .map(|e| (e.key().to_string(), e.value().to_string()))
                    .collect(),
                ..Default::default()
            },
        });
    }
    view
}

/// Decodes `n` simulated messages; per format: (messages, messages with a rejection).
fn run_corpus(
    faults: sensor_sim::Faults,
    n: usize,
) -> (
    HashMap<&'static str, (usize, usize)>,
    HashMap<&'static str, usize>,
) {
    let config = ioc_config::load_str(None, Vec::new()).unwrap();
    let mut fleet = sensor_sim::Fleet::with_faults(&config.sim, faults);
    let mut ingest = config.ingest.clone();
    ingest.plate_secret = "corpus".into();
    let ingestor =
        ioc_ingest::Ingestor::new(&ingest, fleet_registry(&fleet), Topics::with_prefix("x."))
            .unwrap();
    let start = 1_795_680_000_000;
    let mut per_format: HashMap<&'static str, (usize, usize)> = HashMap::new();
    let mut codes: HashMap<&'static str, usize> = HashMap::new();
    for i in 0..n {
        let m = fleet.next_message(start + i as i64 * 50);
        let ctx = DecodeContext {
            received_at: start + i as i64 * 50 + 20,
            max_future_skew_ms: 300_000,
            max_payload_bytes: 262_144,
            utc_offset_ms: 7 * 3_600_000,
        };
        let outcome = ingestor.process(&m.topic, &m.payload, &ctx);
        assert!(
            !outcome.records.is_empty(),
            "{} message produced nothing: {:?}",
            m.format.name(),
            String::from_utf8_lossy(&m.payload)
        );
        let e = per_format.entry(m.format.name()).or_default();
        e.0 += 1;
        if !outcome.rejections.is_empty() {
            e.1 += 1;
        }
        for code in outcome.rejections {
            *codes.entry(code.as_str()).or_default() += 1;
        }
    }
    (per_format, codes)
}

/// A large seeded corpus from the simulator through every decoder (no services needed): without
/// faults nothing is rejected, so the simulator and the decoders agree on every format; with
/// every fault on nothing panics, every message produces records, and the faults show as the
/// rejections they should be.
#[test]
fn a_seeded_simulator_corpus_decodes_in_every_format() {
    let (clean, codes) = run_corpus(sensor_sim::Faults::none(), 20_000);
    assert_eq!(clean.len(), 6, "{clean:?}");
    for (format, (messages, rejected)) in &clean {
        assert!(*messages > 100, "{format}: {messages}");
        assert_eq!(*rejected, 0, "{format} without faults: {codes:?}");
    }
    let (faulty, codes) = run_corpus(sensor_sim::Faults::all(0.2), 30_000);
    assert_eq!(faulty.len(), 6);
    for code in ["malformed", "unknown_unit"] {
        assert!(
            codes.get(code).copied().unwrap_or(0) > 10,
            "{code}: {codes:?}"
        );
    }
    for (format, (messages, rejected)) in &faulty {
        assert!(
            *rejected > 0 && rejected < messages,
            "{format}: {rejected}/{messages}"
        );
    }
}
