//! Rate limits with real Redis: headers, Retry-After, sharing between instances, the local
//! fallback when Redis dies, X-Forwarded-For trust, exactness under concurrency.

use std::{sync::Arc, time::Duration};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use shortener::ratelimit::{parse_trusted, Limit};
use tokio::task::JoinSet;

use crate::helpers::{create_key, spawn_app, RedisServer, TestApp};

fn per(n: u32, secs: u64) -> Limit {
    Limit { limit: n, period: Duration::from_secs(secs) }
}

async fn create(app: &TestApp, key: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/v1/links"))
        .bearer_auth(key)
        .json(&json!({"url": "https://example.com/limited"}))
        .send()
        .await
        .unwrap()
}

fn header(r: &reqwest::Response, name: &str) -> u64 {
    r.headers().get(name).unwrap_or_else(|| panic!("no {name}")).to_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_the_create_limit_gives_429_with_headers_and_retry_after_is_honest() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |c| c.limits.create_per_key = per(3, 3)).await;
    for left in [2, 1, 0] {
        let r = create(&app, &app.key).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(header(&r, "ratelimit-limit"), 3);
        assert_eq!(header(&r, "ratelimit-remaining"), left);
        assert!(header(&r, "ratelimit-reset") <= 3);
    }
    let r = create(&app, &app.key).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry = header(&r, "retry-after");
    assert!((1..=3).contains(&retry), "retry-after {retry}");
    assert_eq!(header(&r, "ratelimit-remaining"), 0);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");

    // The scenario: a client that honours Retry-After, waiting exactly that long, must be let in.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(create(&app, &app.key).await.status(), StatusCode::CREATED, "allowed again after Retry-After");
    // Other keys have their own budget; reads are not creates.
    let other = create_key(&app.db_url, "other", false).await;
    assert_eq!(create(&app, &other).await.status(), StatusCode::CREATED);
    assert_eq!(app.api(Method::GET, "/links").send().await.unwrap().status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_share_the_budget() {
    let redis = RedisServer::start();
    let a = spawn_app(Some(&redis), |c| c.limits.api_per_ip = per(10, 3600)).await;
    let b = spawn_app(Some(&redis), |c| c.limits.api_per_ip = per(10, 3600)).await;
    let mut accepted = 0;
    for i in 0..30 {
        let app = if i % 2 == 0 { &a } else { &b };
        if app.api(Method::GET, "/links?limit=1").send().await.unwrap().status() == StatusCode::OK {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_dead_limits_hold_per_process_and_sharing_resumes_after_restart() {
    let mut redis = RedisServer::start();
    let a = spawn_app(Some(&redis), |c| c.limits.api_per_ip = per(5, 3600)).await;
    let b = spawn_app(Some(&redis), |c| c.limits.api_per_ip = per(5, 3600)).await;
    redis.kill();
    let ok = crate::helpers::eventually(Duration::from_secs(5), || async {
        a.cache_stats().await["redis_breaker"] == "open" && b.cache_stats().await["redis_breaker"] == "open"
    })
    .await;
    assert!(ok, "both breakers opened");
    assert_eq!((count_ok(&a, 12).await, count_ok(&b, 12).await), (5, 5), "each process enforces the limit alone");
    assert!(a.metric("shortener_rate_limit_local_fallbacks_total").await > 0.0);

    redis.restart();
    let ok = crate::helpers::eventually(Duration::from_secs(5), || async {
        a.cache_stats().await["redis_breaker"] == "closed" && b.cache_stats().await["redis_breaker"] == "closed"
    })
    .await;
    assert!(ok, "both breakers closed");
    let mut accepted = 0;
    for i in 0..20 {
        let app = if i % 2 == 0 { &a } else { &b };
        if app.api(Method::GET, "/links?limit=1").send().await.unwrap().status() == StatusCode::OK {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 5, "one shared budget again (the restarted Redis starts empty)");
}

/// How many of `n` cheap API calls were allowed.
async fn count_ok(app: &TestApp, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if app.api(Method::GET, "/links?limit=1").send().await.unwrap().status() == StatusCode::OK {
            ok += 1;
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_changes_the_identity_only_behind_a_trusted_proxy() {
    let redis = RedisServer::start();
    let untrusted = spawn_app(Some(&redis), |c| {
        c.limits.api_per_ip = per(2, 3600);
        c.redis.key_prefix = "u:".into();
    })
    .await;
    let mut statuses = Vec::new();
    for ip in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        let r = untrusted.api(Method::GET, "/links?limit=1").header("x-forwarded-for", ip).send().await.unwrap();
        statuses.push(r.status());
    }
    assert_eq!(
        statuses,
        [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS],
        "spoofing does not buy budget"
    );

    let trusted = spawn_app(Some(&redis), |c| {
        c.limits.api_per_ip = per(2, 3600);
        c.redis.key_prefix = "t:".into();
        c.limits.trusted_proxies = parse_trusted("127.0.0.1, ::1").unwrap();
    })
    .await;
    for ip in ["1.1.1.1", "2.2.2.2", "3.3.3.3"] {
        for _ in 0..2 {
            let r = trusted.api(Method::GET, "/links?limit=1").header("x-forwarded-for", ip).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{ip} has its own budget");
        }
        let r = trusted.api(Method::GET, "/links?limit=1").header("x-forwarded-for", ip).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "{ip} is limited");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_simultaneous_requests_against_a_limit_of_100_accept_exactly_100() {
    let redis = RedisServer::start();
    let app = Arc::new(spawn_app(Some(&redis), |c| c.limits.api_per_ip = per(100, 3600)).await);
    let mut set = JoinSet::new();
    for _ in 0..500 {
        let app = app.clone();
        set.spawn(async move { app.api(Method::GET, "/links?limit=1").send().await.unwrap().status() });
    }
    let mut ok = 0;
    let mut limited = 0;
    while let Some(s) = set.join_next().await {
        match s.unwrap() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let fallbacks = app.metric("shortener_rate_limit_local_fallbacks_total").await;
    let redis: Value = app.client.get(app.url("/health/redis")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (ok, limited),
        (100, 400),
        "local fallbacks: {fallbacks}, redis timeouts {} errors {}",
        redis["timeouts"],
        redis["errors"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlimited_keys_health_and_metrics_are_never_limited() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |c| {
        c.limits.api_per_ip = per(1, 3600);
        c.limits.create_per_key = per(1, 3600);
    })
    .await;
    let vip = create_key(&app.db_url, "enterprise", true).await;
    for _ in 0..5 {
        assert_eq!(create(&app, &vip).await.status(), StatusCode::CREATED);
    }
    for path in ["/health", "/health/ready", "/health/cache", "/metrics"] {
        for _ in 0..5 {
            assert_eq!(app.client.get(app.url(path)).send().await.unwrap().status(), StatusCode::OK, "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redirect_limit_is_off_by_default_and_works_when_on() {
    let redis = RedisServer::start();
    let open = spawn_app(Some(&redis), |_| {}).await;
    open.create_code("popular", "https://example.com/p").await;
    for _ in 0..50 {
        assert!(open.location("popular").await.is_ok());
    }
    let guarded = spawn_app(Some(&redis), |c| {
        c.limits.redirect_per_ip = per(5, 3600);
        c.redis.key_prefix = "g:".into();
    })
    .await;
    guarded.create_code("popular", "https://example.com/p").await;
    for _ in 0..5 {
        assert!(guarded.location("popular").await.is_ok());
    }
    let r = guarded.follow("popular").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    // The limit reads the peer's address the router's way: no redirect skips hyper while it is on.
    let direct = |app: &TestApp| app.state.connections.direct.load(std::sync::atomic::Ordering::Relaxed);
    assert!(direct(&open) > 0);
    assert_eq!(direct(&guarded), 0);
}

/// `shortener_auth_key_lookups_total`: keys looked up in the database.
async fn key_lookups(app: &TestApp) -> u64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("shortener_auth_key_lookups_total "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

async fn list_with(app: &TestApp, key: &str) -> reqwest::Response {
    app.client.get(app.url("/api/v1/links")).bearer_auth(key).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_limited_per_address_with_retry_after() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |c| {
        c.limits.auth_failures_per_ip = per(5, 3600);
        c.auth.cache_ttl = Duration::from_secs(60);
    })
    .await;
    // Verified before the flood: this key keeps working from memory.
    assert_eq!(list_with(&app, &app.key).await.status(), StatusCode::OK);
    for i in 0..5 {
        let r = list_with(&app, &format!("sk_guess{i}")).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "failure {i} is still a plain 401");
    }
    let lookups = key_lookups(&app).await;
    for i in 5..50 {
        let r = list_with(&app, &format!("sk_guess{i}")).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(header(&r, "retry-after") >= 1);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limited");
    }
    assert!(key_lookups(&app).await <= lookups + 1, "a refused address's guesses must not reach the database");
    // A key nobody verified yet is refused too from that address; one verified before is not.
    let fresh = create_key(&app.db_url, "fresh", false).await;
    assert_eq!(list_with(&app, &fresh).await.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(list_with(&app, &app.key).await.status(), StatusCode::OK);
    // Other addresses are not affected (X-Forwarded-For from a trusted proxy is the address).
    let elsewhere = spawn_app(Some(&redis), |c| {
        c.limits.auth_failures_per_ip = per(5, 3600);
        c.limits.trusted_proxies = parse_trusted("127.0.0.1/32").unwrap();
    })
    .await;
    let r = elsewhere
        .client
        .get(elsewhere.url("/api/v1/links"))
        .bearer_auth("sk_guess0")
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_one_bad_key_reaches_the_database_once() {
    let app = spawn_app(None, |_| {}).await;
    let before = key_lookups(&app).await;
    for _ in 0..500 {
        assert_eq!(list_with(&app, "sk_not_a_key").await.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(key_lookups(&app).await - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_address_limit_is_checked_before_any_key_is_looked_up() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |c| c.limits.api_per_ip = per(3, 3600)).await;
    for i in 0..3 {
        assert_eq!(list_with(&app, &format!("sk_random{i}")).await.status(), StatusCode::UNAUTHORIZED);
    }
    let lookups = key_lookups(&app).await;
    for i in 3..100 {
        let r = list_with(&app, &format!("sk_random{i}")).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    assert_eq!(key_lookups(&app).await, lookups, "limited requests looked no key up");
}
