//! `ioc up`: the whole pipeline in one process on its embedded broker, bus and history store,
//! driven only through public interfaces (MQTT, HTTP, websocket, the live page, signals).

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use rumqttc::QoS;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{dashboard_page, device_login, eventually, free_port, register_device, Proc};

/// One `ioc up` data directory and its ports; processes are started on it one after another.
struct Up {
    dir: PathBuf,
    data: PathBuf,
    mqtt_port: u16,
    http_port: u16,
    http: reqwest::Client,
    token: String,
    runs: usize,
    /// Devices' MQTT accounts as their registration returned them.
    logins: std::sync::Mutex<std::collections::HashMap<String, serde_json::Value>>,
}

impl Up {
    fn new(name: &str) -> Result<Up> {
        let dir = std::env::temp_dir().join(format!("ioc-e2e-up-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Up {
            data: dir.join("data"),
            dir,
            mqtt_port: free_port(),
            http_port: free_port(),
            http: reqwest::Client::new(),
            token: String::new(),
            runs: 0,
            logins: Default::default(),
        })
    }

    /// Starts `ioc up` with `args` and `env`; waits for its start-up message and /healthz.
    /// Returns the process and what it printed.
    async fn start(&mut self, args: &[&str], env: &[(&str, &str)]) -> Result<(Proc, String)> {
        self.runs += 1;
        let stdout = self.dir.join(format!("up-{}.out", self.runs));
        let log = std::fs::File::create(self.dir.join(format!("up-{}.log", self.runs)))?;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ioc"));
        cmd.arg("up")
            .arg("--mqtt-listen")
            .arg(format!("127.0.0.1:{}", self.mqtt_port))
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .env_remove("IOC_ADMIN_TOKEN")
            .env("IOC_LOG", "info")
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(log)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc {
            child: cmd.spawn().context("starting ioc up")?,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let printed = loop {
            let text = std::fs::read_to_string(&stdout).unwrap_or_default();
            if text.contains("  durability") {
                break text;
            }
            if Instant::now() > deadline {
                bail!(
                    "ioc up printed no start-up message (see {})",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if let Some(line) = printed
            .lines()
            .find(|l| l.trim_start().starts_with("admin token"))
        {
            if let Some(token) = line.split_whitespace().nth(2).filter(|t| t.len() >= 32) {
                self.token = token.to_string();
            }
        }
        self.wait_healthy().await?;
        Ok((proc, printed))
    }

    async fn wait_healthy(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(self.url("/healthz")).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("/healthz did not answer (see {})", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    async fn get(&self, path: &str) -> Result<serde_json::Value> {
        crate::harness::get_json(&self.http, &self.url(path), &self.token).await
    }

    async fn register(&self, device_id: &str) -> Result<()> {
        self.register_kind(device_id, "air_quality").await
    }

    async fn register_kind(&self, device_id: &str, kind: &str) -> Result<()> {
        let shown =
            register_device(&self.http, &self.url(""), &self.token, device_id, kind).await?;
        self.remember(device_id, &shown["mqtt"]);
        Ok(())
    }

    /// Keeps the MQTT account a registration returned, for [`Up::mqtt`].
    fn remember(&self, device_id: &str, mqtt: &serde_json::Value) {
        self.logins
            .lock()
            .unwrap()
            .insert(device_id.to_string(), mqtt.clone());
    }

    /// Values (as integers) of the stored pm25 readings of `device` in `[from, to)`.
    async fn stored_values(&self, device: &str, from: i64, to: i64) -> Result<Vec<i64>> {
        let rows = self
            .get(&format!(
                "/api/v1/readings?device_id={device}&from={from}&to={to}"
            ))
            .await?;
        Ok(rows["readings"]
            .as_array()
            .context("readings array")?
            .iter()
            .filter_map(|r| r["value"].as_f64())
            .map(|v| v as i64)
            .collect())
    }

    async fn eventually<T, F, Fut>(&self, what: &str, timeout: Duration, probe: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        eventually(what, timeout, &self.dir, probe).await
    }

    /// An MQTT client logged in as `device` (registered here: see [`Up::remember`]).
    fn mqtt(&self, device: &str) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
        let mut options = self.mqtt_options(device);
        options.set_inflight(100);
        rumqttc::AsyncClient::new(options, 1000)
    }

    /// The deployment's API, as the admin.
    fn api(&self) -> crate::rollups::Api<'_> {
        crate::rollups::Api {
            http: &self.http,
            base: self.url(""),
            token: self.token.clone(),
            logs: &self.dir,
        }
    }

    /// A simulator account `name` (`sim.username`, `sim.password`): the variables that give
    /// `ioc up` it, and the login a test publishes every device's messages with.
    fn sim_account(&self, name: &str) -> ([(&'static str, String); 2], ioc_config::MqttConfig) {
        let password = format!("{name}-{}-{}", std::process::id(), self.http_port);
        let env = [
            ("IOC_SIM__USERNAME", name.to_string()),
            ("IOC_SIM__PASSWORD", password.clone()),
        ];
        let login = ioc_config::MqttConfig {
            host: "127.0.0.1".into(),
            port: self.mqtt_port,
            username: name.into(),
            password,
        };
        (env, login)
    }

    fn mqtt_options(&self, device: &str) -> rumqttc::MqttOptions {
        let login = self.logins.lock().unwrap()[device].clone();
        device_login(&login, self.mqtt_port).expect("a device account")
    }
}

/// SIGTERM, and asserts `ioc up` exited 0 within 30 s.
fn stop_cleanly(proc: &mut Proc) {
    let status = proc.terminate(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );
}

/// Whether the broker accepts a connection with `options` (a CONNACK, not a closed socket).
async fn connects(options: rumqttc::MqttOptions) -> bool {
    let (client, mut events) = rumqttc::AsyncClient::new(options, 10);
    let accepted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(ack))) => {
                    return ack.code == rumqttc::ConnectReturnCode::Success
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(500), events.poll()).await;
    accepted
}

fn reading(ts: i64, value: i64) -> String {
    format!(r#"{{"ts":{ts},"values":{{"pm25":{value}}}}}"#)
}

/// Publishes `n` readings (values `first..first+n`, one a second of event time from `base`) at
/// QoS 1 and waits for every PUBACK.
async fn publish_and_confirm(up: &Up, device: &str, base: i64, first: i64, n: i64) -> Result<()> {
    let (client, mut eventloop) = up.mqtt(device);
    let topic = format!("ioc/v1/devices/{device}/telemetry");
    let sender = tokio::spawn(async move {
        for i in first..first + n {
            client
                .publish(&topic, QoS::AtLeastOnce, false, reading(base + i * 1000, i))
                .await?;
        }
        anyhow::Ok(client)
    });
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(20), eventloop.poll()).await {
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("MQTT: {e}"),
            Err(_) => bail!("only {acked} of {n} PUBACKs"),
        }
    }
    let client = sender.await??;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await;
    Ok(())
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_runs_the_pipeline_and_a_restart_keeps_registry_and_history() -> Result<()> {
    let mut up = Up::new("restart")?;
    let (mut first, printed) = up.start(&[], &[]).await?;
    for expected in [
        format!("mqtt://127.0.0.1:{}", up.mqtt_port),
        format!("http://127.0.0.1:{}/", up.http_port),
        up.data.display().to_string(),
        "generated".to_string(),
    ] {
        assert!(
            printed.contains(&expected),
            "start-up message lacks {expected}:\n{printed}"
        );
    }
    assert_eq!(
        up.token.len(),
        48,
        "a generated token is printed:\n{printed}"
    );
    let token_file = up.data.join("admin-token");
    assert_eq!(std::fs::read_to_string(&token_file)?, up.token);
    assert_eq!(mode(&token_file), 0o600, "the token file is owner-only");
    let refused = up.http.get(up.url("/api/v1/devices")).send().await?;
    assert_eq!(refused.status(), 401);

    up.register("aq-up").await?;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!(
        "ws://127.0.0.1:{}/api/v1/ws?token={}",
        up.http_port, up.token
    ))
    .await?;
    for stream in ["readings", "aggregates"] {
        ws.send(Message::Text(
            format!(r#"{{"op":"subscribe","stream":"{stream}"}}"#).into(),
        ))
        .await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Four minutes of event time, a reading every second, ending a minute ago: three windows
    // close (the fourth waits for lateness or the idle timeout).
    let now = ioc_contract::time::now_ms();
    let base = ioc_contract::window_start(now) - 5 * 60_000;
    publish_and_confirm(&up, "aq-up", base, 0, 240).await?;

    // The websocket feed shows the readings and aggregates as they happen.
    let (mut live_readings, mut live_aggregates) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while (live_readings < 240 || live_aggregates < 3) && Instant::now() < deadline {
        let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(Duration::from_secs(5), ws.next()).await
        else {
            continue;
        };
        let m: serde_json::Value = serde_json::from_str(&text)?;
        if m["data"]["device_id"] != "aq-up" {
            continue;
        }
        match m["stream"].as_str() {
            Some("readings") => live_readings += 1,
            Some("aggregates") => live_aggregates += 1,
            _ => {}
        }
    }
    assert_eq!(live_readings, 240, "every reading reached the websocket");
    assert!(
        live_aggregates >= 3,
        "aggregates reached the websocket: {live_aggregates}"
    );

    let window = |w: i64| (base + w * 60_000, base + (w + 1) * 60_000);
    let to = base + 240_000;
    let values = up
        .eventually("240 stored readings", Duration::from_secs(30), || async {
            let v = up.stored_values("aq-up", base, to).await?;
            Ok((v.len() == 240).then_some(v))
        })
        .await?;
    assert_eq!(
        values,
        (0..240).collect::<Vec<_>>(),
        "stored once each, in time order"
    );
    let aggregates = up
        .eventually("three closed windows", Duration::from_secs(30), || async {
            let a = up
                .get(&format!(
                    "/api/v1/aggregates?device_id=aq-up&metric=pm25&from={base}&to={}",
                    window(2).1
                ))
                .await?;
            let rows = a["aggregates"].as_array().cloned().unwrap_or_default();
            Ok((rows.len() == 3).then_some(rows))
        })
        .await?;
    for (w, agg) in aggregates.iter().enumerate() {
        // Window w holds values 60w..60w+59.
        let lo = 60.0 * w as f64;
        assert_eq!(agg["count"], 60, "{agg}");
        assert_eq!(agg["min"], lo, "{agg}");
        assert_eq!(agg["max"], lo + 59.0, "{agg}");
        assert_eq!(agg["mean"], lo + 29.5, "{agg}");
    }

    // The second window's mean (89.5 µg/m³) is above the PM2.5 limit (50): one alert, its
    // condition first held in that window, fired at its end, still firing.
    let alerts_path = format!(
        "/api/v1/alerts?device_id=aq-up&rule=pm25_1min_mean_above_limit&from={base}&to={to}"
    );
    let alerts = up
        .eventually("the PM2.5 alert", Duration::from_secs(30), || async {
            let a = up.get(&alerts_path).await?;
            let rows = a["alerts"].as_array().cloned().unwrap_or_default();
            Ok((!rows.is_empty()).then_some(rows))
        })
        .await?;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["state"], "firing");
    assert_eq!(
        alerts[0]["started_at"],
        ioc_contract::time::format_ms(window(1).0)
    );
    assert_eq!(
        alerts[0]["fired_at"],
        ioc_contract::time::format_ms(window(1).1)
    );

    // Ctrl-C (SIGTERM here) shuts down cleanly.
    stop_cleanly(&mut first);

    // A restart on the same data directory keeps the token, registry and history.
    let token = up.token.clone();
    let (mut second, printed) = up.start(&[], &[]).await?;
    assert!(printed.contains("stored in"), "{printed}");
    assert_eq!(up.token, token, "the stored token is reused");
    let devices = up.get("/api/v1/devices").await?;
    let ids: Vec<&str> = devices["devices"]
        .as_array()
        .context("devices")?
        .iter()
        .filter_map(|d| d["device_id"].as_str())
        .collect();
    assert_eq!(ids, vec!["aq-up"], "registry survives a restart");
    assert_eq!(up.stored_values("aq-up", base, to).await?, values);
    let after = up
        .get(&format!(
            "/api/v1/aggregates?device_id=aq-up&metric=pm25&from={base}&to={}",
            window(2).1
        ))
        .await?;
    assert_eq!(after["aggregates"].as_array().map(Vec::len), Some(3));
    for (a, b) in after["aggregates"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&aggregates)
    {
        assert_eq!(
            (&a["window_start"], &a["count"], &a["mean"]),
            (&b["window_start"], &b["count"], &b["mean"])
        );
    }
    // The device keeps working after the restart; its open window closes.
    publish_and_confirm(&up, "aq-up", base, 240, 60).await?;
    up.eventually(
        "readings after the restart",
        Duration::from_secs(30),
        || async {
            let v = up.stored_values("aq-up", base, base + 300_000).await?;
            Ok((v == (0..300).collect::<Vec<_>>()).then_some(()))
        },
    )
    .await?;
    // The alert state survived too: still one alert, still firing, not fired again.
    let after = up.get(&alerts_path).await?;
    assert_eq!(after["alerts"].as_array().map(Vec::len), Some(1), "{after}");
    assert_eq!(after["alerts"][0]["alert_id"], alerts[0]["alert_id"]);
    assert_eq!(after["alerts"][0]["state"], "firing");
    stop_cleanly(&mut second);
    let _ = std::fs::remove_dir_all(&up.dir);
    Ok(())
}

/// What one SIGKILL under load showed.
struct KillReport {
    acked: u64,
    durable: i64,
    stored: usize,
    seconds: f64,
}

/// Publishes numbered readings (at `rate` messages/s, or as fast as the broker takes them),
/// watches the bus's fsynced offset on /metrics, SIGKILLs `ioc up`, restarts it and checks that
/// every reading below the last offset seen is stored, once.
async fn kill_under_load(name: &str, rate: Option<u64>) -> Result<KillReport> {
    let mut up = Up::new(name)?;
    let env = [
        ("IOC_UP__FLUSH_INTERVAL", "100ms"),
        ("IOC_API__QUERY_LIMIT", "1000000"),
        // One device floods on purpose here, to measure the broker's loss window, not the
        // flood guard.
        ("IOC_INGEST__DEVICE_RATE_LIMIT", "0"),
        // The last window closes soon after the data stops.
        ("IOC_STREAM__IDLE_TIMEOUT", "3s"),
    ];
    let (mut first, _) = up.start(&[], &env).await?;
    up.register("aq-dur").await?;
    let sample = "ioc_bus_durable_offset{topic=\"ioc.readings\"} ";

    let base = ioc_contract::window_start(ioc_contract::time::now_ms()) - 48 * 3_600_000;
    let total: i64 = 200_000;
    let (client, mut eventloop) = up.mqtt("aq-dur");
    let started = Instant::now();
    let publisher = tokio::spawn(async move {
        for i in 0..total {
            if let Some(rate) = rate {
                // Paced in steps of 10 ms.
                let due = Duration::from_secs_f64(i as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            let body = reading(base + i * 1000, i);
            if client
                .publish(
                    "ioc/v1/devices/aq-dur/telemetry",
                    QoS::AtLeastOnce,
                    false,
                    body,
                )
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let acks = tokio::spawn(async move {
        let mut acked = 0u64;
        while let Ok(event) = eventloop.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = event {
                acked += 1;
            }
        }
        acked
    });

    // Under load for three seconds, watching the durable offset; then SIGKILL right after one
    // more look (the freshest lower bound of what is fsynced).
    let mut durable = 0i64;
    while started.elapsed() < Duration::from_secs(3) || durable < 2_000 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "no load reached the log"
        );
        let text = up.http.get(up.url("/metrics")).send().await?.text().await?;
        if let Some(v) = text.lines().find_map(|l| l.strip_prefix(sample)) {
            durable = durable.max(v.trim().parse::<f64>()? as i64);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    let seconds = started.elapsed().as_secs_f64();
    publisher.abort();
    let acked = acks.await?;
    assert!(
        acked as i64 >= durable,
        "the broker acknowledged at least what was fsynced"
    );

    let (mut second, _) = up.start(&[], &env).await?;
    let to = base + total * 1000;
    up.eventually(
        "the flushed readings in history",
        Duration::from_secs(60),
        || async {
            let v = up.stored_values("aq-dur", base, to).await?;
            Ok((v.len() as i64 >= durable).then_some(()))
        },
    )
    .await?;
    // The API reads one row per reading key, so a reading stored twice under its key cannot
    // show there; what would show is a reading counted twice, in its window. Aggregates lag the
    // rows they count (stored first), so read them first: their count can never exceed the
    // rows read after, and reaches them once every window closed, unless a reading was counted
    // twice.
    let counted = up
        .eventually(
            "every stored reading counted once in the 1-minute windows",
            Duration::from_secs(60),
            || async {
                let a = up
                    .get(&format!(
                        "/api/v1/aggregates?device_id=aq-dur&from={base}&to={to}"
                    ))
                    .await?;
                let counted: u64 = a["aggregates"]
                    .as_array()
                    .context("aggregates")?
                    .iter()
                    .filter_map(|a| a["count"].as_u64())
                    .sum();
                let rows = up.stored_values("aq-dur", base, to).await?;
                // Values above PM2.5's physical range (2000) are stored as bad, never counted.
                let good = rows.iter().filter(|v| **v <= 2000).count() as u64;
                anyhow::ensure!(
                    counted <= good,
                    "{counted} readings counted in windows, only {good} good ones stored: some counted twice"
                );
                Ok((counted == good).then_some(rows))
            },
        )
        .await?;
    let stored = counted;
    let distinct: BTreeSet<i64> = stored.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        stored.len(),
        "no reading stored under two keys"
    );
    let missing: Vec<i64> = (0..durable)
        .filter(|i| !distinct.contains(i))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "readings below the fsynced offset {durable} missing: {missing:?}"
    );
    stop_cleanly(&mut second);
    let _ = std::fs::remove_dir_all(&up.dir);
    Ok(KillReport {
        acked,
        durable,
        stored: stored.len(),
        seconds,
    })
}

/// Durability under SIGKILL, at a steady rate ingest keeps up with and at full speed (devices
/// outrunning ingest). Asserted: nothing below the fsynced offset is lost or doubled. Printed for
/// the README: what the broker acknowledged beyond it, the loss window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_keeps_every_flushed_reading_through_sigkill() -> Result<()> {
    for (name, rate) in [("steady", Some(2_000)), ("flood", None)] {
        let r = kill_under_load(&format!("durability-{name}"), rate).await?;
        let lost = r.acked.saturating_sub(r.stored as u64);
        let sent_per_s = r.acked as f64 / r.seconds;
        eprintln!(
            "durability ({name}, {}): broker acknowledged {} in {:.1} s, fsynced before the kill >= {}, stored after restart {}, lost {lost} = {:.0} ms of traffic",
            rate.map_or("full speed".to_string(), |r| format!("{r} msg/s")),
            r.acked, r.seconds, r.durable, r.stored, lost as f64 / sent_per_s * 1000.0
        );
    }
    Ok(())
}

/// SIGTERM while devices publish: what the broker acknowledged before the stop is flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_flushes_in_flight_readings_on_sigterm() -> Result<()> {
    let mut up = Up::new("drain")?;
    // A long flush interval: only the shutdown's own flush can have written the tail.
    let env = [("IOC_UP__FLUSH_INTERVAL", "30s")];
    let (mut first, _) = up.start(&[], &env).await?;
    up.register("aq-drain").await?;
    let base = ioc_contract::window_start(ioc_contract::time::now_ms()) - 24 * 3_600_000;
    // Registry writes flush at once; these PUBACKs come from the broker on receipt, long
    // before the next interval flush.
    publish_and_confirm(&up, "aq-drain", base, 0, 500).await?;
    let status = first.terminate(Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );

    let (mut second, _) = up.start(&[], &env).await?;
    up.eventually(
        "every acknowledged reading",
        Duration::from_secs(60),
        || async {
            let v = up.stored_values("aq-drain", base, base + 500_000).await?;
            Ok((v == (0..500).collect::<Vec<_>>()).then_some(()))
        },
    )
    .await?;
    second.kill();
    let _ = std::fs::remove_dir_all(&up.dir);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_with_sim_shows_live_devices_in_a_browser() -> Result<()> {
    let mut up = Up::new("browser")?;
    let (mut proc, printed) = up
        .start(
            &["--sim", "--admin-token", "browser-token"],
            &[("IOC_SIM__RATE", "40")],
        )
        .await?;
    up.token = "browser-token".into();
    assert!(printed.contains("as given"), "{printed}");
    up.eventually("the simulated fleet", Duration::from_secs(30), || async {
        let d = up.get("/api/v1/devices").await?;
        Ok((d["devices"].as_array().map(Vec::len) == Some(17)).then_some(()))
    })
    .await?;
    // The cameras' violations of the last hour, counted from their events (each once).
    up.eventually(
        "a camera's violations on the map",
        Duration::from_secs(60),
        || async {
            let map = up.get("/api/v1/map").await?;
            // This instance began counting moments ago, and says so.
            let since = map["violations_since"].as_str().unwrap_or_default();
            anyhow::ensure!(
                ioc_contract::time::parse_rfc3339_ms(since)
                    .is_some_and(|t| t > ioc_contract::time::now_ms() - 3_000_000),
                "{map}"
            );
            let fields: Vec<&str> = map["fields"]
                .as_array()
                .context("fields")?
                .iter()
                .filter_map(|f| f.as_str())
                .collect();
            let at = |name: &str| fields.iter().position(|f| *f == name);
            let (kind, violations) = (
                at("kind").context("kind")?,
                at("violations_1h").context("violations_1h")?,
            );
            let rows = map["devices"].as_array().context("devices")?;
            for r in rows.iter().filter(|r| r[kind] != "traffic_camera") {
                anyhow::ensure!(
                    r[violations].is_null(),
                    "only cameras count violations: {r}"
                );
            }
            Ok(rows
                .iter()
                .filter(|r| r[kind] == "traffic_camera")
                .any(|r| r[violations].as_u64().is_some_and(|n| n > 0))
                .then_some(()))
        },
    )
    .await?;
    let screenshot = up.dir.join("operator.png");
    let seen = dashboard_page(&format!("{}?token={}", up.url("/"), up.token), &screenshot).await?;
    assert!(seen["status"].is_string(), "{seen}");
    assert_eq!(seen["updated"], true, "live data without a reload: {seen}");
    let markers: HashSet<&str> = seen["markers"]
        .as_array()
        .context("markers")?
        .iter()
        .filter_map(|d| d.as_str())
        .collect();
    assert_eq!(
        markers.len(),
        17,
        "every simulated device on the map: {seen}"
    );
    for one_of_each_format in [
        "aq-001", "aqs-001", "aqf-001", "ww-001", "tc-001", "cam-001",
    ] {
        assert!(
            markers.contains(one_of_each_format),
            "{one_of_each_format}: {seen}"
        );
    }
    let reporting = seen["tiles"]["tile-reporting"].as_str().unwrap_or("");
    assert!(
        reporting.split('/').count() == 2 && !reporting.starts_with("0/"),
        "stations reporting, of the stations: {seen}"
    );
    // No tile URL is configured: the outline and the markers are drawn all the same, and the
    // page loads nothing from elsewhere and breaks no rule of its Content-Security-Policy.
    assert_eq!(seen["outside"], serde_json::json!([]), "{seen}");
    assert_eq!(seen["blocked"], serde_json::json!([]), "{seen}");
    assert_eq!(
        (&seen["before"]["lang"], &seen["before"]["aqi"]),
        (
            &serde_json::json!("vi"),
            &serde_json::json!("AQI hiện tại (cao nhất)")
        ),
        "Vietnamese by default: {seen}"
    );
    assert_eq!(
        (
            &seen["after"]["lang"],
            &seen["after"]["aqi"],
            &seen["after"]["status"]
        ),
        (
            &serde_json::json!("en"),
            &serde_json::json!("AQI now (highest)"),
            &serde_json::json!("Live")
        ),
        "the language switch: {seen}"
    );
    let serious = crate::harness::serious_violations(&seen)?;
    assert!(serious.is_empty(), "axe-core: {serious:?}");
    // A marker's popup gives the device's data quality this hour; the commune table has a row
    // (the simulated fleet names no commune: "no data yet").
    let popup = seen["popup"].as_str().unwrap_or_default();
    assert!(
        popup.contains("Chất lượng dữ liệu (giờ này)") && popup.contains("Đủ"),
        "{seen}"
    );
    assert!(seen["quality"].as_u64().is_some_and(|n| n >= 1), "{seen}");
    assert!(
        seen["outline"].as_u64().is_some_and(|n| n >= 1),
        "the province's outline is drawn without tiles: {seen}"
    );
    assert!(
        std::fs::metadata(&screenshot)?.len() > 10_000,
        "a screenshot"
    );
    // Kept with the test's other artifacts when IOC_ARTIFACTS names a folder.
    if let Some(dir) = std::env::var_os("IOC_ARTIFACTS") {
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(&screenshot, std::path::Path::new(&dir).join("operator.png"))?;
    }

    // An installer registers a device on a phone and watches it commission to all green.
    let installer_shot = up.dir.join("installer.png");
    let mut browser = tokio::process::Command::new("node")
        .arg(crate::harness::repo_root().join("tests/browser/installer.js"))
        .arg(format!("{}?token={}", up.url("/"), up.token))
        .arg("aq-new")
        .arg(&installer_shot)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
        browser.stdout.take().context("stdout")?,
    ));
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .context("the page registers the device within 60 s")??
        .context("a line of the installer's page")?;
    let shown: serde_json::Value = serde_json::from_str(&first)?;
    assert!(
        shown["refused"].as_str().is_some_and(|r| r.contains("lat")),
        "a bad latitude is refused, the field named: {shown}"
    );
    let mqtt = &shown["registered"];
    let (device, mut events) = rumqttc::AsyncClient::new(device_login(mqtt, up.mqtt_port)?, 100);
    let _poll = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let topic = mqtt["topic"].as_str().context("topic")?.to_string();
    for i in 0..6 {
        let body = format!(
            r#"{{"ts":{},"values":{{"pm25":{}}}}}"#,
            ioc_contract::time::now_ms(),
            20 + i
        );
        device
            .publish(&topic, QoS::AtLeastOnce, false, body)
            .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let last = tokio::time::timeout(Duration::from_secs(90), lines.next_line())
        .await
        .context("the checklist turns green within 90 s")??
        .context("the page's last line")?;
    assert!(browser.wait().await?.success());
    let seen: serde_json::Value = serde_json::from_str(&last)?;
    let items = seen["items"].as_array().context("items")?;
    assert!(
        items.len() >= 6 && items.iter().all(|i| i[1] == "pass"),
        "every item green: {seen}"
    );
    assert!(
        seen["raw"].as_str().is_some_and(|r| r.contains("pm25")),
        "{seen}"
    );
    assert!(
        seen["decoded"][0]
            .as_str()
            .is_some_and(|d| d.starts_with("pm25 = ")),
        "{seen}"
    );
    assert!(
        seen["scroll_width"].as_u64().is_some_and(|w| w <= 390),
        "fits a phone's width: {seen}"
    );
    if let Some(dir) = std::env::var_os("IOC_ARTIFACTS") {
        std::fs::copy(
            &installer_shot,
            std::path::Path::new(&dir).join("installer.png"),
        )?;
    }
    stop_cleanly(&mut proc);
    let _ = std::fs::remove_dir_all(&up.dir);
    Ok(())
}

/// A station file published on its topic becomes readings in UTC, in catalogue units, with the
/// station's status as quality.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_ingests_station_files() -> Result<()> {
    let mut up = Up::new("station")?;
    let (mut proc, _) = up.start(&[], &[]).await?;
    up.register("ww-st1").await?;
    // 08:55 local time (+07:00) yesterday.
    let day = ioc_contract::window_start(ioc_contract::time::now_ms()) - 86_400_000;
    let day = day - day.rem_euclid(86_400_000);
    let local = chrono_like_local(day + 8 * 3_600_000 + 55 * 60_000 + 7 * 3_600_000);
    let file = format!(
        "pH\t7.21\tpH\t{local}\t00\r\nCOD\t61,5\tmg/l\t{local}\t01\r\nLuu luong\t0.01\tm3/s\t{local}\t00\r\n"
    );
    let (client, mut eventloop) = up.mqtt("ww-st1");
    client
        .publish("ioc/v1/stations/ww-st1/file", QoS::AtLeastOnce, false, file)
        .await?;
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = eventloop.poll().await? {
            break;
        }
    }
    let ts = day + 8 * 3_600_000 + 55 * 60_000;
    let rows = up
        .eventually(
            "the station's readings",
            Duration::from_secs(30),
            || async {
                let r = up
                    .get(&format!(
                        "/api/v1/readings?device_id=ww-st1&from={ts}&to={}",
                        ts + 1
                    ))
                    .await?;
                let rows = r["readings"].as_array().cloned().unwrap_or_default();
                Ok((rows.len() == 3).then_some(rows))
            },
        )
        .await?;
    let got: Vec<(String, f64, String, String)> = rows
        .iter()
        .map(|r| {
            (
                r["metric"].as_str().unwrap_or_default().to_string(),
                r["value"].as_f64().unwrap_or(f64::NAN),
                r["unit"].as_str().unwrap_or_default().to_string(),
                r["quality"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "cod".to_string(),
                61.5,
                "mg/L".to_string(),
                "suspect".to_string()
            ),
            (
                "flow".to_string(),
                36.0,
                "m³/h".to_string(),
                "good".to_string()
            ),
            ("ph".to_string(), 7.21, "pH".to_string(), "good".to_string()),
        ]
    );
    assert_eq!(rows[0]["ts"], ioc_contract::time::format_ms(ts));
    stop_cleanly(&mut proc);
    let _ = std::fs::remove_dir_all(&up.dir);
    Ok(())
}

/// A device's record through its life, on `ioc up`: an installer's token registers it
/// (commissioning, with its commune), a bad change is refused with every problem, a good one is
/// applied; its messages set `last_seen` and `online`, a rejected one its last rejection; every
/// change is in the audit trail with who made it. Issued tokens and the trail survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_keeps_device_records_activity_and_their_audit_trail() -> Result<()> {
    use crate::access::{call, issue};
    use reqwest::{Method, StatusCode};
    let mut up = Up::new("records")?;
    let (mut proc, _) = up.start(&[], &[]).await?;
    let (http, base) = (up.http.clone(), up.url(""));
    let installer = issue(&http, &base, &up.token, "installer", "lan-installer").await?;
    let registration = serde_json::json!({
        "device_id": "aq-rec", "kind": "air_quality", "name": "Trường Chinh",
        "lat": 12.68, "lon": 108.05, "expected_interval_s": 60,
        "commune": "Phường Buôn Ma Thuột", "installer": "Công ty Lắp đặt ABC",
        "installed_at": "2026-11-27T08:00:00+07:00"
    });
    let (status, device) = call(
        &http,
        &base,
        Method::POST,
        "/api/v1/devices",
        &installer,
        Some(registration),
    )
    .await?;
    assert_eq!(status, StatusCode::CREATED, "{device}");
    assert_eq!(device["status"], "commissioning");
    // Its MQTT account, shown this once with its password.
    let account = &device["mqtt"];
    assert_eq!(
        (
            &account["username"],
            &account["client_id"],
            &account["topic"]
        ),
        (
            &serde_json::json!("aq-rec"),
            &serde_json::json!("aq-rec"),
            &serde_json::json!("ioc/v1/devices/aq-rec/telemetry")
        ),
        "{device}"
    );
    assert_eq!(account["password"].as_str().map(str::len), Some(48));
    up.remember("aq-rec", account);
    assert_eq!(device["commune"], "Phường Buôn Ma Thuột");
    assert_eq!(device["installed_at"], "2026-11-27T01:00:00.000Z");
    assert_eq!(
        (&device["online"], &device["last_seen"]),
        (&serde_json::json!(false), &serde_json::Value::Null)
    );

    let path = "/api/v1/devices/aq-rec";
    let (status, body) = call(
        &http,
        &base,
        Method::PATCH,
        path,
        &installer,
        Some(serde_json::json!({"status": "retired", "lat": 200, "device_id": "x"})),
    )
    .await?;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields: Vec<&str> = body["problems"]
        .as_array()
        .context("problems")?
        .iter()
        .filter_map(|p| p["field"].as_str())
        .collect();
    assert_eq!(fields, ["lat", "status", "body"], "{body}");
    let (status, _) = call(
        &http,
        &base,
        Method::PATCH,
        "/api/v1/devices/nobody",
        &installer,
        Some(serde_json::json!({"status": "active"})),
    )
    .await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, device) = call(
        &http,
        &base,
        Method::PATCH,
        path,
        &installer,
        Some(serde_json::json!({"status": "active", "address": "12 Trường Chinh"})),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{device}");
    assert_eq!(
        (&device["status"], &device["address"], &device["name"]),
        (
            &serde_json::json!("active"),
            &serde_json::json!("12 Trường Chinh"),
            &serde_json::json!("Trường Chinh")
        )
    );

    // The broker lets in only the device's account: no login, a wrong password, or another
    // client id are refused. The password is never shown again.
    let shown = up.get(path).await?;
    assert!(shown["mqtt"]["password"].is_null(), "{shown}");
    assert_eq!(shown["mqtt"]["username"], "aq-rec", "{shown}");
    let login = up.logins.lock().unwrap()["aq-rec"].clone();
    let with = |client_id: &str, password: Option<&str>| {
        let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", up.mqtt_port);
        if let Some(p) = password {
            options.set_credentials("aq-rec", p);
        }
        options
    };
    let password = login["password"].as_str().context("password")?.to_string();
    let checklist = "/api/v1/devices/aq-rec/commissioning";
    let before = up.get(checklist).await?;
    assert!(connects(with("aq-rec", Some(&password))).await);
    // Its login is what the installer's checklist sees before any message.
    let after = up.get(checklist).await?;
    let connected = |list: &serde_json::Value| list["items"][0].clone();
    assert_eq!(
        (&connected(&before)["item"], &connected(&before)["status"]),
        (
            &serde_json::json!("connected"),
            &serde_json::json!("pending")
        ),
        "{before}"
    );
    assert_eq!(connected(&after)["status"], "pass", "{after}");
    assert!(
        connected(&after)["evidence"]
            .as_str()
            .is_some_and(|e| e.starts_with("client aq-rec logged in at")),
        "{after}"
    );
    assert!(!connects(with("aq-rec", None)).await, "no login");
    assert!(
        !connects(with("aq-rec", Some("guess"))).await,
        "wrong password"
    );
    assert!(
        !connects(with("aq-other", Some(&password))).await,
        "other client id"
    );
    // Rotated: the old password no longer works, the new one does.
    let credentials = "/api/v1/devices/aq-rec/credentials";
    let (status, rotated) = call(&http, &base, Method::POST, credentials, &up.token, None).await?;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");
    let new_password = rotated["mqtt"]["password"]
        .as_str()
        .context("new password")?;
    assert_ne!(new_password, password);
    assert!(
        !connects(with("aq-rec", Some(&password))).await,
        "old password"
    );
    assert!(connects(with("aq-rec", Some(new_password))).await);
    up.remember("aq-rec", &rotated["mqtt"]);

    // A good message, then one with a metric nobody knows.
    let now = ioc_contract::time::now_ms();
    let (client, mut eventloop) = up.mqtt("aq-rec");
    let topic = ioc_contract::telemetry_topic("aq-rec");
    for body in [
        format!(r#"{{"ts":{now},"values":{{"pm25":12.5}}}}"#),
        format!(r#"{{"ts":{},"values":{{"pm25":13,"xyz":1}}}}"#, now + 1000),
    ] {
        client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, body)
            .await?;
    }
    let mut acks = 0;
    while acks < 2 {
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = eventloop.poll().await? {
            acks += 1;
        }
    }
    let device = up
        .eventually("the device's activity", Duration::from_secs(30), || async {
            let d = up.get(path).await?;
            Ok(d["last_rejection"].is_object().then_some(d))
        })
        .await?;
    assert_eq!(device["online"], true, "{device}");
    assert!(device["last_seen"].is_string(), "{device}");
    assert_eq!(
        device["last_rejection"]["code"], "unknown_metric",
        "{device}"
    );

    // The trail, oldest first (the route lists newest first).
    let check_trail = |audit: &serde_json::Value, later: &[&str]| {
        let trail: Vec<(String, String, String)> = audit["entries"]
            .as_array()
            .map(|a| {
                a.iter()
                    .rev()
                    .map(|e| {
                        (
                            e["action"].as_str().unwrap_or_default().to_string(),
                            e["by"].as_str().unwrap_or_default().to_string(),
                            e["role"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let want = |a: &str| {
            (
                a.to_string(),
                "lan-installer".to_string(),
                "installer".to_string(),
            )
        };
        assert_eq!(
            trail[..3],
            [
                want("device.registered"),
                want("device.credentials_issued"),
                want("device.updated")
            ],
            "{audit}"
        );
        // Then the admin's changes, each with its status.
        let statuses: Vec<&str> = audit["entries"]
            .as_array()
            .map(|a| {
                a.iter()
                    .rev()
                    .skip(1)
                    .filter_map(|e| e["detail"]["status"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let mut want_statuses = vec!["active"];
        want_statuses.extend(later);
        assert_eq!(statuses, want_statuses, "{audit}");
        assert!(
            trail[3..].iter().all(|(_, by, _)| by == "admin-token"),
            "{audit}"
        );
    };
    let audit = up.get("/api/v1/audit?device_id=aq-rec").await?;
    check_trail(&audit, &[]);

    // Decommissioned: its messages are refused, with that reason.
    // The admin changes its status.
    let set_status = |status: &'static str| {
        let body = serde_json::json!({ "status": status });
        call(&http, &base, Method::PATCH, path, &up.token, Some(body))
    };
    assert_eq!(set_status("decommissioned").await?.0, StatusCode::OK);
    client
        .publish(
            topic.as_str(),
            QoS::AtLeastOnce,
            false,
            format!(r#"{{"ts":{},"values":{{"pm25":14}}}}"#, now + 2000),
        )
        .await?;
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = eventloop.poll().await? {
            break;
        }
    }
    up.eventually("the refusal", Duration::from_secs(30), || async {
        let d = up.get(path).await?;
        Ok((d["last_rejection"]["code"] == "decommissioned").then_some(()))
    })
    .await?;
    // Decommissioning deleted its account; the connection it had stays open (rumqttd cannot
    // disconnect a client: README, security notes) but no new one is let in.
    let shown = up.get(path).await?;
    assert!(shown["mqtt"].is_null(), "{shown}");
    assert!(!connects(up.mqtt_options("aq-rec")).await, "decommissioned");
    assert_eq!(set_status("active").await?.0, StatusCode::OK);
    assert!(
        !connects(up.mqtt_options("aq-rec")).await,
        "back in service, no account yet"
    );
    let (status, issued) = call(&http, &base, Method::POST, credentials, &up.token, None).await?;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    up.remember("aq-rec", &issued["mqtt"]);
    assert!(connects(up.mqtt_options("aq-rec")).await);
    // Revoked: refused at the next login; revoking again finds no account.
    let (status, _) = call(&http, &base, Method::DELETE, credentials, &up.token, None).await?;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!connects(up.mqtt_options("aq-rec")).await, "revoked");
    let (status, _) = call(&http, &base, Method::DELETE, credentials, &up.token, None).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // After a restart: the issued token still works, the trail is the same.
    stop_cleanly(&mut proc);
    let (mut proc, _) = up.start(&[], &[]).await?;
    let (status, device) = call(&http, &base, Method::GET, path, &installer, None).await?;
    assert_eq!(
        (status, &device["status"]),
        (StatusCode::OK, &serde_json::json!("active")),
        "{device}"
    );
    check_trail(
        &up.get("/api/v1/audit?device_id=aq-rec").await?,
        &["decommissioned", "active"],
    );
    stop_cleanly(&mut proc);
    let _ = std::fs::remove_dir_all(&up.dir);
    Ok(())
}

/// `yyyyMMddhhmmss` of the UTC calendar time `ms` (the caller adds the local offset).
fn chrono_like_local(ms: i64) -> String {
    ioc_contract::time::format_ms(ms)
        .chars()
        .filter(char::is_ascii_digit)
        .take(14)
        .collect()
}

/// Runs `ioc up` with one of its ports taken; returns its exit status and stderr.
fn up_with_busy(mqtt: u16, http: u16, dir: &Path) -> (std::process::ExitStatus, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ioc"))
        .args(["up", "--mqtt-listen", &format!("127.0.0.1:{mqtt}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .arg("--data-dir")
        .arg(dir)
        .env_remove("IOC_ADMIN_TOKEN")
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn up_names_a_busy_port_and_the_flag_to_change_it_and_creates_nothing() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("ioc-e2e-up-busy-{}", std::process::id()));
    for (mqtt, http, flag) in [
        (port, free_port(), "--mqtt-listen"),
        (free_port(), port, "--http-listen"),
    ] {
        let (status, stderr) = up_with_busy(mqtt, http, &dir);
        assert!(!status.success());
        assert!(
            stderr.contains(&format!("port {port} is already in use")) && stderr.contains(flag),
            "{stderr}"
        );
        assert!(
            !dir.exists(),
            "a refused start leaves no data directory behind"
        );
    }
}

/// The simulator's faults on `ioc up`, a group of stations per fault beside a clean group: each
/// fault moves the data-quality score it should and no other (`quality.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_scores_each_simulated_fault_on_its_own_score() -> Result<()> {
    let mut up = Up::new("faults")?;
    let (sim, mqtt) = up.sim_account("faults-sim");
    let env = [
        (sim[0].0, sim[0].1.as_str()),
        (sim[1].0, sim[1].1.as_str()),
        ("IOC_STREAM__IDLE_TIMEOUT", "3s"),
        ("IOC_STREAM__STUCK_AFTER", "{ default = 30, pm25 = 5 }"),
        ("IOC_INGEST__DEVICE_RATE_LIMIT", "2"),
        ("IOC_INGEST__DEVICE_BURST", "5"),
    ];
    let (mut proc, _) = up.start(&[], &env).await?;
    let api = up.api();
    let checked = crate::quality::each_simulated_fault_moves_its_own_score(&api, &mqtt).await;
    stop_cleanly(&mut proc);
    checked?;
    let _ = std::fs::remove_dir_all(&up.dir);
    Ok(())
}

/// Traffic on `ioc up`: a simulated counter's weekday morning and a camera's violations
/// (`traffic.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_derives_traffic_levels_jam_alerts_and_violation_counts() -> Result<()> {
    let mut up = Up::new("traffic")?;
    let (sim, mqtt) = up.sim_account("traffic-sim");
    let env = [
        (sim[0].0, sim[0].1.as_str()),
        (sim[1].0, sim[1].1.as_str()),
        ("IOC_STREAM__IDLE_TIMEOUT", "3s"),
        ("IOC_INGEST__DEVICE_RATE_LIMIT", "0"),
    ];
    let (mut proc, _) = up.start(&[], &env).await?;
    let api = up.api();
    let checked =
        crate::traffic::a_morning_of_traffic_shows_its_rush_hour_and_incidents(&api, &mqtt).await;
    stop_cleanly(&mut proc);
    checked?;
    let _ = std::fs::remove_dir_all(&up.dir);
    Ok(())
}

/// Roll-ups, the VN_AQI and QCVN 40 exceedances on `ioc up`, as on the distributed pipeline
/// (`rollups.rs`, `aqi.rs`, `exceedances.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn up_rolls_up_a_backdated_day_and_revises_it_for_a_late_reading() -> Result<()> {
    let mut up = Up::new("rollups")?;
    let env = [
        ("IOC_INGEST__DEVICE_RATE_LIMIT", "0"),
        ("IOC_STREAM__IDLE_TIMEOUT", "3s"),
        ("IOC_API__QUALITY_GAUGES_EVERY", "1s"),
    ];
    let (mut proc, _) = up.start(&[], &env).await?;
    up.register("aq-day").await?;
    up.register_kind("ww-day", "wastewater").await?;
    up.register("aq-05").await?;
    up.register("aq-q").await?;
    up.register("aq-fc").await?;
    up.register("aq-smoke").await?;
    let poll = |mut eventloop: rumqttc::EventLoop| {
        tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        })
    };
    let (client, eventloop) = up.mqtt("aq-day");
    let (station, station_events) = up.mqtt("ww-day");
    let (air, air_events) = up.mqtt("aq-05");
    let (scored, scored_events) = up.mqtt("aq-q");
    let (forecast, forecast_events) = up.mqtt("aq-fc");
    let (smoke, smoke_events) = up.mqtt("aq-smoke");
    let polls = [
        poll(eventloop),
        poll(station_events),
        poll(air_events),
        poll(scored_events),
        poll(forecast_events),
        poll(smoke_events),
    ];
    let api = up.api();
    let checked = async {
        let day = crate::rollups::a_backdated_day_rolls_up_and_a_late_reading_revises_it(
            &api, &client, "aq-day",
        )
        .await?;
        crate::aqi::the_backdated_day_gets_its_aqi_and_a_late_half_hour_revises_it(
            &api, &client, "aq-day", day,
        )
        .await?;
        crate::exceedances::a_wastewater_day_exceeds_qcvn_40_and_a_late_hour_withdraws_it(
            &api, &station, "ww-day",
        )
        .await?;
        crate::exceedances::an_air_day_exceeds_qcvn_05_hourly_and_daily(&api, &air, "aq-05")
            .await?;
        crate::quality::a_backdated_hour_scores_what_its_faults_make(&api, &scored, "aq-q").await?;
        crate::forecast::a_station_gets_the_forecast_ioc_forecast_makes_of_its_hours(
            &api, &forecast, "aq-fc",
        )
        .await?;
        crate::forecast::a_smoke_episode_is_warned_before_it_arrives(&api, &smoke, "aq-smoke")
            .await?;
        // The fleet's gauges: of the air stations, only aq-q (installed four days ago) owed
        // anything in the last complete hour, and it sent nothing then.
        let metrics = up.url("/metrics");
        eventually(
            "the fleet's quality gauges",
            Duration::from_secs(30),
            &up.dir,
            || async {
                let text = up.http.get(&metrics).send().await?.text().await?;
                Ok(
                    (text.contains("ioc_api_quality_devices{kind=\"air_quality\"} 1")
                        && text.contains(
                            "ioc_api_quality_score{kind=\"air_quality\",score=\"complete\"} 0",
                        ))
                    .then_some(()),
                )
            },
        )
        .await
    }
    .await;
    for p in polls {
        p.abort();
    }
    stop_cleanly(&mut proc);
    checked?;
    let _ = std::fs::remove_dir_all(&up.dir);
    Ok(())
}
