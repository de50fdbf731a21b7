//! The PM2.5 forecast's backtest (rolling origin) against the issue's targets (RMSE at least
//! 15 % below persistence at 3 to 6 hours ahead, not worse at 1 hour, below the diurnal profile
//! at every horizon) on the simulator's stations (fixed seed), and what it reaches on a real
//! station's quarter (`regulation/data/`). And `ioc forecast` as a user runs it.

use std::process::Command;

use anyhow::{ensure, Context, Result};
use ioc_regulation::forecast::{self, BacktestRow, Series};

/// 2026-02-01T00:00:00+07:00: the burning season.
const FEBRUARY: i64 = 1_769_878_800_000;

/// The issue's targets: RMSE below the diurnal profile at every horizon, not above
/// persistence at 1 and 2 hours, and at least 15 % below it at 3 to 6 hours.
fn meets_targets(rows: &[BacktestRow]) -> Result<()> {
    ensure!(rows.len() == 6, "{rows:?}");
    for r in rows {
        let (model, persistence, diurnal) = (r.model.rmse, r.persistence.rmse, r.diurnal.rmse);
        ensure!(r.forecasts > 1000, "too few forecasts: {r:?}");
        ensure!(model < diurnal, "worse than the diurnal profile: {r:?}");
        let most = match r.horizon_h {
            1 | 2 => 1.0,
            _ => 0.85,
        };
        ensure!(
            model <= most * persistence,
            "above {most} × persistence: {r:?}"
        );
    }
    Ok(())
}

