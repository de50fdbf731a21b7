//! `ioc`: the one binary, and the composition root. Only this file knows every stage; it parses
//! flags, loads the configuration, wires the bus, history and registry into the stage it runs,
//! and turns Ctrl-C/SIGTERM into an orderly shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ioc_bus::registry::{self, RegistryView};
use ioc_bus::{Bus, KafkaBus};
use ioc_config::Config;
use ioc_history::{ClickHouseHistory, History};
use tokio_util::sync::CancellationToken;

mod up;

#[derive(Parser)]
#[command(
    name = "ioc",
    version,
    about = "Real-time telemetry pipeline of a provincial Intelligent Operations Center"
)]
struct Cli {
    /// Configuration file (TOML), overlaid on the built-in defaults; IOC_* variables overlay it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Everything in one process: embedded MQTT broker, bus and history store, and the live
    /// dashboard. Nothing else to install.
    Up {
        /// Where the embedded MQTT broker listens for devices (default: up.mqtt_listen,
        /// 127.0.0.1:1883).
        #[arg(long, value_name = "ADDR")]
        mqtt_listen: Option<SocketAddr>,
        /// Where the dashboard and API listen (default: api.listen, 127.0.0.1:8080).
        #[arg(long, value_name = "ADDR")]
        http_listen: Option<SocketAddr>,
        /// Where the bus log, history and admin token live (default: up.data_dir, else
        /// $XDG_DATA_HOME/ioc or ~/.local/share/ioc).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Run the simulated fleet too (registered automatically).
        #[arg(long)]
        sim: bool,
        /// Admin bearer token (default: the one stored in the data directory, generated on
        /// first start).
        #[arg(long, env = "IOC_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
    },
    /// MQTT → decode and validate → Kafka (readings and dead letters).
    Ingest,
    /// Kafka readings → ClickHouse history, windows, VN_AQI, QCVN exceedances and alerts.
    Stream,
    /// Alert transitions → webhook and email notifications (durable, retried, digested).
    Notify,
    /// HTTP and websocket API for the dashboards.
    Api {
        /// Address to listen on (default: api.listen).
        #[arg(long, value_name = "ADDR")]
        http_listen: Option<SocketAddr>,
        /// Admin bearer token for /api/v1/ (default: api.admin_token or IOC_ADMIN_TOKEN).
        #[arg(long, env = "IOC_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
    },
    /// Simulated fleet publishing every ingested payload format over MQTT, optionally faulty.
    Sim {
        /// Send exactly this many messages, then wait for the broker's acknowledgements and exit.
        #[arg(long)]
        count: Option<u64>,
        /// Messages per second across the fleet (default: sim.rate).
        #[arg(long)]
        rate: Option<f64>,
        /// Random seed (default: sim.seed).
        #[arg(long)]
        seed: Option<u64>,
        /// Register the fleet through this API first (for example http://127.0.0.1:8080).
        #[arg(long, value_name = "URL")]
        register_with: Option<String>,
        /// Admin token for --register-with.
        #[arg(long, env = "IOC_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// MQTT client id of the simulator.
        #[arg(long, default_value = "ioc-sim")]
        client_id: String,
        /// Faults to inject: a comma list of malformed, wrong-units, stuck, spikes, clock-skew,
        /// duplicates, backfill, bursts; or all.
        #[arg(long, value_name = "LIST", default_value = "none")]
        faults: String,
        /// Probability that a message draws one of the enabled faults.
        #[arg(long, value_name = "P", default_value_t = sensor_sim::DEFAULT_FAULT_RATE)]
        fault_rate: f64,
    },
    /// Check a configuration file and report every problem with its path.
    CheckConfig { file: PathBuf },
    /// Print what ingest would make of a payload (a file, or - for standard input).
    Decode {
        /// Payload format: ioc-json, senml, vendor-flat, tt10-station, traffic-counter or
        /// camera-event.
        #[arg(long, value_name = "DECODER")]
        format: String,
        /// Vendor profile of a vendor-flat payload.
        #[arg(long, value_name = "NAME", default_value = "flat-gateway")]
        profile: String,
        /// The device the payload comes from (its topic says so in the pipeline).
        #[arg(long, value_name = "ID", default_value = "device")]
        device: String,
        /// One JSON object per reading or rejection instead of text.
        #[arg(long)]
        json: bool,
        file: PathBuf,
    },
    /// VN_AQI (Decision 1459/QĐ-TCMT) from a CSV of hourly means, as the live pipeline computes
    /// it: `station_id,time,pm25,pm10,o3,no2,so2,co` (µg/m³; `time` the hour-ending local time,
    /// RFC 3339 with offset; an empty cell is missing). Prints one JSON object per station-hour,
    /// or with --daily per station-day.
    Aqi {
        /// The CSV file, or - for standard input.
        #[arg(long, value_name = "FILE.csv")]
        input: PathBuf,
        /// Daily AQI per station-day (hours ending 01:00 to 00:00) instead of hourly.
        #[arg(long)]
        daily: bool,
    },
    /// PM2.5 forecasts from the same CSV as `ioc aqi`: for every origin hour (rolling: each
    /// forecast sees only the hours up to its origin) one JSON object per station, origin and
    /// hour ahead, with an 80 % band and the forecast VN_AQI; or with --backtest the errors per
    /// hour ahead of the model, persistence and the diurnal profile.
    Forecast {
        /// The CSV file, or - for standard input.
        #[arg(long, value_name = "FILE.csv")]
        input: PathBuf,
        /// Hours ahead, 1 to 6.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u8).range(1..=6))]
        horizon: u8,
        /// RMSE and MAE per hour ahead instead of the forecasts.
        #[arg(long)]
        backtest: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IOC_LOG")
                .unwrap_or_else(|_| "info,rdkafka=warn,rumqttd=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal; log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    if let Command::CheckConfig { file } = &cli.command {
        return match ioc_config::load(Some(file), std::env::vars()) {
            Ok(config) => {
                // What only ingest can judge (a vendor profile's units and time format), judged
                // as ingest will judge it at start.
                let mut problems: Vec<String> = config
                    .ingest
                    .vendor_profiles
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| {
                        let e = ioc_ingest::flat::Profile::from_config(p).err()?;
                        Some(format!("ingest.vendor_profiles[{i}] ({}): {e}", p.name))
                    })
                    .collect();
                // Alert rules, planned as the stream will plan them.
                let rules = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("tokio runtime")
                    .block_on(ioc_stream::rules::check(&ioc_config::rules::in_force(
                        &config.stream,
                    )));
                problems.extend(rules.iter().map(ToString::to_string));
                if !problems.is_empty() {
                    for problem in problems {
                        eprintln!("{}: {problem}", file.display());
                    }
                    return ExitCode::from(2);
                }
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                ExitCode::from(2)
            }
        };
    }
    let config = match ioc_config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ioc: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Decode {
        format,
        profile,
        device,
        json,
        file,
    } = &cli.command
    {
        return decode_command(&config, format, profile, device, *json, file);
    }
    if let Command::Aqi { input, daily } = &cli.command {
        return aqi_command(&config, input, *daily);
    }
    if let Command::Forecast {
        input,
        horizon,
        backtest,
    } = &cli.command
    {
        return forecast_command(input, usize::from(*horizon), *backtest);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli.command, config, cli.config.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ioc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `ioc aqi`: exit 0 with the report on standard output; 1 when the file is malformed (the
/// error names the line); 2 when it cannot be read.
/// The rows of an `ioc aqi` file (`-`: standard input), or the exit code after saying why not
/// (2: it could not be read; 1: it is not such a file).
fn hourly_csv(
    command: &str,
    input: &std::path::Path,
) -> Result<Vec<ioc_regulation::csv::StationHour>, ExitCode> {
    use std::io::Read;
    let mut text = String::new();
    let read = if input.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)
    } else {
        std::fs::File::open(input).and_then(|mut f| f.read_to_string(&mut text))
    };
    if let Err(e) = read {
        eprintln!("ioc {command}: reading {}: {e}", input.display());
        return Err(ExitCode::from(2));
    }
    ioc_regulation::csv::parse_hourly_csv(&text).map_err(|e| {
        eprintln!("ioc {command}: {}: {e}", input.display());
        ExitCode::FAILURE
    })
}

/// Prints each line of JSON; fails when one could not be made or standard output fails.
fn print_json_lines(lines: impl IntoIterator<Item = serde_json::Result<String>>) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for line in lines {
        let Ok(line) = line else {
            return ExitCode::FAILURE;
        };
        if writeln!(out, "{line}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `ioc forecast`: the forecasts of every origin, or the backtest.
fn forecast_command(input: &std::path::Path, horizon: usize, backtest: bool) -> ExitCode {
    use ioc_regulation::forecast;
    let rows = match hourly_csv("forecast", input) {
        Ok(rows) => rows,
        Err(code) => return code,
    };
    let series = forecast::series_of(&rows);
    if backtest {
        print_json_lines(
            forecast::backtest(&series, horizon)
                .iter()
                .map(serde_json::to_string),
        )
    } else {
        print_json_lines(
            forecast::report(&series, horizon)
                .iter()
                .map(serde_json::to_string),
        )
    }
}

fn aqi_command(config: &Config, input: &std::path::Path, daily: bool) -> ExitCode {
    use std::io::Write;
    let rows = match hourly_csv("aqi", input) {
        Ok(rows) => rows,
        Err(code) => return code,
    };
    let lines: Vec<String> = if daily {
        ioc_regulation::csv::daily_report(&rows, config.stream.min_day_hours)
            .iter()
            .filter_map(|r| serde_json::to_string(r).ok())
            .collect()
    } else {
        ioc_regulation::csv::hourly_report(&rows)
            .iter()
            .filter_map(|r| serde_json::to_string(r).ok())
            .collect()
    };
    let mut out = std::io::stdout().lock();
    for line in lines {
        if writeln!(out, "{line}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

/// `ioc decode`: exit 0 when the payload is accepted (some values may still be rejected, and
/// are printed), 1 when it is rejected whole, 2 on a usage problem.
fn decode_command(
    config: &Config,
    format: &str,
    profile: &str,
    device: &str,
    json: bool,
    file: &std::path::Path,
) -> ExitCode {
    use std::io::Read;
    let Some(format) = ioc_ingest::Format::parse(format) else {
        let names: Vec<&str> = ioc_ingest::Format::ALL.iter().map(|f| f.name()).collect();
        eprintln!(
            "ioc decode: unknown format {format:?}; available: {}",
            names.join(", ")
        );
        return ExitCode::from(2);
    };
    let mut payload = Vec::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut payload)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut payload))
    };
    if let Err(e) = read {
        eprintln!("ioc decode: reading {}: {e}", file.display());
        return ExitCode::from(2);
    }
    let ctx = ioc_ingest::decode::DecodeContext {
        received_at: ioc_contract::time::now_ms(),
        max_future_skew_ms: config.ingest.max_future_skew.as_millis() as i64,
        max_payload_bytes: config.ingest.max_payload_bytes,
        utc_offset_ms: config.ingest.utc_offset_ms(),
    };
    let profiles = match ioc_ingest::flat::Profiles::new(&config.ingest.vendor_profiles) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ioc decode: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(profile) = profiles.get(profile) else {
        let names: Vec<&str> = profiles.all().map(|p| p.name.as_str()).collect();
        eprintln!(
            "ioc decode: unknown vendor profile {profile:?}; available: {}",
            names.join(", ")
        );
        return ExitCode::from(2);
    };
    let id = ioc_ingest::decode::message_id(&file.display().to_string(), &payload);
    let fmt = ioc_contract::time::format_ms;
    if format == ioc_ingest::Format::CameraEvent {
        return match ioc_ingest::camera::decode_camera(&payload, &ctx) {
            Err(rejection) => print_rejection(&rejection, json),
            Ok(e) => {
                // The plate itself is never printed: only its pseudonym under this deployment's
                // key, as the pipeline would store it.
                let key = ioc_ingest::camera::PlateKey::new(&config.ingest.plate_secret);
                let pseudonym = key.as_ref().map(|k| k.pseudonym(&e.plate));
                let quality = if e.suspect_reason.is_empty() {
                    "good"
                } else {
                    "suspect"
                };
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "event_id": e.event_id, "device_id": device, "camera_id": e.camera_id,
                            "ts": fmt(e.ts), "type": e.kind, "plate_pseudonym": pseudonym,
                            "speed_kmh": e.speed_kmh, "lane": e.lane,
                            "quality": quality, "reason": e.suspect_reason,
                        })
                    );
                } else {
                    println!(
                        "{}  {}  event {} {}  plate {}  {}{}",
                        fmt(e.ts),
                        e.camera_id,
                        e.event_id,
                        e.kind,
                        pseudonym
                            .as_deref()
                            .unwrap_or("(not pseudonymized: ingest.plate_secret is not set)"),
                        quality,
                        if e.suspect_reason.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", e.suspect_reason)
                        }
                    );
                }
                ExitCode::SUCCESS
            }
        };
    }
    match format.decode(device, &payload, &id, &ctx, profile) {
        Err(rejection) => print_rejection(&rejection, json),
        Ok(decoded) => {
            for r in &decoded.readings {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "device_id": r.device_id, "channel": r.channel, "ts": fmt(r.ts),
                            "metric": r.metric, "value": r.value, "unit": r.unit,
                            "quality": r.quality.as_str(), "reason": r.quality_reason,
                        })
                    );
                } else {
                    let channel = if r.channel.is_empty() {
                        String::new()
                    } else {
                        format!("/{}", r.channel)
                    };
                    let reason = if r.quality_reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", r.quality_reason)
                    };
                    println!(
                        "{}  {}{channel}  {} = {} {}  {}{reason}",
                        fmt(r.ts),
                        r.device_id,
                        r.metric,
                        r.value,
                        r.unit,
                        r.quality.as_str()
                    );
                }
            }
            for v in &decoded.rejected_values {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"error": v.code.as_str(), "reason": v.reason, "metric": v.metric})
                    );
                } else {
                    println!("rejected {} ({}): {}", v.metric, v.code.as_str(), v.reason);
                }
            }
            ExitCode::SUCCESS
        }
    }
}

