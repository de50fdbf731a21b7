//! The OpenAPI document against the running API: every route × every role × no token, walked
//! from the document itself, and schemathesis finding no server error and no answer that breaks
//! the document.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::access::issue;
use crate::harness::{repo_root, Env, TOKEN};
use crate::pipeline::start_pipeline;

const ROLES: [&str; 5] = [
    "admin",
    "operator",
    "installer",
    "enforcement",
    "environment",
];

async fn document(env: &Env) -> Result<Value> {
    let r = env.http.get(env.api("/api/v1/openapi.json")).send().await?;
    anyhow::ensure!(r.status() == StatusCode::OK, "openapi.json: {}", r.status());
    Ok(r.json().await?)
}

/// The statuses an operation's entry documents.
fn documented(op: &Value) -> BTreeSet<u16> {
    op["responses"]
        .as_object()
        .map(|r| r.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_admits_exactly_the_roles_its_openapi_entry_names_and_no_one_without_a_token(
) -> Result<()> {
    let env = Env::new("matrix", "")?;
    let (_api, _stream, _ingest) = start_pipeline(&env).await?;
    env.register("aq-matrix", "air_quality").await?;
    let base = env.api("");
    let mut callers: Vec<(Option<&str>, String)> = vec![(None, String::new())];
    for role in ROLES {
        let token = if role == "admin" {
            TOKEN.to_string()
        } else {
            issue(&env.http, &base, TOKEN, role, &format!("matrix {role}")).await?
        };
        callers.push((Some(role), token));
    }
    let doc = document(&env).await?;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().context("paths")?;
    let mut walked = 0;
    let mut wrong = Vec::new();
    for (path, ops) in paths {
        for (method, op) in ops.as_object().context("operations")? {
            let roles: BTreeSet<&str> = op["x-roles"]
                .as_array()
                .with_context(|| format!("{method} {path} states no x-roles"))?
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let socket = op["security"][0].get("query_token").is_some();
            let statuses = documented(op);
            // Every resource the path names is the registered device or does not exist: who
            // may ask is decided before what is asked about.
            let concrete = path.replace("{id}", "aq-matrix");
            let method: Method = method.to_uppercase().parse()?;
            for (role, token) in &callers {
                let mut url = format!("{base}{concrete}");
                let mut request = env.http.request(method.clone(), &url);
                if !token.is_empty() {
                    if socket {
                        url.push_str(&format!("?token={token}"));
                        request = env.http.request(method.clone(), &url);
                    } else {
                        request = request.bearer_auth(token);
                    }
                }
                let status = request
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .with_context(|| format!("{method} {concrete}"))?
                    .status();
                let expected = match role {
                    _ if roles.is_empty() => "admitted",
                    None => "401",
                    Some(r) if roles.contains(r) => "admitted",
                    Some(_) => "403",
                };
                let ok = match expected {
                    "401" => status == StatusCode::UNAUTHORIZED,
                    "403" => status == StatusCode::FORBIDDEN,
                    _ => status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                };
                if !ok || !statuses.contains(&status.as_u16()) {
                    wrong.push(format!(
                        "{method} {path} as {}: {status}, expected {expected} (documented: {statuses:?})",
                        role.unwrap_or("no token")
                    ));
                }
            }
            walked += 1;
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Every route the API has, the live feeds and the open data among them.
    assert!(walked >= 37, "only {walked} operations in the document");
    for (path, method) in [
        ("/api/v1/ws", "get"),
        ("/api/v1/devices/{id}/live", "get"),
        ("/open/v1/aqi", "get"),
        ("/api/v1/alerts/{id}/ack", "post"),
        ("/api/v1/openapi.json", "get"),
    ] {
        assert!(
            paths[path][method].is_object(),
            "{method} {path} undocumented"
        );
    }
    Ok(())
}

/// The schemathesis command `scripts/services.sh` installs (or `IOC_SCHEMATHESIS`).
fn schemathesis() -> Result<std::path::PathBuf> {
    let path = std::env::var_os("IOC_SCHEMATHESIS")
        .map(Into::into)
        .unwrap_or_else(|| std::path::PathBuf::from("/var/tmp/ioc-tools/venv/bin/schemathesis"));
    if !path.exists() {
        bail!(
            "{} is missing: scripts/services.sh installs it (run {}/scripts/test.sh)",
            path.display(),
            repo_root().display()
        );
    }
    Ok(path)
}

/// Runs schemathesis on the API's document as `token`, with `extra` arguments; its report.
async fn schemathesis_run(env: &Env, token: &str, name: &str, extra: &[&str]) -> Result<String> {
    let report = env.dir.join(format!("schemathesis-{name}"));
    let out = tokio::process::Command::new(schemathesis()?)
        .arg("run")
        .arg(env.api("/api/v1/openapi.json"))
        .args(["--checks", "all"])
        // Valid-by-schema is not always acceptable (a bbox whose south is north of its north,
        // a device that does not exist): each route's description says what else it checks.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args([
            "--max-examples",
            "30",
            "--workers",
            "1",
            "--request-timeout",
            "30",
        ])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--report", "junit", "--report-dir"])
        .arg(&report)
        .args(extra)
        .env("NO_COLOR", "1")
        // Its example database and cache go with the test's other files, not into the repo.
        .current_dir(&env.dir)
        .kill_on_drop(true)
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    std::fs::write(env.dir.join(format!("schemathesis-{name}.log")), &stdout)?;
    anyhow::ensure!(
        out.status.success(),
        "schemathesis ({name}) failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_that_breaks_the_document() -> Result<()> {
    // The open routes' rate limit would answer most of its requests 429.
    let env = Env::new(
        "schemathesis",
        "[api.open_data]\nrate = 10000\nburst = 100000\n",
    )?;
    let (_api, _stream, _ingest) = start_pipeline(&env).await?;
    env.register("aq-st", "air_quality").await?;
    env.register("ww-st", "wastewater").await?;
    let all = schemathesis_run(&env, TOKEN, "admin", &[]).await?;
    let line = |prefix: &str| {
        all.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_string))
            .with_context(|| format!("{prefix:?} in the summary:\n{all}"))
    };
    let selected = line("Selected: ")?;
    let (_, total) = selected.split_once('/').context("selected/total")?;
    assert_eq!(line("Tested: ")?, total, "every operation tested:\n{all}");
    // The evidence is enforcement's alone: the admin's run only saw its 403.
    let enforcement = issue(&env.http, &env.api(""), TOKEN, "enforcement", "st").await?;
    schemathesis_run(
        &env,
        &enforcement,
        "enforcement",
        &["--include-path", "/api/v1/evidence"],
    )
    .await?;
    Ok(())
}
