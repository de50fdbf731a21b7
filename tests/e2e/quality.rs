//! Data quality end to end: a station told what it owes (`PATCH`: expected metrics, agency,
//! installation), then a backdated hour over MQTT with one metric never sent, a stuck run, a
//! spike, an out-of-range value, resends (in the open window and late) and a redelivery; the
//! hour's counts and scores through the API are exactly what those faults make, and each
//! moves only its own score. A rejected value counts against the hour it was received in.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ioc_contract::Resolution;
use rumqttc::QoS;

use crate::harness::eventually;
use crate::rollups::Api;

const ICT: i64 = 7 * 3_600_000;

/// Minute `m`'s message: PM2.5 varying (out of range at minute 45), PM10 varying then stuck at
/// 999.9 from minute 20 (a fan-failed SDS011), O3 varying with one spike at minute 30; NO2,
/// which it owes, never.
fn message(hour: i64, m: i64, extra: &str) -> String {
    let ts = hour + m * 60_000 + 30_000;
    let pm25 = if m == 45 {
        5000.0
    } else {
        20.0 + (m % 5) as f64 + m as f64 * 0.01
    };
    let pm10 = if m >= 20 {
        999.9
    } else {
        40.0 + (m % 3) as f64
    };
    let o3 = if m == 30 {
        900.0
    } else {
        50.0 + (m % 7) as f64
    };
    format!(r#"{{"ts":{ts},{extra}"values":{{"pm25":{pm25},"pm10":{pm10},"o3":{o3}}}}}"#)
}

pub(crate) async fn a_backdated_hour_scores_what_its_faults_make(
    api: &Api<'_>,
    mqtt: &rumqttc::AsyncClient,
    device: &str,
) -> Result<()> {
    let now = ioc_contract::time::now_ms();
    let hour = Resolution::Hour.start(now, ICT) - 3 * 86_400_000;
    // What the station owes, from its installation four days ago.
    api.patch_device(
        device,
        serde_json::json!({
            "expected_metrics": ["pm25", "pm10", "o3", "no2"],
            "agency": "Sở Nông nghiệp và Môi trường",
            "installed_at": now - 4 * 86_400_000,
        }),
    )
    .await?;
    let shown = api.get(&format!("/api/v1/devices/{device}")).await?;
    ensure!(
        shown["expected_metrics"] == serde_json::json!(["pm25", "pm10", "o3", "no2"])
            && shown["agency"] == "Sở Nông nghiệp và Môi trường",
        "the device shows what it owes: {shown}"
    );
    let audit = api
        .get(&format!(
            "/api/v1/audit?device_id={device}&action=device.updated"
        ))
        .await?;
    ensure!(
        audit["entries"].to_string().contains("expected_metrics"),
        "the change is audited: {audit}"
    );

    let topic = format!("ioc/v1/devices/{device}/telemetry");
    let publish = |body: String| {
        let topic = topic.clone();
        async move { mqtt.publish(topic, QoS::AtLeastOnce, false, body).await }
    };
    for m in 0..60 {
        publish(message(hour, m, "")).await?;
        if m == 10 {
            // Sent again in another message (its payload differs): three resends, found in the
            // minute's open window.
            publish(message(hour, m, r#""seq":2,"#)).await?;
        }
    }
    // Long after their minutes closed: minute 5 sent again in another message (three more
    // resends, found in history), and minute 11's very message again (a redelivery: none).
    publish(message(hour, 5, r#""seq":2,"#)).await?;
    publish(message(hour, 11, "")).await?;
    // A value of a metric the catalogue does not know: rejected alone, now.
    publish(format!(
        r#"{{"ts":{},"values":{{"pm25":21.5,"pm2_5x":3}}}}"#,
        now
    ))
    .await?;

    let path = format!(
        "/api/v1/quality?device_id={device}&from={hour}&to={}",
        hour + 3_600_000
    );
    let record = eventually(
        "the hour's quality counts",
        Duration::from_secs(90),
        api.logs,
        || async {
            let body = api.get(&path).await?;
            let r = body["quality"][0].clone();
            let c = &r["counts"];
            // Not there yet is an error, so a time-out shows the last answer.
            ensure!(
                c["received"] == 180 && c["resent"] == 6,
                "not all counted yet: {body}"
            );
            Ok(Some(r))
        },
    )
    .await?;
    let c = &record["counts"];
    let counts: Vec<(&str, serde_json::Value)> = [
        "expected_values",
        "expected_messages",
        "received",
        "good",
        "suspect",
        "bad",
        "stuck",
        "spikes",
        "resent",
        "timely",
        "longest_silence_s",
        "period_s",
    ]
    .into_iter()
    .map(|k| (k, c[k].clone()))
    .collect();
    let want: Vec<(&str, serde_json::Value)> = vec![
        ("expected_values", 240.0.into()),
        ("expected_messages", 60.0.into()),
        ("received", 180.into()),
        ("good", 179.into()),
        ("suspect", 0.into()),
        ("bad", 1.into()),
        // PM10's run of 40 is stuck from its 30th reading.
        ("stuck", 11.into()),
        // O3's spike, and PM10's first five 999.9s while the ten before were still its
        // varying values.
        ("spikes", 6.into()),
        ("resent", 6.into()),
        // Three days late: none timely.
        ("timely", 0.into()),
        ("longest_silence_s", 60.0.into()),
        ("period_s", 3600.0.into()),
    ];
    ensure!(
        counts == want,
        "counts {counts:?}, expected {want:?}: {record}"
    );
    let scores = &record["scores"];
    let want_scores = serde_json::json!({
        // (180 - 1 bad - 11 stuck - 6 spikes) / 180
        "correct": 90.0,
        // (59 + 60 + 60 + 0 NO2) / 240
        "complete": 74.6,
        // (180 - 6 resent) / 180
        "clean": 96.7,
        // Online, but nothing came in time.
        "live": 0.0,
    });
    ensure!(
        *scores == want_scores,
        "scores {scores}, expected {want_scores}"
    );
    ensure!(
        c["delay_p50_s"] == 86400.0,
        "three days late reads as a day or more: {c}"
    );

    // The rejected value counts in the hour it was received.
    let received = Resolution::Hour.start(now, ICT);
    let path = format!(
        "/api/v1/quality?device_id={device}&from={received}&to={}",
        received + 3_600_000
    );
    eventually(
        "the rejection counted",
        Duration::from_secs(30),
        api.logs,
        || async {
            let body = api.get(&path).await?;
            let c = &body["quality"][0]["counts"];
            ensure!(
                c["rejected"]["unknown_metric"] == 1,
                "not counted yet: {body}"
            );
            Ok(Some(()))
        },
    )
    .await?;

    // Open data publishes the same scores beside the station's data, with no token.
    let open: serde_json::Value = api
        .http
        .get(format!(
            "{}/open/v1/quality?device_id={device}&from={hour}&to={}",
            api.base,
            hour + 3_600_000
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    ensure!(
        open["quality"][0]["scores"] == want_scores,
        "open data's scores: {open}"
    );

    // Rolled up by agency, the station is its agency's one device.
    let body = api
        .get(&format!(
            "/api/v1/quality?by=agency&from={hour}&to={}",
            hour + 3_600_000
        ))
        .await?;
    let agency = body["quality"]
        .as_array()
        .context("records")?
        .iter()
        .find(|r| r["agency"] == "Sở Nông nghiệp và Môi trường")
        .with_context(|| format!("the agency's record in {body}"))?;
    ensure!(
        agency["devices"] == 1 && agency["scores"] == want_scores,
        "the agency's record is its one station's: {agency}"
    );
    Ok(())
}

/// When a fault's effect shows.
#[derive(PartialEq)]
enum Shows {
    /// In the run's own period: these scores fall below the clean group's, the others stay.
    Now(&'static [&'static str]),
    /// In the hours its readings were measured, hours to days before the run: they are live 0
    /// (none came in time) and still correct and clean.
    Late,
}

/// The simulator's faults and where each shows (README, "Data quality"); the first group is
/// clean. Every group is three ioc-json stations of their own seed.
const FAULT_GROUPS: [(Option<sensor_sim::Fault>, Shows); 9] = {
    use sensor_sim::Fault;
    [
        (None, Shows::Now(&[])),
        // Runs of one value from the `stuck_after`-th on.
        (Some(Fault::Stuck), Shows::Now(&["correct"])),
        // A value outside the metric's range: bad.
        (Some(Fault::Spike), Shows::Now(&["correct"])),
        // Hours behind: late where they were measured (hours ahead is suspect, in minutes to
        // come).
        (Some(Fault::ClockSkew), Shows::Late),
        // The same readings in a new message.
        (Some(Fault::Duplicate), Shows::Now(&["clean"])),
        // A logger's backlog from hours to days ago, after a short outage.
        (Some(Fault::Backfill), Shows::Late),
        // Sent at once, past the device's rate limit: rejected.
        (Some(Fault::Burst), Shows::Now(&["clean"])),
        (Some(Fault::Malformed), Shows::Now(&["clean"])),
        (Some(Fault::WrongUnit), Shows::Now(&["clean"])),
    ]
};

const SCORES: [&str; 4] = ["correct", "complete", "clean", "live"];

/// How long the simulated fleets publish.
const FAULT_RUN: Duration = Duration::from_secs(60);

const DAY_MS: i64 = 86_400_000;

/// Runs a fleet of three stations per fault of [`FAULT_GROUPS`] through a deployment started
/// with `stream.stuck_after.pm25` 5, a device rate limit of 2 messages a second with bursts of
/// 5 (each station sends one a second, and owes one a minute), and `mqtt` a broker account that
/// may publish as any device; then asserts that each fault shows where [`Shows`] says.
pub(crate) async fn each_simulated_fault_moves_its_own_score(
    api: &Api<'_>,
    mqtt: &ioc_config::MqttConfig,
) -> Result<()> {
    use sensor_sim::{Faults, Fleet, RunOptions};
    // One local day's record per device: start after local midnight if it is about to pass.
    let until_midnight = DAY_MS - (ioc_contract::time::now_ms() + ICT).rem_euclid(DAY_MS);
    if until_midnight < 4 * 60_000 {
        tokio::time::sleep(Duration::from_millis(until_midnight as u64 + 1000)).await;
    }
    let mut fleets = Vec::new();
    for (k, (fault, _)) in FAULT_GROUPS.iter().enumerate() {
        let config = ioc_config::SimConfig {
            air_quality: 3,
            wastewater: 0,
            traffic_counters: 0,
            senml_air: 0,
            flat_gateways: 0,
            flat_sensors_per_gateway: 0,
            cameras: 0,
            rate: 3.0,
            seed: 100 + k as u64,
            id_prefix: format!("f{k}-"),
            username: mqtt.username.clone(),
            password: mqtt.password.clone(),
        };
        let faults = match fault {
            Some(f) => Faults::only(&[*f]).with_rate(0.2)?,
            None => Faults::none(),
        };
        let fleet = Fleet::with_faults(&config, faults);
        sensor_sim::register_fleet(&fleet, &api.base, &api.token).await?;
        fleets.push(fleet);
    }
    // The stations owe from the same moment, just before they all start; those whose faults
    // show late, from three days before (their late readings are owed where they land).
    let installed = ioc_contract::time::now_ms();
    for (fleet, (_, shows)) in fleets.iter().zip(&FAULT_GROUPS) {
        let at = if *shows == Shows::Late {
            installed - 3 * DAY_MS
        } else {
            installed
        };
        for d in &fleet.devices {
            api.patch_device(&d.device_id, serde_json::json!({ "installed_at": at }))
                .await?;
        }
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let runs: Vec<_> = fleets
        .into_iter()
        .enumerate()
        .map(|(k, mut fleet)| {
            let (mqtt, stop) = (mqtt.clone(), stop.clone());
            tokio::spawn(async move {
                let options = RunOptions {
                    count: None,
                    rate: 3.0,
                    client_id: format!("faults-{k}"),
                    progress: false,
                };
                let report = sensor_sim::run(&mqtt, &mut fleet, &options, stop).await;
                (fleet, report)
            })
        })
        .collect();
    tokio::time::sleep(FAULT_RUN).await;
    stop.cancel();
    let mut devices = Vec::new();
    for (k, run) in runs.into_iter().enumerate() {
        let (fleet, report) = run.await?;
        let report = report?;
        if let Some(fault) = FAULT_GROUPS[k].0 {
            ensure!(
                report
                    .by_format
                    .values()
                    .any(|t| t.faults.get(fault.name()).is_some_and(|n| *n >= 5)),
                "group {k} shows its fault: {report:?}"
            );
        }
        devices.extend(fleet.devices.iter().map(|d| d.device_id.clone()));
    }

    // A last reading from every station, after all it sent: once its minute is counted,
    // everything before it is.
    let (client, mut events) = rumqttc::AsyncClient::new(
        {
            let mut o = rumqttc::MqttOptions::new("faults-last", &mqtt.host, mqtt.port);
            o.set_credentials(&mqtt.username, &mqtt.password);
            o
        },
        100,
    );
    let poller = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let last = ioc_contract::time::now_ms();
    for d in &devices {
        client
            .publish(
                format!("ioc/v1/devices/{d}/telemetry"),
                QoS::AtLeastOnce,
                false,
                format!(r#"{{"ts":{last},"values":{{"pm25":10.0}}}}"#),
            )
            .await?;
    }
    let minute = last - last.rem_euclid(60_000);
    let path = format!(
        "/api/v1/quality?by=device&from={minute}&to={}",
        minute + 60_000
    );
    eventually(
        "every station's last minute counted",
        Duration::from_secs(90),
        api.logs,
        || async {
            let body = api.get(&path).await?;
            let counted = body["quality"]
                .as_array()
                .context("records")?
                .iter()
                .filter(|r| r["counts"]["received"].as_u64().unwrap_or(0) > 0)
                .count();
            ensure!(counted == devices.len(), "{counted} counted: {body}");
            Ok(Some(()))
        },
    )
    .await?;
    poller.abort();

    // The run: each group's mean scores over it, to the last reading (one local day's record
    // per station; the last reading adds one to each alike).
    let body = api
        .get(&format!(
            "/api/v1/quality?by=device&resolution=1d&from={installed}&to={}",
            last + 1
        ))
        .await?;
    let records = body["quality"].as_array().context("records")?;
    let of_group = |k: usize| -> Vec<&serde_json::Value> {
        let prefix = format!("f{k}-");
        records
            .iter()
            .filter(|r| {
                r["device_id"]
                    .as_str()
                    .is_some_and(|d| d.starts_with(&prefix))
            })
            .collect()
    };
    let mut means = Vec::new();
    let mut lines = Vec::new();
    for (k, (fault, _)) in FAULT_GROUPS.iter().enumerate() {
        let group = of_group(k);
        ensure!(group.len() == 3, "group {k}: {group:?}");
        let mean: Vec<f64> = SCORES
            .iter()
            .map(|s| {
                group
                    .iter()
                    .filter_map(|r| r["scores"][s].as_f64())
                    .sum::<f64>()
                    / 3.0
            })
            .collect();
        let sum = |c: &str| -> f64 { group.iter().filter_map(|r| r["counts"][c].as_f64()).sum() };
        lines.push(format!(
            "{:12} {:6.1} {:6.1} {:6.1} {:6.1}   {:5} {:4} {:4} {:4} {:4} {:5}",
            fault.map_or("none", |f| f.name()),
            mean[0],
            mean[1],
            mean[2],
            mean[3],
            sum("received"),
            sum("bad"),
            sum("stuck"),
            sum("resent"),
            group
                .iter()
                .map(|r| r["counts"]["rejected"]
                    .as_object()
                    .map_or(0, |o| o.values().filter_map(|v| v.as_u64()).sum::<u64>()))
                .sum::<u64>(),
            sum("timely"),
        ));
        means.push(mean);
    }
    let table = format!(
        "fault        correct complete clean live  received  bad stuck resent rejected timely\n{}",
        lines.join("\n")
    );
    eprintln!("{table}");
    let clean = &means[0];
    ensure!(
        clean[0] >= 99.0 && clean[1] == 100.0 && clean[2] == 100.0 && clean[3] >= 97.0,
        "the clean group scores about 100:\n{table}"
    );
    for (k, (fault, shows)) in FAULT_GROUPS.iter().enumerate().skip(1) {
        let Shows::Now(moved) = shows else { continue };
        let name = fault.map_or("none", |f| f.name());
        for (s, score) in SCORES.iter().enumerate() {
            let (got, base) = (means[k][s], clean[s]);
            // A second is 1.7 % of a one-minute run: live varies that much with when each
            // station's first message went.
            let tolerance = if *score == "live" { 2.0 } else { 0.6 };
            if moved.contains(score) {
                ensure!(got <= base - 1.0, "{name} should lower {score}:\n{table}");
            } else {
                ensure!(
                    (got - base).abs() <= tolerance,
                    "{name} should leave {score} alone:\n{table}"
                );
            }
        }
    }

    // The late faults: hourly records of the three days before the run.
    let run_hour = installed - (installed + ICT).rem_euclid(3_600_000);
    let body = api
        .get(&format!(
            "/api/v1/quality?by=device&from={}&to={run_hour}",
            installed - 3 * DAY_MS
        ))
        .await?;
    let records = body["quality"].as_array().context("records")?;
    for (k, (fault, shows)) in FAULT_GROUPS.iter().enumerate() {
        if *shows != Shows::Late {
            continue;
        }
        let name = fault.map_or("none", |f| f.name());
        let prefix = format!("f{k}-");
        let late: Vec<&serde_json::Value> = records
            .iter()
            .filter(|r| {
                r["device_id"]
                    .as_str()
                    .is_some_and(|d| d.starts_with(&prefix))
                    && r["counts"]["received"].as_u64().unwrap_or(0) > 0
            })
            .collect();
        ensure!(!late.is_empty(), "{name}: no hour holds its late readings");
        for r in &late {
            let s = &r["scores"];
            ensure!(
                s["live"] == 0.0
                    && s["correct"] == 100.0
                    && s["clean"] == 100.0
                    && r["counts"]["timely"] == 0
                    && r["counts"]["delay_p50_s"]
                        .as_f64()
                        .is_some_and(|d| d >= 3600.0),
                "{name}: an hour of late readings is not live, and still correct and clean: {r}"
            );
        }
        eprintln!(
            "{name}: {} hours of late readings, each live 0, correct and clean 100",
            late.len()
        );
    }
    Ok(())
}
