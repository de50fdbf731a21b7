//! End-to-end tests of the real `ioc` binary on real services: Mosquitto, a Kafka-protocol
//! broker (tansu) and ClickHouse. `scripts/test.sh` starts the shared services first.

mod harness;
mod pipeline;
mod rejections;
mod up;

use std::process::Command;

#[test]
fn check_config_reports_every_problem_with_its_path() {
    let dir = std::env::temp_dir().join(format!("ioc-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[kafka]\nbrokers = 1\nbogus = true\n[stream]\nidle_timeout = \"soon\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ioc"))
        .args(["check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for path in ["kafka.brokers", "kafka.bogus", "stream.idle_timeout"] {
        assert!(stderr.contains(path), "{path} missing from:\n{stderr}");
    }
    let good = dir.join("good.toml");
    std::fs::write(&good, "[stream.pm25_alert]\nlimit = 45\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ioc"))
        .args(["check-config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
