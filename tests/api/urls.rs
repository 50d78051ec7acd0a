//! Target URLs through the API and the importer: no spelling of our own address is accepted.

use std::process::Command;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use shortener::config::parse_base_url;

use crate::helpers::{raw_conn, spawn_app, TestApp};

/// POSTs a link to `url`; returns the status and the error code ("" when there is none).
async fn create_status(app: &TestApp, url: &str) -> (StatusCode, String) {
    let r = app.api(Method::POST, "/links").json(&json!({ "url": url })).send().await.unwrap();
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    (status, body["error"]["code"].as_str().unwrap_or_default().to_string())
}

fn refused(code: &str) -> (StatusCode, String) {
    (StatusCode::UNPROCESSABLE_ENTITY, code.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_of_our_own_address_is_refused_as_self_referencing() {
    let app = spawn_app(None, |_| {}).await;
    let port = app.addr.port();
    let mut spellings: Vec<String> = [
        "http://sho.rt./loop",
        "http://SHO.RT../loop",
        "http://sho%2Ert/loop",
        "http://sh%6F.rt%2E/loop",
        "https://sho.rt/loop",
        "http://sho.rt:443/loop",
        "https://sho.rt:80/loop",
        "http://sho.rt:0080/loop",
        "http://ｓｈｏ。ｒｔ/loop",
    ]
    .map(String::from)
    .to_vec();
    for host in [
        "127.0.0.1",
        "127.1",
        "0x7f000001",
        "0177.0.0.1.",
        "[::1]",
        "[0:0:0:0:0:0:0:1]",
        "[::ffff:127.0.0.1]",
        "[::FFFF:7f00:1]",
        "localhost.",
        "0.0.0.0",
    ] {
        spellings.push(format!("http://{host}:{port}/loop"));
    }
    app.create_code("moving", "https://example.com/a").await;

    for url in &spellings {
        let created = create_status(&app, url).await;
        let updated = app.api(Method::PATCH, "/links/moving").json(&json!({ "url": url })).send().await.unwrap();

        assert_eq!(created, refused("self_referencing_url"), "create {url}");
        assert_eq!(updated.status(), StatusCode::UNPROCESSABLE_ENTITY, "update to {url}");
    }
    assert_eq!(app.location("moving").await, Ok("https://example.com/a".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_ports_of_our_host_and_of_loopback_stay_allowed() {
    let app = spawn_app(None, |_| {}).await;
    let other_port = if app.addr.port() == 9 { 10 } else { 9 };

    for url in [
        "https://sho.rt:8443/x".to_string(),
        format!("http://127.0.0.1:{other_port}/x"),
        "https://sho.rt.example/".into(),
    ] {
        let (status, code) = create_status(&app, &url).await;

        assert_eq!(status, StatusCode::CREATED, "{url}: {code}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loopback_base_refuses_every_loopback_spelling_on_its_ports() {
    let app = spawn_app(None, |c| c.public_base_url = parse_base_url("http://localhost/").unwrap()).await;

    for url in [
        "http://127.0.0.2/x",
        "https://[::1]/x",
        "http://[::ffff:7f00:1]/x",
        "http://app.localhost/x",
        "https://LOCALHOST./x",
        "http://0.0.0.0:443/x",
    ] {
        let result = create_status(&app, url).await;

        assert_eq!(result, refused("self_referencing_url"), "{url}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refuses_our_own_address() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("i.db").display());
    let csv = dir.path().join("links.csv");
    let lines = ["own1,https://sho.rt./x", "own2,http://[::ffff:127.0.0.1]:8080/", "fine,https://example.com/a"];
    std::fs::write(&csv, lines.join("\n")).unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_shortener"))
        .args(["links", "import", csv.to_str().unwrap()])
        .env("DATABASE_URL", &db)
        .env("PUBLIC_BASE_URL", "https://sho.rt/")
        .env("LISTEN_ADDR", "127.0.0.1:8080")
        .env("REDIS_ENABLED", "false")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();

    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("imported 1 links") && stdout.contains("2 rejected"), "{stdout}");
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT short_code, original_url FROM link_mappings")
        .fetch_all(&mut raw_conn(&db).await)
        .await
        .unwrap();
    assert_eq!(rows, [("fine".to_string(), "https://example.com/a".to_string())]);
}
