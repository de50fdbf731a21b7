//! `ioc up`: the whole pipeline in one process, on an embedded MQTT broker (rumqttd), an
//! embedded durable bus and an embedded Parquet history store under one data directory. The
//! stages are the same code as the distributed mode; only the transports and sinks differ.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ioc_bus::embedded::{EmbeddedLog, LogOptions};
use ioc_bus::Bus;
use ioc_config::Config;
use ioc_contract::{sha256_hex, Topics};
use ioc_history::{EmbeddedHistory, History};
use tokio_util::sync::CancellationToken;

use crate::{bind, follow_registry};

/// The in-process simulator's broker username (`ioc up --sim`); no device id contains ':'.
const SIM_USERNAME: &str = "ioc:sim";

/// Flags of `ioc up` (each overrides its configuration key).
pub struct UpOptions {
    pub mqtt_listen: Option<SocketAddr>,
    pub http_listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub sim: bool,
    pub admin_token: Option<String>,
}

/// The data directory: the flag, then `up.data_dir`, then the user's data directory.
fn data_dir(flag: Option<PathBuf>, configured: &str) -> Result<PathBuf> {
    if let Some(dir) = flag {
        return Ok(dir);
    }
    if !configured.is_empty() {
        return Ok(PathBuf::from(configured));
    }
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(xdg).join("ioc"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("no HOME to put the data directory in; choose one with --data-dir")?;
    Ok(PathBuf::from(home).join(".local/share/ioc"))
}

/// Holds an exclusive lock on the data directory for the life of the process, so that two
/// `ioc up` never write the same files.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own; no memory is involved.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    anyhow::ensure!(
        locked,
        "the data directory {} is in use by another `ioc up`; stop it, or choose another directory with --data-dir",
        dir.display()
    );
    Ok(file)
}

/// How the admin token was obtained, for the start-up message.
enum TokenSource {
    Given,
    Stored(PathBuf),
    Generated(PathBuf),
}

/// A secret given by flag or configuration, else the one stored in the data directory under
/// `name`, else a new random one stored there with owner-only permissions: the admin token
/// (`admin-token`) and the plate pseudonym key (`plate-secret`).
fn stored_secret(given: Option<String>, dir: &Path, name: &str) -> Result<(String, TokenSource)> {
    if let Some(token) = given.filter(|t| !t.is_empty()) {
        return Ok((token, TokenSource::Given));
    }
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => {
            return Ok((token.trim().to_string(), TokenSource::Stored(path)))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; 24];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
        &mut bytes,
    )
    .context("reading /dev/urandom")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(token.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((token, TokenSource::Generated(path)))
}

/// Fails clearly if the MQTT port is taken (rumqttd would only log it from its own thread).
fn check_port_free(addr: SocketAddr) -> Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "cannot listen for MQTT devices on {addr}: port {} is already in use (often another MQTT broker such as Mosquitto, or another ioc); choose another address with --mqtt-listen",
            addr.port()
        ),
        Err(e) => anyhow::bail!("cannot listen for MQTT devices on {addr}: {e}"),
    }
}

/// A task whose failure stops everything.
fn supervise<F>(
    name: &'static str,
    shutdown: &CancellationToken,
    task: F,
) -> tokio::task::JoinHandle<Result<()>>
where
    F: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let result = task.await;
        if let Err(e) = &result {
            tracing::error!(error = %format!("{e:#}"), "{name} failed; stopping");
            shutdown.cancel();
        }
        result
    })
}

async fn join(name: &str, handle: tokio::task::JoinHandle<Result<()>>) -> Result<()> {
    handle
        .await
        .with_context(|| format!("{name} panicked"))?
        .with_context(|| format!("{name} failed"))
}

