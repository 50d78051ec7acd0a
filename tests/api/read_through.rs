//! Read-through correctness with real Redis: single-flight, negative cache, the stale-set guard,
//! and a history check of reads against acknowledged updates.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use reqwest::StatusCode;
use serde_json::json;
use shortener::links::resolve::{FillPause, Hooks};
use tokio::task::JoinSet;

use crate::helpers::{spawn_app, spawn_app_with, RedisServer, TestApp};

/// `n` concurrent requests for `code`, sent from a runtime of their own: on the service's two
/// runtime threads, the 1,000 clients' own work would delay the service's Redis replies and
/// pub/sub pings past their budgets, and the test would measure that instead of single-flight.
async fn storm(app: &Arc<TestApp>, code: &str, n: usize) -> Vec<Result<String, StatusCode>> {
    // A client of its own too: a connection belongs to the runtime that opened it.
    let url = app.url(&format!("/{code}"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let out = rt.block_on(async move {
            let http = crate::helpers::client();
            let mut set = JoinSet::new();
            for _ in 0..n {
                let (http, url) = (http.clone(), url.clone());
                set.spawn(async move {
                    let r = http.get(url).send().await.unwrap();
                    match r.status().is_redirection() {
                        true => Ok(r.headers()["location"].to_str().unwrap().to_string()),
                        false => Err(r.status()),
                    }
                });
            }
            let mut out = Vec::with_capacity(n);
            while let Some(r) = set.join_next().await {
                out.push(r.unwrap());
            }
            out
        });
        let _ = tx.send(out);
    });
    rx.await.unwrap()
}

