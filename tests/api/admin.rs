//! The admin web app over plain HTTP, on SQLite and PostgreSQL alike: the list's keyset pages,
//! sorts and searches, the security headers of every response, the sign-in limit, cookies.
//! (The browser flows are in tests/browser.)

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{client, raw_conn, spawn_app, TestApp};

/// The value of `name=` in a response's `Set-Cookie` headers.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| v.to_string())
}

fn value(cookie: &str) -> String {
    cookie.split(';').next().unwrap().split_once('=').unwrap().1.to_string()
}

/// Posts the sign-in form as a browser does (pre-session cookie and field); the response.
async fn post_sign_in(app: &TestApp, key: &str) -> reqwest::Response {
    let page = client().get(app.url("/admin/sign-in")).send().await.unwrap();
    let pre = value(&set_cookie(&page, "shortener_admin_pre").expect("a pre-session cookie"));
    client()
        .post(app.url("/admin/sign-in"))
        .header("cookie", format!("shortener_admin_pre={pre}"))
        .form(&[("key", key), ("pre", pre.as_str())])
        .send()
        .await
        .unwrap()
}

/// Signs in; the session cookie's value.
async fn sign_in(app: &TestApp, key: &str) -> String {
    let r = post_sign_in(app, key).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    value(&set_cookie(&r, "shortener_admin").expect("a session cookie"))
}