pub async fn run(
    options: UpOptions,
    mut config: Config,
    rule_source: ioc_stream::reload::RuleSource,
    shutdown: CancellationToken,
) -> Result<()> {
    // Both ports before anything is created, so a busy one is the only effect and message.
    let mqtt_listen = options.mqtt_listen.unwrap_or(config.up.mqtt_listen);
    let mut api = config.api.clone();
    // The embedded broker checks logins against the registry; there is no broker to provision.
    api.device_accounts = ioc_config::DeviceAccounts::Registry;
    if let Some(addr) = options.http_listen {
        api.listen = addr;
    }
    let http = bind(api.listen, "HTTP (dashboard and API)", "--http-listen").await?;
    check_port_free(mqtt_listen)?;
    let http_addr = http.local_addr()?;

    let dir = data_dir(options.data_dir, &config.up.data_dir)?;
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    let _lock = lock_data_dir(&dir)?;
    let given = options
        .admin_token
        .or_else(|| Some(config.api.admin_token.clone()).filter(|t| !t.is_empty()));
    let (token, token_source) = stored_secret(given, &dir, "admin-token")?;
    // Plate pseudonyms must stay stable across restarts (repeat-offender counts), so the key is
    // kept beside the data it keys.
    let (plate_secret, _) = stored_secret(
        Some(config.ingest.plate_secret.clone()),
        &dir,
        "plate-secret",
    )?;
    config.ingest.plate_secret = plate_secret;
    api.admin_token = token.clone();

    let topics = Topics::with_prefix(&config.kafka.topic_prefix);
    let log = EmbeddedLog::open(
        &dir.join("bus"),
        &topics,
        LogOptions {
            flush_interval: config.up.flush_interval,
            retention: config.up.bus_retention,
            segment_bytes: ioc_bus::embedded::SEGMENT_BYTES,
        },
    )
    .context("opening the embedded bus")?;
    let prometheus = prometheus::Registry::new();
    log.register_metrics(&prometheus)?;
    let bus_stop = CancellationToken::new();
    let bus_flusher = log.start_flusher(bus_stop.clone());
    let bus = Bus::Embedded {
        log: log.clone(),
        topics: topics.clone(),
    };
    let store = EmbeddedHistory::open(&dir.join("history"))
        .context("opening the embedded history store")?;
    let history_stop = CancellationToken::new();
    let history_flusher =
        store.start_flusher(config.up.history_flush_interval, history_stop.clone());
    let history = History::Embedded(store);
    let registry = follow_registry(&bus, &shutdown).await?;

    // Devices log in with their registry accounts. A simulator publishes as every device of its
    // fleet: the [sim] account if configured (an external `ioc sim`, a load test), else for
    // `--sim` one that lives only as long as this process, whose username cannot be a device
    // id (they have no ':').
    let sim_account = if !config.sim.username.is_empty() {
        anyhow::ensure!(
            !config.sim.password.is_empty(),
            "sim.username is set without sim.password: `ioc up` would let that account in with any password"
        );
        Some((config.sim.username.clone(), config.sim.password.clone()))
    } else if options.sim {
        let password = ioc_dashboard_api::auth::random_hex(24).context("reading /dev/urandom")?;
        config.sim.username = SIM_USERNAME.to_string();
        config.sim.password = password.clone();
        Some((SIM_USERNAME.to_string(), password))
    } else {
        None
    };
    let sim_account = sim_account.map(|(user, password)| (user, sha256_hex(&password)));
    // rumqttd reports no connections; its logins are what the checklist can see.
    let logins = ioc_dashboard_api::connections::ConnectionLog::default();
    let authenticate: ioc_ingest::embedded::Authenticate = {
        let (registry, logins) = (registry.clone(), logins.clone());
        std::sync::Arc::new(move |client_id: &str, username: &str, password: &str| {
            if let Some((sim_user, sim_sha256)) = &sim_account {
                if username == sim_user {
                    // Any client id but a device's: rumqttd would drop that device's connection.
                    return *sim_sha256 == sha256_hex(password) && !registry.contains(client_id);
                }
            }
            let ok = registry.authenticate(client_id, username, password);
            if ok {
                let seen = ioc_dashboard_api::connections::Seen::Connected {
                    client_id: client_id.to_string(),
                    address: String::new(),
                    username: Some(username.to_string()),
                };
                logins.note(seen, ioc_contract::time::now_ms());
            }
            ok
        })
    };
    let broker = ioc_ingest::embedded::start_broker(&ioc_ingest::embedded::BrokerOptions {
        authenticate,
        listen: mqtt_listen,
        max_connections: config.up.max_connections,
        max_payload_bytes: config.ingest.max_payload_bytes,
        filters: ioc_ingest::route::Router::new(&config.ingest.routes).filters(),
    })?;

    let ingest_stop = CancellationToken::new();
    let ingest = {
        let metrics = ioc_ingest::IngestMetrics::register(&prometheus)?;
        let (cfg, bus, registry, stop) = (
            config.ingest.clone(),
            bus.clone(),
            registry.clone(),
            ingest_stop.clone(),
        );
        supervise("ingest", &shutdown, async move {
            let report =
                ioc_ingest::embedded::run(broker, &cfg, &bus, registry, metrics, stop).await?;
            tracing::info!(
                messages = report.messages,
                not_made_durable = report.left_unacked,
                "ingest stopped"
            );
            Ok(())
        })
    };
    let stream_stop = CancellationToken::new();
    let stream = {
        let metrics = ioc_stream::StreamMetrics::register(&prometheus)?;
        let fleet = ioc_stream::Fleet::of(&config, registry.clone());
        let (cfg, bus, history, stop) = (
            config.stream.clone(),
            bus.clone(),
            history.clone(),
            stream_stop.clone(),
        );
        supervise("stream", &shutdown, async move {
            ioc_stream::run(&cfg, fleet, rule_source, &bus, history, metrics, stop).await?;
            Ok(())
        })
    };
    let notify_stop = CancellationToken::new();
    let notify = {
        let metrics = ioc_notify::NotifyMetrics::register(&prometheus)?;
        let settings = ioc_notify::Settings {
            config: config.notify.clone(),
            rules: ioc_config::rules::in_force(&config.stream),
            utc_offset_ms: config.ingest.utc_offset_ms(),
        };
        let (bus, registry, history, stop) = (
            bus.clone(),
            registry.clone(),
            history.clone(),
            notify_stop.clone(),
        );
        supervise("notify", &shutdown, async move {
            ioc_notify::run(settings, &bus, registry, history, metrics, stop).await?;
            Ok(())
        })
    };
    let api_stop = CancellationToken::new();
    let api_task = {
        let regulation = ioc_dashboard_api::Regulatory::of(&config);
        let (ingest, bus, registry, history, prometheus, stop) = (
            config.ingest.clone(),
            bus.clone(),
            registry.clone(),
            history.clone(),
            prometheus.clone(),
            api_stop.clone(),
        );
        supervise("api", &shutdown, async move {
            ioc_dashboard_api::run(
                http,
                api,
                ingest,
                regulation,
                logins,
                ioc_dashboard_api::accounts::Accounts::Registry,
                bus,
                registry,
                history,
                prometheus,
                stop,
            )
            .await?;
            Ok(())
        })
    };

    let local_http = if http_addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], http_addr.port()))
    } else {
        http_addr
    };
    let dashboard = format!("http://{local_http}/");
    println!("ioc up: the whole pipeline in one process");
    println!("  MQTT broker   mqtt://{mqtt_listen}  (MQTT 3.1.1; devices log in with the credentials registration returns)");
    println!("  dashboard     {dashboard}");
    println!("  API           {dashboard}api/v1/  (Authorization: Bearer <admin token>)");
    match &token_source {
        TokenSource::Given => {
            println!("  admin token   as given (--admin-token or IOC_ADMIN_TOKEN)")
        }
        TokenSource::Stored(path) => {
            println!("  admin token   {token}  (stored in {})", path.display())
        }
        TokenSource::Generated(path) => println!(
            "  admin token   {token}  (generated; stored in {}, owner-only)",
            path.display()
        ),
    }
    println!("  data          {}", dir.display());
    println!(
        "  durability    the broker acknowledges devices on receipt; the bus fsyncs every {}, so a crash can lose at most what arrived since",
        humantime::format_duration(config.up.flush_interval)
    );
    let _ = std::io::stdout().flush();

    let sim_stop = CancellationToken::new();
    let sim = if options.sim {
        let sim_config = config.sim.clone();
        let mut mqtt = config.mqtt.clone();
        mqtt.username = config.sim.username.clone();
        mqtt.password = config.sim.password.clone();
        mqtt.host = if mqtt_listen.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            mqtt_listen.ip().to_string()
        };
        mqtt.port = mqtt_listen.port();
        let (stop, token) = (sim_stop.clone(), token.clone());
        let url = dashboard.trim_end_matches('/').to_string();
        Some(supervise("simulator", &shutdown, async move {
            let mut fleet = sensor_sim::Fleet::new(&sim_config);
            let n = sensor_sim::register_fleet(&fleet, &url, &token).await?;
            println!(
                "  simulator     {n} devices registered, publishing {} msg/s",
                sim_config.rate
            );
            let options = sensor_sim::RunOptions {
                count: None,
                rate: sim_config.rate,
                client_id: "ioc-sim".to_string(),
                progress: false,
            };
            sensor_sim::run(&mqtt, &mut fleet, &options, stop).await?;
            Ok(())
        }))
    } else {
        None
    };

    shutdown.cancelled().await;
    // In order: stop the sources, let ingest make what it took durable, let the stream finish
    // its batch, then commit history and flush the bus one last time.
    tracing::info!("stopping: simulator, ingest, stream, notify, API, then the final flushes");
    log.flush_eagerly();
    sim_stop.cancel();
    let mut result = Ok(());
    if let Some(sim) = sim {
        result = result.and(join("simulator", sim).await);
    }
    ingest_stop.cancel();
    result = result.and(join("ingest", ingest).await);
    stream_stop.cancel();
    result = result.and(join("stream", stream).await);
    notify_stop.cancel();
    result = result.and(join("notify", notify).await);
    api_stop.cancel();
    result = result.and(join("api", api_task).await);
    history_stop.cancel();
    let _ = history_flusher.await;
    bus_stop.cancel();
    let _ = bus_flusher.await;
    tracing::info!("stopped; everything received was flushed");
    result
}
