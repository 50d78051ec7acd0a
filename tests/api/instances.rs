//! Several instances: one SQLite file and one Redis shared by instances with an L1 each, and
//! several processes serving one inherited listening socket.
//!
//! The guarantee under test: a change is acknowledged only when no live instance can still
//! serve the old target — not from Redis, not from its L1 — even while Redis is being flushed
//! and subscriptions are being killed.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::task::JoinSet;

use crate::helpers::*;

/// The database file the instances of a test share, in `db`.
fn shared_db_url(db: &tempfile::TempDir) -> String {
    crate::helpers::test_db_url(db.path(), "shared")
}

/// Two instances on one database and one Redis: one to change links through, and one whose
/// long-lived L1 holds them.
async fn writer_and_reader(redis: &RedisServer, db: &tempfile::TempDir) -> (TestApp, TestApp) {
    let u1 = shared_db_url(db);
    let u2 = u1.clone();
    let writer = spawn_app(Some(redis), move |c| c.db.url = u1).await;
    let reader = spawn_app(Some(redis), move |c| {
        c.db.url = u2;
        c.cache.l1_ttl = Duration::from_secs(600);
    })
    .await;
    (writer, reader)
}

/// Three instances on one database and one Redis, each with a large, long-lived L1.
async fn three_instances(redis: &RedisServer, db: &tempfile::TempDir) -> Vec<Arc<TestApp>> {
    let db_url = shared_db_url(db);
    let mut apps = Vec::new();
    for _ in 0..3 {
        let url = db_url.clone();
        apps.push(Arc::new(
            spawn_app(Some(redis), move |c| {
                c.db.url = url;
                c.cache.l1_capacity = 10_000;
                c.cache.l1_ttl = Duration::from_secs(600);
            })
            .await,
        ));
    }
    apps
}

/// Kills instances' subscription connections while the history runs: one at a time by id, and
/// every fourth time all of them (`CLIENT KILL TYPE pubsub`). Returns how many were killed.
async fn kill_subscriptions(url: String, stop: Arc<AtomicBool>) -> u64 {
    let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let (mut round, mut killed) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        if round % 4 == 0 {
            let n: i64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("pubsub").query_async(&mut c).await.unwrap();
            killed += n as u64;
        } else {
            let list: String =
                redis::cmd("CLIENT").arg("LIST").arg("TYPE").arg("pubsub").query_async(&mut c).await.unwrap();
            let ids: Vec<&str> =
                list.lines().filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("id="))).collect();
            if !ids.is_empty() {
                let id = ids[round as usize % ids.len()];
                let n: i64 = redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query_async(&mut c).await.unwrap_or(0);
                killed += n as u64;
            }
        }
        // Pacing: a subscription lost every few hundred milliseconds, each long enough resubscribed
        // for reads to use L1 again in between. (Every change in flight when one is killed waits
        // out `CONFIRM_WITHIN`, so this also sets how many changes the run makes.)
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    killed
}

/// What a history run saw.
pub(crate) struct History {
    pub(crate) reads: u64,
    pub(crate) stale: u64,
    pub(crate) writes: u64,
    pub(crate) kills: u64,
}

impl History {
    /// Fails unless the run made enough reads and `writes` changes to mean anything.
    pub(crate) fn enough(&self, writes: u64) {
        let (r, w) = (self.reads, self.writes);
        assert!(r > 1000 && w > writes, "too little traffic to mean anything: {r} reads, {w} writes");
    }
}

/// Writers change links through the first instance while readers follow them through the other
/// two and Redis is flushed every few milliseconds (and, with `kill`, subscriptions are killed);
/// a read that started after a change was acknowledged and saw an older target is stale.
async fn history(apps: &[Arc<TestApp>], redis: &RedisServer, kill: bool) -> History {
    history_against(apps, vec![redis.url()], if kill { vec![redis.url()] } else { Vec::new() }).await
}