/// Prints a whole-message rejection; exit code 1.
fn print_rejection(rejection: &ioc_ingest::decode::Rejection, json: bool) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::json!({"error": rejection.code.as_str(), "reason": rejection.reason})
        );
    } else {
        println!(
            "rejected ({}): {}",
            rejection.code.as_str(),
            rejection.reason
        );
    }
    ExitCode::from(1)
}

/// Cancels the token on Ctrl-C or SIGTERM.
fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        t.cancel();
    });
    token
}

/// Binds a TCP listener, explaining a busy port.
async fn bind(addr: SocketAddr, what: &str, flag: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "cannot listen for {what} on {addr}: port {} is already in use (another ioc, or another service, is listening there); choose another address with {flag}",
                addr.port()
            )
        } else {
            anyhow::anyhow!("cannot listen for {what} on {addr}: {e}")
        }
    })
}

/// Serves /metrics and /healthz for stages that have no API of their own. With `ready`,
/// /healthz answers 503 until that gauge is 1.
async fn serve_metrics(
    addr: SocketAddr,
    flag: &str,
    registry: prometheus::Registry,
    ready: Option<(prometheus::IntGauge, &'static str)>,
    shutdown: CancellationToken,
) -> Result<()> {
    use axum::routing::get;
    let listener = bind(addr, "metrics", flag).await?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    prometheus::TextEncoder::new()
                        .encode_to_string(&registry.gather())
                        .unwrap_or_default()
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready {
                        Some((gauge, waiting)) if gauge.get() != 1 => (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            axum::Json(
                                serde_json::json!({"status": "starting", "waiting": waiting}),
                            ),
                        ),
                        _ => (
                            axum::http::StatusCode::OK,
                            axum::Json(serde_json::json!({"status": "ok"})),
                        ),
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
    });
    Ok(())
}

