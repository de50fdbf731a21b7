//! Test harness: a private Mosquitto on a free port (the project's shipped config, dynamic
//! security plugin included), the real `ioc` binary for every stage, and the shared tansu and
//! ClickHouse that `scripts/services.sh` starts. Each test isolates itself with its own topic
//! prefix, ClickHouse database, consumer group and MQTT client ids.
//!
//! Broker accounts: the API logs in as the plugin's admin ([`BROKER_ADMIN`]) and creates the
//! ingest's ([`INGEST_ACCOUNT`]) and devices'; the tests' own publishers and the simulator log
//! in as [`FLEET`], an account the harness creates that may publish and subscribe anywhere (it
//! stands for the whole fleet; the per-device accounts are tested on their own).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const KAFKA: &str = "127.0.0.1:9092";
pub const CLICKHOUSE: &str = "http://127.0.0.1:8123";
pub const TOKEN: &str = "test-admin-token";
/// (username, password) of the broker's dynamic-security admin: the API's account.
pub const BROKER_ADMIN: (&str, &str) = ("ioc-api", "e2e-broker-admin");
/// The ingest's broker account, created by the API.
pub const INGEST_ACCOUNT: (&str, &str) = ("ioc-ingest", "e2e-ingest");
/// The tests' publishers and the simulator: may publish and subscribe on any topic.
pub const FLEET: (&str, &str) = ("test-fleet", "e2e-fleet");

/// A port nothing listens on now, and never handed out before in this test run (the tests run
/// concurrently in one process: without that, two could get the same port between its release
/// here and its bind by a child).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if HANDED_OUT
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(port)
        {
            return port;
        }
    }
}

/// A process killed when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) with a pid we spawned and own.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One isolated deployment of the pipeline.
pub struct Env {
    pub id: String,
    pub dir: PathBuf,
    pub mqtt_port: u16,
    pub api_port: u16,
    pub ingest_metrics_port: u16,
    pub stream_metrics_port: u16,
    pub config_path: PathBuf,
    pub mosquitto: Option<Proc>,
    pub http: reqwest::Client,
}

impl Env {
    /// Creates the deployment's folder and config and starts its Mosquitto. `extra` is appended
    /// to the generated config file.
    pub fn new(name: &str, extra: &str) -> Result<Env> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let id = format!("t_{name}_{}_{nanos}", std::process::id());
        let dir = std::env::temp_dir().join(&id);
        std::fs::create_dir_all(&dir)?;
        let mqtt_port = free_port();
        let (api_port, ingest_metrics_port, stream_metrics_port) =
            (free_port(), free_port(), free_port());

        let conf = ioc_config_text(
            &id,
            mqtt_port,
            api_port,
            ingest_metrics_port,
            stream_metrics_port,
            extra,
        );
        let config_path = dir.join("ioc.toml");
        std::fs::write(&config_path, conf)?;