/// [`history`] against any topology: `flush` are the nodes (masters) flushed every few
/// milliseconds, `kill` those whose subscriptions are killed.
pub(crate) async fn history_against(apps: &[Arc<TestApp>], flush: Vec<String>, kill: Vec<String>) -> History {
    const CODES: usize = 8;
    let writer = apps[0].clone();
    let tag = if kill.is_empty() { "f" } else { "k" };
    for i in 0..CODES {
        writer.create_code(&format!("h{tag}{i}"), "https://example.com/h/0").await;
    }
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..CODES).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = JoinSet::new();
    let mut readers = JoinSet::new();
    let mut others = JoinSet::new();
    for i in 0..CODES {
        let (app, acked, stop) = (writer.clone(), acked.clone(), stop.clone());
        writers.spawn(async move {
            let mut v = 0u64;
            while !stop.load(Ordering::Relaxed) {
                v += 1;
                let s = app.patch(&format!("h{tag}{i}"), json!({"url": format!("https://example.com/h/{v}")})).await;
                assert_eq!(s, StatusCode::OK);
                acked[i].store(v, Ordering::SeqCst);
                // Pacing: a steady stream of changes, not a SQLite-bound spin.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            v
        });
    }
    for url in flush {
        let stop = stop.clone();
        others.spawn(async move {
            let mut c = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
                // Pacing: Redis emptied every few milliseconds, between fills and reads.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            0
        });
    }
    for url in kill {
        others.spawn(kill_subscriptions(url, stop.clone()));
    }
    for r in 0..8 {
        let (app, acked, stop) = (apps[1 + r % 2].clone(), acked.clone(), stop.clone());
        readers.spawn(async move {
            let (mut reads, mut stale) = (0u64, 0u64);
            let mut i = r % CODES;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 1) % CODES;
                let floor = acked[i].load(Ordering::SeqCst);
                let loc = app.location(&format!("h{tag}{i}")).await.expect("always redirects");
                let seen: u64 = loc.rsplit('/').next().unwrap().parse().unwrap();
                reads += 1;
                if seen < floor {
                    stale += 1;
                    eprintln!(
                        "stale read through {}: h{tag}{i} gave v{seen} after v{floor} was acknowledged",
                        app.addr
                    );
                }
            }
            (reads, stale)
        });
    }
    // The scenario's length: four seconds of changes, flushes, kills and reads racing, every
    // read checked against what was acknowledged before it started.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::Relaxed);
    let mut h = History { reads: 0, stale: 0, writes: 0, kills: 0 };
    while let Some(r) = readers.join_next().await {
        let (reads, stale) = r.unwrap();
        h.reads += reads;
        h.stale += stale;
    }
    while let Some(w) = writers.join_next().await {
        h.writes += w.unwrap();
    }
    while let Some(k) = others.join_next().await {
        h.kills += k.unwrap();
    }
    h
}

