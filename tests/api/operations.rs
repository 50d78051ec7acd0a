//! Operations: health endpoints (healthy and degraded), Prometheus metrics that parse and
//! move by the right amounts, request ids in responses and logs, systemd readiness.

use std::{os::unix::fs::PermissionsExt, time::Duration};

use prometheus_parse::{Scrape, Value as PromValue};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use shortener::ratelimit::parse_trusted;

use crate::helpers::{client, create_key, eventually, spawn_app, RedisServer, ServiceProcess, TestApp};

async fn get_json(app: &TestApp, path: &str) -> (StatusCode, Value) {
    let r = app.client.get(app.url(path)).send().await.unwrap();
    (r.status(), r.json().await.unwrap())
}

async fn scrape(app: &TestApp) -> Scrape {
    let r = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text().await.unwrap();
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid exposition format")
}

/// The value of a counter or gauge sample whose labels include `labels`.
fn sample(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => v,
            _ => panic!("{name} is not a counter or gauge"),
        })
        .sum()
}

/// Observations of a histogram (its `+Inf` bucket) whose labels include `labels`.
fn histogram_count(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            PromValue::Histogram(buckets) => {
                buckets.iter().filter(|b| b.less_than.is_infinite()).map(|b| b.count).sum::<f64>()
            }
            _ => panic!("{name} is not a histogram"),
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_report_a_healthy_service() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |_| {}).await;
    app.create_code("healthy", "https://example.com/h").await;
    app.location("healthy").await.unwrap();

    let (s, ready) = get_json(&app, "/health/ready").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ready, json!({"status": "ok", "db": "ok", "redis": "ok"}));

    let (s, db) = get_json(&app, "/health/db").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(db["status"], "ok");
    let query_ms = db["query_ms"].as_f64().unwrap_or_else(|| panic!("query_ms is not a number: {db}"));
    assert!(query_ms > 0.0 && query_ms < 1000.0, "a check of a local database takes {query_ms} ms");
    assert!(db["read_pool"]["idle"].as_u64().is_some());
    if crate::helpers::on_postgres() {
        // One pool for reads and the writer: one more connection than the reads get.
        assert_eq!(db["backend"], "postgres", "{db}");
        assert_eq!(db["read_pool"]["max"], 5);
        assert!(db["wal_bytes"].is_null() && db["db_bytes"].is_null(), "no file sizes: {db}");
    } else {
        assert_eq!(db["backend"], "sqlite", "{db}");
        assert_eq!(db["read_pool"]["max"], 4);
        assert!(db["wal_bytes"].as_u64().is_some(), "{db}");
        assert!(db["db_bytes"].as_u64().unwrap() > 0);
    }

    let (s, r) = get_json(&app, "/health/redis").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["breaker"], "closed");
    assert!(r["ping_ms"].as_f64().is_some());
    assert_eq!(r["info"]["maxmemory"], 209_715_200);
    assert_eq!(r["info"]["maxmemory_policy"], "allkeys-lru");
    for f in ["used_memory", "evicted_keys", "keyspace_hits", "keyspace_misses", "connected_clients"] {
        assert!(r["info"][f].as_i64().is_some(), "{f} missing: {r}");
    }
    assert!(r["pool"]["size"].as_u64().is_some());
    assert_eq!(r["warnings"], json!([]));

    let (_, c) = get_json(&app, "/health/cache").await;
    for f in [
        "l1_hits",
        "redis_hits",
        "misses",
        "db_lookups",
        "negative_hits",
        "single_flight_waits",
        "write_backs",
        "write_backs_rejected",
    ] {
        assert!(c[f].as_u64().is_some(), "{f}: {c}");
    }
    for f in ["hit_ratio", "l1_hit_ratio", "redis_hit_ratio"] {
        assert!(c[f].as_f64().is_some(), "{f}: {c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_warnings_name_a_cache_that_cannot_evict() {
    let redis = RedisServer::start();
    redis.cli(&["CONFIG", "SET", "maxmemory", "0"]);
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    let app = spawn_app(Some(&redis), |_| {}).await;
    let (_, r) = get_json(&app, "/health/redis").await;
    let w = r["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 2, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_killed_ready_stays_200_and_says_degraded() {
    let mut redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |_| {}).await;
    redis.kill();
    app.location("anything-at-all").await.ok();
    let ok =
        eventually(Duration::from_secs(5), || async { get_json(&app, "/health/ready").await.1["redis"] == "degraded" })
            .await;
    assert!(ok);
    let (s, ready) = get_json(&app, "/health/ready").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(ready["db"], "ok");
    let (_, r) = get_json(&app, "/health/redis").await;
    assert_eq!(r["status"], "degraded");
    assert_eq!(r["reachable"], false);
    assert_eq!(r["breaker"], "open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_sqlite_file_unreadable_ready_is_503() {
    // About SQLite's file, on either run of the suite (PostgreSQL's outage: faults.rs).
    let dir = tempfile::tempdir().unwrap();
    let url = crate::helpers::sqlite_url(dir.path(), "unreadable");
    let app = spawn_app(None, |c| c.db.url = url).await;
    let path = app.db_url.trim_start_matches("sqlite://").to_string();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    let (s, ready) = get_json(&app, "/health/ready").await;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["status"], "unavailable");
    assert_eq!(ready["db"], "error");
    let (s, _) = get_json(&app, "/health/db").await;
    assert_eq!(s, StatusCode::OK, "healthy again once readable");

    std::fs::remove_file(&path).unwrap();
    let (s, _) = get_json(&app, "/health/ready").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "a deleted database is not ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_by_exactly_the_traffic_sent() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |_| {}).await;
    app.create_code("counted", "https://example.com/c").await;
    let before = scrape(&app).await;

    for _ in 0..5 {
        app.location("counted").await.unwrap();
    }
    for _ in 0..3 {
        assert_eq!(app.location("not-a-link").await, Err(StatusCode::NOT_FOUND));
    }
    for _ in 0..2 {
        let r = app.api(Method::GET, "/links/counted").send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    // The flusher runs every CLICK_FLUSH_INTERVAL_MS (200 ms here): wait until it wrote them.
    let flushed = |s: &Scrape| sample(s, "shortener_clicks_flushed_total", &[]);
    let mut after = scrape(&app).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while flushed(&after) - flushed(&before) < 5.0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = scrape(&app).await;
    }

    let delta = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels) - sample(&before, name, labels);
    assert_eq!(delta("shortener_http_requests_total", &[("route", "/:code"), ("status", "302")]), 5.0);
    assert_eq!(delta("shortener_http_requests_total", &[("route", "/:code"), ("status", "404")]), 3.0);
    assert_eq!(
        delta(
            "shortener_http_requests_total",
            &[("route", "/api/v1/links/:code"), ("method", "GET"), ("status", "200")]
        ),
        2.0
    );
    let lat =
        histogram_count(&after, "shortener_http_request_duration_seconds", &[("route", "/:code"), ("status", "302")])
            - histogram_count(
                &before,
                "shortener_http_request_duration_seconds",
                &[("route", "/:code"), ("status", "302")],
            );
    assert_eq!(lat, 5.0);
    // 8 lookups: the first of each code misses, the rest hit L1.
    assert_eq!(delta("shortener_cache_lookups_total", &[("tier", "l1")]), 6.0);
    assert_eq!(delta("shortener_cache_lookups_total", &[("tier", "miss")]), 2.0);
    assert_eq!(delta("shortener_db_lookups_total", &[]), 2.0);
    assert_eq!(delta("shortener_clicks_flushed_total", &[]), 5.0);
    assert_eq!(sample(&after, "shortener_redis_breaker_state", &[]), 0.0);
    assert_eq!(sample(&after, "shortener_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    assert!(sample(&after, "shortener_redis_pool_connections", &[("state", "open")]) >= 1.0);
}

/// The operator endpoints: detail that only operators should see.
const OPERATOR_PATHS: [&str; 4] = ["/metrics", "/health/db", "/health/redis", "/health/cache"];

/// Status of `GET path`, as the client `forwarded_for` when given (through the trusted proxy on
/// loopback), with `token` as a bearer token when given.
async fn status_as(app: &TestApp, path: &str, forwarded_for: Option<&str>, token: Option<&str>) -> StatusCode {
    let mut req = app.client.get(app.url(path));
    if let Some(ip) = forwarded_for {
        req = req.header("x-forwarded-for", ip);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_endpoints_answer_only_loopback_clients_without_a_token() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |c| c.limits.trusted_proxies = parse_trusted("127.0.0.1/32").unwrap()).await;
    for path in OPERATOR_PATHS {
        assert_eq!(status_as(&app, path, None, None).await, StatusCode::OK, "{path} from loopback");
        assert_eq!(status_as(&app, path, Some("::1"), None).await, StatusCode::OK, "{path} from ::1");
        for outside in ["203.0.113.9", "2001:db8::7", "::ffff:198.51.100.1"] {
            let r = app.client.get(app.url(path)).header("x-forwarded-for", outside).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path} from {outside}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "operator_only");
        }
    }
    // Load balancers may ask these from anywhere.
    for path in ["/health", "/health/ready"] {
        assert_eq!(status_as(&app, path, Some("203.0.113.9"), None).await, StatusCode::OK, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_metrics_token_operator_endpoints_answer_that_token_from_anywhere_and_nothing_else() {
    let app = spawn_app(None, |c| {
        c.auth.metrics_token = Some("s3cret".into());
        c.limits.trusted_proxies = parse_trusted("127.0.0.1/32").unwrap();
    })
    .await;
    for path in OPERATOR_PATHS {
        for (from, token) in
            [(None, None), (None, Some("s3cre")), (None, Some("s3cret-and-more")), (Some("203.0.113.9"), None)]
        {
            assert_eq!(status_as(&app, path, from, token).await, StatusCode::UNAUTHORIZED, "{path} {from:?} {token:?}");
        }
        assert_eq!(status_as(&app, path, None, Some("s3cret")).await, StatusCode::OK, "{path}");
        assert_eq!(status_as(&app, path, Some("203.0.113.9"), Some("s3cret")).await, StatusCode::OK, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_db_and_readiness_never_show_where_the_database_lives() {
    // PostgreSQL: neither the URL nor its host, port or database.
    let app = spawn_app(None, |_| {}).await;
    if let Some(rest) = app.db_url.strip_prefix("postgres://") {
        let (_, db) = get_json(&app, "/health/db").await;
        assert_eq!(db["backend"], "postgres", "{db}");
        let (host, name) = rest.split_once('@').unwrap().1.split_once('/').unwrap();
        for secret in [host, name] {
            assert!(!db.to_string().contains(secret), "{secret} in {db}");
        }
        return;
    }
    let dir = std::path::Path::new(app.db_url.strip_prefix("sqlite://").unwrap()).parent().unwrap().to_owned();
    let (_, db) = get_json(&app, "/health/db").await;
    assert!(!db.to_string().contains(dir.to_str().unwrap()), "{db}");
    assert!(db.get("path").is_none(), "{db}");
    // And not when the file is broken either.
    let file = app.db_url.strip_prefix("sqlite://").unwrap().to_string();
    std::fs::rename(&file, format!("{file}.moved")).unwrap();
    let (s, ready) = get_json(&app, "/health/ready").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!ready.to_string().contains(dir.to_str().unwrap()), "{ready}");
    let (_, db) = get_json(&app, "/health/db").await;
    assert!(!db.to_string().contains(dir.to_str().unwrap()), "{db}");
}

/// `calls` of `cmdstat_info` in Redis' own statistics.
fn info_calls(redis: &RedisServer) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_info:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_redis_asks_redis_for_info_at_most_once_a_second() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |_| {}).await;
    let before = info_calls(&redis);
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (http, url) = (app.client.clone(), app.url("/health/redis"));
        tasks.spawn(async move {
            for _ in 0..50 {
                let r: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
                assert_eq!(r["info"]["maxmemory_policy"], "allkeys-lru");
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64().ceil() as u64;
    // Our own `INFO commandstats` above counts once.
    let asked = info_calls(&redis) - before - 1;
    assert!(asked <= seconds + 1, "400 /health/redis calls in {seconds} s asked INFO {asked} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_has_a_request_id_and_api_log_lines_carry_it() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = crate::helpers::test_db_url(dir.path(), "o");
    let svc = ServiceProcess::start(&db_url, &[("REDIS_ENABLED", "false".into())], "", dir.path().join("o.log")).await;
    let key = create_key(&db_url, "k", false).await;
    let http = client();

    let r = http
        .post(svc.url("/api/v1/links"))
        .bearer_auth(&key)
        .header("x-request-id", "req-abc-123")
        .json(&json!({"code": "traced", "url": "https://example.com/secret-path?token=xyz"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["x-request-id"], "req-abc-123");
    let mut last_logged_id = String::new();
    for path in ["/traced", "/health", "/nope/nope", "/api/v1/links"] {
        let r = http.get(svc.url(path)).send().await.unwrap();
        let id = r.headers().get("x-request-id").unwrap_or_else(|| panic!("no request id on {path}"));
        assert!(!id.is_empty());
        last_logged_id = id.to_str().unwrap().to_string();
    }
    let r = http.get(svc.url("/traced")).header("x-request-id", "mine-1").send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"], "mine-1");

    // Redirects are not logged per request: the `/api/v1/links` one above is the last request
    // with a log line. Once its line is there, every earlier one is.
    let quoted = format!("\"{last_logged_id}\"");
    let logged = eventually(Duration::from_secs(5), || async { svc.stderr().contains(&quoted) }).await;
    assert!(logged, "no log line with the last request id {last_logged_id}: {}", svc.stderr());
    let log = svc.stderr();
    let lines: Vec<Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(!lines.is_empty(), "logs are JSON lines: {log}");
    let tagged: Vec<&Value> = lines.iter().filter(|l| l.to_string().contains("req-abc-123")).collect();
    assert!(tagged.len() >= 2, "the create logged at least 'link created' and the response line: {log}");
    assert!(tagged.iter().any(|l| l["message"].as_str().is_some_and(|m| m.contains("link created"))));
    assert!(!log.contains("secret-path"), "full target URLs are not logged at info");
    assert!(!log.contains(&key), "API keys are never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_service_notifies_ready_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let db_url = crate::helpers::test_db_url(dir.path(), "n");
    let svc = ServiceProcess::start(
        &db_url,
        &[("REDIS_ENABLED", "false".into()), ("NOTIFY_SOCKET", sock_path.display().to_string())],
        "",
        dir.path().join("n.log"),
    )
    .await;
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    svc.signal("TERM");
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let log_path = dir.path().join("n.log");
    let status = svc.wait().await;
    assert!(status.success());
    assert!(std::fs::read_to_string(log_path).unwrap().contains("shut down gracefully"));
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap();
    kb * 1024
}

/// `n` requests with made-up methods, paths and headers, from 8 keep-alive connections.
async fn random_requests(base: &str, n: usize, seed: u64) {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8u64 {
        let (http, base) = (client(), base.to_string());
        tasks.spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed * 100 + t);
            let word = |rng: &mut StdRng, len: usize| -> String {
                (0..len).map(|_| rng.random_range(b'A'..=b'Z') as char).collect()
            };
            for _ in 0..n / 8 {
                let method = match rng.random_range(0..4) {
                    0 => Method::GET,
                    1 => Method::POST,
                    _ => {
                        let len = rng.random_range(3..12);
                        Method::from_bytes(word(&mut rng, len).as_bytes()).unwrap()
                    }
                };
                let path = match rng.random_range(0..5) {
                    0 => format!("/{}", word(&mut rng, 7)),
                    1 => format!("/api/v1/{}", word(&mut rng, 6)),
                    2 => format!("/health/{}", word(&mut rng, 5)),
                    3 => format!("/{}/{}.php", word(&mut rng, 4), word(&mut rng, 4)),
                    _ => "/api/v1/links".to_string(),
                };
                let mut req = http.request(method, format!("{base}{path}"));
                for _ in 0..rng.random_range(0..4) {
                    req = req.header(format!("x-{}", word(&mut rng, 8).to_lowercase()), word(&mut rng, 16));
                }
                let r = req.send().await.unwrap();
                assert!(r.status().is_client_error() || r.status().is_success(), "{path}: {}", r.status());
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_paths_and_headers_leave_metrics_and_memory_flat() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = crate::helpers::test_db_url(dir.path(), "m");
    // A small L1, so that its bound (not this test's length) decides what unknown codes cost;
    // no per-IP limits, whose 429s would be one more (legitimate) status label mid-run.
    let env = [
        ("REDIS_ENABLED", "false".to_string()),
        ("L1_CAPACITY", "1000".into()),
        ("RATE_LIMIT_API_PER_IP_PER_MINUTE", "0".into()),
        ("RATE_LIMIT_CREATE_PER_IP_PER_MINUTE", "0".into()),
        ("RUST_LOG", "warn".into()),
    ];
    let svc = ServiceProcess::start(&db_url, &env, "", dir.path().join("m.log")).await;
    let http = client();
    let metrics_len = || async { http.get(svc.url("/metrics")).send().await.unwrap().text().await.unwrap().len() };

    random_requests(&svc.base, 2_000, 1).await;
    metrics_len().await; // a scrape records itself: the first one adds /metrics' own series
    let (len_before, rss_before) = (metrics_len().await, rss_bytes(svc.child.id()));
    random_requests(&svc.base, 10_000, 2).await;
    let (len_after, rss_after) = (metrics_len().await, rss_bytes(svc.child.id()));

    // Counter values gain digits; series do not appear.
    assert!(len_after <= len_before + len_before / 50, "/metrics grew from {len_before} to {len_after} bytes");
    assert!(
        rss_after <= rss_before + 4 * 1024 * 1024,
        "RSS grew from {} to {} KiB",
        rss_before / 1024,
        rss_after / 1024
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_that_accepts_only_tls_is_reached_with_sslmode_require() {
    // As RDS by default (`rds.force_ssl`): a server of this test's own, whatever the run's
    // backend, refusing every TCP connection without TLS.
    let pg = crate::helpers::PgServer::start_tls_only();
    let url = pg.create_database();
    let plain = crate::helpers::run_cli(&format!("{url}?sslmode=disable"), &["migrate"], &[("REDIS_ENABLED", "false")]);
    assert!(!plain.status.success(), "the server refuses plain connections");
    let tls = format!("{url}?sslmode=require");
    let app = spawn_app(None, move |c| c.db.url = tls).await;
    app.create_code("secure1", "https://example.com/tls").await;
    assert_eq!(app.location("secure1").await.unwrap(), "https://example.com/tls");
    let (s, db) = get_json(&app, "/health/db").await;
    assert_eq!(s, StatusCode::OK, "{db}");
}