/// How the API manages device accounts. With Mosquitto's dynamic security plugin it connects
/// as a dynsec admin and, in the background until it succeeds, makes sure the ingest's account
/// exists with the right to its shared subscriptions.
fn device_accounts(
    config: &Config,
    broker: &ioc_config::MqttConfig,
    instance: &str,
    shutdown: &CancellationToken,
) -> Result<ioc_dashboard_api::accounts::Accounts> {
    use ioc_dashboard_api::accounts::Accounts;
    match config.api.device_accounts {
        ioc_config::DeviceAccounts::None => Ok(Accounts::None),
        ioc_config::DeviceAccounts::Registry => Ok(Accounts::Registry),
        ioc_config::DeviceAccounts::Dynsec => {
            if broker.username.is_empty() {
                anyhow::bail!(
                    "api.device_accounts = \"dynsec\" needs api.mqtt_username and api.mqtt_password: \
                     an admin of Mosquitto's dynamic security plugin (mosquitto_ctrl dynsec init ...; see README), \
                     or set api.device_accounts = \"none\" if devices' accounts are managed elsewhere"
                );
            }
            let (dynsec, _task) = ioc_dashboard_api::dynsec::Dynsec::connect(
                &broker.host,
                broker.port,
                &broker.username,
                &broker.password,
                &format!("ioc-api-admin-{instance}"),
                shutdown.clone(),
            );
            let ingest = config.mqtt.clone();
            if !ingest.username.is_empty() && ingest.username != broker.username {
                let subscriptions: Vec<String> =
                    ioc_ingest::route::Router::new(&config.ingest.routes)
                        .filters()
                        .iter()
                        .map(|f| format!("$share/{}/{f}", config.ingest.share_group))
                        .collect();
                let (dynsec, shutdown) = (dynsec.clone(), shutdown.clone());
                tokio::spawn(async move {
                    loop {
                        match dynsec
                            .ensure_ingest(&ingest.username, &ingest.password, &subscriptions)
                            .await
                        {
                            Ok(created) => {
                                tracing::info!(username = %ingest.username, ?created, "the ingest's broker account is in place");
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "could not check the ingest's broker account; retrying")
                            }
                        }
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                        }
                    }
                });
            }
            Ok(Accounts::Dynsec(std::sync::Arc::new(dynsec)))
        }
    }
}

