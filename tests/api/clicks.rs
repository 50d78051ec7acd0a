//! Clicks: buffered in memory, flushed in batches, exact, never lost on a clean shutdown.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::{sync::Semaphore, task::JoinSet};

use crate::helpers::{client, eventually, raw_conn, seed_links, spawn_app, RedisServer, ServiceProcess, TestApp};

async fn api_clicks(app: &TestApp, code: &str) -> u64 {
    let v: Value = app.api(Method::GET, &format!("/links/{code}")).send().await.unwrap().json().await.unwrap();
    v["clicks"].as_u64().unwrap()
}

async fn db_clicks(db_url: &str) -> HashMap<String, i64> {
    let mut conn = raw_conn(db_url).await;
    sqlx::query_as::<_, (String, i64)>("SELECT short_code, clicks FROM link_mappings")
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_concurrent_gets_are_counted_exactly_and_heads_and_bots_not_at_all() {
    let redis = RedisServer::start();
    let app = Arc::new(spawn_app(Some(&redis), |_| {}).await);
    let codes: Vec<String> = (0..10).map(|i| format!("clk{i}")).collect();
    for c in &codes {
        app.create_code(c, &format!("https://example.com/{c}")).await;
    }
    let gate = Arc::new(Semaphore::new(500));
    let mut set = JoinSet::new();
    for i in 0..10_000usize {
        let (app, gate) = (app.clone(), gate.clone());
        let code = codes[(i * 7 + i / 3) % codes.len()].clone();
        set.spawn(async move {
            let _p = gate.acquire().await.unwrap();
            let method = if i % 10 == 9 { Method::HEAD } else { Method::GET };
            let mut req = app.client.request(method.clone(), app.url(&format!("/{code}")));
            if i % 50 == 1 {
                req = req.header("user-agent", "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)");
            }
            let r = req.send().await.unwrap();
            let counted = method == Method::GET && i % 50 != 1 && r.status() == StatusCode::FOUND;
            (code, counted)
        });
    }
    let mut want: HashMap<String, u64> = HashMap::new();
    while let Some(r) = set.join_next().await {
        let (code, counted) = r.unwrap();
        *want.entry(code).or_default() += u64::from(counted);
    }
    assert!(want.values().sum::<u64>() > 8000);

    // The API counts buffered clicks at once; the database has them after a flush.
    for c in &codes {
        assert_eq!(api_clicks(&app, c).await, want[c], "{c} via API");
    }
    let db_url = app.db_url.clone();
    let flushed = eventually(Duration::from_secs(10), || {
        let (db_url, want) = (db_url.clone(), want.clone());
        async move {
            let got = db_clicks(&db_url).await;
            want.iter().all(|(c, n)| got.get(c).copied() == Some(*n as i64))
        }
    })
    .await;
    assert!(flushed, "flushed counts {:?} != {want:?}", db_clicks(&app.db_url).await);
    // A flush commits, then forgets what it committed: until then the API could count a click
    // in the database and in the buffer. Once nothing is buffered, the API reads the database.
    let settled =
        eventually(Duration::from_secs(5), || async { app.metric("shortener_clicks_pending_links").await == 0.0 })
            .await;
    assert!(settled, "clicks still buffered after the flush: {}", app.metric("shortener_clicks_pending_links").await);
    for c in &codes {
        assert_eq!(api_clicks(&app, c).await, want[c], "{c} counted twice after the flush?");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_series_has_every_day_with_today_last() {
    let app = spawn_app(None, |_| {}).await;
    app.create_code("series", "https://example.com/s").await;
    for _ in 0..3 {
        app.location("series").await.unwrap();
    }
    let v: Value = app.api(Method::GET, "/links/series/clicks?days=7").send().await.unwrap().json().await.unwrap();
    let days = v["days"].as_array().unwrap();
    assert_eq!(days.len(), 7);
    assert_eq!(days[6]["day"], shortener::time_util::day_of(shortener::time_util::now_ms()));
    assert_eq!(days[6]["clicks"], 3);
    assert_eq!(v["total"], 3);
    let bad = app.api(Method::GET, "/links/series/clicks?days=0").send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let missing = app.api(Method::GET, "/links/nothere/clicks").send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

/// The real binary under load gets SIGTERM; every redirect the client received is in the
/// database afterwards, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_click() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let db_url = crate::helpers::test_db_url(dir.path(), "c");
    let env = [("REDIS_URL", redis.url()), ("CLICK_FLUSH_INTERVAL_MS", "60000".to_string())];
    let svc = ServiceProcess::start(&db_url, &env, "", dir.path().join("1.log")).await;
    let http = client();
    let base = svc.base.clone();
    seed_links(&db_url, "term", "https://example.com/", 20).await;

    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut set = JoinSet::new();
    for w in 0..50 {
        let (http, base, received, stop) = (http.clone(), base.clone(), received.clone(), stop.clone());
        set.spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                match http.get(format!("{base}/term{}", i % 20)).send().await {
                    Ok(r) if r.status() == StatusCode::FOUND => {
                        received.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => panic!("unexpected {}", r.status()),
                    Err(_) => break, // the server stopped accepting
                }
            }
        });
    }
    // SIGTERM lands under load: once plenty of redirects were answered (every one of them still
    // buffered: the flush interval is a minute), with the 50 clients still sending.
    let loaded = eventually(Duration::from_secs(20), || async { received.load(Ordering::SeqCst) >= 1000 }).await;
    assert!(loaded, "only {} redirects in 20 s", received.load(Ordering::SeqCst));
    svc.signal("TERM");
    let status = svc.wait().await;
    stop.store(true, Ordering::Relaxed);
    while set.join_next().await.is_some() {}
    assert!(status.success(), "exit status {status}");

    let mut conn = raw_conn(&db_url).await;
    let got: i64 =
        sqlx::query_scalar("SELECT CAST(SUM(clicks) AS BIGINT) FROM link_mappings").fetch_one(&mut conn).await.unwrap();
    let received = received.load(Ordering::SeqCst);
    assert!(received > 100, "load too light to mean anything: {received}");
    assert_eq!(got as u64, received, "persisted clicks vs redirects received");

    // And the restarted service reports them through the API.
    let again = ServiceProcess::start(&db_url, &env, "", dir.path().join("2.log")).await;
    let key = crate::helpers::create_admin_key(&db_url, "reader").await;
    let mut reported = 0;
    for i in 0..20 {
        let v: Value = http
            .get(again.url(&format!("/api/v1/links/term{i}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        reported += v["clicks"].as_u64().unwrap();
    }
    assert_eq!(reported, received, "clicks reported after the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_l1_off_every_redis_copy_of_a_link_counts_into_one_place() {
    let redis = RedisServer::start();
    let app = Arc::new(
        spawn_app(Some(&redis), |c| {
            c.cache.l1_capacity = 0;
            c.clicks.flush_interval = Duration::from_secs(3600);
        })
        .await,
    );
    app.create_code("copies", "https://example.com/c").await;
    app.location("copies").await.unwrap(); // now cached in Redis
    let mut set = JoinSet::new();
    for _ in 0..400 {
        let app = app.clone();
        set.spawn(async move { app.location("copies").await.is_ok() });
    }
    let mut ok = 0;
    while let Some(r) = set.join_next().await {
        ok += u64::from(r.unwrap());
    }
    assert_eq!(ok, 400);
    assert!(app.stat("redis_hits").await > 300, "served from Redis: a fresh copy per request");
    assert_eq!(api_clicks(&app, "copies").await, 401);
    assert_eq!(app.metric("shortener_clicks_pending_links").await, 1.0, "one entry for the code, not one per copy");
    // A graceful stop flushes.
    let mut app = Arc::try_unwrap(app).ok().expect("every request task is done");
    app.stop().await;
    assert_eq!(db_clicks(&app.db_url).await["copies"], 401);
}