async fn page(app: &TestApp, session: &str, path: &str) -> (StatusCode, String) {
    let r = client().get(app.url(path)).header("cookie", format!("shortener_admin={session}")).send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

/// The codes a list page shows, in order, and its next-page link.
fn codes_and_next(html: &str) -> (Vec<String>, Option<String>) {
    let codes = html
        .split("<a class=\"code\" href=\"/admin/links/")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect();
    let next = html.split("rel=\"next\"").next().filter(|_| html.contains("rel=\"next\"")).map(|before| {
        let href = before.rsplit("href=\"").next().unwrap();
        href.split('"').next().unwrap().replace("&amp;", "&").replace("&#38;", "&")
    });
    (codes, next)
}

/// Every code the list shows for `query`, walking its pages.
async fn walk(app: &TestApp, session: &str, query: &str) -> Vec<String> {
    let mut all = Vec::new();
    let mut path = format!("/admin/links?{query}");
    for _ in 0..100 {
        let (status, html) = page(app, session, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {html}");
        let (codes, next) = codes_and_next(&html);
        all.extend(codes);
        match next {
            Some(n) => path = n,
            None => return all,
        }
    }
    panic!("more than 100 pages");
}

#[tokio::test]
async fn the_list_walks_every_link_once_in_each_order_and_searches_by_code_prefix_and_url() {
    let app = spawn_app(None, |_| {}).await;
    // 120 links over three pages, with created_at ties (the keyset's second column decides).
    let mut c = raw_conn(&app.db_url).await;
    for i in 0..120 {
        sqlx::query("INSERT INTO link_mappings (short_code, original_url, created_at) VALUES ($1, $2, $3)")
            .bind(format!("k{i:03}"))
            .bind(format!("https://example.com/{}/{i}", if i % 3 == 0 { "Fizz" } else { "buzz" }))
            .bind(1_700_000_000_000_i64 + i64::from(i / 2))
            .execute(&mut c)
            .await
            .unwrap();
    }
    let session = sign_in(&app, &app.key).await;
    let by_code: Vec<String> = (0..120).map(|i| format!("k{i:03}")).collect();
    assert_eq!(walk(&app, &session, "sort=code").await, by_code);
    assert_eq!(walk(&app, &session, "sort=oldest").await, by_code);
    let mut newest = by_code.clone();
    newest.reverse();
    assert_eq!(walk(&app, &session, "sort=newest").await, newest);
    // A code prefix: a range of the primary key, in code order.
    let k1: Vec<String> = by_code.iter().filter(|c| c.starts_with("k1")).cloned().collect();
    assert_eq!(walk(&app, &session, "q=k1&field=code&sort=newest").await, k1);
    // A URL substring, case-insensitive, with LIKE's wildcards taken literally.
    let fizz: Vec<String> = (0..120).filter(|i| i % 3 == 0).map(|i| format!("k{i:03}")).collect();
    assert_eq!(walk(&app, &session, "q=fizz&field=url&sort=oldest").await, fizz);
    assert!(walk(&app, &session, "q=%25&field=url").await.is_empty());
    assert!(walk(&app, &session, "q=a%20b&field=code").await.is_empty());
    // A cursor this site did not make is a 400 page, not a 500.
    let (status, html) = page(&app, &session, "/admin/links?after=nonsense").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("<h1>Bad request</h1>"));
}

#[tokio::test]
async fn every_admin_response_is_no_store_with_a_strict_policy_and_html_errors() {
    let app = spawn_app(None, |_| {}).await;
    let session = sign_in(&app, &app.key).await;
    for path in
        ["/admin/sign-in", "/admin/links", "/admin/links/nosuch", "/admin/nowhere", "/admin/admin.css", "/admin"]
    {
        let r =
            client().get(app.url(path)).header("cookie", format!("shortener_admin={session}")).send().await.unwrap();
        let h = r.headers();
        assert_eq!(h["cache-control"], "no-store", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "same-origin", "{path}");
    }
    let (status, html) = page(&app, &session, "/admin/links/nosuch").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.starts_with("<!doctype html>") && html.contains("Not found"), "{html}");
    // The session cookie: HttpOnly, SameSite=Strict, Path=/admin; not Secure over http.
    let r = post_sign_in(&app, &app.key).await;
    let cookie = set_cookie(&r, "shortener_admin").unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/admin"] {
        assert!(cookie.contains(part), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");
    // Only the token's hash is stored.
    let mut c = raw_conn(&app.db_url).await;
    let hashes: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT token_hash FROM admin_sessions").fetch_all(&mut c).await.unwrap();
    assert!(hashes.iter().all(|h| h.len() == 32 && *h != value(&cookie).into_bytes()));
}

#[tokio::test]
async fn the_session_cookie_is_secure_when_the_public_base_is_https() {
    let app = spawn_app(None, |c| c.http.public_base_url = url::Url::parse("https://s.example.com/").unwrap()).await;
    let r = post_sign_in(&app, &app.key).await;
    assert!(set_cookie(&r, "shortener_admin").unwrap().contains("; Secure"));
}

#[tokio::test]
async fn failed_sign_ins_count_as_failed_authentications_and_a_blocked_address_gets_a_429_page() {
    let app = spawn_app(None, |c| c.limits.auth_failures_per_ip = shortener::config::Limit::per_minute(3)).await;
    let mut last = None;
    for _ in 0..6 {
        let r = post_sign_in(&app, "sk_wrong_wrong_wrong").await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            last = Some(r);
            break;
        }
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(r.text().await.unwrap().contains("This key is not valid."));
    }
    let r = last.expect("the address is blocked after its failed attempts");
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert!(r.text().await.unwrap().contains("Too many attempts"));
    // Blocked means blocked: even the right key waits, answered from memory.
    assert_eq!(post_sign_in(&app, &app.key).await.status(), StatusCode::TOO_MANY_REQUESTS);
    // And the API shares the memory: its bearer keys are refused from this address too.
    let api = app.api(reqwest::Method::GET, "/links").send().await.unwrap();
    assert_eq!(api.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn expired_sessions_are_deleted_in_bounded_batches_at_sign_in() {
    let app = spawn_app(None, |c| c.admin.session_idle = Duration::from_secs(60)).await;
    let mut c = raw_conn(&app.db_url).await;
    let key_id: i64 = sqlx::query_scalar("SELECT id FROM api_keys").fetch_one(&mut c).await.unwrap();
    for i in 0..600_i64 {
        sqlx::query("INSERT INTO admin_sessions (token_hash, key_id, csrf_token, created_at, last_seen_at) VALUES ($1, $2, 'x', 0, 0)")
            .bind(i.to_be_bytes().to_vec())
            .bind(key_id)
            .execute(&mut c)
            .await
            .unwrap();
    }
    sign_in(&app, &app.key).await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM admin_sessions").fetch_one(&mut c).await.unwrap();
    // 500 of the 600 expired ones went, the new one came.
    assert_eq!(left, 101);
    sign_in(&app, &app.key).await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM admin_sessions").fetch_one(&mut c).await.unwrap();
    assert_eq!(left, 2);
}

#[tokio::test]
async fn an_import_larger_than_allowed_gets_a_413_page_and_one_without_its_token_a_403_page() {
    let app = spawn_app(None, |c| c.admin.import_max_bytes = 2000).await;
    let session = sign_in(&app, &app.key).await;
    let (_, form) = page(&app, &session, "/admin/import").await;
    let csrf = form.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let post = |csrf: String, rows: usize| {
        let body = format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n--XyZ\r\n\
             Content-Disposition: form-data; name=\"file\"; filename=\"l.csv\"\r\nContent-Type: text/csv\r\n\r\n{}\r\n--XyZ--\r\n",
            (0..rows).map(|i| format!("big{i:05},https://example.com/{i}\n")).collect::<String>()
        );
        client()
            .post(app.url("/admin/import"))
            .header("cookie", format!("shortener_admin={session}"))
            .header("content-type", "multipart/form-data; boundary=XyZ")
            .body(body)
            .send()
    };
    let r = post(csrf.clone(), 500).await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.text().await.unwrap().contains("ADMIN_IMPORT_MAX_BYTES"));
    let r = post("wrong".into(), 3).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = post(csrf, 3).await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()["location"].to_str().unwrap().starts_with("/admin/import/"));
}