fn table(rows: &[BacktestRow]) -> String {
    rows.iter()
        .map(|r| {
            format!(
                "{} h: RMSE model {:.2}, persistence {:.2} ({:+.0} %), diurnal {:.2}",
                r.horizon_h,
                r.model.rmse,
                r.persistence.rmse,
                100.0 * (r.model.rmse / r.persistence.rmse - 1.0),
                r.diurnal.rmse
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_forecast_beats_persistence_and_the_profile_on_the_simulated_stations() -> Result<()> {
    let config = ioc_config::load_str(None, std::iter::empty())?.sim;
    let fleet = sensor_sim::Fleet::new(&config);
    let hours = 60 * 24;
    let series: Vec<Series> = ["aq-001", "aq-002", "aq-003"]
        .iter()
        .map(|id| {
            let values = fleet
                .hourly_pm25(id, FEBRUARY, hours)
                .with_context(|| format!("{id} is an air station"))?;
            Ok(Series {
                station_id: id.to_string(),
                offset_s: 7 * 3600,
                values: values
                    .into_iter()
                    .enumerate()
                    .map(|(h, v)| (FEBRUARY / 1000 + (h as i64 + 1) * 3600, v))
                    .collect(),
            })
        })
        .collect::<Result<_>>()?;
    let rows = forecast::backtest(&series, 6);
    eprintln!("simulated stations:\n{}", table(&rows));
    meets_targets(&rows)
}

fn real_file() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("regulation/data/beijing-pm25-2014q1.csv")
}

/// A real city station's winter quarter of haze: the model is far better than the diurnal
/// profile and as good as persistence (within 2 % at 1 hour, no worse from 3 hours on), not the
/// 15 % better the issue asks for: README, "Forecast".
#[test]
fn the_forecast_beats_the_profile_and_matches_persistence_on_a_real_station() -> Result<()> {
    let text = std::fs::read_to_string(real_file())?;
    let rows = ioc_regulation::csv::parse_hourly_csv(&text)?;
    let rows = forecast::backtest(&forecast::series_of(&rows), 6);
    eprintln!("Beijing, 2014 Q1:\n{}", table(&rows));
    ensure!(rows.len() == 6, "{rows:?}");
    for r in &rows {
        let most = if r.horizon_h < 3 { 1.02 } else { 1.0 };
        ensure!(
            r.forecasts > 1000
                && r.model.rmse < 0.7 * r.diurnal.rmse
                && r.model.rmse <= most * r.persistence.rmse,
            "{r:?}"
        );
    }
    Ok(())
}

#[test]
fn ioc_forecast_prints_every_origins_hours_and_the_backtest() -> Result<()> {
    let run = |args: &[&str]| -> Result<(bool, String, String)> {
        let out = Command::new(env!("CARGO_BIN_EXE_ioc"))
            .args(args)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8(out.stdout)?,
            String::from_utf8(out.stderr)?,
        ))
    };
    let file = real_file();
    let file = file.to_str().context("a UTF-8 path")?;
    let (ok, out, err) = run(&["forecast", "--input", file, "--horizon", "3"])?;
    ensure!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    // Every origin from the day its history allows, three hours each.
    ensure!(
        lines.len() % 3 == 0 && lines.len() > 3 * 2000,
        "{}",
        lines.len()
    );
    let first = &lines[0];
    // The fields in the documented order.
    let text = out.lines().next().unwrap_or_default();
    let order: Vec<usize> = [
        "station_id",
        "origin",
        "horizon_h",
        "pm25",
        "pm25_low",
        "pm25_high",
        "aqi",
    ]
    .iter()
    .map(|k| text.find(&format!("\"{k}\":")).unwrap_or(usize::MAX))
    .collect();
    ensure!(
        order.windows(2).all(|w| w[0] < w[1]) && first.as_object().is_some_and(|o| o.len() == 7),
        "{text}"
    );
    ensure!(
        first["station_id"] == "beijing-us-embassy"
            && first["origin"]
                .as_str()
                .is_some_and(|o| o.ends_with(":00:00+08:00"))
            && first["horizon_h"] == 1
            && lines[2]["horizon_h"] == 3,
        "{first}"
    );
    for l in &lines {
        let (p, lo, hi) = (
            l["pm25"].as_f64(),
            l["pm25_low"].as_f64(),
            l["pm25_high"].as_f64(),
        );
        ensure!(
            matches!((p, lo, hi), (Some(p), Some(lo), Some(hi)) if lo <= p && p <= hi && lo >= 0.0
                && (p * 10.0 - (p * 10.0).round()).abs() < 1e-9),
            "a point inside its band, one decimal: {l}"
        );
    }

    let (ok, out, err) = run(&["forecast", "--input", file, "--backtest"])?;
    ensure!(ok, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(rows.len() == 6, "{out}");
    for (k, r) in rows.iter().enumerate() {
        ensure!(
            r["horizon_h"] == k + 1
                && ["model", "persistence", "diurnal"]
                    .iter()
                    .all(|m| r[m]["rmse"].is_f64() && r[m]["mae"].is_f64()),
            "{r}"
        );
    }

    // A file that is not one says where, and a horizon beyond 6 is refused.
    let bad = std::env::temp_dir().join(format!("ioc-forecast-bad-{}.csv", std::process::id()));
    std::fs::write(
        &bad,
        "station_id,time,pm25,pm10,o3,no2,so2,co\nx,noon,1,,,,,\n",
    )?;
    let (ok, _, err) = run(&["forecast", "--input", bad.to_str().context("path")?])?;
    ensure!(
        !ok && err.contains("line 2") && err.contains("noon"),
        "{err}"
    );
    let _ = std::fs::remove_file(&bad);
    let (ok, _, err) = run(&["forecast", "--input", file, "--horizon", "7"])?;
    ensure!(!ok && err.contains("horizon"), "{err}");
    Ok(())
}

/// Four backdated days of one station's hourly PM2.5 (one reading an hour, owed hourly), the
/// last six hours building: once its newest hour is stored, `GET /api/v1/forecast` gives the
/// 6 hours after it, each exactly what `ioc forecast` makes of the same hours, the haze still
/// building (the forecast above the last hour, its AQI Kém or worse) and the day's mean held to
/// QCVN 05's 45 µg/m³.
pub(crate) async fn a_station_gets_the_forecast_ioc_forecast_makes_of_its_hours(
    api: &crate::rollups::Api<'_>,
    mqtt: &rumqttc::AsyncClient,
    device: &str,
) -> Result<()> {
    use std::time::Duration;
    let hour_ms = 3_600_000;
    api.patch_device(device, serde_json::json!({ "expected_interval_s": 3600 }))
        .await?;
    let now = ioc_contract::time::now_ms();
    let last_end = now - now.rem_euclid(hour_ms) - hour_ms;
    let hours = 4 * 24;
    let value = |k: i64| -> f64 {
        // k = 0 is the last hour; the day's shape, then haze building over the last 6 hours.
        let end = last_end - k * hour_ms;
        let hod = ((end / hour_ms) + 7).rem_euclid(24) as f64;
        let shape = 25.0 + 8.0 * ((hod - 7.0) / 24.0 * std::f64::consts::TAU).cos();
        let haze = if k < 6 { 12.0 * (6 - k) as f64 } else { 0.0 };
        ((shape + haze + ((k * 7) % 5) as f64) * 10.0).round() / 10.0
    };
    let mut csv = String::from("station_id,time,pm25,pm10,o3,no2,so2,co\n");
    let ict = chrono::FixedOffset::east_opt(7 * 3600).context("offset")?;
    for k in (0..hours).rev() {
        let end = last_end - k * hour_ms;
        let v = value(k);
        mqtt.publish(
            format!("ioc/v1/devices/{device}/telemetry"),
            rumqttc::QoS::AtLeastOnce,
            false,
            format!(r#"{{"ts":{},"values":{{"pm25":{v}}}}}"#, end - hour_ms / 2),
        )
        .await?;
        let time = chrono::DateTime::from_timestamp_millis(end)
            .context("time")?
            .with_timezone(&ict);
        csv.push_str(&format!("{device},{},{v},,,,,\n", time.to_rfc3339()));
    }
    let path = format!("/api/v1/forecast?device_id={device}");
    let origin = ioc_contract::time::format_ms(last_end);
    let forecasts = crate::harness::eventually(
        "the station's forecast at its newest hour",
        Duration::from_secs(90),
        api.logs,
        || async {
            let body = api.get(&path).await?;
            let f = body["forecasts"].as_array().context("forecasts")?.clone();
            ensure!(
                f.len() == 6 && f[0]["origin"] == origin.as_str(),
                "not yet: {body}"
            );
            Ok(Some(f))
        },
    )
    .await?;

    let file =
        std::env::temp_dir().join(format!("ioc-forecast-{device}-{}.csv", std::process::id()));
    std::fs::write(&file, csv)?;
    let out = Command::new(env!("CARGO_BIN_EXE_ioc"))
        .args(["forecast", "--input", file.to_str().context("path")?])
        .output()?;
    let _ = std::fs::remove_file(&file);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let origin_local = chrono::DateTime::from_timestamp_millis(last_end)
        .context("time")?
        .with_timezone(&ict)
        .to_rfc3339();
    let cli: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<Vec<serde_json::Value>, _>>()?
        .into_iter()
        .filter(|l| l["origin"] == origin_local.as_str())
        .collect();
    ensure!(cli.len() == 6, "ioc forecast at {origin_local}: {cli:?}");
    for (api_row, cli_row) in forecasts.iter().zip(&cli) {
        for k in ["horizon_h", "pm25", "pm25_low", "pm25_high", "aqi"] {
            ensure!(
                api_row[k] == cli_row[k],
                "{k}: the stream's {api_row} and ioc forecast's {cli_row}"
            );
        }
        ensure!(
            api_row["day_pm25_limit"] == 45.0 && api_row["target"].is_string(),
            "{api_row}"
        );
    }
    let first = &forecasts[0];
    ensure!(
        first["pm25"].as_f64().is_some_and(|p| p > value(0))
            && first["aqi"].as_u64().is_some_and(|a| a >= 101)
            && first["band"]["vi"].is_string(),
        "the haze still building, Kém or worse: {first}"
    );
    // The websocket's `forecast` stream: its snapshot holds the station's latest per hour ahead.
    let mut seen: std::collections::BTreeMap<u64, serde_json::Value> = Default::default();
    api.watch("forecast", device, "the six hours ahead", |d| {
        if d["origin"] == origin.as_str() {
            seen.insert(d["horizon_h"].as_u64().unwrap_or(0), d.clone());
        }
        Ok(seen.len() == 6)
    })
    .await?;
    ensure!(
        seen.values()
            .zip(&forecasts)
            .all(|(m, f)| m["pm25"] == f["pm25"]),
        "the stream gives what the API does: {seen:?}"
    );
    // Asked wrongly, it says so.
    let missing = api
        .http
        .get(format!("{}/api/v1/forecast", api.base))
        .bearer_auth(&api.token)
        .send()
        .await?;
    ensure!(
        missing.status() == 400,
        "no device_id: {}",
        missing.status()
    );
    let unknown = api
        .http
        .get(format!("{}/api/v1/forecast?device_id=aq-none", api.base))
        .bearer_auth(&api.token)
        .send()
        .await?;
    ensure!(
        unknown.status() == 404,
        "an unknown station: {}",
        unknown.status()
    );
    Ok(())
}

/// The simulator's smoke reaching a station (aq-001, seed 42, February), found with the code the
/// stream runs: the first hour whose VN_AQI reaches 101 after half a day below it, at least
/// four days in, that a forecast in the 6 hours before saw coming. Returns the station's hourly
/// means up to an hour after it, their hour ends (ms), and the index of that hour.
fn a_forecast_smoke_episode() -> Result<(Vec<f64>, Vec<i64>, usize)> {
    use ioc_regulation::aqi::{self, Column};
    let config = ioc_config::load_str(None, std::iter::empty())?.sim;
    let fleet = sensor_sim::Fleet::new(&config);
    let values = fleet
        .hourly_pm25("aq-001", FEBRUARY, 40 * 24)
        .context("aq-001 is an air station")?;
    let ends: Vec<i64> = (0..values.len() as i64)
        .map(|i| FEBRUARY + (i + 1) * 3_600_000)
        .collect();
    let observed = |i: usize| -> Option<u32> {
        let hours: Vec<Option<f64>> = (0..12)
            .map(|k| i.checked_sub(k).map(|j| values[j]))
            .collect();
        aqi::nowcast(&hours).and_then(|c| aqi::sub_index(Column::Pm25, c))
    };
    let series_to = |i: usize| Series {
        station_id: "aq-001".into(),
        offset_s: 7 * 3600,
        values: (0..=i).map(|j| (ends[j] / 1000, values[j])).collect(),
    };
    for p in 96..values.len() - 1 {
        let poor = |i: usize| observed(i).is_some_and(|a| a >= 101);
        // Half a day below Kém, and an hour below 91 in it (an earlier AQI alert cleared).
        let clear = |i: usize| observed(i).is_some_and(|a| a < 91);
        if !poor(p) || (p - 12..p).any(poor) || !(p - 12..p).any(clear) {
            continue;
        }
        let warned = (p - 6..p).any(|o| {
            forecast::forecast_at(&series_to(o), ends[o] / 1000, 6)
                .is_some_and(|f| f.iter().any(|h| h.aqi.is_some_and(|a| a >= 101)))
        });
        if warned {
            return Ok((values[..=p + 1].to_vec(), ends[..=p + 1].to_vec(), p));
        }
    }
    anyhow::bail!("no forecast smoke episode in the simulator's February")
}

/// End to end on `ioc up`: the simulated station's hours up to a smoke episode, sent hourly
/// (the last hours one at a time, as they come): the built-in `forecast_poor_air` warning fires
/// at an earlier hour than `aqi_1h_poor`, which fires when the observed AQI reaches Kém.
pub(crate) async fn a_smoke_episode_is_warned_before_it_arrives(
    api: &crate::rollups::Api<'_>,
    mqtt: &rumqttc::AsyncClient,
    device: &str,
) -> Result<()> {
    use std::time::Duration;
    let (values, ends, peak) = a_forecast_smoke_episode()?;
    api.patch_device(device, serde_json::json!({ "expected_interval_s": 3600 }))
        .await?;
    let publish = |i: usize| {
        let body = format!(
            r#"{{"ts":{},"values":{{"pm25":{}}}}}"#,
            ends[i] - 1_800_000,
            values[i]
        );
        let topic = format!("ioc/v1/devices/{device}/telemetry");
        async move {
            mqtt.publish(topic, rumqttc::QoS::AtLeastOnce, false, body)
                .await
        }
    };
    let forecast_at = |i: usize| {
        let path = format!(
            "/api/v1/forecast?device_id={device}&from={}&to={}",
            ends[i],
            ends[i] + 1
        );
        async move {
            crate::harness::eventually(
                "the forecast at the hour",
                Duration::from_secs(60),
                api.logs,
                || async {
                    let body = api.get(&path).await?;
                    ensure!(
                        body["forecasts"].as_array().is_some_and(|f| f.len() == 6),
                        "not yet: {body}"
                    );
                    Ok(Some(()))
                },
            )
            .await
        }
    };
    // Four days of history at once (their last 6 hours forecast), then hour by hour: each hour
    // closes when the next one's reading comes.
    let first = peak - 100;
    for i in first..peak - 6 {
        publish(i).await?;
    }
    for i in peak - 6..values.len() {
        publish(i).await?;
        forecast_at(i - 1).await?;
    }
    // The episode's AQI alert fires at its hour's end; a forecast warning was in force then,
    // raised before it.
    let arrived = ioc_contract::time::format_ms(ends[peak]);
    let (warned, poor) = crate::harness::eventually(
        "the forecast warning and the AQI alert",
        Duration::from_secs(60),
        api.logs,
        || async {
            let body = api
                .get(&format!(
                    "/api/v1/alerts?device_id={device}&from={}&to={}",
                    ends[first],
                    ends[peak] + 3_600_000
                ))
                .await?;
            let all = body["alerts"].as_array().context("alerts")?;
            let poor = all
                .iter()
                .find(|a| a["rule"] == "aqi_1h_poor" && a["fired_at"] == arrived.as_str());
            let warned = all.iter().find(|a| {
                a["rule"] == "forecast_poor_air"
                    && a["fired_at"].as_str().is_some_and(|f| f < arrived.as_str())
                    && a["resolved_at"]
                        .as_str()
                        .is_none_or(|r| r >= arrived.as_str())
            });
            match (warned, poor) {
                (Some(w), Some(p)) => {
                    let says = w["message"].as_str().unwrap_or_default();
                    ensure!(
                        says.contains("VN_AQI up to") || says.contains("PM2.5 mean"),
                        "the warning says why, every field filled: {w}"
                    );
                    ensure!(!says.contains('{'), "an unfilled field: {w}");
                    Ok(Some((
                        w["fired_at"].as_str().unwrap_or_default().to_string(),
                        p["fired_at"].as_str().unwrap_or_default().to_string(),
                    )))
                }
                _ => anyhow::bail!("not yet (the episode arrives at {arrived}): {body}"),
            }
        },
    )
    .await?;
    eprintln!("smoke episode: warned at {warned}, AQI Kém at {poor}");
    Ok(())
}
