//! `shortener db copy`, run as the real binary between a real SQLite file and a real PostgreSQL
//! database, both ways: what arrives (every column of every key, link and daily row, compared by
//! the test's own reads, not by the command's checksums), that a service started on the copy
//! serves the links and takes the old keys, that a second copy changes nothing and a third
//! brings over what changed, and that a target differing from its source fails verification.
//!
//! These tests need a PostgreSQL on either run of the suite, so they take the run's server
//! (`pg::shared`) whatever `TEST_DATABASE` says.

use reqwest::StatusCode;
use serde_json::Value;
use shortener::{
    db::keys::KeyRights,
    time_util::{day_of, now_ms},
};
use sqlx::Row;

use crate::helpers::{client, create_key_with, raw_conn, run_cli, sqlite_url, ServiceProcess};

/// `shortener ARGS…` with `DATABASE_URL=db_url`, without Redis.
fn shortener(db_url: &str, args: &[&str]) -> std::process::Output {
    run_cli(db_url, args, &[("REDIS_ENABLED", "false")])
}

/// `shortener db copy --from FROM --to TO EXTRA…`.
fn db_copy(from: &str, to: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["db", "copy", "--from", from, "--to", to];
    args.extend_from_slice(extra);
    shortener(from, &args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts that a copy exited 0 and returns its stdout.
fn copied(out: std::process::Output) -> String {
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "db copy failed:\n{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("verified:"), "{stdout}");
    stdout
}

/// The verification report's lines (table, counts, checksums, result), without the timing line.
fn report(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter(|l| ["api_keys ", "link_mappings ", "link_clicks_daily "].iter().any(|t| l.starts_with(t)))
        .map(str::to_string)
        .collect()
}

/// A new database on the run's PostgreSQL server.
fn pg_db() -> String {
    crate::pg::shared().create_database()
}

async fn key_id(db: &str, name: &str) -> i64 {
    let mut conn = raw_conn(db).await;
    sqlx::query_scalar("SELECT id FROM api_keys WHERE name = $1").bind(name).fetch_one(&mut conn).await.unwrap()
}

/// Runs statements by hand on either backend (`$N` placeholders, no binds).
async fn exec(db: &str, statements: &[&str]) {
    let mut conn = raw_conn(db).await;
    for s in statements {
        sqlx::query(s).execute(&mut conn).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

/// One link with every column given.
struct Link<'a> {
    code: &'a str,
    url: &'a str,
    status: i64,
    expires_at: Option<i64>,
    clicks: i64,
    last_clicked_at: Option<i64>,
    created_by: Option<i64>,
}

async fn insert_link(db: &str, l: &Link<'_>) {
    let mut conn = raw_conn(db).await;
    sqlx::query(
        "INSERT INTO link_mappings (short_code, original_url, redirect_status, created_at, updated_at, expires_at,
                                    clicks, last_clicked_at, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(l.code)
    .bind(l.url)
    .bind(l.status)
    .bind(1_700_000_000_000_i64)
    .bind(1_700_000_123_456_i64)
    .bind(l.expires_at)
    .bind(l.clicks)
    .bind(l.last_clicked_at)
    .bind(l.created_by)
    .execute(&mut conn)
    .await
    .unwrap();
}

async fn insert_daily(db: &str, code: &str, day: &str, clicks: i64) {
    let mut conn = raw_conn(db).await;
    sqlx::query("INSERT INTO link_clicks_daily (short_code, day, clicks) VALUES ($1, $2, $3)")
        .bind(code)
        .bind(day)
        .bind(clicks)
        .execute(&mut conn)
        .await
        .unwrap();
}

/// The keys of an installation as an operator makes them.
struct Keys {
    admin: String,
    bot: String,
    revoked: String,
}

async fn make_keys(db: &str) -> Keys {
    let admin = create_key_with(db, "admin", KeyRights { admin: true, unlimited: false }).await;
    let bot = create_key_with(db, "bot", KeyRights { admin: false, unlimited: true }).await;
    let revoked = create_key_with(db, "former", KeyRights::default()).await;
    let out = shortener(db, &["keys", "revoke", "former"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    Keys { admin, bot, revoked }
}

/// An installation's links: one of `bot`'s with clicks and daily rows, an imported one, an expired
/// one, and `bulk` more (so that small pages make many of them).
async fn make_links(db: &str, bulk: usize) {
    let bot = key_id(db, "bot").await;
    let now = now_ms();
    let own = Link {
        code: "own0001",
        url: "https://example.com/own?q=1",
        status: 301,
        expires_at: Some(now + 86_400_000),
        clicks: 42,
        last_clicked_at: Some(now - 60_000),
        created_by: Some(bot),
    };
    insert_link(db, &own).await;
    let imported = Link {
        code: "imp0001",
        url: "https://example.com/imported",
        status: 302,
        expires_at: None,
        clicks: 0,
        last_clicked_at: None,
        created_by: None,
    };
    insert_link(db, &imported).await;
    let expired = Link { code: "exp0001", url: "https://example.com/expired", expires_at: Some(1_000), ..imported };
    insert_link(db, &expired).await;
    insert_daily(db, "own0001", &day_of(now - 86_400_000), 40).await;
    insert_daily(db, "own0001", &day_of(now), 2).await;
    for i in 0..bulk {
        let code = format!("bulk{i:03}");
        let url = format!("https://example.com/bulk/{i}");
        let l = Link { code: &code, url: &url, clicks: i as i64, created_by: Some(bot), ..imported };
        insert_link(db, &l).await;
        insert_daily(db, &code, "2026-01-01", i as i64 + 1).await;
    }
}

/// Every row of the three tables, in key order, as text: read by hand on either backend, so
/// that the comparison does not rest on the command's own checksums.
async fn rows_of(db: &str) -> Vec<String> {
    let mut conn = raw_conn(db).await;
    let mut out = Vec::new();
    let keys = sqlx::query(
        "SELECT id, name, key_hash, key_prefix, CAST(unlimited AS INTEGER) AS u, CAST(admin AS INTEGER) AS a,
                created_at, revoked_at FROM api_keys ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for r in keys {
        out.push(format!(
            "key {} {} {:?} {} {} {} {} {:?}",
            r.get::<i64, _>(0),
            r.get::<String, _>(1),
            r.get::<Vec<u8>, _>(2),
            r.get::<String, _>(3),
            r.get::<i64, _>(4),
            r.get::<i64, _>(5),
            r.get::<i64, _>(6),
            r.get::<Option<i64>, _>(7)
        ));
    }
    let links = sqlx::query(
        "SELECT short_code, original_url, redirect_status, created_at, updated_at, expires_at, clicks,
                last_clicked_at, created_by FROM link_mappings ORDER BY short_code",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for r in links {
        out.push(format!(
            "link {} {} {} {} {} {:?} {} {:?} {:?}",
            r.get::<String, _>(0),
            r.get::<String, _>(1),
            r.get::<i64, _>(2),
            r.get::<i64, _>(3),
            r.get::<i64, _>(4),
            r.get::<Option<i64>, _>(5),
            r.get::<i64, _>(6),
            r.get::<Option<i64>, _>(7),
            r.get::<Option<i64>, _>(8)
        ));
    }
    let daily = sqlx::query("SELECT short_code, day, clicks FROM link_clicks_daily ORDER BY short_code, day")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    for r in daily {
        out.push(format!("day {} {} {}", r.get::<String, _>(0), r.get::<String, _>(1), r.get::<i64, _>(2)));
    }
    out
}

/// A link's stored click count.
async fn clicks_of(db: &str, code: &str) -> i64 {
    let mut conn = raw_conn(db).await;
    sqlx::query_scalar("SELECT clicks FROM link_mappings WHERE short_code = $1")
        .bind(code)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// Starts the real service on `db` (no Redis) and checks what an installation's users would:
/// redirects, expiry, the old keys with their rights, the revoked one refused, the click counts
/// and days, and that a key created on the copy works.
async fn serves_the_installation(db: &str, keys: &Keys, log: std::path::PathBuf) {
    let svc = ServiceProcess::start(db, &[("REDIS_ENABLED", "false".into())], "", log).await;
    let http = client();
    let get = |key: &str, path: &str| http.get(svc.url(&format!("/api/v1{path}"))).bearer_auth(key).send();
    let r = get(&keys.bot, "/links/own0001").await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the ordinary key still owns its link");
    let link: Value = r.json().await.unwrap();
    assert_eq!((link["clicks"].as_u64(), link["created_by"].as_str()), (Some(42), Some("bot")), "{link}");
    assert_eq!(
        get(&keys.bot, "/links/imp0001").await.unwrap().status(),
        StatusCode::NOT_FOUND,
        "and only its own: an imported link is the admins'"
    );
    assert_eq!(get(&keys.admin, "/links/imp0001").await.unwrap().status(), StatusCode::OK, "the admin key is one");
    assert_eq!(get(&keys.revoked, "/links/own0001").await.unwrap().status(), StatusCode::FORBIDDEN);
    let series: Value = get(&keys.bot, "/links/own0001/clicks?days=2").await.unwrap().json().await.unwrap();
    assert_eq!(series["total"], 42, "both daily rows arrived: {series}");

    // (A redirect counts a click: after the counts were read.)
    let r = http.get(svc.url("/own0001")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.headers()["location"], "https://example.com/own?q=1");
    assert_eq!(http.get(svc.url("/bulk001")).send().await.unwrap().headers()["location"], "https://example.com/bulk/1");
    assert_eq!(http.get(svc.url("/exp0001")).send().await.unwrap().status(), StatusCode::GONE);

    // The next id is past the copied ones (PostgreSQL: the identity sequence was moved).
    let fresh = create_key_with(db, "made-on-the-copy", KeyRights::default()).await;
    assert_eq!(get(&fresh, "/links").await.unwrap().status(), StatusCode::OK);
    assert!(key_id(db, "made-on-the-copy").await > key_id(db, "former").await);
}

#[tokio::test]
async fn a_sqlite_installation_copied_to_postgres_serves_its_links_and_keys_from_there() {
    let dir = tempfile::tempdir().unwrap();
    let src = sqlite_url(dir.path(), "old");
    let keys = make_keys(&src).await;
    make_links(&src, 20).await;
    let dst = pg_db();

    // Pages of 7 rows: 23 links and 22 daily rows take several, the last one short.
    let out = db_copy(&src, &dst, &["--batch", "7"]);
    let stdout = copied(out);

    assert_eq!(rows_of(&dst).await, rows_of(&src).await, "every row of every table, every column");
    let lines = report(&stdout);
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].split_whitespace().take(3).eq(["api_keys", "3", "3"]), "{stdout}");
    assert!(lines[1].split_whitespace().take(3).eq(["link_mappings", "23", "23"]), "{stdout}");
    assert!(lines[2].split_whitespace().take(3).eq(["link_clicks_daily", "22", "22"]), "{stdout}");
    assert!(lines.iter().all(|l| l.ends_with(" same")), "{stdout}");
    serves_the_installation(&dst, &keys, dir.path().join("serve.log")).await;
}

#[tokio::test]
async fn a_postgres_installation_copied_to_sqlite_serves_from_there_over_keys_the_target_had() {
    let dir = tempfile::tempdir().unwrap();
    let src = pg_db();
    // The source's ids: ops 1, admin 2, bot 3, former 4.
    create_key_with(&src, "ops", KeyRights::default()).await;
    let keys = make_keys(&src).await;
    make_links(&src, 5).await;
    // A target that was started on its own first (a first deploy makes an `admin` key): its ids
    // and names clash with the source's (admin 1, ops 2).
    let dst = sqlite_url(dir.path(), "new");
    let own_admin = create_key_with(&dst, "admin", KeyRights { admin: true, unlimited: false }).await;
    create_key_with(&dst, "ops", KeyRights::default()).await;

    copied(db_copy(&src, &dst, &["--batch", "2"]));

    assert_eq!(rows_of(&dst).await, rows_of(&src).await);
    serves_the_installation(&dst, &keys, dir.path().join("serve.log")).await;
    let svc = ServiceProcess::start(&dst, &[("REDIS_ENABLED", "false".into())], "", dir.path().join("2.log")).await;
    let r = client().get(svc.url("/api/v1/links")).bearer_auth(&own_admin).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "the target's own key gave way to the source's");
}

#[tokio::test]
async fn copying_again_changes_nothing_and_a_later_copy_brings_over_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let src = sqlite_url(dir.path(), "old");
    make_keys(&src).await;
    make_links(&src, 12).await;
    let dst = pg_db();

    let first = report(&copied(db_copy(&src, &dst, &["--batch", "4"])));
    let target_after_first = rows_of(&dst).await;
    let second = report(&copied(db_copy(&src, &dst, &["--batch", "4"])));
    assert_eq!(second, first, "the same counts and checksums");
    assert_eq!(rows_of(&dst).await, target_after_first, "the same rows");
    assert_eq!(clicks_of(&dst, "own0001").await, 42, "clicks are copied, never added");

    // The source goes on living: a link clicked and retargeted, two deleted (one in the middle of
    // a page, and `own0001`, the last code of all), two created (before the first code and in
    // the middle), a day counted again, a key revoked.
    let bot = key_id(&src, "bot").await.to_string();
    exec(
        &src,
        &[
            "UPDATE link_mappings SET clicks = 50, original_url = 'https://example.com/moved' WHERE short_code = 'bulk003'",
            "DELETE FROM link_mappings WHERE short_code IN ('bulk005', 'own0001')",
            "DELETE FROM link_clicks_daily WHERE short_code IN ('bulk005', 'own0001')",
            "UPDATE link_clicks_daily SET clicks = 10 WHERE short_code = 'bulk001'",
            &format!("UPDATE api_keys SET revoked_at = 1700000000000 WHERE id = {bot}"),
        ],
    )
    .await;
    let new = |code| Link {
        code,
        url: "https://example.com/new",
        status: 308,
        expires_at: None,
        clicks: 1,
        last_clicked_at: Some(5),
        created_by: None,
    };
    insert_link(&src, &new("aaa0000")).await;
    insert_link(&src, &new("imp0002")).await;
    insert_daily(&src, "imp0002", "2026-02-02", 1).await;
    assert_ne!(rows_of(&src).await, target_after_first, "the source did change");

    let third = copied(db_copy(&src, &dst, &["--batch", "4"]));
    assert_eq!(rows_of(&dst).await, rows_of(&src).await, "the target follows, deletions included");
    assert!(third.contains("no longer in the source deleted"), "{third}");
    assert_eq!(clicks_of(&dst, "bulk003").await, 50);
}

#[tokio::test]
async fn a_target_that_differs_from_its_source_fails_verification() {
    let dir = tempfile::tempdir().unwrap();
    let src = sqlite_url(dir.path(), "old");
    make_keys(&src).await;
    make_links(&src, 3).await;
    let dst = pg_db();
    copied(db_copy(&src, &dst, &[]));
    let verified = shortener(&src, &["db", "copy", "--from", &src, "--to", &dst, "--verify-only"]);
    assert!(verified.status.success(), "a faithful copy verifies: {}", text(&verified.stderr));

    // Someone writes to the target after the copy: one click more.
    exec(&dst, &["UPDATE link_mappings SET clicks = clicks + 1 WHERE short_code = 'own0001'"]).await;
    let out = shortener(&src, &["db", "copy", "--from", &src, "--to", &dst, "--verify-only"]);
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "a mismatch exits non-zero: {stdout}");
    let lines = report(&stdout);
    assert!(lines[1].starts_with("link_mappings") && lines[1].ends_with("DIFFERENT"), "{stdout}");
    assert!(lines[0].ends_with(" same") && lines[2].ends_with(" same"), "only the changed table differs: {stdout}");
    assert!(text(&out.stderr).contains("verification failed: link_mappings differ"), "{}", text(&out.stderr));
    assert_eq!(clicks_of(&dst, "own0001").await, 43, "--verify-only wrote nothing");

    // A row missing counts too, and a copy puts both right.
    exec(&dst, &["DELETE FROM link_clicks_daily WHERE short_code = 'bulk001'"]).await;
    assert!(!shortener(&src, &["db", "copy", "--from", &src, "--to", &dst, "--verify-only"]).status.success());
    copied(db_copy(&src, &dst, &[]));
    assert_eq!(rows_of(&dst).await, rows_of(&src).await);
}

#[tokio::test]
async fn progress_goes_to_stderr_and_secrets_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let src = sqlite_url(dir.path(), "old");
    make_keys(&src).await;
    make_links(&src, 2).await;
    // A password in the target URL (the test server trusts every connection and ignores it).
    let dst = pg_db().replacen("postgres://postgres@", "postgres://postgres:s3cret-pw@", 1);
    let out = db_copy(&src, &dst, &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Not a terminal: plain lines, one at least per table.
    for table in ["api_keys", "link_mappings", "link_clicks_daily"] {
        assert!(stderr.lines().any(|l| l.starts_with(&format!("{table}: "))), "no progress for {table}: {stderr}");
    }
    assert!(!stdout.contains(&format!("{table}: ", table = "link_mappings")), "stdout carries only the result");
    assert!(!stdout.contains("s3cret-pw") && !stderr.contains("s3cret-pw"), "{stdout}\n{stderr}");
    assert!(stdout.contains("REDACTED"), "{stdout}");

    // The same database on both sides is refused before anything is touched.
    let same = db_copy(&src, &src, &[]);
    assert!(!same.status.success());
    assert!(text(&same.stderr).contains("the same database"), "{}", text(&same.stderr));
    // A source file that does not exist is not created and copied as an empty installation.
    let missing = sqlite_url(dir.path(), "typo");
    let out = db_copy(&missing, &pg_db(), &[]);
    assert!(!out.status.success() && text(&out.stderr).contains("does not exist"), "{}", text(&out.stderr));
    assert!(!dir.path().join("typo.db").exists());
}

#[tokio::test]
async fn a_copy_cut_off_by_a_crash_of_the_target_is_finished_by_running_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let src = sqlite_url(dir.path(), "old");
    make_keys(&src).await;
    let csv = dir.path().join("links.csv");
    let lines: String = (0..5_000).map(|i| format!("c{i:05},https://example.com/{i}\n")).collect();
    std::fs::write(&csv, lines).unwrap();
    let out = shortener(&src, &["links", "import", csv.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A server of its own, to crash.
    let mut server = crate::pg::PgServer::start();
    let dst = server.create_database();
    let name = dst.rsplit('/').next().unwrap().to_string();
    assert!(shortener(&dst, &["migrate"]).status.success(), "the tables exist before the copy is watched");

    // One row a page: thousands of transactions, seconds of copying to crash the server in.
    let mut copy = std::process::Command::new(env!("CARGO_BIN_EXE_shortener"))
        .args(["db", "copy", "--from", &src, "--to", &dst, "--batch", "1"])
        .env("DATABASE_URL", &src)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let count = |server: &crate::pg::PgServer| -> i64 {
        server.psql(&name, "SELECT count(*) FROM link_mappings").parse().unwrap_or(0)
    };
    let started = std::time::Instant::now();
    while count(&server) < 100 {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "the copy did not get going");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    server.kill();
    let status = copy.wait().unwrap();
    assert!(!status.success(), "the copy fails when its target goes away");

    server.restart();
    // (Fewer than were seen before the crash, possibly: the test server runs with
    // synchronous_commit=off, so an immediate stop loses the last commits.)
    let partial = count(&server);
    assert!(partial < 5_000, "the crash left only part of the links: {partial}");
    copied(db_copy(&src, &dst, &[]));
    assert_eq!(rows_of(&dst).await, rows_of(&src).await);
}
