//! `GET /api/v1/links/export` and `shortener links export`: every link streamed as CSV or JSON
//! lines, and `links import` reading them back so that export → import → export is exact.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{create_key, raw_conn, run_cli, spawn_app, test_db_url, TestApp};

/// `shortener ARGS…` on `db_url`, without Redis; panics unless it succeeds.
fn shortener(db_url: &str, args: &[&str]) -> std::process::Output {
    let out = run_cli(db_url, args, &[("REDIS_ENABLED", "false")]);
    assert!(out.status.success(), "shortener {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// The export through the API with `key`: (status, content type, disposition, body).
async fn api_export(app: &TestApp, key: &str, query: &str) -> (StatusCode, String, String, Vec<u8>) {
    let r = app.client.get(app.url(&format!("/api/v1/links/export{query}"))).bearer_auth(key).send().await.unwrap();
    let header = |name: &str| r.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let (status, ctype, disposition) = (r.status(), header("content-type"), header("content-disposition"));
    (status, ctype, disposition, r.bytes().await.unwrap().to_vec())
}

/// Links of every kind an export must carry exactly: custom and random codes, expiries (one
/// already past), every redirect status, URLs with commas, quotes, unicode and query strings.
async fn create_varied_links(app: &TestApp) {
    let bodies = [
        json!({"code": "plain", "url": "https://example.com/"}),
        json!({"code": "commas", "url": "https://example.com/a,b,c?x=1,2", "redirect_status": 301}),
        json!({"code": "quotes", "url": "https://example.com/say?q=\"hi\"&r='x'", "redirect_status": 307}),
        json!({"code": "unicode", "url": "https://exämple.com/ünï/çødé?q=日本", "redirect_status": 308}),
        json!({"code": "Q-9_z", "url": "https://example.com/p?a=1&b=2#frag", "expires_at": "2031-02-03T04:05:06.789Z"}),
        json!({"url": "https://example.com/random?utm_source=x", "expires_at": "2032-01-01T00:00:00+02:00"}),
        json!({"code": "soon-gone", "url": "https://example.com/expired"}),
    ];
    for body in bodies {
        app.create(body).await;
    }
    // An expiry in the past (PATCH takes any time): the link is expired, and still exported.
    assert_eq!(app.patch("soon-gone", json!({"expires_at": "2020-05-06T07:08:09.010Z"})).await, StatusCode::OK);
}

/// The first five fields of every CSV record: what recreates a link (clicks and creator left out).
fn csv_link_fields(bytes: &[u8]) -> Vec<Vec<String>> {
    let mut r = csv::ReaderBuilder::new().has_headers(false).from_reader(bytes);
    r.records().map(|rec| rec.unwrap().iter().take(5).map(str::to_string).collect()).collect()
}

/// Every JSON line without its informational fields.
fn jsonl_link_fields(bytes: &[u8]) -> Vec<Value> {
    std::str::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            assert!(o.remove("clicks").is_some() && o.remove("created_by").is_some(), "{l}");
            v
        })
        .collect()
}