async fn single_flight(l1_capacity: u64) {
    let redis = RedisServer::start();
    let app = Arc::new(spawn_app(Some(&redis), |c| c.cache.l1_capacity = l1_capacity).await);
    app.create_code("stampede", "https://example.com/hot").await;
    assert_eq!(redis.cli(&["EXISTS", "shortener:l:stampede"]).trim(), "0", "not cached before the storm");
    let before = app.stat("db_lookups").await;

    let results = storm(&app, "stampede", 1000).await;

    assert!(results.iter().all(|r| r.as_deref() == Ok("https://example.com/hot")));
    assert_eq!(app.stat("db_lookups").await - before, 1, "{}", app.cache_stats().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_for_an_uncached_code_read_sqlite_once() {
    single_flight(10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_read_sqlite_once_even_without_l1() {
    single_flight(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_for_an_unknown_code_read_sqlite_at_most_once_and_creating_it_works_at_once() {
    let redis = RedisServer::start();
    let app = Arc::new(spawn_app(Some(&redis), |c| c.cache.l1_capacity = 0).await);

    let results = storm(&app, "ghost-code", 1000).await;

    assert!(results.iter().all(|r| *r == Err(StatusCode::NOT_FOUND)));
    assert!(app.stat("db_lookups").await <= 1, "{}", app.cache_stats().await);
    assert!(app.stat("negative_hits").await >= 999);

    app.create_code("ghost-code", "https://example.com/now-real").await;
    assert_eq!(app.location("ghost-code").await, Ok("https://example.com/now-real".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_entries_in_redis_expire() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |c| c.cache.negative_ttl = Duration::from_secs(30)).await;
    assert_eq!(app.location("nobody-home").await, Err(StatusCode::NOT_FOUND));
    let ttl: i64 = redis.cli(&["PTTL", "shortener:l:nobody-home"]).trim().parse().unwrap();
    assert!((1..=30_000).contains(&ttl), "PTTL {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positive_entries_in_redis_have_no_ttl() {
    let redis = RedisServer::start();
    let app = spawn_app(Some(&redis), |_| {}).await;
    app.create_code("forever", "https://example.com/f").await;
    app.location("forever").await.unwrap();
    assert_eq!(redis.cli(&["PTTL", "shortener:l:forever"]).trim(), "-1");
}

enum Change {
    Update,
    Delete,
}

/// Holds a fill between its SQLite read and its write-back, changes the link meanwhile, lets
/// the fill finish, and returns what a request made after the API answered sees.
async fn race_a_fill_against(change: Change, l1_capacity: u64, guard: bool) -> Result<String, StatusCode> {
    let redis = RedisServer::start();
    let pause = Arc::new(FillPause::default());
    let app = Arc::new(
        spawn_app_with(
            Some(&redis),
            |c| c.cache.l1_capacity = l1_capacity,
            Hooks { fill_pause: Some(pause.clone()), disable_write_back_guard: !guard },
        )
        .await,
    );
    app.create_code("raced", "https://example.com/old").await;

    pause.arm();
    let reader = {
        let app = app.clone();
        tokio::spawn(async move { app.location("raced").await })
    };
    tokio::time::timeout(Duration::from_secs(10), pause.reached.notified()).await.expect("the fill reached the hook");
    match change {
        Change::Update => {
            assert_eq!(app.patch("raced", json!({"url": "https://example.com/new"})).await, StatusCode::OK)
        }
        Change::Delete => assert_eq!(app.delete("raced").await, StatusCode::NO_CONTENT),
    }
    pause.release();
    // The held request started before the change: the old answer is fine for it.
    assert_eq!(reader.await.unwrap(), Ok("https://example.com/old".into()));

    let after = app.location("raced").await;
    // Ask again: the second answer comes from whatever the first one cached.
    assert_eq!(app.location("raced").await, after);
    after
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_read_before_an_update_never_lands_after_it() {
    for l1 in [0, 10_000] {
        assert_eq!(
            race_a_fill_against(Change::Update, l1, true).await,
            Ok("https://example.com/new".into()),
            "L1 {l1}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_read_before_a_delete_never_resurrects_the_link() {
    for l1 in [0, 10_000] {
        assert_eq!(race_a_fill_against(Change::Delete, l1, true).await, Err(StatusCode::NOT_FOUND), "L1 {l1}");
    }
}

/// The same race with the guard off serves the old target: proof that the tests above can see
/// the race they claim to prevent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_guard_the_same_race_serves_a_stale_redirect() {
    for l1 in [0, 10_000] {
        assert_eq!(
            race_a_fill_against(Change::Update, l1, false).await,
            Ok("https://example.com/old".into()),
            "L1 {l1}"
        );
        assert_eq!(
            race_a_fill_against(Change::Delete, l1, false).await,
            Ok("https://example.com/old".into()),
            "L1 {l1}"
        );
    }
}

/// Writers update links while readers follow them and Redis is flushed every few milliseconds;
/// any read that started after an acknowledged update and saw an older target is a failure.
async fn history_check(l1_capacity: u64) {
    const CODES: usize = 4;
    let redis = RedisServer::start();
    let app = Arc::new(spawn_app(Some(&redis), |c| c.cache.l1_capacity = l1_capacity).await);
    for i in 0..CODES {
        app.create_code(&format!("hist{i}"), "https://example.com/hist/0").await;
    }
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..CODES).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = JoinSet::new();

    for i in 0..CODES {
        let (app, acked, stop) = (app.clone(), acked.clone(), stop.clone());
        tasks.spawn(async move {
            let mut v = 0u64;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                let s = app.patch(&format!("hist{i}"), json!({"url": format!("https://example.com/hist/{v}")})).await;
                assert_eq!(s, StatusCode::OK);
                acked[i].store(v, Ordering::SeqCst);
                // Pacing: a steady stream of changes, not a SQLite-bound spin.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (0u64, 0u64)
        });
    }
    {
        let (url, stop) = (redis.url(), stop.clone());
        tasks.spawn(async move {
            let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
            let mut flushes = 0;
            while !stop.load(Ordering::Relaxed) {
                let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
                flushes += 1;
                // Pacing: Redis emptied every few milliseconds, between fills and reads.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            (0, flushes)
        });
    }
    for r in 0..8 {
        let (app, acked, stop) = (app.clone(), acked.clone(), stop.clone());
        tasks.spawn(async move {
            let (mut reads, mut stale) = (0u64, 0u64);
            let mut i = r % CODES;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 1) % CODES;
                let floor = acked[i].load(Ordering::SeqCst);
                let loc = app.location(&format!("hist{i}")).await.expect("always redirects");
                let seen: u64 = loc.rsplit('/').next().unwrap().parse().unwrap();
                reads += 1;
                if seen < floor {
                    stale += 1;
                    eprintln!("stale read: hist{i} gave v{seen} after v{floor} was acknowledged");
                }
            }
            (reads, stale)
        });
    }
    // The scenario's length: three seconds of changes, flushes and reads racing, every read
    // checked against what was acknowledged before it started.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut reads, mut stale) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (a, b) = r.unwrap();
        if a > 0 {
            reads += a;
            stale += b;
        }
    }
    assert!(reads > 200, "too few reads to mean anything: {reads}");
    assert_eq!(stale, 0, "{stale} stale reads out of {reads}");
    let stats = app.cache_stats().await;
    assert!(
        stats["redis_hits"].as_u64().unwrap() + stats["l1_hits"].as_u64().unwrap() > 0,
        "caches were exercised: {stats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_sees_an_update_older_than_one_acknowledged_before_it_started_with_l1() {
    history_check(10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_read_sees_an_update_older_than_one_acknowledged_before_it_started_without_l1() {
    history_check(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_instance_forgets_its_l1_copy_when_a_link_changes_elsewhere() {
    let redis = RedisServer::start();
    let a = spawn_app(Some(&redis), |c| c.cache.l1_ttl = Duration::from_secs(600)).await;
    let b = spawn_app(Some(&redis), |c| {
        c.cache.l1_ttl = Duration::from_secs(600);
        c.db.url = a.db_url.clone();
    })
    .await;
    a.create_code("shared", "https://example.com/one").await;
    for _ in 0..3 {
        assert_eq!(b.location("shared").await, Ok("https://example.com/one".into()));
    }
    assert!(b.stat("l1_hits").await >= 2, "B serves it from its L1");

    assert_eq!(a.patch("shared", json!({"url": "https://example.com/two"})).await, StatusCode::OK);
    let seen = crate::helpers::eventually(Duration::from_secs(2), || async {
        b.location("shared").await == Ok("https://example.com/two".into())
    })
    .await;
    assert!(seen, "B still serves its L1 copy long after A's change");
    assert_eq!(a.delete("shared").await, StatusCode::NO_CONTENT);
    let gone = crate::helpers::eventually(Duration::from_secs(2), || async {
        b.location("shared").await == Err(StatusCode::NOT_FOUND)
    })
    .await;
    assert!(gone);
}
