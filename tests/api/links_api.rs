//! The link API: create, read, list, update, delete; validation; authentication.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{create_key, run_cli, spawn_app, RedisServer, TestApp};

async fn error_of(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let body: Value = r.json().await.expect("error bodies are JSON");
    let code = body["error"]["code"].as_str().expect("error.code").to_string();
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "error.message missing: {body}");
    (status, code)
}

async fn post_raw(app: &TestApp, body: &str) -> reqwest::Response {
    app.api(Method::POST, "/links")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_with_a_random_code_returns_the_whole_link() {
    let app = spawn_app(None, |_| {}).await;
    let link = app.create(json!({"url": "https://example.com/a"})).await;
    let code = link["code"].as_str().unwrap();
    assert_eq!(code.len(), 7);
    assert!(code.bytes().all(|b| b.is_ascii_alphanumeric()), "{code}");
    assert_eq!(link["short_url"], format!("http://sho.rt/{code}"));
    assert_eq!(link["url"], "https://example.com/a");
    assert_eq!(link["redirect_status"], 302);
    assert!(link["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(link["expires_at"], Value::Null);

    let got: Value = app.api(Method::GET, &format!("/links/{code}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(got["url"], "https://example.com/a");
    assert_eq!(got["code"], code);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_codes_are_validated_and_unique() {
    let app = spawn_app(None, |_| {}).await;
    let link = app.create(json!({"url": "https://example.com/c", "code": "My_Link-1", "expires_at": "2099-01-01T00:00:00+02:00", "redirect_status": 308})).await;
    assert_eq!(link["code"], "My_Link-1");
    assert_eq!(link["redirect_status"], 308);
    assert_eq!(link["expires_at"], "2098-12-31T22:00:00Z");

    let taken = app
        .api(Method::POST, "/links")
        .json(&json!({"url": "https://x.io/", "code": "My_Link-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(taken).await, (StatusCode::CONFLICT, "code_taken".into()));

    for (code, want) in [
        ("ab", "invalid_code"),
        ("has space", "invalid_code"),
        ("api", "reserved_code"),
        ("Health", "reserved_code"),
        ("ünï", "invalid_code"),
    ] {
        let r =
            app.api(Method::POST, "/links").json(&json!({"url": "https://x.io/", "code": code})).send().await.unwrap();
        assert_eq!(error_of(r).await, (StatusCode::UNPROCESSABLE_ENTITY, want.into()), "{code}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_statuses_and_expiries_are_422_with_a_reason() {
    let app = spawn_app(None, |_| {}).await;
    let long = format!("https://example.com/{}", "x".repeat(2100));
    let cases = [
        (json!({"url": "ftp://example.com/"}), "invalid_url"),
        (json!({"url": "javascript:alert(1)"}), "invalid_url"),
        (json!({"url": "https://example.com/\r\nSet-Cookie: a=b"}), "invalid_url"),
        (json!({"url": "https://"}), "invalid_url"),
        (json!({"url": "http://sho.rt/loop"}), "self_referencing_url"),
        (json!({"url": long}), "url_too_long"),
        (json!({"url": "https://example.com/", "redirect_status": 303}), "invalid_redirect_status"),
        (json!({"url": "https://example.com/", "expires_at": "next week"}), "invalid_expires_at"),
        (json!({"url": "https://example.com/", "expires_at": "2001-01-01T00:00:00Z"}), "invalid_expires_at"),
        (json!({"url": "https://example.com/", "surprise": 1}), "invalid_body"),
        (json!({"code": "abc"}), "invalid_body"),
        (json!({"url": 42}), "invalid_body"),
    ];
    for (body, want) in cases {
        let r = app.api(Method::POST, "/links").json(&body).send().await.unwrap();
        assert_eq!(error_of(r).await, (StatusCode::UNPROCESSABLE_ENTITY, want.into()), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_untyped_bodies_get_json_errors() {
    let app = spawn_app(None, |_| {}).await;
    assert_eq!(error_of(post_raw(&app, "{\"url\":").await).await, (StatusCode::BAD_REQUEST, "malformed_json".into()));
    let huge = format!("{{\"url\":\"https://example.com/{}\"}}", "x".repeat(100_000));
    let r = post_raw(&app, &huge).await;
    // The unread rest of the body makes the connection unusable; the client must be told, or it
    // may send the next request on it while the server closes it.
    assert_eq!(r.headers().get("connection").map(|v| v.as_bytes()), Some(&b"close"[..]));
    assert_eq!(error_of(r).await, (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large".into()));
    let r = app.api(Method::POST, "/links").body("url=https://x.io").send().await.unwrap();
    assert_eq!(error_of(r).await, (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type".into()));
    let r = app.api(Method::GET, "/links?limit=0").send().await.unwrap();
    assert_eq!(error_of(r).await, (StatusCode::BAD_REQUEST, "bad_query".into()));
    let r = app.api(Method::GET, "/links?limit=ten").send().await.unwrap();
    assert_eq!(error_of(r).await, (StatusCode::BAD_REQUEST, "bad_query".into()));
    let r = app.api(Method::GET, "/nowhere").send().await.unwrap();
    assert_eq!(error_of(r).await, (StatusCode::NOT_FOUND, "not_found".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_required_and_revoked_keys_are_refused() {
    let app = spawn_app(None, |c| c.auth.cache_ttl = std::time::Duration::ZERO).await;
    let anon = app.client.post(app.url("/api/v1/links")).json(&json!({"url": "https://x.io/"})).send().await.unwrap();
    assert_eq!(error_of(anon).await, (StatusCode::UNAUTHORIZED, "unauthorized".into()));
    let wrong = app.client.get(app.url("/api/v1/links")).bearer_auth("sk_wrong").send().await.unwrap();
    assert_eq!(error_of(wrong).await, (StatusCode::UNAUTHORIZED, "unauthorized".into()));

    let other = create_key(&app.db_url, "other", false).await;
    let ok = app.client.get(app.url("/api/v1/links")).bearer_auth(&other).send().await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let out = run_cli(&app.db_url, &["keys", "revoke", "other"], &[("REDIS_ENABLED", "false")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let revoked = app.client.get(app.url("/api/v1/links")).bearer_auth(&other).send().await.unwrap();
    assert_eq!(error_of(revoked).await, (StatusCode::FORBIDDEN, "forbidden".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_and_delete_change_the_redirect_at_once_even_when_cached() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |_| {}).await;
    app.create_code("changing", "https://example.com/v1").await;
    // Warm both tiers.
    for _ in 0..3 {
        assert_eq!(app.location("changing").await, Ok("https://example.com/v1".into()));
    }
    assert!(redis.cli(&["GET", "shortener:l:changing"]).contains("example.com/v1"));

    let r = app
        .api(Method::PATCH, "/links/changing")
        .json(&json!({"url": "https://example.com/v2", "redirect_status": 307}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["url"].as_str(), body["redirect_status"].as_i64()), (Some("https://example.com/v2"), Some(307)));
    let f = app.follow("changing").await;
    assert_eq!(f.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(f.headers()["location"], "https://example.com/v2");

    assert_eq!(app.delete("changing").await, StatusCode::NO_CONTENT);
    assert_eq!(app.location("changing").await, Err(StatusCode::NOT_FOUND));
    assert_eq!(app.delete("changing").await, StatusCode::NOT_FOUND);
    assert_eq!(app.patch("changing", json!({"url": "https://example.com/v3"})).await, StatusCode::NOT_FOUND);
    let r = app.api(Method::GET, "/links/changing").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_every_link_once() {
    let app = spawn_app(None, |_| {}).await;
    let mut want = Vec::new();
    for i in 0..7 {
        want.push(
            app.create(json!({"url": format!("https://example.com/{i}")})).await["code"].as_str().unwrap().to_string(),
        );
    }
    want.sort();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/links?limit=3&cursor={c}"),
            None => "/links?limit=3".to_string(),
        };
        let page: Value = app.api(Method::GET, &q).send().await.unwrap().json().await.unwrap();
        let links = page["links"].as_array().unwrap();
        assert!(links.len() <= 3);
        seen.extend(links.iter().map(|l| l["code"].as_str().unwrap().to_string()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_are_all_committed_with_distinct_codes() {
    let app = std::sync::Arc::new(spawn_app(None, |_| {}).await);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..300 {
        let app = app.clone();
        set.spawn(async move { app.create(json!({"url": format!("https://example.com/many/{i}")})).await });
    }
    let mut codes = std::collections::HashSet::new();
    while let Some(link) = set.join_next().await {
        let link = link.unwrap();
        let code = link["code"].as_str().unwrap().to_string();
        assert!(codes.insert(code.clone()));
        assert_eq!(app.location(&code).await, Ok(link["url"].as_str().unwrap().to_string()));
    }
    assert_eq!(codes.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_custom_code_give_one_201_and_the_rest_409() {
    let app = std::sync::Arc::new(spawn_app(None, |_| {}).await);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..40 {
        let app = app.clone();
        set.spawn(async move {
            app.api(Method::POST, "/links")
                .json(&json!({"code": "contested", "url": format!("https://example.com/{i}")}))
                .send()
                .await
                .unwrap()
                .status()
        });
    }
    let mut statuses = Vec::new();
    while let Some(s) = set.join_next().await {
        statuses.push(s.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CREATED).count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count(), 39);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_from_the_command_line_is_refused_at_once_even_when_cached() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |c| c.auth.cache_ttl = std::time::Duration::from_secs(3600)).await;
    let key = create_key(&app.db_url, "soon-revoked", false).await;
    for _ in 0..3 {
        let r = app.client.get(app.url("/api/v1/links")).bearer_auth(&key).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let out = run_cli(&app.db_url, &["keys", "revoke", "soon-revoked"], &[("REDIS_URL", &redis.url())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("announced to 1 running instance"));
    let r = app.client.get(app.url("/api/v1/links")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // The other keys still work.
    assert_eq!(app.api(Method::GET, "/links").send().await.unwrap().status(), StatusCode::OK);
}