/// Imports `file` into a fresh database and exports it again with the CLI.
fn reimport(dir: &std::path::Path, name: &str, file: &std::path::Path, format: &str) -> Vec<u8> {
    let db = test_db_url(dir, name);
    let out = shortener(&db, &["links", "import", file.to_str().unwrap(), "--format", format]);
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(said.contains("0 rejected"), "{said}");
    shortener(&db, &["links", "export", "-", "--format", format]).stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_imported_into_an_empty_database_exports_the_same_links_byte_for_byte() {
    let app = spawn_app(None, |_| {}).await;
    create_varied_links(&app).await;
    let dir = tempfile::tempdir().unwrap();

    for format in ["csv", "jsonl"] {
        // Through the API and through the CLI: the same bytes.
        let (status, _, _, by_api) = api_export(&app, &app.key, &format!("?format={format}")).await;
        assert_eq!(status, StatusCode::OK);
        let by_cli = shortener(&app.db_url, &["links", "export", "--format", format]).stdout;
        assert_eq!(String::from_utf8_lossy(&by_api), String::from_utf8_lossy(&by_cli), "{format}");
        let file = dir.path().join(format!("first.{format}"));
        std::fs::write(&file, &by_api).unwrap();

        let second = reimport(dir.path(), &format!("second-{format}"), &file, format);
        match format {
            "csv" => {
                let first = csv_link_fields(&by_api);
                assert_eq!(first.len(), 8, "the header and seven links");
                assert_eq!(first, csv_link_fields(&second));
            }
            _ => {
                let first = jsonl_link_fields(&by_api);
                assert_eq!(first.len(), 7);
                assert_eq!(first, jsonl_link_fields(&second));
            }
        }
        // Once imported, the informational fields are empty as well, so a second round trip is
        // exact to the byte.
        let file = dir.path().join(format!("second.{format}"));
        std::fs::write(&file, &second).unwrap();
        let third = reimport(dir.path(), &format!("third-{format}"), &file, format);
        assert_eq!(String::from_utf8(third).unwrap(), String::from_utf8(second).unwrap(), "{format}");
    }

    // What the export says, field by field, is what the API says of each link.
    let (_, _, _, csv) = api_export(&app, &app.key, "").await;
    let rows = csv_link_fields(&csv);
    assert_eq!(rows[0], ["code", "url", "redirect_status", "created_at", "expires_at"]);
    for row in &rows[1..] {
        let link: Value =
            app.api(Method::GET, &format!("/links/{}", row[0])).send().await.unwrap().json().await.unwrap();
        let expires = link["expires_at"].as_str().unwrap_or("");
        let status = link["redirect_status"].to_string();
        let shown = [
            link["code"].as_str().unwrap(),
            link["url"].as_str().unwrap(),
            &status,
            link["created_at"].as_str().unwrap(),
            expires,
        ];
        assert_eq!(row[..], shown[..]);
    }
    let row = |code: &str| rows.iter().find(|r| r[0] == code).unwrap_or_else(|| panic!("{code} exported")).clone();
    assert_eq!(row("commas")[1..3], ["https://example.com/a,b,c?x=1,2", "301"]);
    assert_eq!(row("quotes")[2], "307");
    assert!(row("unicode")[1].starts_with("https://xn--"), "{:?}", row("unicode"));
    assert_eq!(row("Q-9_z")[4], "2031-02-03T04:05:06.789Z");
    assert!(row("soon-gone")[4].starts_with("2020-05-06T07:08:09.01"), "{:?}", row("soon-gone"));
    assert_eq!(row("plain")[4], "", "no expiry is an empty field");
    let text = String::from_utf8(csv).unwrap();
    assert!(text.contains("\"https://example.com/a,b,c?x=1,2\""), "a field with commas is quoted: {text}");
    assert!(text.ends_with("\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_is_an_attachment_and_an_ordinary_key_exports_only_its_own_links() {
    let app = spawn_app(None, |_| {}).await;
    app.create_code("admins", "https://example.com/admin").await;
    let alice = create_key(&app.db_url, "alice", false).await;
    let r = app
        .client
        .post(app.url("/api/v1/links"))
        .bearer_auth(&alice)
        .json(&json!({"code": "alices", "url": "https://example.com/alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let (status, ctype, disposition, body) = api_export(&app, &alice, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype, "text/csv; charset=utf-8");
    assert_eq!(disposition, "attachment; filename=\"links.csv\"");
    let rows = csv_link_fields(&body);
    assert_eq!(rows.iter().skip(1).map(|r| r[0].as_str()).collect::<Vec<_>>(), ["alices"]);
    assert!(String::from_utf8(body).unwrap().lines().nth(1).unwrap().ends_with(",0,alice"));

    let (status, ctype, disposition, body) = api_export(&app, &app.key, "?format=jsonl").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype, "application/x-ndjson");
    assert_eq!(disposition, "attachment; filename=\"links.jsonl\"");
    let codes: Vec<String> = jsonl_link_fields(&body).iter().map(|v| v["code"].as_str().unwrap().to_string()).collect();
    assert_eq!(codes, ["admins", "alices"], "an admin key exports every link, ordered by code");

    let (status, ctype, _, body) = api_export(&app, &app.key, "?format=xml").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(ctype, "application/json");
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"], "invalid_format");
    let anonymous = app.client.get(app.url("/api/v1/links/export")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_of_several_pages_has_every_link_once_in_code_order() {
    let app = spawn_app(None, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let n = 2_345;
    let csv: String = (0..n).map(|i| format!("pg{i:05},https://example.com/{i}\n")).collect();
    let file = dir.path().join("many.csv");
    std::fs::write(&file, csv).unwrap();
    shortener(&app.db_url, &["links", "import", file.to_str().unwrap()]);

    let (status, _, _, body) = api_export(&app, &app.key, "?format=jsonl").await;
    assert_eq!(status, StatusCode::OK);
    let codes: Vec<String> = jsonl_link_fields(&body).iter().map(|v| v["code"].as_str().unwrap().to_string()).collect();
    let expected: Vec<String> = (0..n).map(|i| format!("pg{i:05}")).collect();
    assert_eq!(codes, expected);

    let out = run_cli(&app.db_url, &["links", "export", "-"], &[("REDIS_ENABLED", "false")]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), n + 1, "stdout carries only the export");
    let said = String::from_utf8(out.stderr).unwrap();
    assert!(said.contains(&format!("exported {n} links")), "the summary goes to stderr: {said}");

    // To a file: written whole, no partial file left beside it.
    let target = dir.path().join("out.jsonl");
    shortener(&app.db_url, &["links", "export", target.to_str().unwrap()]);
    assert_eq!(std::fs::read(&target).unwrap(), body, "the format follows the file name");
    assert!(!dir.path().join("out.jsonl.partial").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_named_export_from_before_the_word_was_reserved_still_redirects() {
    let app = spawn_app(None, |_| {}).await;
    let mut conn = raw_conn(&app.db_url).await;
    sqlx::query("INSERT INTO link_mappings (short_code, original_url) VALUES ($1, $2)")
        .bind("export")
        .bind("https://example.com/old-export")
        .execute(&mut conn)
        .await
        .unwrap();

    let r = app.api(Method::POST, "/links").json(&json!({"code": "export", "url": "https://example.com/"})).send();
    let r = r.await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY, "export is reserved for new links");
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "reserved_code");

    assert_eq!(app.location("export").await, Ok("https://example.com/old-export".to_string()));
    // `/links/export` is the export route, not the link…
    let (status, ctype, _, _) = api_export(&app, &app.key, "").await;
    assert_eq!((status, ctype.as_str()), (StatusCode::OK, "text/csv; charset=utf-8"));
    // … and the link's other routes still reach it.
    let clicks = app.api(Method::GET, "/links/export/clicks").send().await.unwrap();
    assert_eq!(clicks.status(), StatusCode::OK);
    let qr = app.api(Method::GET, "/links/export/qr").send().await.unwrap();
    assert_eq!(qr.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_error_in_the_middle_of_an_export_truncates_the_body_without_an_error_status() {
    let app = spawn_app(None, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    // 60 pages of 1,000: far more than the socket buffers hold once the client stops reading.
    let n = 60_000;
    let csv: String = (0..n).map(|i| format!("mid{i:05},https://example.com/a/long/enough/path/{i}\n")).collect();
    let file = dir.path().join("many.csv");
    std::fs::write(&file, csv).unwrap();
    shortener(&app.db_url, &["links", "import", file.to_str().unwrap()]);
    let full = shortener(&app.db_url, &["links", "export", "-"]).stdout.len();

    let mut r = app.api(Method::GET, "/links/export").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut got = r.chunk().await.unwrap().expect("a first chunk").len();
    // The table goes away under the export: the next page's query fails.
    let mut conn = raw_conn(&app.db_url).await;
    sqlx::query("ALTER TABLE link_mappings RENAME TO link_mappings_gone").execute(&mut conn).await.unwrap();
    let ended = loop {
        match r.chunk().await {
            Ok(Some(c)) => got += c.len(),
            Ok(None) => break "the body ended",
            Err(_) => break "the body broke off",
        }
    };
    assert!(got < full, "{ended} after {got} of {full} bytes: the export must stop early");
    // Not a clean end: the client can tell that the export is incomplete.
    assert_eq!(ended, "the body broke off");

    // The service itself carries on.
    let health = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    sqlx::query("ALTER TABLE link_mappings_gone RENAME TO link_mappings").execute(&mut conn).await.unwrap();
    let (status, _, _, body) = api_export(&app, &app.key, "").await;
    assert_eq!((status, body.len()), (StatusCode::OK, full), "with the table back, the whole export");
}
