//! The admin web app in a real headless Chromium (Debian's `chromium` and `chromium-driver`),
//! driven over WebDriver by fantoccini, against the service on a free port with a real
//! redis-server and its own database — and axe-core (npm, `tests/browser/node_modules`)
//! injected into every page: no serious or critical accessibility violation is allowed.
//!
//! A missing chromedriver, Chromium or axe-core fails the tests (`tests/run.sh` installs them).
//! Headless Chromium's User-Agent says `HeadlessChrome`, which the click counter rightly takes
//! for a bot: the browser here is given an ordinary desktop User-Agent instead, so its clicks
//! count like a person's. With `SCREENSHOTS=1`, the screenshot test also writes its pictures to
//! `docs/screenshots/`.

#[path = "../api/helpers.rs"]
#[allow(unused_imports)]
mod helpers;
#[path = "../api/pg.rs"]
#[allow(dead_code)]
mod pg;
#[path = "../support/qr_decode.rs"]
mod qr_decode;

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{elements::Element, key::Key, Client, ClientBuilder, Locator};
use helpers::{create_key, eventually, free_port, raw_conn, spawn_app, RedisServer, TestApp};
use serde_json::{json, Value};

/// An ordinary desktop Chrome's User-Agent (not `HeadlessChrome`: see the module doc).
const USER_AGENT: &str =
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver must be installed (apt-get install chromium chromium-driver; tests/run.sh does)");
        let d = Driver { child, port };
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{port}/status");
        let up = eventually(Duration::from_secs(20), || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(url).send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        assert!(up, "chromedriver did not answer on port {port}");
        d
    }

    /// A fresh headless Chromium session (1280×900 unless `mobile`).
    async fn browser(&self, width: u32, height: u32) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium_binary(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         format!("--window-size={width},{height}"), format!("--user-agent={USER_AGENT}"),
                         "--hide-scrollbars", "--force-device-scale-factor=1"],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session (is chromium installed?)")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium_binary() -> String {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(p).exists() {
            return p.to_string();
        }
    }
    panic!("chromium must be installed (apt-get install chromium chromium-driver; tests/run.sh does)");
}

/// axe-core's script, from `AXE_CORE_JS` or `tests/browser/node_modules`.
fn axe_source() -> String {
    let path = std::env::var("AXE_CORE_JS").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules/axe-core/axe.min.js")
    });
    std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("axe-core is needed at {} ({e}): npm ci --prefix tests/browser (tests/run.sh does)", path.display())
    })
}

