//! Target URLs through the API and the importer: no spelling of our own address is accepted, and
//! what is stored and sent in `Location` names one host to every URL parser.

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
    let app = spawn_app(None, |c| c.http.public_base_url = parse_base_url("http://localhost/").unwrap()).await;

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
async fn urls_that_parsers_read_as_two_hosts_are_refused_and_not_stored() {
    let app = spawn_app(None, |_| {}).await;

    for url in [
        "https://evil.example\\@good.example/",
        "https://evil.example\\\\@good.example/",
        "https://@good.example/",
        "https:\\\\evil.example\\x",
        "https:evil.example/",
        "https:///evil.example/",
        "https://ex%61mple.com/",
        "https://0x7f.1/",
        "https://a{b.example/",
    ] {
        let result = create_status(&app, url).await;

        assert_eq!(result, refused("invalid_url"), "{url}");
    }
    let list: Value = app.api(Method::GET, "/links").send().await.unwrap().json().await.unwrap();
    assert_eq!(list["links"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn location_is_the_serialization_of_the_parsed_url_and_names_one_host_to_every_parser() {
    let app = spawn_app(None, |_| {}).await;

    for (input, stored, host) in [
        ("HTTPS://Example.COM:443/a/./b/../c\\d?q=1#f", "https://example.com/a/c/d?q=1#f", "example.com"),
        ("https://Bücher.de/ä b", "https://xn--bcher-kva.de/%C3%A4%20b", "xn--bcher-kva.de"),
        ("http://[2001:DB8:0:0::1]:8080", "http://[2001:db8::1]:8080/", "[2001:db8::1]"),
    ] {
        let link = app.create(json!({ "url": input })).await;
        let location = app.location(link["code"].as_str().unwrap()).await.unwrap();

        assert_eq!(link["url"], stored, "{input}");
        assert_eq!(location, stored, "{input}");
        let whatwg = url::Url::parse(&location).unwrap();
        let rfc3986: axum::http::Uri = location.parse().unwrap();
        assert_eq!(whatwg.host_str(), Some(host), "{location}");
        assert_eq!(rfc3986.host(), Some(host), "{location}");
        assert_eq!(rfc3986.port_u16(), whatwg.port(), "{location}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refuses_our_own_address_and_split_urls_and_stores_the_serialization() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::helpers::test_db_url(dir.path(), "i");
    let csv = dir.path().join("links.csv");
    let lines = [
        "own1,https://sho.rt./x",
        "own2,http://[::ffff:127.0.0.1]:8080/",
        "split,https://evil.example\\@good.example/",
        "fine,HTTPS://Example.com:443/a",
    ];
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
    assert!(stdout.contains("imported 1 links") && stdout.contains("3 rejected"), "{stdout}");
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT short_code, original_url FROM link_mappings")
        .fetch_all(&mut raw_conn(&db).await)
        .await
        .unwrap();
    assert_eq!(rows, [("fine".to_string(), "https://example.com/a".to_string())]);
}