async fn l1_hits(apps: &[Arc<TestApp>]) -> u64 {
    let mut hits = 0;
    for app in apps {
        hits += app.stat("l1_hits").await;
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_never_serve_a_target_older_than_an_acknowledged_change() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let apps = three_instances(&redis, &db).await;
    let h = history(&apps, &redis, false).await;
    h.enough(100);
    assert_eq!(h.stale, 0, "{} stale reads out of {}", h.stale, h.reads);
    assert!(l1_hits(&apps[1..]).await > 0, "the readers' L1 was exercised");
    let confirmed = apps[0].metric("shortener_invalidation_confirmations_total{outcome=\"confirmed\"}").await;
    assert!(confirmed > 0.0, "changes were confirmed by the other instances");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriptions_never_let_an_instance_serve_a_stale_target() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let apps = three_instances(&redis, &db).await;
    let h = history(&apps, &redis, true).await;
    h.enough(30);
    assert!(h.kills >= 5, "subscriptions were killed during the run: {}", h.kills);
    assert_eq!(h.stale, 0, "{} stale reads out of {} with {} subscriptions killed", h.stale, h.reads, h.kills);
    assert!(l1_hits(&apps[1..]).await > 0, "the readers' L1 was exercised");
    // Every instance subscribed again, and trusts its L1 again.
    for app in &apps {
        let app = app.clone();
        let trusted = eventually(Duration::from_secs(5), || {
            let app = app.clone();
            async move { app.cache_stats().await["l1_trusted"] == json!(true) }
        })
        .await;
        assert!(trusted, "{} resubscribed and trusts its L1 again", app.addr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_does_not_answer_delays_a_change_boundedly_and_never_serves_it_stale() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let db_url = shared_db_url(&db);
    let url = db_url.clone();
    let writer = spawn_app(Some(&redis), move |c| c.db.url = url).await;
    writer.create_code("frozen", "https://example.com/before").await;
    let env = [("REDIS_URL", redis.url()), ("L1_TTL_MS", "600000".to_string())];
    let other = ServiceProcess::start(&db_url, &env, "", db.path().join("other.log")).await;
    let http = client();
    let follow = || async {
        let r = http.get(other.url("/frozen")).send().await.unwrap();
        r.headers()["location"].to_str().unwrap().to_string()
    };
    // The other instance trusts its L1 and holds the link there.
    let held = eventually(Duration::from_secs(5), || async {
        let stats: serde_json::Value = http.get(other.url("/health/cache")).send().await.unwrap().json().await.unwrap();
        stats["l1_trusted"] == json!(true)
    })
    .await;
    assert!(held, "the other instance trusts its L1: {}", other.stderr());
    for _ in 0..3 {
        assert_eq!(follow().await, "https://example.com/before");
    }
    let hits: serde_json::Value = http.get(other.url("/health/cache")).send().await.unwrap().json().await.unwrap();
    assert!(hits["l1_hits"].as_u64().unwrap() >= 1, "the link is in the other instance's L1: {hits}");

    // Frozen: it receives the change's message but can neither apply nor confirm it.
    other.signal("STOP");
    let started = Instant::now();
    let r = writer
        .api(reqwest::Method::PATCH, "/links/frozen")
        .json(&json!({"url": "https://example.com/after"}))
        .send()
        .await;
    let r = r.unwrap();
    let status = r.status();
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK, "after {took:?}: {}", r.text().await.unwrap());
    assert!(took < Duration::from_secs(3), "the change waited {took:?} for an instance that does not answer");
    let timed_out = writer.metric("shortener_invalidation_confirmations_total{outcome=\"timed_out\"}").await;
    assert_eq!(timed_out, 1.0, "the change was answered without that instance's confirmation");

    // Thawed: its L1 still holds the old target, but its trust ran out while it was stopped, so
    // the very first request after the change goes past L1.
    other.signal("CONT");
    assert_eq!(follow().await, "https://example.com/after");
    // And once it has caught up it trusts its L1 again.
    let caught_up = eventually(Duration::from_secs(5), || async {
        let stats: serde_json::Value = http.get(other.url("/health/cache")).send().await.unwrap().json().await.unwrap();
        stats["l1_trusted"] == json!(true)
    })
    .await;
    assert!(caught_up, "the thawed instance trusts its L1 again");
    assert_eq!(follow().await, "https://example.com/after");
}

/// `loadtest/share_socket.py`: N copies of the binary on one listening socket.
struct Shared {
    launcher: Child,
    addr: String,
    pidfile: std::path::PathBuf,
}

impl Shared {
    fn start(db_url: &str, copies: usize, dir: &std::path::Path) -> Self {
        let pidfile = dir.join("pids");
        let mut launcher = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/loadtest/share_socket.py"))
            .arg("--pidfile")
            .arg(&pidfile)
            .args(["127.0.0.1:0", &copies.to_string(), "--", env!("CARGO_BIN_EXE_shortener"), "serve"])
            .env("DATABASE_URL", db_url)
            .env("REDIS_ENABLED", "false")
            .env("RUST_LOG", "warn")
            .env("HEADER_READ_TIMEOUT_MS", "30000")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("shared.log")).unwrap())
            .spawn()
            .expect("python3 runs loadtest/share_socket.py");
        let mut line = String::new();
        BufReader::new(launcher.stdout.take().unwrap()).read_line(&mut line).unwrap();
        Shared { launcher, addr: line.trim().to_string(), pidfile }
    }

    fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(&self.pidfile).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([&format!("-{sig}"), &self.launcher.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.signal("TERM");
        let _ = self.launcher.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_an_inherited_socket_restart_one_by_one_under_load_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = crate::helpers::test_db_url(dir.path(), "s");
    assert!(run_cli(&db_url, &["migrate"], &[]).status.success());
    let key = create_key(&db_url, "shared", true).await;
    let shared = Shared::start(&db_url, 2, dir.path());
    let base = format!("http://{}", shared.addr);
    let http = client();
    let up = eventually(Duration::from_secs(30), || {
        let (http, url) = (http.clone(), format!("{base}/health"));
        async move { http.get(url).send().await.is_ok_and(|r| r.status().is_success()) }
    })
    .await;
    assert!(up, "the shared socket is served");
    let created = http
        .post(format!("{base}/api/v1/links"))
        .bearer_auth(&key)
        .json(&json!({"code": "roll", "url": "https://example.com/roll"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let before = shared.pids();
    assert_eq!(before.len(), 2, "two processes serve the socket");

    // Keep-alive clients that send their next request as soon as the answer arrives.
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = JoinSet::new();
    for _ in 0..32 {
        let (http, url, stop) = (http.clone(), format!("{base}/roll"), stop.clone());
        load.spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == StatusCode::FOUND => ok += 1,
                    Ok(r) => failed.push(format!("status {}", r.status())),
                    Err(e) => failed.push(format!("{e:?}")),
                }
            }
            (ok, failed)
        });
    }
    // Let the load settle on both processes, then restart them one at a time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.signal("USR1");
    let rolled = eventually(Duration::from_secs(30), || {
        let (pids, before) = (shared.pids(), before.clone());
        async move { pids.len() == 2 && pids.iter().all(|p| !before.contains(p)) }
    })
    .await;
    assert!(rolled, "both processes were replaced: {:?} -> {:?}", before, shared.pids());
    // Traffic reaches the new processes too before the load stops.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut failed) = (0u64, Vec::new());
    while let Some(r) = load.join_next().await {
        let (o, f) = r.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(ok > 500, "too few requests to mean anything: {ok}");
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the restarts: {:?}",
        failed.len(),
        ok,
        &failed[..failed.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_dead_or_stalled_a_change_is_never_served_stale_by_another_instance() {
    for fault in ["kill", "pause"] {
        let mut redis = RedisServer::start();
        let db = tempfile::tempdir().unwrap();
        let (writer, reader) = writer_and_reader(&redis, &db).await;
        writer.create_code("dark", "https://example.com/before").await;
        for _ in 0..3 {
            assert_eq!(reader.location("dark").await.unwrap(), "https://example.com/before");
        }
        assert!(reader.stat("l1_hits").await >= 1, "{fault}: the reader holds the link in L1");
        match fault {
            "kill" => redis.kill(),
            _ => redis.pause(),
        }
        // The change cannot be announced; it is answered once no instance can still trust an L1
        // that might hold the old target.
        assert_eq!(writer.patch("dark", json!({"url": "https://example.com/after"})).await, StatusCode::OK, "{fault}");
        assert_eq!(reader.location("dark").await.unwrap(), "https://example.com/after", "{fault}");
        let waited = writer.metric("shortener_invalidation_confirmations_total{outcome=\"unannounced\"}").await;
        assert!(waited <= 1.0, "{fault}: at most the first change of the outage waits ({waited})");
        if fault == "pause" {
            redis.resume();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_redis_outage_l1_keeps_serving_and_changes_arrive_through_the_outbox() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let (writer, reader) = writer_and_reader(&redis, &db).await;
    writer.create_code("outage", "https://example.com/before").await;
    assert_eq!(reader.location("outage").await.unwrap(), "https://example.com/before");
    redis.pause();
    let (hits, lookups) = (reader.stat("l1_hits").await, reader.stat("db_lookups").await);
    // Reads spread over two seconds of the outage: longer than any ping's trust (1 s), so what
    // keeps L1 trusted is the outbox.
    for _ in 0..40 {
        assert_eq!(reader.location("outage").await.unwrap(), "https://example.com/before");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reader.stat("l1_hits").await - hits, 40, "every read during the outage came from L1");
    assert_eq!(reader.stat("db_lookups").await - lookups, 0, "none went to the database");
    // A change made meanwhile cannot be announced; the reader learns of it from the outbox before
    // it is answered.
    assert_eq!(writer.patch("outage", json!({"url": "https://example.com/after"})).await, StatusCode::OK);
    assert_eq!(reader.location("outage").await.unwrap(), "https://example.com/after");
    redis.resume();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_a_database_never_hand_out_one_code_twice_and_their_clicks_add_up_exactly() {
    let redis = RedisServer::start();
    let db = tempfile::tempdir().unwrap();
    let apps = three_instances(&redis, &db).await;
    // Creates through every instance at once: random codes, and custom codes that all three
    // race for (each taken exactly once; the others are told 409).
    let mut creates = JoinSet::new();
    for (i, app) in apps.iter().enumerate() {
        for n in 0..150 {
            let app = app.clone();
            creates.spawn(async move {
                let body = if n % 3 == 0 {
                    json!({"code": format!("race{}", n / 3), "url": format!("https://example.com/{i}/{n}")})
                } else {
                    json!({"url": format!("https://example.com/{i}/{n}")})
                };
                let r = app.api(reqwest::Method::POST, "/links").json(&body).send().await.unwrap();
                let status = r.status();
                let v: Value = r.json().await.unwrap();
                (status, v)
            });
        }
    }
    let (mut codes, mut taken) = (std::collections::HashMap::new(), 0);
    while let Some(r) = creates.join_next().await {
        let (status, v) = r.unwrap();
        match status {
            StatusCode::CREATED => {
                let code = v["code"].as_str().unwrap().to_string();
                let previous = codes.insert(code.clone(), v["url"].as_str().unwrap().to_string());
                assert!(previous.is_none(), "code {code} handed out twice");
            }
            StatusCode::CONFLICT => taken += 1,
            other => panic!("create answered {other}: {v}"),
        }
    }
    assert_eq!(codes.len() + taken, 450);
    assert_eq!(taken, 100, "each of the 50 raced custom codes is taken once, by one of the three");
    // Every acknowledged code is stored with the target its creator was told.
    let mut conn = raw_conn(&apps[0].db_url).await;
    let stored: std::collections::HashMap<String, String> =
        sqlx::query_as::<_, (String, String)>("SELECT short_code, original_url FROM link_mappings")
            .fetch_all(&mut conn)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(stored, codes);

    // Clicks through all three on the same links are added, never overwritten.
    let hot: Vec<String> = codes.keys().take(20).cloned().collect();
    let mut follows = JoinSet::new();
    for (i, app) in apps.iter().enumerate() {
        let (app, hot) = (app.clone(), hot.clone());
        follows.spawn(async move {
            for n in 0..300 {
                let code = &hot[(n + i) % hot.len()];
                assert_eq!(app.follow(code).await.status(), StatusCode::FOUND);
            }
        });
    }
    while let Some(r) = follows.join_next().await {
        r.unwrap();
    }
    let counted = eventually(Duration::from_secs(20), || {
        let db_url = apps[0].db_url.clone();
        async move {
            let mut conn = raw_conn(&db_url).await;
            let total: Option<i64> = sqlx::query_scalar("SELECT CAST(SUM(clicks) AS BIGINT) FROM link_mappings")
                .fetch_one(&mut conn)
                .await
                .unwrap();
            total == Some(900)
        }
    })
    .await;
    assert!(counted, "900 follows through three instances are 900 clicks in the database");
}