/// A tiny site of its own on a free port: every path answers `<h1>Target PATH</h1>`.
async fn target_site() -> SocketAddr {
    use axum::{extract::Request, response::Html, Router};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(|req: Request| async move {
        Html(format!(
            "<!doctype html><html lang=\"en\"><title>Target</title><h1 id=\"target\">Target {}</h1></html>",
            req.uri().path()
        ))
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The service with Redis, reachable by the browser at its `PUBLIC_BASE_URL`.
async fn app(redis: &RedisServer, tweak: impl FnOnce(&mut shortener::config::Config)) -> TestApp {
    let port = free_port();
    spawn_app(Some(redis), move |c| {
        c.http.listen_addr = SocketAddr::from(([127, 0, 0, 1], port));
        c.http.public_base_url = url::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
        tweak(c);
    })
    .await
}

/// Everything a test drives: the service, its Redis, chromedriver and one browser.
struct Setup {
    app: TestApp,
    _redis: RedisServer,
    _driver: Driver,
    b: Client,
    axe: String,
}

impl Setup {
    async fn new() -> Setup {
        Self::with(|_| {}).await
    }

    async fn with(tweak: impl FnOnce(&mut shortener::config::Config)) -> Setup {
        let axe = axe_source();
        let redis = RedisServer::start();
        let app = app(&redis, tweak).await;
        let driver = Driver::start().await;
        let b = driver.browser(1280, 900).await;
        Setup { app, _redis: redis, _driver: driver, b, axe }
    }

    async fn goto(&self, path: &str) {
        self.b.goto(&self.app.url(path)).await.unwrap();
    }

    async fn text(&self, css: &str) -> String {
        self.b.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}")).text().await.unwrap()
    }

    async fn path(&self) -> String {
        let u = self.b.current_url().await.unwrap();
        match u.query() {
            Some(q) => format!("{}?{q}", u.path()),
            None => u.path().to_string(),
        }
    }

    async fn field(&self, css: &str) -> Element {
        self.b.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"))
    }

    /// Fills `css` with `text` (clearing it first).
    async fn fill(&self, css: &str, text: &str) {
        let f = self.field(css).await;
        f.clear().await.unwrap();
        f.send_keys(text).await.unwrap();
    }

    /// Clicks `css` (a link or a submit button) and waits until the next page has loaded.
    async fn click(&self, css: &str) {
        self.b.execute("window.__before_click = true; return true;", vec![]).await.unwrap();
        self.field(css).await.click().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let loaded = self
                .b
                .execute("return window.__before_click === undefined && document.readyState === 'complete';", vec![])
                .await
                .ok()
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            if loaded {
                return;
            }
            assert!(Instant::now() < deadline, "clicking {css} loaded no new page");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn sign_in(&self, key: &str) {
        self.goto("/admin/sign-in").await;
        self.fill("#key", key).await;
        self.click("form[action='/admin/sign-in'] button[type=submit]").await;
    }

    /// Runs axe-core on the current page; panics listing every serious or critical violation.
    async fn assert_accessible(&self, page: &str) {
        let bad = serious_violations(&self.b, &self.axe).await;
        assert!(
            bad.is_empty(),
            "axe-core found serious/critical violations on the {page} page:\n{}",
            bad.iter()
                .map(|v| format!("- {} ({}): {} — nodes: {}", v["id"], v["impact"], v["help"], v["nodes"]))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    async fn wait_text(&self, css: &str, want: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(e) = self.b.find(Locator::Css(css)).await {
                if e.text().await.is_ok_and(|t| t.contains(want)) {
                    return true;
                }
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// axe-core's serious and critical violations on the browser's current page.
async fn serious_violations(b: &Client, axe: &str) -> Vec<Value> {
    b.execute(&format!("{axe};return true;"), vec![]).await.expect("axe-core injected");
    let script = r#"
        const done = arguments[arguments.length - 1];
        axe.run(document, { resultTypes: ["violations"] })
           .then(r => done(r.violations.map(v => ({ id: v.id, impact: v.impact, help: v.help,
                                                     nodes: v.nodes.map(n => n.target.join(" ")) }))),
                 e => done({ error: String(e) }));"#;
    let got = b.execute_async(script, vec![]).await.expect("axe.run");
    let list = got.as_array().unwrap_or_else(|| panic!("axe failed: {got}"));
    list.iter().filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical"))).cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accessibility_check_finds_a_violation_where_there_is_one() {
    let driver = Driver::start().await;
    let b = driver.browser(800, 600).await;
    b.goto("data:text/html,<!doctype html><html><body><img src='x.png'><input type='text'></body></html>")
        .await
        .unwrap();
    let found: Vec<String> =
        serious_violations(&b, &axe_source()).await.iter().map(|v| v["id"].as_str().unwrap().to_string()).collect();
    assert!(found.contains(&"image-alt".to_string()), "{found:?}");
    assert!(found.contains(&"label".to_string()), "{found:?}");
    b.close().await.unwrap();
}

async fn stored_clicks(db_url: &str, code: &str) -> i64 {
    let mut c = raw_conn(db_url).await;
    sqlx::query_scalar::<_, i64>("SELECT clicks FROM link_mappings WHERE short_code = $1")
        .bind(code)
        .fetch_optional(&mut c)
        .await
        .unwrap()
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_signs_in_creates_follows_edits_deletes_a_link_and_signs_out_in_a_real_browser() {
    let s = Setup::new().await;
    let target = target_site().await;

    // The sign-in page, reached from any admin page without a session; keyboard first: the
    // first Tab lands on the skip link.
    s.goto("/admin/links").await;
    assert_eq!(s.path().await, "/admin/sign-in");
    s.assert_accessible("sign-in").await;
    s.field("body").await.send_keys(&Key::Tab.to_string()).await.unwrap();
    let first = s.b.active_element().await.unwrap();
    assert_eq!(first.attr("class").await.unwrap().as_deref(), Some("skip"));
    s.sign_in(&s.app.key).await;
    assert_eq!(s.path().await, "/admin/links");
    s.assert_accessible("list").await;

    // Create a link with a custom code.
    s.click("a.btn[href='/admin/links/new']").await;
    assert_eq!(s.path().await, "/admin/links/new");
    s.assert_accessible("new link").await;
    s.fill("#url", &format!("http://{target}/first")).await;
    s.fill("#code", "brws01").await;
    s.click("main form button[type=submit]").await;
    assert_eq!(s.path().await, "/admin/links/brws01?created=1");
    assert!(s.text(".notice").await.contains("Link created"));
    let short_url = s.field("#short-url").await.prop("value").await.unwrap().unwrap();
    assert_eq!(short_url, format!("{}/brws01", s.app.base));
    // The QR code is on the page, and its downloads (with the session only) say the short URL.
    assert!(s.field(".qr svg[role=img]").await.attr("aria-label").await.unwrap().unwrap().contains("brws01"));
    let cookie = s.b.get_named_cookie("shortener_admin").await.unwrap().value().to_string();
    for (file, decode) in [("qr.png", qr_decode::decode_png as fn(&[u8]) -> String), ("qr.svg", qr_decode::decode_svg)]
    {
        let url = s.app.url(&format!("/admin/links/brws01/{file}"));
        let r = helpers::client().get(&url).header("cookie", format!("shortener_admin={cookie}")).send().await.unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::OK, "{file}");
        assert_eq!(decode(&r.bytes().await.unwrap()), short_url, "{file}");
        let anonymous = helpers::client().get(&url).send().await.unwrap();
        assert_eq!(anonymous.status(), reqwest::StatusCode::SEE_OTHER, "{file} without a session");
    }
    // The copy button is shown once its script runs.
    assert!(s.field("button[data-copy]").await.is_displayed().await.unwrap());
    s.assert_accessible("link").await;

    // A field error is shown in the form, not as JSON.
    s.goto("/admin/links/new").await;
    s.fill("#url", "not a url").await;
    s.click("main form button[type=submit]").await;
    assert!(s.text("#url-error").await.contains("not valid"), "{}", s.text("main").await);
    s.assert_accessible("new link with errors").await;

    // Find it in the list by searching its code and its URL.
    s.goto("/admin/links").await;
    s.fill("#q", "brws").await;
    s.click("form.search button").await;
    assert_eq!(s.text("table.links tbody a.code").await, "brws01");
    s.goto("/admin/links?q=FIRST&field=url").await;
    assert_eq!(s.text("table.links tbody a.code").await, "brws01");

    // Follow the short link in the browser: it lands on the target.
    s.b.goto(&short_url).await.unwrap();
    assert_eq!(s.text("#target").await, "Target /first");
    // The click is flushed to the database, then seen on the link's chart.
    let flushed =
        eventually(Duration::from_secs(10), || async { stored_clicks(&s.app.db_url, "brws01").await == 1 }).await;
    assert!(flushed, "the click was not flushed");
    s.goto("/admin/links/brws01?days=7").await;
    assert_eq!(s.text("#clicks-total").await, "1");
    let bar = s.b.find(Locator::Css("svg.chart rect.bar:last-of-type title")).await.unwrap();
    assert!(bar.html(true).await.unwrap().ends_with(": 1"), "{}", bar.html(true).await.unwrap());
    assert!(s.b.source().await.unwrap().contains("1 clicks in 7 days"));

    // Edit: a new target, followed at once.
    s.click("a[href='/admin/links/brws01/edit']").await;
    s.assert_accessible("edit").await;
    s.fill("#url", &format!("http://{target}/second")).await;
    s.click("main form button[type=submit]").await;
    assert_eq!(s.path().await, "/admin/links/brws01?updated=1");
    s.b.goto(&short_url).await.unwrap();
    assert_eq!(s.text("#target").await, "Target /second");

    // Delete, through the confirmation page.
    s.goto("/admin/links/brws01").await;
    s.click("a[href='/admin/links/brws01/delete']").await;
    assert_eq!(s.path().await, "/admin/links/brws01/delete");
    s.assert_accessible("delete confirmation").await;
    s.click("button.btn-danger").await;
    assert_eq!(s.path().await, "/admin/links?deleted=brws01");
    assert!(s.text(".notice").await.contains("brws01 deleted"));
    s.goto("/admin/links/brws01").await;
    assert!(s.text("h1").await.contains("Not found"));
    assert_eq!(s.app.location("brws01").await, Err(reqwest::StatusCode::NOT_FOUND));

    // Sign out: the session is gone, also for a copy of its cookie.
    s.goto("/admin/links").await;
    let cookie = s.b.get_named_cookie("shortener_admin").await.unwrap().value().to_string();
    s.click("form.signout button").await;
    assert_eq!(s.path().await, "/admin/sign-in?m=signed-out");
    assert!(s.text(".notice").await.contains("signed out"));
    let r = helpers::client()
        .get(s.app.url("/admin/links"))
        .header("cookie", format!("shortener_admin={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/admin/sign-in?m=expired");
    s.b.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_posted_without_its_csrf_token_gets_a_403_page() {
    let s = Setup::new().await;
    s.sign_in(&s.app.key).await;
    s.goto("/admin/links/new").await;
    s.fill("#url", "https://example.com/csrf").await;
    s.b.execute("document.querySelector('main input[name=csrf]').remove(); return true;", vec![]).await.unwrap();
    s.click("main form button[type=submit]").await;
    assert!(s.text("h1").await.contains("Form expired"), "{}", s.text("main").await);
    let status = s.app.client.post(s.app.url("/admin/links")).form(&[("url", "https://e.com/")]).send().await.unwrap();
    assert_eq!(status.status(), reqwest::StatusCode::SEE_OTHER, "no session: sent to sign in first");
    // Nothing was created.
    let mut c = raw_conn(&s.app.db_url).await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM link_mappings").fetch_one(&mut c).await.unwrap();
    assert_eq!(n, 0);
    s.b.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_keys_link_is_a_404_page_and_an_ordinary_key_lists_only_its_own() {
    let s = Setup::new().await;
    s.app.create_code("adminsown", "https://example.com/admin").await;
    let alice = create_key(&s.app.db_url, "alice", false).await;
    s.sign_in(&alice).await;
    assert_eq!(s.path().await, "/admin/links");
    assert!(s.text("main").await.contains("No links"));
    s.goto("/admin/links/adminsown").await;
    assert!(s.text("h1").await.contains("Not found"));
    s.assert_accessible("not found").await;
    for path in ["/admin/links/adminsown/edit", "/admin/links/adminsown/delete", "/admin/links/adminsown/qr.png"] {
        s.goto(path).await;
        assert!(s.text("h1").await.contains("Not found"), "{path}");
    }
    s.b.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_a_revoked_key_and_an_expired_session_each_get_the_sign_in_page_with_a_message() {
    let s = Setup::new().await;
    s.sign_in("sk_not_a_key_at_all").await;
    assert!(s.wait_text("#key-error", "not valid").await, "{}", s.text("main").await);
    s.assert_accessible("sign-in with an error").await;

    // An expired session (idle past ADMIN_SESSION_IDLE_SECS) sends the browser to sign in.
    s.sign_in(&s.app.key).await;
    assert_eq!(s.path().await, "/admin/links");
    let mut c = raw_conn(&s.app.db_url).await;
    sqlx::query("UPDATE admin_sessions SET last_seen_at = 0").execute(&mut c).await.unwrap();
    s.goto("/admin/links").await;
    assert_eq!(s.path().await, "/admin/sign-in?m=expired");
    assert!(s.text(".notice").await.contains("session has ended"));

    // A revoked key's session stops working at once.
    let bob = create_key(&s.app.db_url, "bob", false).await;
    s.sign_in(&bob).await;
    assert_eq!(s.path().await, "/admin/links");
    // As an operator does it: the revocation is announced through Redis to the key memory.
    let redis_url = s._redis.url();
    let out = helpers::run_cli(&s.app.db_url, &["keys", "revoke", "bob"], &[("REDIS_URL", redis_url.as_str())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    s.goto("/admin/links").await;
    assert_eq!(s.path().await, "/admin/sign-in?m=revoked");
    // And the revoked key cannot sign in again.
    assert!(s.wait_text(".notice", "revoked").await);
    s.sign_in(&bob).await;
    assert!(s.text("#key-error").await.contains("revoked"));
    s.b.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_link_and_sign_in_pages_are_screenshotted_and_readable_on_a_phone() {
    let s = Setup::new().await;
    let target = target_site().await;
    let samples = [
        ("launch", "https://www.example.com/blog/2026/12/product-launch?utm_source=newsletter"),
        ("guide", "https://docs.example.org/getting-started/install"),
        ("jobs", "https://careers.example.net/openings/backend-engineer"),
        ("pricing", "https://www.example.com/pricing"),
        ("talk-video", "https://video.example.com/watch?v=rust-at-scale"),
        ("summit26", "https://events.example.com/summit-2026/agenda"),
    ];
    for (code, url) in samples {
        s.app.create_code(code, url).await;
    }
    s.app.create_code("hello", &format!("http://{target}/hello")).await;
    // Clicks on several days for the chart: today's through the browser, earlier days as the
    // flusher stores them.
    let mut c = raw_conn(&s.app.db_url).await;
    let now = shortener::time_util::now_ms();
    for (back, n) in [(1, 12), (2, 7), (3, 18), (4, 9), (5, 4), (6, 14)] {
        let day = shortener::time_util::day_of(now - back * 86_400_000);
        sqlx::query("INSERT INTO link_clicks_daily (short_code, day, clicks) VALUES ($1, $2, $3)")
            .bind("hello")
            .bind(day)
            .bind(n)
            .execute(&mut c)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE link_mappings SET clicks = 64 WHERE short_code = 'hello'").execute(&mut c).await.unwrap();
    // A name an operator would give the key (the harness names it after its port).
    sqlx::query("UPDATE api_keys SET name = 'ops-team' WHERE admin = $1").bind(true).execute(&mut c).await.unwrap();

    let out = std::env::var("SCREENSHOTS").is_ok_and(|v| v == "1");
    let dir = if out {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots")
    } else {
        std::env::temp_dir().join(format!("shortener-screens-{}", std::process::id()))
    };
    std::fs::create_dir_all(&dir).unwrap();
    let shoot = |name: &'static str| {
        let (b, dir) = (s.b.clone(), dir.clone());
        async move {
            let png = b.screenshot().await.unwrap();
            assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{name} is a PNG");
            assert!(png.len() > 10_000, "{name} shows something ({} bytes)", png.len());
            std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
        }
    };

    s.goto("/admin/sign-in").await;
    shoot("sign-in").await;
    s.sign_in(&s.app.key).await;
    s.goto("/admin/links").await;
    shoot("list").await;
    s.goto("/admin/links/hello?days=7").await;
    for _ in 0..5 {
        s.b.goto(&format!("{}/hello", s.app.base)).await.unwrap();
    }
    s.b.set_window_size(1280, 1400).await.unwrap();
    s.goto("/admin/links/hello?days=7").await;
    shoot("link").await;
    s.b.set_window_size(1280, 900).await.unwrap();

    // A phone-sized window: nothing overflows sideways, and the pages stay accessible.
    s.b.set_window_size(390, 844).await.unwrap();
    for path in ["/admin/links", "/admin/links/hello", "/admin/links/new"] {
        s.goto(path).await;
        let wide: bool =
            s.b.execute("return document.documentElement.scrollWidth > window.innerWidth + 1;", vec![])
                .await
                .unwrap()
                .as_bool()
                .unwrap();
        assert!(!wide, "{path} scrolls sideways on a phone");
        s.assert_accessible(path).await;
    }
    s.goto("/admin/links").await;
    shoot("list-phone").await;
    if !out {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    s.b.clone().close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_import_runs_in_the_background_and_its_page_refreshes_itself_until_it_is_done() {
    let s = Setup::new().await;
    s.app.create_code("taken1", "https://example.com/already").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("links.csv");
    let mut csv = String::from("code,url\n");
    for i in 0..1500 {
        csv.push_str(&format!("imp{i:04},https://example.com/imported/{i}\n"));
    }
    csv.push_str("taken1,https://example.com/other\nbad code,https://example.com/x\nimpurl,notaurl\n");
    std::fs::write(&file, csv).unwrap();

    s.sign_in(&s.app.key).await;
    s.click("nav a[href='/admin/import']").await;
    s.assert_accessible("import").await;
    s.field("#file").await.send_keys(file.to_str().unwrap()).await.unwrap();
    s.click("main form button[type=submit]").await;
    assert!(s.path().await.starts_with("/admin/import/"), "{}", s.path().await);
    // The page refreshes itself (no script) until the job is done.
    assert!(s.wait_text("#import-state", "finished").await, "{}", s.text("main").await);
    assert_eq!(s.text("#import-done").await, "1500");
    assert_eq!(s.text("#import-rejected").await, "3");
    let errors = s.text("ul.errors").await;
    assert!(errors.contains("line 1502: this code is already taken"), "{errors}");
    assert!(errors.contains("line 1503: invalid code"), "{errors}");
    s.assert_accessible("import status").await;
    // The links are the key's own, and redirect at once.
    assert_eq!(s.app.location("imp0042").await.unwrap(), "https://example.com/imported/42");
    let mut c = raw_conn(&s.app.db_url).await;
    let owned: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM link_mappings WHERE created_by IS NOT NULL AND short_code LIKE 'imp%'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(owned, 1500);
    s.b.clone().close().await.unwrap();
}