/// Starts following the registry topic; returns once caught up.
async fn follow_registry(bus: &Bus, shutdown: &CancellationToken) -> Result<RegistryView> {
    let view = RegistryView::default();
    registry::follow(bus, view.clone(), shutdown.clone())
        .await
        .context("reading the device registry")?;
    Ok(view)
}

/// Where the stream reads its rules again on reload: the configuration file (and
/// `stream.rules_path`, and the environment) as at start; SIGHUP and a change of any of those
/// files ask for it.
fn rule_source(config_path: Option<PathBuf>, config: &Config) -> ioc_stream::reload::RuleSource {
    let mut watch: Vec<PathBuf> = config_path.iter().cloned().collect();
    watch.extend(ioc_config::rules_files(&config.stream.rules_path).unwrap_or_default());
    if std::path::Path::new(&config.stream.rules_path).is_dir() {
        watch.push(PathBuf::from(&config.stream.rules_path));
    }
    let requested = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        let requested = requested.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the alert rules");
                requested.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    let watched_since = ioc_stream::reload::stamps(&watch);
    ioc_stream::reload::RuleSource {
        watched_since,
        load: std::sync::Arc::new(move || {
            ioc_config::load(config_path.as_deref(), std::env::vars())
                .map(|c| ioc_config::rules::in_force(&c.stream))
                .map_err(|e| e.problems().iter().map(ToString::to_string).collect())
        }),
        requested,
        watch,
    }
}

