//! The redirect path as a browser sees it.

use std::time::Duration;

use axum::http::Method;
use reqwest::StatusCode;
use serde_json::json;
use shortener::{http::Surface, links::code::is_reserved};

use crate::helpers::{client, eventually, raw_conn, spawn_app, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_link_redirects_with_its_status_and_the_exact_location() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |_| {}).await;
    let url = "https://example.com/Some/Path?q=1&r=%20#frag";
    let link = app.create(json!({"url": url})).await;
    let code = link["code"].as_str().unwrap();

    let r = app.follow(code).await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()["location"].as_bytes(), url.as_bytes());
    assert!(r.headers().get("cache-control").is_none(), "302 needs no cache-control");

    for status in [301u16, 307, 308] {
        let l = app.create(json!({"url": url, "redirect_status": status})).await;
        let r = app.follow(l["code"].as_str().unwrap()).await;
        assert_eq!(r.status().as_u16(), status);
        assert_eq!(r.headers()["location"], url);
        if status == 301 || status == 308 {
            assert_eq!(r.headers()["cache-control"], "private, max-age=3600");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_redirects_like_get_without_a_body() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |_| {}).await;
    app.create_code("head-me", "https://example.org/h").await;
    let r = app.client.head(app.url("/head-me")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()["location"], "https://example.org/h");
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_code_is_a_plain_404_page_and_expired_link_is_410() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |_| {}).await;
    let r = app.follow("nope-not-here").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(r.text().await.unwrap().contains("Not found"));

    app.create_code("soon-gone", "https://example.org/x").await;
    assert_eq!(app.location("soon-gone").await, Ok("https://example.org/x".into()));
    assert_eq!(app.patch("soon-gone", json!({"expires_at": "2001-01-01T00:00:00Z"})).await, StatusCode::OK);
    let r = app.follow("soon-gone").await;
    assert_eq!(r.status(), StatusCode::GONE);
    assert!(r.text().await.unwrap().contains("expired"));
    // Clearing the expiry brings it back at once.
    assert_eq!(app.patch("soon-gone", json!({"expires_at": null})).await, StatusCode::OK);
    assert_eq!(app.location("soon-gone").await, Ok("https://example.org/x".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_with_a_future_expiry_expires_on_time() {
    let app = spawn_app(None, |_| {}).await;
    let expires_ms = shortener::time_util::now_ms() + 1200;
    let at = shortener::time_util::to_rfc3339(expires_ms);
    app.create(json!({"code": "brief", "url": "https://example.org/b", "expires_at": at})).await;
    assert!(app.location("brief").await.is_ok());
    let gone =
        eventually(Duration::from_secs(3), || async { app.location("brief").await == Err(StatusCode::GONE) }).await;
    assert!(gone, "still {:?} 3 s after it was created to expire in 1.2 s", app.location("brief").await);
    assert!(shortener::time_util::now_ms() >= expires_ms, "gone before its expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_cannot_be_codes_are_404_without_touching_redis_or_sqlite() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |_| {}).await;
    let long = "a".repeat(65);
    for path in
        ["/ab", "/favicon.ico", "/api", "/docs", "/x%20y", "/a.b", &format!("/{long}"), "/a/b/c", "/%F0%9F%98%80"]
    {
        let r = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let stats = app.cache_stats().await;
    assert_eq!(stats["misses"], 0, "{stats}");
    assert_eq!(stats["db_lookups"], 0, "{stats}");
    assert_eq!(stats["redis_hits"], 0, "{stats}");
    assert_eq!(redis.cli(&["DBSIZE"]).trim(), "0", "nothing was written to redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_inserted_with_only_code_and_url_is_a_302_link() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |_| {}).await;
    let mut conn = raw_conn(&app.db_url).await;
    sqlx::query("INSERT INTO link_mappings (short_code, original_url) VALUES ('seeded', 'https://seed.example/')")
        .execute(&mut conn)
        .await
        .unwrap();
    let r = app.follow("seeded").await;
    assert_eq!(r.status(), StatusCode::FOUND);
    assert_eq!(r.headers()["location"], "https://seed.example/");
    let got: serde_json::Value =
        app.api(reqwest::Method::GET, "/links/seeded").send().await.unwrap().json().await.unwrap();
    assert_eq!(got["redirect_status"], 302);
    assert_eq!(got["expires_at"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_service_serves_from_sqlite() {
    let app = spawn_app(None, |_| {}).await;
    app.create_code("no-redis", "https://example.org/nr").await;
    assert_eq!(app.location("no-redis").await, Ok("https://example.org/nr".into()));
    assert_eq!(app.cache_stats().await["redis_breaker"], "disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_unreachable_the_service_starts_and_serves() {
    let port = crate::helpers::free_port();
    let app = spawn_app(None, |c| {
        c.redis.enabled = true;
        c.redis.url = format!("redis://127.0.0.1:{port}");
    })
    .await;
    app.create_code("lonely", "https://example.org/l").await;
    assert_eq!(app.location("lonely").await, Ok("https://example.org/l".into()));
    assert_eq!(app.delete("lonely").await, StatusCode::NO_CONTENT);
    assert_eq!(app.location("lonely").await, Err(StatusCode::NOT_FOUND));
    assert_eq!(app.cache_stats().await["redis_breaker"], "open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_answers_ok() {
    let app = spawn_app(None, |_| {}).await;
    let r = app.client.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap(), json!({"status": "ok"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_segment_is_a_reserved_word_and_never_a_direct_redirect() {
    let app = spawn_app(None, |_| {}).await;
    let surface = Surface::new(app.state.clone());
    let segments = surface.routed_segments();
    assert!(segments.contains(&"api") && segments.contains(&"metrics") && segments.contains(&"health"), "{segments:?}");
    for seg in segments {
        assert!(is_reserved(seg), "/{seg} is a route but not a reserved word: a custom code could hide behind it");
        assert!(!surface.is_direct(&Method::GET, &format!("/{seg}")), "/{seg}");
    }
    for path in ["/", "/METRICS", "/ab", "/a/b", "/abc/", "/a%20b", "abc"] {
        assert!(!surface.is_direct(&Method::GET, path), "{path}");
    }
    assert!(surface.is_direct(&Method::GET, "/abc"));
    assert!(surface.is_direct(&Method::HEAD, "/Ab_c-9"));
    assert!(!surface.is_direct(&Method::POST, "/abc"), "other methods get the router's 405");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_added_at_a_code_shaped_path_is_served_by_its_handler() {
    let app = spawn_app(None, |_| {}).await;
    app.create_code("statz", "https://example.com/statz").await;
    let surface = Surface::with_routes(app.state.clone(), |t| {
        t.route("/stats", axum::routing::get(|| async { "the stats page" }))
    });
    assert!(!surface.is_direct(&Method::GET, "/stats"));
    // Served for real: the connection layer in front of this surface, over TCP.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = shortener::net::Server::new(
        move |peer| surface.connection_service(peer),
        shortener::net::Timeouts { head: Duration::from_secs(2), idle: Duration::from_secs(2) },
        Default::default(),
    );
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            server.spawn(stream, peer);
        }
    });
    let http = client();
    let page = http.get(format!("http://{addr}/stats")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.text().await.unwrap(), "the stats page");
    // Codes still go straight to the redirect.
    let link = http.get(format!("http://{addr}/statz")).send().await.unwrap();
    assert_eq!(link.status(), StatusCode::FOUND);
    assert_eq!(link.headers()["location"], "https://example.com/statz");
}
