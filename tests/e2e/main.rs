//! End-to-end tests of the real `ioc` binary on real services: Mosquitto, a Kafka-protocol
//! broker (tansu) and ClickHouse. `scripts/test.sh` starts the shared services first.

mod access;
mod alerting;
mod aqi;
mod bus;
mod exceedances;
mod fanout;
mod fiware;
mod forecast;
mod harness;
mod live;
mod onboarding;
mod openapi;
mod pipeline;
mod quality;
mod rejections;
mod rollups;
mod traffic;
mod up;
mod zoo;

use std::process::Command;

/// Writes `text` to `name` in `dir` and runs `ioc check-config` on it: its exit code and stderr.
fn check_config(dir: &std::path::Path, name: &str, text: &str) -> (Option<i32>, String) {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ioc"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_reports_every_problem_with_its_path() {
    let dir = std::env::temp_dir().join(format!("ioc-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (code, stderr) = check_config(
        &dir,
        "bad.toml",
        "[kafka]\nbrokers = 1\nbogus = true\n[stream]\nidle_timeout = \"soon\"\n",
    );
    assert_eq!(code, Some(2));
    for path in ["kafka.brokers", "kafka.bogus", "stream.idle_timeout"] {
        assert!(stderr.contains(path), "{path} missing from:\n{stderr}");
    }
    // A vendor profile's unit and time format are judged too, each with its place.
    let (code, stderr) = check_config(
        &dir,
        "profile.toml",
        r#"[[ingest.vendor_profiles]]
name = "acme"
id_key = "id"
id_kind = "imei"
time_key = "t"
time_format = "HH:mm"
decimal_comma = false
fields = [{ key = "pm", metric = "pm25", unit = "ug/m3" }]

[[ingest.vendor_profiles]]
name = "zenith"
id_key = "id"
id_kind = "imei"
time_key = "t"
time_format = "epoch_s"
decimal_comma = false
fields = [{ key = "co", metric = "co", unit = "furlongs" }]
"#,
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("ingest.vendor_profiles[0] (acme): time_format \"HH:mm\" needs yyyy"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "ingest.vendor_profiles[1] (zenith): field \"co\": unknown unit \"furlongs\""
        ),
        "{stderr}"
    );
    // Alert rules are planned by DataFusion over the stream's inputs, each problem with its rule.
    let (code, stderr) = check_config(
        &dir,
        "rules.toml",
        r#"[[stream.rules]]
name = "aqi_poor"
category = "air"
severity = "major"
sql = "SELECT device_id, aqi AS value FROM aqi_1h WHERE aqi >= 101"

[[stream.rules]]
name = "cod_high"
category = "water"
severity = "critical"
sql = "SELECT device_id, value_mean AS value FROM aggregates_1h WHERE metric = 'cod' AND value_means > 150"
"#,
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("stream.rules[1] (cod_high).sql: "),
        "{stderr}"
    );
    assert!(stderr.contains("value_means"), "{stderr}");
    assert!(
        !stderr.contains("aqi_poor"),
        "the good rule passes: {stderr}"
    );
    // The map's tile URL: an http(s) template, or nothing.
    let (code, stderr) = check_config(&dir, "tiles.toml", "[api]\ntile_url = \"tiles/{z}.png\"\n");
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("api.tile_url") && stderr.contains("{z}, {x} and {y}"),
        "{stderr}"
    );
    let (code, stderr) = check_config(&dir, "good.toml", "[stream.pm25_alert]\nlimit = 45\n[api]\ntile_url = \"https://tiles.daklak.gov.vn/{z}/{x}/{y}.png\"\n");
    assert_eq!(code, Some(0), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_busy_port_is_named_with_the_flag_to_change_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_ioc"))
        .args(["api", "--http-listen", &addr])
        .env("IOC_KAFKA__BROKERS", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already in use") && stderr.contains("--http-listen"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&taken.local_addr().unwrap().port().to_string()),
        "{stderr}"
    );
}

/// Runs `ioc decode ARGS FILE`, which must succeed; each line it prints, a JSON object.
fn decoded(args: &[&str], file: &std::path::Path) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_ioc"))
        .arg("decode")
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn decode_shows_what_ingest_makes_of_a_payload() {
    let dir = std::env::temp_dir().join(format!("ioc-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let station = dir.join("DakLak_NMBia_WW01_20261126085500.txt");
    std::fs::write(
        &station,
        "pH\t7.21\tpH\t20261126085500\t00\r\nCOD\t61,5\tmg/L\t20261126085500\t01\r\nTSS\tNaN\tmg/L\t20261126085500\t00\r\n",
    )
    .unwrap();
    let ioc = env!("CARGO_BIN_EXE_ioc");
    let lines = decoded(
        &["--format", "tt10-station", "--device", "ww-001", "--json"],
        &station,
    );
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(
        lines[0]["ts"], "2026-11-26T01:55:00.000Z",
        "local +07:00 to UTC"
    );
    assert_eq!(
        (
            &lines[0]["metric"],
            &lines[0]["value"],
            &lines[0]["quality"]
        ),
        (
            &serde_json::json!("ph"),
            &serde_json::json!(7.21),
            &serde_json::json!("good")
        )
    );
    assert_eq!(lines[1]["value"], 61.5, "decimal comma");
    assert_eq!(lines[1]["quality"], "suspect");
    assert_eq!(lines[1]["reason"], "station calibrating (status 01)");
    assert_eq!(lines[2]["error"], "not_a_number");
    assert_eq!(lines[2]["metric"], "tss");
    assert_eq!(
        (&lines[0]["device_id"], &lines[0]["channel"]),
        (&serde_json::json!("ww-001"), &serde_json::json!("")),
        "the device named by --device, no channel"
    );

    // The readable form installers see by default: a line per reading, then the rejections.
    let out = Command::new(ioc)
        .args(["decode", "--format", "tt10-station", "--device", "ww-001"])
        .arg(&station)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let text: Vec<&str> = text.lines().collect();
    assert_eq!(
        text[..2],
        [
            "2026-11-26T01:55:00.000Z  ww-001  ph = 7.21 pH  good",
            "2026-11-26T01:55:00.000Z  ww-001  cod = 61.5 mg/L  suspect (station calibrating (status 01))",
        ],
        "{text:?}"
    );
    assert!(
        text[2].starts_with("rejected tss (not_a_number): ") && text.len() == 3,
        "{text:?}"
    );

    // A lane is a reading's channel.
    let counts = dir.join("counts.json");
    std::fs::write(
        &counts,
        r#"{"sensor":"TC-1","end":1795658340,"interval_s":60,"lanes":[{"lane":2,"count":17,"occupancy":0.12}]}"#,
    )
    .unwrap();
    let lines = decoded(
        &[
            "--format",
            "traffic-counter",
            "--device",
            "tc-001",
            "--json",
        ],
        &counts,
    );
    let got: Vec<(&str, &str, &str, f64)> = lines
        .iter()
        .map(|l| {
            (
                l["device_id"].as_str().unwrap(),
                l["channel"].as_str().unwrap(),
                l["metric"].as_str().unwrap(),
                l["value"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("tc-001", "lane-2", "vehicle_count", 17.0),
            ("tc-001", "lane-2", "occupancy", 12.0)
        ]
    );

    // A whole-message rejection: one JSON object with error and reason, exit 1.
    let mut child = Command::new(ioc)
        .args(["decode", "--format", "ioc-json", "--json", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"values":{"pm25":1}}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let rejection: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rejection["error"], "missing_ts");
    assert!(rejection["reason"].as_str().unwrap().contains("ts"));

    let out = Command::new(ioc)
        .args(["decode", "--format", "vendor-xyz"])
        .arg(&station)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "available: ioc-json, senml, vendor-flat, tt10-station, traffic-counter, camera-event"
    ));

    // A gateway's flat JSON: decimal commas, local time, CO in mg/m³, NO2 in ppb.
    let flat = dir.join("flat.json");
    std::fs::write(
        &flat,
        r#"{"imei":"861234567890123","time":"26/11/2026 08:05:00","PM2_5":"35,2","CO":"1,2","NO2":"21"}"#,
    )
    .unwrap();
    let lines = decoded(&["--format", "vendor-flat", "--json"], &flat);
    let co = lines.iter().find(|l| l["metric"] == "co").unwrap();
    assert_eq!(
        (co["value"].as_f64(), &co["unit"]),
        (Some(1200.0), &serde_json::json!("µg/m³"))
    );
    assert_eq!(co["ts"], "2026-11-26T01:05:00.000Z");

    // A camera event: the plate is never printed, only its pseudonym under the configured key.
    let camera = dir.join("camera.json");
    std::fs::write(
        &camera,
        r#"{"camera_id":"CAM-1","event_id":"CAM-1-7","event_time":"2026-11-26T08:05:00+07:00","type":"red_light","plate":"47A-123.45","lane":1}"#,
    )
    .unwrap();
    let out = Command::new(ioc)
        .args(["decode", "--format", "camera-event", "--json"])
        .arg(&camera)
        .env("IOC_INGEST__PLATE_SECRET", "k")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("123"), "{text}");
    let event: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(event["event_id"], "CAM-1-7");
    assert!(event["plate_pseudonym"].as_str().unwrap().starts_with("p_"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ioc aqi` recomputes the decision's worked example from a CSV of hourly means, hourly and
/// daily, and names the line of a malformed row with a non-zero exit.
#[test]
fn aqi_recomputes_the_decisions_examples_from_a_csv() {
    let dir = std::env::temp_dir().join(format!("ioc-aqi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The decision's 12 PM2.5 hourly means (oldest first), the last hour with O3 136.1.
    let means = [
        26.9, 24.7, 20.5, 23.5, 19.5, 16.5, 19.0, 16.5, 20.3, 22.4, 19.6, 20.6,
    ];
    let mut csv = String::from("station_id,time,pm25,pm10,o3,no2,so2,co\n");
    for (i, m) in means.iter().enumerate() {
        let o3 = if i == 11 { "136.1" } else { "" };
        csv.push_str(&format!(
            "DL-01,2026-03-01T{:02}:00:00+07:00,{m},,{o3},,,\n",
            i + 1
        ));
    }
    let file = dir.join("hours.csv");
    std::fs::write(&file, &csv).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ioc"))
            .arg("aqi")
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["--input", file.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 12);
    assert_eq!(
        lines[11],
        serde_json::json!({"station_id": "DL-01", "time": "2026-03-01T12:00:00+07:00",
            "aqi": 43, "dominant": "o3", "nowcast_pm25": 20.3, "nowcast_pm10": null})
    );
    // The first hour alone has no NowCast (fewer than 2 of the latest 3 hours): no AQI.
    assert_eq!(lines[0]["aqi"], serde_json::Value::Null);

    let out = run(&["--input", file.to_str().unwrap(), "--daily"]);
    assert_eq!(out.status.code(), Some(0));
    let day: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // PM2.5's day mean 20.8 gives 42; O3's highest hour 136.1 gives 43.
    assert_eq!(
        day,
        serde_json::json!({"station_id": "DL-01", "date": "2026-03-01", "aqi": 43,
            "dominant": "o3", "valid_hours": 12})
    );

    csv.push_str("DL-01,2026-03-01T13:00:00+07:00,abc,,,,,\n");
    std::fs::write(&file, &csv).unwrap();
    let out = run(&["--input", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 14: pm25 \"abc\" is not a number"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