        let mut env = Env {
            id,
            dir,
            mqtt_port,
            api_port,
            ingest_metrics_port,
            stream_metrics_port,
            config_path,
            mosquitto: None,
            http: reqwest::Client::new(),
        };
        env.start_mosquitto()?;
        Ok(env)
    }

    fn start_mosquitto(&mut self) -> Result<()> {
        let shipped = std::fs::read_to_string(repo_root().join("config/mosquitto.conf"))?;
        let data = self.dir.join("mosquitto");
        std::fs::create_dir_all(&data)?;
        // The plugin's accounts file, writable by the user Mosquitto drops to.
        let dynsec_dir = self.dir.join("dynsec");
        std::fs::create_dir_all(&dynsec_dir)?;
        let dynsec_file = dynsec_dir.join("dynamic-security.json");
        let init = Command::new("mosquitto_ctrl")
            .args(["dynsec", "init"])
            .arg(&dynsec_file)
            .args([BROKER_ADMIN.0, BROKER_ADMIN.1])
            .output()
            .context("running mosquitto_ctrl")?;
        if !init.status.success() {
            bail!(
                "mosquitto_ctrl dynsec init: {}",
                String::from_utf8_lossy(&init.stderr)
            );
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dynsec_dir, std::fs::Permissions::from_mode(0o777))?;
        std::fs::set_permissions(&dynsec_file, std::fs::Permissions::from_mode(0o666))?;
        let plugin = dynsec_plugin()?;
        let conf: String = shipped
            .lines()
            .map(|l| {
                if l.starts_with("listener ") {
                    format!("listener {} 127.0.0.1", self.mqtt_port)
                } else if l.starts_with("persistence ") {
                    // Tests never restart their broker; Mosquitto (root drops to its own user)
                    // could not write into the test's folder anyway.
                    "persistence false".to_string()
                } else if l.starts_with("persistence_location") {
                    format!("persistence_location {}/", data.display())
                } else if l.starts_with("plugin ") {
                    format!("plugin {}", plugin.display())
                } else if l.starts_with("plugin_opt_config_file") {
                    format!("plugin_opt_config_file {}", dynsec_file.display())
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let path = self.dir.join("mosquitto.conf");
        std::fs::write(&path, conf)?;
        let log = std::fs::File::create(self.dir.join("mosquitto.log"))?;
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting mosquitto")?;
        self.mosquitto = Some(Proc { child });
        wait_port(self.mqtt_port, Duration::from_secs(10))?;
        let role = serde_json::json!([
            {"acltype": "publishClientSend", "topic": "#", "allow": true},
            {"acltype": "subscribePattern", "topic": "#", "allow": true},
        ]);
        self.dynsec(serde_json::json!([
            {"command": "createRole", "rolename": FLEET.0, "acls": role},
            {"command": "createClient", "username": FLEET.0, "password": FLEET.1,
             "roles": [{"rolename": FLEET.0}]},
        ]))?;
        Ok(())
    }

    /// Adds `lines` to the generated config's `[section]` (which `extra` cannot do: a TOML table
    /// is declared once). Before the processes that should read them start.
    pub fn insert_config(&self, section: &str, lines: &str) -> Result<()> {
        let text = std::fs::read_to_string(&self.config_path)?;
        let header = format!("[{section}]\n");
        anyhow::ensure!(
            text.contains(&header),
            "no [{section}] in the generated config"
        );
        let text = text.replacen(&header, &format!("{header}{}\n", lines.trim_end()), 1);
        std::fs::write(&self.config_path, text)?;
        Ok(())
    }

    /// Sends dynamic-security `commands` as the broker's admin; returns the answers, failing if
    /// any command failed.
    pub fn dynsec(&self, commands: serde_json::Value) -> Result<Vec<serde_json::Value>> {
        let output = Command::new("mosquitto_rr")
            .args(["-h", "127.0.0.1", "-p", &self.mqtt_port.to_string()])
            .args(["-u", BROKER_ADMIN.0, "-P", BROKER_ADMIN.1, "-W", "10"])
            .args(["-t", "$CONTROL/dynamic-security/v1"])
            .args(["-e", "$CONTROL/dynamic-security/v1/response"])
            .arg("-m")
            .arg(serde_json::json!({ "commands": commands }).to_string())
            .output()
            .context("running mosquitto_rr")?;
        let answer: serde_json::Value =
            serde_json::from_slice(&output.stdout).with_context(|| {
                format!(
                    "dynamic security answer: {} {}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                )
            })?;
        let answers = answer["responses"].as_array().cloned().unwrap_or_default();
        if let Some(failed) = answers.iter().find(|a| a.get("error").is_some()) {
            bail!("dynamic security refused: {failed}");
        }
        Ok(answers)
    }

    /// Starts `ioc <args>` with this deployment's config; output goes to `<dir>/<log>.log`.
    pub fn ioc(&self, log: &str, args: &[&str]) -> Result<Proc> {
        self.ioc_with_env(log, args, &[])
    }

    /// [`Env::ioc`] with more environment variables (a second process's own settings).
    pub fn ioc_with_env(&self, log: &str, args: &[&str], vars: &[(&str, String)]) -> Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{log}.log")))?;
        let err = out.try_clone()?;
        let child = Command::new(env!("CARGO_BIN_EXE_ioc"))
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env("IOC_LOG", "info,rdkafka=warn")
            .env("IOC_SIM__USERNAME", FLEET.0)
            .env("IOC_SIM__PASSWORD", FLEET.1)
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting ioc {args:?}"))?;
        Ok(Proc { child })
    }

    /// Runs `ioc <args>` to completion; returns stdout, failing on a non-zero exit.
    pub fn ioc_output(&self, args: &[&str]) -> Result<String> {
        let output = Command::new(env!("CARGO_BIN_EXE_ioc"))
            .arg("--config")
            .arg(&self.config_path)
            .args(args)
            .env("IOC_SIM__USERNAME", FLEET.0)
            .env("IOC_SIM__PASSWORD", FLEET.1)
            .output()?;
        if !output.status.success() {
            bail!(
                "ioc {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8(output.stdout)?)
    }

    pub fn api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }

    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        get_json(&self.http, &self.api(path), TOKEN).await
    }

    /// Waits until an HTTP endpoint answers 200.
    pub async fn wait_http(&self, url: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = self.http.get(url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{url} did not answer within {timeout:?} (logs in {})",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Value of a Prometheus sample (`name` or `name{labels}`) at `port`.
    pub async fn metric(&self, port: u16, sample: &str) -> Result<f64> {
        let text = self
            .http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(sample) {
                if let Some(v) = rest.strip_prefix(' ') {
                    return Ok(v.trim().parse()?);
                }
            }
        }
        Ok(0.0)
    }

    /// Runs a ClickHouse query in this deployment's database; returns TSV rows.
    pub async fn clickhouse(&self, sql: &str) -> Result<Vec<Vec<String>>> {
        clickhouse_query(&self.http, &self.id, sql).await
    }

    /// Waits until `probe` returns Some.
    pub async fn eventually<T, F, Fut>(&self, what: &str, timeout: Duration, probe: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        eventually(what, timeout, &self.dir, probe).await
    }

    /// Registers a device through the API.
    pub async fn register(&self, device_id: &str, kind: &str) -> Result<()> {
        register_device(&self.http, &self.api(""), TOKEN, device_id, kind).await?;
        Ok(())
    }

    /// Waits until ingest's registry view has every device the API has registered. (Ingest
    /// follows the registry topic: a device registered a moment ago may not be known yet, and
    /// its first messages would be dead-lettered as `unknown_device`.)
    pub async fn wait_ingest_knows_registered(&self) -> Result<()> {
        self.wait_ingest_knows_registered_at(self.ingest_metrics_port)
            .await
    }

    /// [`Env::wait_ingest_knows_registered`] for the ingest whose metrics are on `port`.
    pub async fn wait_ingest_knows_registered_at(&self, port: u16) -> Result<()> {
        let registered = self.get_json("/api/v1/devices").await?["devices"]
            .as_array()
            .map_or(0, Vec::len);
        self.eventually(
            "ingest to see the registered devices",
            Duration::from_secs(30),
            || async {
                let seen = self.metric(port, "ioc_ingest_registry_devices").await?;
                Ok((seen as usize >= registered).then_some(()))
            },
        )
        .await
    }

    /// Waits until ingest receives messages: its subscription may be acknowledged after its
    /// /healthz answers, and a message published before that reaches nobody. Publishes probes
    /// (an unregistered device's, dead-lettered as `unknown_device`) until one arrives.
    pub async fn wait_ingest_subscribed(&self) -> Result<()> {
        let (client, _poll) = self.mqtt_client("subscription-probe");
        self.eventually(
            "ingest to receive messages",
            Duration::from_secs(30),
            || async {
                client
                    .publish(
                        "ioc/v1/devices/subscription-probe/telemetry",
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        "{}",
                    )
                    .await?;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let seen = self
                    .metric(
                        self.ingest_metrics_port,
                        "ioc_ingest_messages_received_total",
                    )
                    .await?;
                Ok((seen > 0.0).then_some(()))
            },
        )
        .await
    }

    /// A Kafka consumer of this deployment's `topic` (without prefix), from the beginning of
    /// every partition.
    pub fn topic_reader(&self, topic: &str) -> Result<rdkafka::consumer::StreamConsumer> {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", KAFKA)
            .set("group.id", format!("{}-{topic}-reader", self.id))
            .set("enable.auto.commit", "false")
            .create()?;
        let topic = format!("{}.{topic}", self.id);
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..3 {
            tpl.add_partition_offset(&topic, p, rdkafka::Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        Ok(consumer)
    }

    pub fn mqtt_client(
        &self,
        client_id: &str,
    ) -> (rumqttc::AsyncClient, tokio::task::JoinHandle<()>) {
        let mut options = rumqttc::MqttOptions::new(client_id, "127.0.0.1", self.mqtt_port);
        options
            .set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024)
            .set_inflight(100)
            .set_credentials(FLEET.0, FLEET.1);
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let task = tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        (client, task)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Leave the folder (logs) for a failed test; drop the database to keep ClickHouse small,
        // unless an assertion failed: then its rows are the evidence.
        if std::thread::panicking() {
            eprintln!(
                "kept ClickHouse database {} and logs in {}",
                self.id,
                self.dir.display()
            );
            return;
        }
        let id = self.id.clone();
        let _ = std::thread::spawn(move || {
            let _ = std::process::Command::new("curl")
                .args([
                    "-sS",
                    "--max-time",
                    "10",
                    CLICKHOUSE,
                    "--data-binary",
                    &format!("DROP DATABASE IF EXISTS {id}"),
                ])
                .output();
        })
        .join();
    }
}

pub async fn clickhouse_query(
    http: &reqwest::Client,
    database: &str,
    sql: &str,
) -> Result<Vec<Vec<String>>> {
    let r = http
        .post(format!("{CLICKHOUSE}/?database={database}"))
        .body(format!("{sql} FORMAT TabSeparated"))
        .send()
        .await?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("clickhouse: {status}: {text}");
    }
    Ok(text
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect())
}

fn ioc_config_text(
    id: &str,
    mqtt: u16,
    api: u16,
    ingest_metrics: u16,
    stream_metrics: u16,
    extra: &str,
) -> String {
    format!(
        r#"[mqtt]
port = {mqtt}
username = "{ingest_user}"
password = "{ingest_password}"

[kafka]
brokers = "{KAFKA}"
topic_prefix = "{id}."
partitions = 3

[clickhouse]
url = "{CLICKHOUSE}"
database = "{id}"

[ingest]
client_id = "{id}-ingest-1"
share_group = "{id}-ingest"
metrics_listen = "127.0.0.1:{ingest_metrics}"
drain_timeout = "10s"
plate_secret = "e2e-plate-secret"

[stream]
group_id = "{id}-stream"
allowed_lateness = "2s"
idle_timeout = "4s"
batch_linger = "100ms"
metrics_listen = "127.0.0.1:{stream_metrics}"

[api]
listen = "127.0.0.1:{api}"
admin_token = "{TOKEN}"
mqtt_username = "{admin_user}"
mqtt_password = "{admin_password}"
{extra}"#,
        ingest_user = INGEST_ACCOUNT.0,
        ingest_password = INGEST_ACCOUNT.1,
        admin_user = BROKER_ADMIN.0,
        admin_password = BROKER_ADMIN.1,
    )
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Debian's dynamic security plugin, on whichever architecture this is.
fn dynsec_plugin() -> Result<PathBuf> {
    let shipped = Path::new("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so");
    if shipped.exists() {
        return Ok(shipped.to_path_buf());
    }
    for dir in std::fs::read_dir("/usr/lib")?.flatten() {
        let candidate = dir.path().join("mosquitto_dynamic_security.so");
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("mosquitto_dynamic_security.so not found under /usr/lib (Debian's mosquitto package has it)")
}

fn mosquitto_binary() -> &'static str {
    if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}

pub fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listening on port {port} after {timeout:?}")
}

/// The simulator's final JSON line.
#[derive(Debug, serde::Deserialize)]
pub struct SimReport {
    pub messages: u64,
    pub readings: u64,
    pub acknowledged: u64,
}

/// Aggregates as stored, and as recomputed from the stored raw rows; both sorted.
pub async fn aggregates_vs_recomputation(env: &Env) -> Result<(Vec<String>, Vec<String>)> {
    let stored = env
        .clickhouse(
            "SELECT device_id, channel, metric, window_start, value_count, round(value_min, 6), round(value_max, 6), round(value_mean, 6) \
             FROM aggregates FINAL ORDER BY device_id, channel, metric, window_start",
        )
        .await?;
    let recomputed = env
        .clickhouse(
            "SELECT device_id, channel, metric, intDiv(ts, 60000) * 60000 AS ws, count(), round(min(value), 6), round(max(value), 6), round(avg(value), 6) \
             FROM readings FINAL WHERE quality = 'good' GROUP BY device_id, channel, metric, ws ORDER BY device_id, channel, metric, ws",
        )
        .await?;
    Ok((
        stored.into_iter().map(|r| r.join(" ")).collect(),
        recomputed.into_iter().map(|r| r.join(" ")).collect(),
    ))
}

/// The stored quality counts per series and minute (received, good, suspect, bad, resent), and
/// the same counted again from the stored readings and reading copies, for every minute before
/// its device's `closed_until` (the minutes the stream has counted), one line each.
pub async fn quality_vs_recount(env: &Env) -> Result<(Vec<String>, Vec<String>)> {
    let closed: std::collections::HashMap<String, i64> = env
        .clickhouse("SELECT device_id, max(closed_until) FROM stream_watermarks GROUP BY device_id")
        .await?
        .into_iter()
        .filter_map(|r| Some((r.first()?.clone(), r.get(1)?.parse().ok()?)))
        .collect();
    let stored = env
        .clickhouse(
            "SELECT device_id, channel, metric, window_start, received, good, suspect, bad, resent \
             FROM quality FINAL ORDER BY device_id, channel, metric, window_start",
        )
        .await?;
    let counted = env
        .clickhouse(
            "SELECT device_id, channel, metric, intDiv(ts, 60000) * 60000 AS ws, count(), \
             countIf(quality = 'good'), countIf(quality = 'suspect'), countIf(quality = 'bad') \
             FROM readings FINAL GROUP BY device_id, channel, metric, ws \
             ORDER BY device_id, channel, metric, ws",
        )
        .await?;
    let copies: std::collections::HashMap<String, String> = env
        .clickhouse(
            "SELECT device_id, channel, metric, intDiv(ts, 60000) * 60000 AS ws, \
             count() - uniqExact(ts) FROM reading_copies FINAL GROUP BY device_id, channel, metric, ws",
        )
        .await?
        .into_iter()
        .map(|r| (r[..4].join(" "), r[4].clone()))
        .collect();
    let recounted = counted
        .into_iter()
        .filter(|r| {
            let minute: i64 = r[3].parse().unwrap_or(i64::MAX);
            closed.get(&r[0]).is_some_and(|c| minute + 60_000 <= *c)
        })
        .map(|r| {
            let resent = copies.get(&r[..4].join(" ")).cloned().unwrap_or("0".into());
            format!("{} {resent}", r.join(" "))
        })
        .collect();
    Ok((stored.into_iter().map(|r| r.join(" ")).collect(), recounted))
}

/// GETs `url` with a bearer `token`; an answer other than 2xx is an error naming it.
pub async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> Result<serde_json::Value> {
    let r = http.get(url).bearer_auth(token).send().await?;
    let status = r.status();
    let body = r.text().await?;
    if !status.is_success() {
        bail!("GET {url}: {status}: {body}");
    }
    Ok(serde_json::from_str(&body)?)
}

/// Polls `probe` until it returns Some, or fails after `timeout` naming `what`, the last error
/// and where the logs are.
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: Duration,
    logs: &Path,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = String::new();
    loop {
        match probe().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_error = format!("{e:#}"),
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {timeout:?} waiting for {what} (last error: {last_error}; logs in {})",
                logs.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The serious and critical accessibility violations axe-core found, in a browser script's
/// report (`violations`: `[{id, impact, nodes, help}]`).
pub fn serious_violations(seen: &serde_json::Value) -> Result<Vec<serde_json::Value>> {
    Ok(seen["violations"]
        .as_array()
        .context("no violations list in the report")?
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .cloned()
        .collect())
}

/// Runs the browser check `tests/browser/<script>` with `args` and returns the JSON line it
/// printed; fails with what it wrote to stderr.
pub async fn browser_check(
    script: &str,
    args: &[&dyn AsRef<std::ffi::OsStr>],
) -> Result<serde_json::Value> {
    let mut command = tokio::process::Command::new("node");
    command.arg(repo_root().join("tests/browser").join(script));
    for a in args {
        command.arg(a);
    }
    let out = command.output().await?;
    if !out.status.success() {
        bail!(
            "browser check {script} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Opens the dashboard at `url` in headless Chromium (tests/browser/dashboard.js) and returns
/// what it saw; saves a screenshot at `screenshot`.
pub async fn dashboard_page(url: &str, screenshot: &Path) -> Result<serde_json::Value> {
    browser_check("dashboard.js", &[&url, &screenshot, &"30"]).await
}

/// MQTT options of a device logging in with the account its registration returned (`mqtt`:
/// `{username, password, client_id, ...}`).
pub fn device_login(mqtt: &serde_json::Value, port: u16) -> Result<rumqttc::MqttOptions> {
    let field = |name: &str| {
        mqtt[name]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no {name} in {mqtt}"))
    };
    let mut options = rumqttc::MqttOptions::new(field("client_id")?, "127.0.0.1", port);
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_credentials(field("username")?, field("password")?);
    Ok(options)
}

/// Registers a device through the API at `base` (`http://host:port`); returns the device as
/// shown, with its MQTT account (`mqtt`, password included).
pub async fn register_device(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    device_id: &str,
    kind: &str,
) -> Result<serde_json::Value> {
    let body = serde_json::json!({
        "device_id": device_id, "kind": kind, "name": format!("test {device_id}"),
        "lat": 12.68, "lon": 108.05, "expected_interval_s": 60, "status": "active"
    });
    let r = http
        .post(format!("{base}/api/v1/devices"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "registering {device_id}: {} {}",
            r.status(),
            r.text().await?
        );
    }
    Ok(r.json().await?)
}