#[tokio::test]
async fn the_export_downloads_every_link_of_the_session_keys_scope_as_csv_and_json_lines() {
    let app = spawn_app(None, |_| {}).await;
    app.create_code("exp001", "https://example.com/one").await;
    let alice = crate::helpers::create_key(&app.db_url, "alice-exp", false).await;
    let r = client()
        .post(app.url("/api/v1/links"))
        .bearer_auth(&alice)
        .json(&serde_json::json!({"code": "exp002", "url": "https://example.com/two"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let admin = sign_in(&app, &app.key).await;
    let (status, csv) = page(&app, &admin, "/admin/export.csv").await;
    assert_eq!(status, StatusCode::OK);
    assert!(csv.starts_with("code,url,redirect_status,"), "{csv}");
    assert!(csv.contains("exp001,https://example.com/one,302") && csv.contains("exp002,https://example.com/two"));
    let own = sign_in(&app, &alice).await;
    let (status, jsonl) = page(&app, &own, "/admin/export.jsonl").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(jsonl.lines().count(), 1, "{jsonl}");
    assert!(jsonl.contains("\"code\":\"exp002\""));
    let (status, _) = page(&app, &own, "/admin/export.xml").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn creates_from_the_admin_app_count_against_the_keys_create_limit_and_then_get_a_429_page() {
    let limit = shortener::config::Limit { limit: 2, period: Duration::from_secs(3600) };
    let app = spawn_app(None, move |c| c.limits.create_per_key = limit).await;
    let session = sign_in(&app, &app.key).await;
    let (_, form) = page(&app, &session, "/admin/links/new").await;
    let csrf = form.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let create = |n: usize| {
        let url = format!("https://example.com/admin-limit/{n}");
        client()
            .post(app.url("/admin/links"))
            .header("cookie", format!("shortener_admin={session}"))
            .form(&[
                ("csrf", csrf.as_str()),
                ("url", url.as_str()),
                ("code", ""),
                ("expires_at", ""),
                ("redirect_status", "302"),
            ])
            .send()
    };
    for n in 0..2 {
        let r = create(n).await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "create {n} within the limit");
    }
    let r = create(2).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    // The same key through the API shares the budget: it is spent.
    let api = app
        .api(reqwest::Method::POST, "/links")
        .json(&serde_json::json!({"url": "https://example.com/admin-limit/api"}))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), StatusCode::TOO_MANY_REQUESTS);
}
