//! Key ownership: a key manages the links it created; an admin key manages every link; another
//! key's link answers exactly like one that does not exist.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{create_admin_key, create_key, raw_conn, run_cli, seed_links, spawn_app, ServiceProcess, TestApp};

/// Status and body of an API call made with `key`.
async fn call(app: &TestApp, key: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, String) {
    let mut req = app.client.request(method, app.url(path)).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

async fn create_as(app: &TestApp, key: &str, code: &str, url: &str) -> Value {
    let (s, body) = call(app, key, Method::POST, "/api/v1/links", Some(json!({"code": code, "url": url}))).await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn list_codes(app: &TestApp, key: &str) -> Vec<(String, Value)> {
    let (s, body) = call(app, key, Method::GET, "/api/v1/links?limit=1000", None).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    page["links"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["code"].as_str().unwrap().to_string(), l["created_by"].clone()))
        .collect()
}

/// Every way to touch one link through the API, as (method, path, body).
fn every_call_on(code: &str) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("/api/v1/links/{code}"), None),
        (Method::GET, format!("/api/v1/links/{code}/clicks"), None),
        (Method::PATCH, format!("/api/v1/links/{code}"), Some(json!({"url": "https://evil.example/"}))),
        (Method::PATCH, format!("/api/v1/links/{code}"), Some(json!({}))),
        (Method::DELETE, format!("/api/v1/links/{code}"), None),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_keys_link_answers_exactly_like_a_link_that_does_not_exist() {
    let app = spawn_app(None, |_| {}).await;
    let alice = create_key(&app.db_url, "alice", false).await;
    let bob = create_key(&app.db_url, "bob", false).await;
    create_as(&app, &alice, "alices", "https://example.com/alice").await;

    for ((method, path, body), (_, missing_path, _)) in every_call_on("alices").into_iter().zip(every_call_on("nosuch"))
    {
        let theirs = call(&app, &bob, method.clone(), &path, body.clone()).await;
        let missing = call(&app, &bob, method.clone(), &missing_path, body).await;
        assert_eq!(theirs.0, StatusCode::NOT_FOUND, "{method} {path}: {}", theirs.1);
        assert_eq!(theirs, missing, "{method} {path} must not tell another key's link from a missing one");
    }

    // Nothing bob tried changed it, and it still redirects for everyone.
    let (s, body) = call(&app, &alice, Method::GET, "/api/v1/links/alices", None).await;
    assert_eq!(s, StatusCode::OK);
    let link: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(link["url"], "https://example.com/alice");
    assert_eq!(link["created_by"], "alice");
    assert_eq!(app.location("alices").await, Ok("https://example.com/alice".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_changes_and_deletes_its_own_links_and_lists_only_them() {
    let app = spawn_app(None, |_| {}).await;
    let alice = create_key(&app.db_url, "alice", false).await;
    let bob = create_key(&app.db_url, "bob", false).await;
    create_as(&app, &alice, "alice1", "https://example.com/a1").await;
    create_as(&app, &alice, "alice2", "https://example.com/a2").await;
    create_as(&app, &bob, "bobby1", "https://example.com/b1").await;
    seed_links(&app.db_url, "seeded", "https://example.com/s", 2).await;

    let mine: Vec<String> = list_codes(&app, &alice).await.into_iter().map(|(c, _)| c).collect();
    assert_eq!(mine, ["alice1", "alice2"]);
    let bobs = list_codes(&app, &bob).await;
    assert_eq!(bobs, [("bobby1".to_string(), json!("bob"))]);

    let (s, body) =
        call(&app, &alice, Method::PATCH, "/api/v1/links/alice1", Some(json!({"url": "https://example.com/new"})))
            .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(app.location("alice1").await, Ok("https://example.com/new".into()));
    assert_eq!(call(&app, &alice, Method::DELETE, "/api/v1/links/alice2", None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(app.location("alice2").await, Err(StatusCode::NOT_FOUND));
    // A page size smaller than the list pages through the caller's links only.
    let (_, body) = call(&app, &bob, Method::GET, "/api/v1/links?limit=1", None).await;
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["links"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (_, body) = call(&app, &bob, Method::GET, &format!("/api/v1/links?limit=1&cursor={cursor}"), None).await;
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["links"], json!([]));
    assert_eq!(page["next_cursor"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_keys_manage_every_link_and_see_who_created_each() {
    let app = spawn_app(None, |_| {}).await;
    let alice = create_key(&app.db_url, "alice", false).await;
    let root = create_admin_key(&app.db_url, "root").await;
    create_as(&app, &alice, "alices", "https://example.com/alice").await;
    create_as(&app, &root, "roots", "https://example.com/root").await;
    seed_links(&app.db_url, "imported", "https://example.com/i", 1).await;

    let all = list_codes(&app, &root).await;
    assert_eq!(
        all,
        [
            ("alices".to_string(), json!("alice")),
            ("imported0".to_string(), Value::Null),
            ("roots".to_string(), json!("root")),
        ]
    );
    // Alice sees neither the admin's link nor the imported one.
    assert_eq!(list_codes(&app, &alice).await.len(), 1);
    assert_eq!(call(&app, &alice, Method::GET, "/api/v1/links/imported0", None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(call(&app, &alice, Method::GET, "/api/v1/links/roots", None).await.0, StatusCode::NOT_FOUND);

    for (method, path, body) in every_call_on("alices") {
        let (s, text) = call(&app, &root, method.clone(), &path, body).await;
        assert!(s.is_success(), "admin {method} {path}: {s} {text}");
    }
    assert_eq!(app.location("alices").await, Err(StatusCode::NOT_FOUND), "the admin's delete went through");
    let (s, _) =
        call(&app, &root, Method::PATCH, "/api/v1/links/imported0", Some(json!({"redirect_status": 301}))).await;
    assert_eq!(s, StatusCode::OK);
}

/// The migrations before key ownership, applied to a fresh database.
async fn migrate_to_before_ownership(db_url: &str, dir: &std::path::Path) {
    let old = dir.join("old-migrations");
    std::fs::create_dir_all(&old).unwrap();
    let backend = if crate::helpers::on_postgres() { "postgres" } else { "sqlite" };
    for f in ["0001_links_and_keys.sql", "0002_clicks.sql"] {
        let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(backend).join(f);
        std::fs::copy(from, old.join(f)).unwrap();
    }
    if let Some(path) = db_url.strip_prefix("sqlite://") {
        std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
        std::fs::File::create(path).unwrap();
    }
    let mut conn = raw_conn(db_url).await;
    sqlx::migrate::Migrator::new(old.as_path()).await.unwrap().run(&mut conn).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_before_the_migration_keep_working_and_own_what_they_created() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = crate::helpers::test_db_url(dir.path(), "old");
    migrate_to_before_ownership(&db_url, dir.path()).await;
    let old_key = "sk_0123456789abcdefghijklmnopqrstuv";
    let mut conn = raw_conn(&db_url).await;
    sqlx::query("INSERT INTO api_keys (id, name, key_hash, key_prefix) VALUES (7, 'legacy', $1, 'sk_0123')")
        .bind(shortener::db::keys::hash_key(old_key))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO link_mappings (short_code, original_url, created_by) VALUES ('legacy1', 'https://example.com/l', 7)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO link_mappings (short_code, original_url) VALUES ('orphan1', 'https://example.com/o')")
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);

    let svc = ServiceProcess::start(&db_url, &[("REDIS_ENABLED", "false".into())], "", dir.path().join("s.log")).await;
    let http = crate::helpers::client();
    let list: Value =
        http.get(svc.url("/api/v1/links")).bearer_auth(old_key).send().await.unwrap().json().await.unwrap();
    let codes: Vec<&str> = list["links"].as_array().unwrap().iter().map(|l| l["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["legacy1"], "{list}");
    assert_eq!(list["links"][0]["created_by"], "legacy");
    let orphan = http.get(svc.url("/api/v1/links/orphan1")).bearer_auth(old_key).send().await.unwrap();
    assert_eq!(orphan.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_create_admin_on_the_command_line_makes_a_key_that_manages_every_link() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = crate::helpers::test_db_url(dir.path(), "cli");
    let make = |name: &str, admin: bool| {
        let mut args = vec!["keys", "create", name];
        if admin {
            args.push("--admin");
        }
        let out = run_cli(&db_url, &args, &[("REDIS_ENABLED", "false")]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().lines().last().unwrap().to_string()
    };
    let (plain, admin) = (make("plain", false), make("ops", true));
    let listed = String::from_utf8(run_cli(&db_url, &["keys", "list"], &[]).stdout).unwrap();
    let row = |name: &str| listed.lines().find(|l| l.starts_with(name)).unwrap().split_whitespace().nth(2).unwrap();
    assert_eq!((row("plain"), row("ops")), ("no", "yes"), "{listed}");

    seed_links(&db_url, "old", "https://example.com/", 1).await;
    let svc = ServiceProcess::start(&db_url, &[("REDIS_ENABLED", "false".into())], "", dir.path().join("s.log")).await;
    let http = crate::helpers::client();
    let get = |key: String| {
        let (http, url) = (http.clone(), svc.url("/api/v1/links/old0"));
        async move { http.get(url).bearer_auth(key).send().await.unwrap().status() }
    };
    assert_eq!(get(admin).await, StatusCode::OK);
    assert_eq!(get(plain).await, StatusCode::NOT_FOUND);
}
