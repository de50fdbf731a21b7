//! The websocket fan-out benchmark (ignored: `cargo test --release --workspace --test e2e --
//! --ignored websocket_fan_out --nocapture`; `IOC_BENCH_CLIENTS`, default 1000). While the
//! simulator runs, probe devices publish readings stamped with the time they are sent; clients
//! with mixed filters on one `ioc api` measure each probe reading's latency from that stamp,
//! and the same clients on a bare tokio-tungstenite broadcast of the same readings topic (no
//! filters, no protocol) give the reference, in the same run. First, one client beside
//! `IOC_BENCH_STALLED` (50) clients that never read shows that a stalled client slows no one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::{SinkExt, StreamExt};
use rdkafka::consumer::Consumer;
use rumqttc::QoS;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{free_port, Env, TOKEN};
use crate::pipeline::{register_sim_fleet, start_pipeline};

const PROBES: usize = 20;
/// Probe messages per second, across the probes (`IOC_BENCH_PROBE_RATE`).
fn probe_rate() -> u64 {
    std::env::var("IOC_BENCH_PROBE_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}
const PHASE: Duration = Duration::from_secs(20);

/// What one client saw in a phase.
#[derive(Default)]
struct Seen {
    delivered: u64,
    /// (receipt time since the phase began in ms, latency in ms) of each probe reading.
    latencies: Vec<(u32, u32)>,
}

/// The sensor stamp of a probe reading in a data frame, found without parsing the frame.
fn probe_stamp(text: &str) -> Option<i64> {
    if !text.contains("\"device_id\":\"probe-") {
        return None;
    }
    let at = text.find("\"ts\":\"")? + 6;
    let ts = text.get(at..at + 24)?;
    ioc_contract::time::parse_rfc3339_ms(ts)
}

/// Connects `n` clients to `url`, sends each its `subscribe` (the i-th of `requests`, in
/// turn), reads for `PHASE`, and returns what each saw.
async fn phase(url: &str, n: usize, requests: &[String]) -> Result<Vec<Seen>> {
    let seen: Vec<Arc<Mutex<Seen>>> = (0..n).map(|_| Arc::default()).collect();
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        // Small read buffers: tungstenite zeroes the whole buffer before each read.
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(16 * 1024);
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), false)
            .await
            .with_context(|| format!("client {i} connects"))?;
        if !requests.is_empty() {
            let r = &requests[i % requests.len()];
            ws.send(Message::Text(r.clone().into())).await?;
        }
        sockets.push(ws);
    }
    let begin = ioc_contract::time::now_ms();
    let stop = tokio::time::Instant::now() + PHASE;
    let mut tasks = Vec::new();
    for (ws, seen) in sockets.into_iter().zip(&seen) {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = ws;
            while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(stop, ws.next()).await {
                let Message::Text(text) = frame else { continue };
                if text.starts_with("{\"op\"") {
                    continue;
                }
                let now = ioc_contract::time::now_ms();
                let mut s = seen.lock().unwrap();
                s.delivered += 1;
                if let Some(ts) = probe_stamp(&text).filter(|ts| *ts >= begin) {
                    s.latencies
                        .push(((now - begin) as u32, (now - ts).max(0) as u32));
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok(seen
        .into_iter()
        .map(|s| std::mem::take(&mut *s.lock().unwrap()))
        .collect())
}

/// Delivered per second, p50 and p99 latency (ms), and the largest growth of a client's mean
/// latency from the first quarter of the phase to the last (ms).
fn summarize(seen: &[Seen]) -> (f64, u32, u32, i64) {
    let delivered: u64 = seen.iter().map(|s| s.delivered).sum();
    let mut all: Vec<u32> = seen
        .iter()
        .flat_map(|s| s.latencies.iter().map(|l| l.1))
        .collect();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let quarter = PHASE.as_millis() as u32 / 4;
    let mean = |v: Vec<u32>| {
        if v.is_empty() {
            None
        } else {
            Some(v.iter().map(|x| *x as i64).sum::<i64>() / v.len() as i64)
        }
    };
    let growth = seen
        .iter()
        .filter_map(|s| {
            let first = mean(
                s.latencies
                    .iter()
                    .filter(|l| l.0 < quarter)
                    .map(|l| l.1)
                    .collect(),
            )?;
            let last = mean(
                s.latencies
                    .iter()
                    .filter(|l| l.0 >= 3 * quarter)
                    .map(|l| l.1)
                    .collect(),
            )?;
            Some(last - first)
        })
        .max()
        .unwrap_or(0);
    (
        delivered as f64 / PHASE.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        growth,
    )
}

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The reference: one Kafka consumer of the readings topic (the same fetch wait as `ioc`'s),
/// each reading serialized once as the API shows it and broadcast to every socket.
async fn bare_broadcast(env: &Env, port: u16) -> Result<()> {
    let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", crate::harness::KAFKA)
        .set("group.id", format!("{}-bare", env.id))
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()?;
    let topic = format!("{}.readings", env.id);
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        tpl.add_partition_offset(&topic, p, rdkafka::Offset::End)?;
    }
    consumer.assign(&tpl)?;
    let (tx, _) = broadcast::channel::<Arc<str>>(65_536);
    let sender = tx.clone();
    tokio::spawn(async move {
        use rdkafka::Message as _;
        while let Ok(m) = consumer.recv().await {
            let Some(Ok(batch)) = m
                .payload()
                .map(serde_json::from_slice::<ioc_contract::ReadingBatch>)
            else {
                continue;
            };
            for r in &batch.readings {
                let view = ioc_dashboard_api::views::ApiReading::from(r);
                let text = serde_json::json!({"stream": "readings", "data": view}).to_string();
                let _ = sender.send(text.into());
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let mut rx = tx.subscribe();
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                loop {
                    match rx.recv().await {
                        Ok(text) => {
                            if ws
                                .send(Message::Text(text.to_string().into()))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(_) => return,
                    }
                }
            });
        }
    });
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn websocket_fan_out() -> Result<()> {
    let clients: usize = std::env::var("IOC_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let env = Env::new(
        "fanout",
        "[api.ws]\nmax_connections_per_token = 100000\nmax_subscriptions_per_token = 100000\n",
    )?;
    let (api, _stream, _ingest) = start_pipeline(&env).await?;
    register_sim_fleet(&env)?;
    for i in 0..PROBES {
        env.register(&format!("probe-{i:02}"), "air_quality")
            .await?;
    }
    env.wait_ingest_knows_registered().await?;
    // The simulator's own rate (`IOC_BENCH_SIM_RATE` messages/s): the rest of the fleet's load.
    let sim_rate = std::env::var("IOC_BENCH_SIM_RATE").unwrap_or_else(|_| "10".into());
    let _sim = env.ioc("sim", &["sim", "--count", "1000000", "--rate", &sim_rate])?;
    let (mqtt, _poll) = env.mqtt_client("bench-probes");
    let probes = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / probe_rate()));
        for n in 0u64.. {
            tick.tick().await;
            let device = format!("probe-{:02}", n as usize % PROBES);
            let body = format!(
                r#"{{"ts":{},"values":{{"pm25":{}}}}}"#,
                ioc_contract::time::now_ms(),
                n % 200
            );
            let topic = ioc_contract::telemetry_topic(&device);
            let _ = mqtt.publish(topic, QoS::AtLeastOnce, false, body).await;
        }
    });
    let bare_port = free_port();
    bare_broadcast(&env, bare_port).await?;

    let api_url = format!("ws://127.0.0.1:{}/api/v1/ws?token={TOKEN}", env.api_port);
    let bare_url = format!("ws://127.0.0.1:{bare_port}/");
    let five: Vec<String> = (0..5).map(|i| format!("\"probe-{i:02}\"")).collect();
    let mixed = vec![
        r#"{"op":"subscribe","stream":"readings"}"#.to_string(),
        format!(
            r#"{{"op":"subscribe","stream":"readings","device_ids":[{}]}}"#,
            five.join(",")
        ),
        r#"{"op":"subscribe","stream":"readings","metrics":["pm25"]}"#.to_string(),
        r#"{"op":"subscribe","stream":"readings","kinds":["air_quality"]}"#.to_string(),
    ];
    let all = vec![mixed[0].clone()];
    let api_pid = api.child.id();
    let rss_before = rss_mb(api_pid);
    // A fast client beside stalled ones (subscribed to everything, never reading: their
    // socket buffers fill, then their queues overflow): it must see what a lone client sees.
    let stalled_n: usize = std::env::var("IOC_BENCH_STALLED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let mut stalled = Vec::new();
    for _ in 0..stalled_n {
        let (mut ws, _) = tokio_tungstenite::connect_async(api_url.as_str()).await?;
        ws.send(Message::Text(all[0].clone().into())).await?;
        stalled.push(ws);
    }
    eprintln!("phase: ioc api, 1 client beside {stalled_n} stalled");
    let seen = phase(&api_url, 1, &all).await?;
    let (rate, p50, p99, growth) = summarize(&seen);
    let beside_stalled = format!(
        "| ioc api, 1 client beside {stalled_n} stalled | 1 | {rate:.0} | {p50} | {p99} | {growth} | {:.0} |",
        rss_mb(api_pid)
    );
    drop(stalled);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut rows = vec![beside_stalled];
    for (name, url, n, requests) in [
        ("ioc api, 1 client", &api_url, 1, &all),
        ("bare broadcast, 1 client", &bare_url, 1, &Vec::new()),
        ("ioc api, mixed filters", &api_url, clients, &mixed),
        ("bare broadcast", &bare_url, clients, &Vec::new()),
    ] {
        eprintln!("phase: {name}, {n} clients");
        let seen = phase(url, n, requests).await?;
        let (rate, p50, p99, growth) = summarize(&seen);
        let rss = if url == &api_url {
            format!("{:.0}", rss_mb(api_pid))
        } else {
            "-".into()
        };
        rows.push(format!(
            "| {name} | {n} | {rate:.0} | {p50} | {p99} | {growth} | {rss} |"
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    probes.abort();
    println!("API RSS before the phases: {rss_before:.0} MB");
    println!(
        "| server | clients | delivered/s | p50 ms | p99 ms | worst lag growth ms | API RSS MB |"
    );
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    Ok(())
}