async fn run(command: Command, config: Config, config_path: Option<PathBuf>) -> Result<()> {
    let shutdown = shutdown_on_signals();
    let rule_source = rule_source(config_path, &config);
    let bus = Bus::Kafka(KafkaBus::new(config.kafka.clone()));
    match command {
        Command::Up {
            mqtt_listen,
            http_listen,
            data_dir,
            sim,
            admin_token,
        } => {
            let options = up::UpOptions {
                mqtt_listen,
                http_listen,
                data_dir,
                sim,
                admin_token,
            };
            up::run(options, config, rule_source, shutdown).await?;
        }
        Command::Ingest => {
            bus.ensure_topics().await.context("creating Kafka topics")?;
            let prometheus = prometheus::Registry::new();
            let metrics = ioc_ingest::IngestMetrics::register(&prometheus)?;
            serve_metrics(
                config.ingest.metrics_listen,
                "IOC_INGEST__METRICS_LISTEN",
                prometheus.clone(),
                Some((
                    metrics.subscribed.clone(),
                    "for the MQTT broker to grant ingest's subscriptions",
                )),
                shutdown.clone(),
            )
            .await?;
            let registry = follow_registry(&bus, &shutdown).await?;
            let gauge = prometheus::IntGauge::new(
                "ioc_ingest_registry_devices",
                "Devices in this instance's registry view",
            )?;
            prometheus.register(Box::new(gauge.clone()))?;
            let (view, g) = (registry.clone(), gauge.clone());
            tokio::spawn(async move {
                loop {
                    g.set(view.len() as i64);
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            });
            tracing::info!(devices = registry.len(), broker = %format!("{}:{}", config.mqtt.host, config.mqtt.port), "ingest starting");
            let report = ioc_ingest::run(
                &config.mqtt,
                &config.ingest,
                &bus,
                registry,
                metrics,
                shutdown,
            )
            .await?;
            tracing::info!(
                messages = report.messages,
                acked = report.acked,
                left_unacked = report.left_unacked,
                "ingest stopped"
            );
        }
        Command::Stream => {
            bus.ensure_topics().await.context("creating Kafka topics")?;
            let prometheus = prometheus::Registry::new();
            let metrics = ioc_stream::StreamMetrics::register(&prometheus)?;
            serve_metrics(
                config.stream.metrics_listen,
                "IOC_STREAM__METRICS_LISTEN",
                prometheus,
                None,
                shutdown.clone(),
            )
            .await?;
            let history = History::ClickHouse(ClickHouseHistory::new(&config.clickhouse));
            tracing::info!(clickhouse = %config.clickhouse.url, database = %config.clickhouse.database, "stream starting");
            let fleet = ioc_stream::Fleet::of(&config, follow_registry(&bus, &shutdown).await?);
            ioc_stream::run(
                &config.stream,
                fleet,
                rule_source,
                &bus,
                history,
                metrics,
                shutdown,
            )
            .await?;
            tracing::info!("stream stopped");
        }
        Command::Notify => {
            bus.ensure_topics().await.context("creating Kafka topics")?;
            let history = History::ClickHouse(ClickHouseHistory::new(&config.clickhouse));
            let registry = follow_registry(&bus, &shutdown).await?;
            let metrics = ioc_notify::NotifyMetrics::register(&prometheus::Registry::new())?;
            tracing::info!(
                recipients = config.notify.recipients.len(),
                "notify starting"
            );
            ioc_notify::run(
                ioc_notify::Settings {
                    config: config.notify.clone(),
                    rules: ioc_config::rules::in_force(&config.stream),
                    utc_offset_ms: config.ingest.utc_offset_ms(),
                },
                &bus,
                registry,
                history,
                metrics,
                shutdown,
            )
            .await?;
            tracing::info!("notify stopped");
        }
        Command::Api {
            http_listen,
            admin_token,
        } => {
            let mut api = config.api.clone();
            if let Some(addr) = http_listen {
                api.listen = addr;
            }
            if let Some(token) = admin_token {
                api.admin_token = token;
            }
            let listener = bind(api.listen, "HTTP", "--http-listen").await?;
            bus.ensure_topics().await.context("creating Kafka topics")?;
            let history = History::ClickHouse(ClickHouseHistory::new(&config.clickhouse));
            history
                .ensure_schema()
                .await
                .context("creating the ClickHouse schema")?;
            let registry = follow_registry(&bus, &shutdown).await?;
            if api.admin_token.is_empty() {
                tracing::warn!("no admin token set: every /api/v1/ request will be refused (use --admin-token or IOC_ADMIN_TOKEN)");
            }
            tracing::info!(listen = %listener.local_addr()?, "api listening");
            // The API's own broker account, separate from the ingest's ([mqtt]) and devices'.
            let broker = ioc_config::MqttConfig {
                username: api.mqtt_username.clone(),
                password: api.mqtt_password.clone(),
                ..config.mqtt.clone()
            };
            let instance =
                ioc_dashboard_api::auth::random_hex(6).context("reading /dev/urandom")?;
            // Connection events for the commissioning checklist, from Mosquitto's own log.
            let (connections, _follower) =
                ioc_dashboard_api::connections::ConnectionLog::follow_mosquitto(
                    &broker,
                    &format!("ioc-api-{instance}"),
                    shutdown.clone(),
                );
            let accounts = device_accounts(&config, &broker, &instance, &shutdown)?;
            ioc_dashboard_api::run(
                listener,
                api,
                config.ingest.clone(),
                ioc_dashboard_api::Regulatory::of(&config),
                connections,
                accounts,
                bus,
                registry,
                history,
                prometheus::Registry::new(),
                shutdown,
            )
            .await?;
        }
        Command::Sim {
            count,
            rate,
            seed,
            register_with,
            admin_token,
            client_id,
            faults,
            fault_rate,
        } => {
            let mut sim = config.sim.clone();
            if let Some(seed) = seed {
                sim.seed = seed;
            }
            let rate = rate.unwrap_or(sim.rate);
            anyhow::ensure!(
                rate.is_finite() && rate > 0.0,
                "--rate must be a positive number of messages per second"
            );
            let faults = sensor_sim::Faults::parse(&faults)?.with_rate(fault_rate)?;
            let mut fleet = sensor_sim::Fleet::with_faults(&sim, faults);
            if let Some(url) = register_with {
                let token = admin_token.unwrap_or_default();
                let n = sensor_sim::register_fleet(&fleet, &url, &token).await?;
                eprintln!("sim: registered {n} devices with {url}");
            }
            let options = sensor_sim::RunOptions {
                count,
                rate,
                client_id,
                progress: true,
            };
            // The simulator's own account ([sim]), not the ingest's.
            let mqtt = ioc_config::MqttConfig {
                username: config.sim.username.clone(),
                password: config.sim.password.clone(),
                ..config.mqtt.clone()
            };
            let report = sensor_sim::run(&mqtt, &mut fleet, &options, shutdown).await?;
            eprintln!(
                "sim: done: {} messages ({} readings) in {:.1} s, {:.0} msg/s, {} acknowledged by the broker",
                report.messages, report.readings, report.seconds, report.messages_per_second, report.acknowledged
            );
            for line in report.format_lines() {
                eprintln!("sim:   {line}");
            }
            println!("{}", serde_json::to_string(&report)?);
        }
        Command::CheckConfig { .. }
        | Command::Decode { .. }
        | Command::Aqi { .. }
        | Command::Forecast { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
    Ok(())
}
