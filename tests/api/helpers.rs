//! Test harness: [`RedisServer`] (a real redis-server, configured as in production, that can be
//! killed, paused, restarted), [`TestApp`] (the service in this process on a free port with its
//! own database, SQLite or PostgreSQL (see `pg`), and an API key), the real binary ([`ServiceProcess`] for `serve`, [`run_cli`]
//! for one-shot commands) and [`eventually`], the one way a test waits for something.

#![allow(dead_code)]

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use reqwest::{redirect::Policy, Client, Response, StatusCode};
use serde_json::{json, Value};
use shortener::{config::Config, db::keys::KeyRights, links::resolve::Hooks, startup, state::AppState};

use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};

pub use crate::pg::{on_postgres, sqlite_url, test_db_url, PgServer};

/// A free TCP port on loopback (bound and released; callers retry if someone takes it), below
/// the kernel's ephemeral range: a port the kernel hands out itself could be taken, between the
/// release and the server's bind, by one of the thousands of outgoing connections the load
/// tests make (each gets an ephemeral local port).
pub fn free_port() -> u16 {
    loop {
        let p = 10_000 + rand::random::<u16>() % 22_000;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// The Redis configuration that deploy.sh installs in production.
const REDIS_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/redis-shortener.conf");

/// A real redis-server of our own, configured as in production.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts redis-server from `deploy/redis-shortener.conf` on a free port and waits for it.
    pub fn start() -> Self {
        for _ in 0..20 {
            let mut r = RedisServer { port: free_port(), child: None, dir: tempfile::tempdir().unwrap() };
            if r.spawn() {
                return r;
            }
        }
        panic!("could not start redis-server (is it installed? apt-get install redis-server)");
    }

    fn spawn(&mut self) -> bool {
        // The production settings (memory cap, eviction policy, no persistence, backlog, …),
        // with only what must differ for a test overridden after the file: the port and working
        // directory; `bind 127.0.0.1` because the file's `-::1` would also take the port on ::1
        // where IPv6 is up, and `free_port` only knows it is free on 127.0.0.1; `daemonize no`
        // and `logfile ""` because the file leaves those to the distribution's redis.conf in
        // production, and this child must stay in the foreground with its log on (ignored) stdout.
        let child = Command::new("redis-server")
            .arg(REDIS_CONF)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--daemonize", "no", "--logfile", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false; // exited: port taken
            }
            // Ours answers, not another test's server that took the port meanwhile.
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.cli(&["INFO", "server"]).lines().any(|l| l.trim() == format!("process_id:{}", self.pid()))
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis is running").id()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty, like a restarted cache).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "redis did not restart on port {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGSTOP: the process keeps its sockets open but answers nothing.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }

    /// Runs `redis-cli -p PORT ARGS…` and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli must be installed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill -{sig} {pid} failed");
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_ref() {
            signal(c.id(), "CONT");
        }
        self.kill();
    }
}

/// The service, running in this process on a free port.
pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: Client,
    pub key: String,
    pub db_url: String,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<std::io::Result<()>>>,
    _dir: TempDir,
}

/// A client that never follows redirects, and that drops a pooled connection after 1 s idle:
/// before the service's own keep-alive limit (`KEEPALIVE_TIMEOUT_MS`, 2 s in `Config::for_tests`),
/// as a well-behaved client does, so that a request is never sent on a connection the service is
/// just closing. (With 5 s here, a load test's client sent one request in some 25,000 on a
/// connection the service closed at that moment: `IncompleteMessage`.)
pub fn client() -> Client {
    Client::builder()
        .redirect(Policy::none())
        .pool_max_idle_per_host(2000)
        .pool_idle_timeout(Duration::from_secs(1))
        .build()
        .unwrap()
}

/// Starts the service against `redis` (or without Redis), after `tweak` adjusted the config.
pub async fn spawn_app(redis: Option<&RedisServer>, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_with(redis, tweak, Hooks::default()).await
}

/// [`spawn_app`] with test hooks in the service (a paused fill, the guard off).
pub async fn spawn_app_with(redis: Option<&RedisServer>, tweak: impl FnOnce(&mut Config), hooks: Hooks) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let db_url = test_db_url(&dir.path().join("data"), "links");
    let redis_url = redis.map(|r| r.url());
    let mut config = Config::for_tests(&db_url, redis_url.as_deref());
    tweak(&mut config);
    let db_url = config.db.url.clone();
    let app = startup::build_with(config, hooks).await.expect("service builds");
    let addr = app.addr();
    let state = app.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until(async {
        let _ = rx.await;
    }));
    // The harness acts as the operator: its key is an admin key, so it manages every link
    // (seeded rows with no creator included). Ownership tests make ordinary keys of their own.
    let key =
        create_key_with(&db_url, &format!("test-{}", addr.port()), KeyRights { admin: true, unlimited: false }).await;
    TestApp {
        addr,
        base: format!("http://{addr}"),
        client: client(),
        key,
        db_url,
        state,
        shutdown: Some(tx),
        handle: Some(handle),
        _dir: dir,
    }
}

/// Creates an ordinary API key (it manages only the links it creates) directly in the database.
pub async fn create_key(db_url: &str, name: &str, unlimited: bool) -> String {
    create_key_with(db_url, name, KeyRights { unlimited, admin: false }).await
}

/// Creates an admin key (it manages every link) directly in the database.
pub async fn create_admin_key(db_url: &str, name: &str) -> String {
    create_key_with(db_url, name, KeyRights { unlimited: false, admin: true }).await
}

/// Creates an API key with these rights, as an operator does: `shortener keys create`.
pub async fn create_key_with(db_url: &str, name: &str, rights: KeyRights) -> String {
    let mut args = vec!["keys", "create", name];
    if rights.admin {
        args.push("--admin");
    }
    if rights.unlimited {
        args.push("--unlimited");
    }
    let (db_url, args): (String, Vec<String>) = (db_url.to_string(), args.iter().map(|a| a.to_string()).collect());
    let out = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_cli(&db_url, &args, &[("REDIS_ENABLED", "false")])
    })
    .await
    .unwrap();
    assert!(out.status.success(), "keys create failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().last().expect("the key on the last line").to_string()
}

/// Inserts `n` links `{prefix}{i}` → `{url_base}{i}` by hand, with only the two original
/// columns (every other column takes its default).
pub async fn seed_links(db_url: &str, prefix: &str, url_base: &str, n: usize) {
    let mut conn = raw_conn(db_url).await;
    for i in 0..n {
        sqlx::query("INSERT INTO link_mappings (short_code, original_url) VALUES ($1, $2)")
            .bind(format!("{prefix}{i}"))
            .bind(format!("{url_base}{i}"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

/// A plain connection to the test's database, SQLite or PostgreSQL (for arranging and reading
/// rows by hand; statements use `$N` placeholders, which both read).
pub async fn raw_conn(db_url: &str) -> sqlx::AnyConnection {
    sqlx::any::install_default_drivers();
    <sqlx::AnyConnection as sqlx::Connection>::connect(db_url).await.unwrap()
}

/// Holds the database's write lock until [`release_write_lock`]: `BEGIN IMMEDIATE` on SQLite,
/// an exclusive lock of `link_mappings` on PostgreSQL. Writes of the service then wait for their
/// busy or lock timeout.
pub async fn hold_write_lock(conn: &mut sqlx::AnyConnection) {
    if conn.backend_name() == "PostgreSQL" {
        sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
        sqlx::query("LOCK TABLE link_mappings IN ACCESS EXCLUSIVE MODE").execute(&mut *conn).await.unwrap();
    } else {
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.unwrap();
    }
}

/// Ends [`hold_write_lock`].
pub async fn release_write_lock(conn: &mut sqlx::AnyConnection) {
    sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
}

impl TestApp {
    /// Stops the service gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.unwrap().unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET /{code}` without following.
    pub async fn follow(&self, code: &str) -> Response {
        self.client.get(self.url(&format!("/{code}"))).send().await.unwrap()
    }

    /// The `Location` a code redirects to, or the status when it does not redirect.
    pub async fn location(&self, code: &str) -> Result<String, StatusCode> {
        let r = self.follow(code).await;
        if r.status().is_redirection() {
            Ok(r.headers()["location"].to_str().unwrap().to_string())
        } else {
            Err(r.status())
        }
    }

    /// An authenticated API request.
    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(&format!("/api/v1{path}"))).bearer_auth(&self.key)
    }

    /// Creates a link and returns its JSON (panics unless 201).
    pub async fn create(&self, body: Value) -> Value {
        let r = self.api(reqwest::Method::POST, "/links").json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "create {body} failed: {}", r.text().await.unwrap());
        r.json().await.unwrap()
    }

    /// Creates a link with a custom code.
    pub async fn create_code(&self, code: &str, url: &str) -> Value {
        self.create(json!({"code": code, "url": url})).await
    }

    /// PATCH, returning the status.
    pub async fn patch(&self, code: &str, body: Value) -> StatusCode {
        self.api(reqwest::Method::PATCH, &format!("/links/{code}")).json(&body).send().await.unwrap().status()
    }

    /// DELETE, returning the status.
    pub async fn delete(&self, code: &str) -> StatusCode {
        self.api(reqwest::Method::DELETE, &format!("/links/{code}")).send().await.unwrap().status()
    }

    /// `/health/cache` as JSON.
    pub async fn cache_stats(&self) -> Value {
        self.client.get(self.url("/health/cache")).send().await.unwrap().json().await.unwrap()
    }

    /// One integer field of `/health/cache`.
    pub async fn stat(&self, field: &str) -> u64 {
        self.cache_stats().await[field].as_u64().unwrap_or_else(|| panic!("no integer {field} in /health/cache"))
    }

    /// The value of an unlabelled sample in `/metrics` (`name value`), 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.client.get(self.url("/metrics")).send().await.unwrap().text().await.unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .next()
            .unwrap_or(0.0)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Polls `check` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real binary, as a command with `DATABASE_URL` and then `env` set; `shell_prefix` (e.g.
/// `ulimit -n 64;`) runs in a shell that then execs it. Every test that runs the binary,
/// [`ServiceProcess`] and [`run_cli`], starts it here.
fn binary(db_url: &str, args: &[&str], env: &[(&str, &str)], shell_prefix: &str) -> Command {
    let bin = env!("CARGO_BIN_EXE_shortener");
    let mut cmd = if shell_prefix.is_empty() {
        Command::new(bin)
    } else {
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(format!("{shell_prefix} exec \"$0\" \"$@\"")).arg(bin);
        sh
    };
    cmd.args(args).env("DATABASE_URL", db_url);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs a one-shot command of the binary (`keys create NAME`, `migrate`, …) against `db_url`,
/// with `RUST_LOG=warn` unless `env` says otherwise, and returns what it printed and its status.
pub fn run_cli(db_url: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let env: Vec<(&str, &str)> = [("RUST_LOG", "warn")].into_iter().chain(env.iter().copied()).collect();
    binary(db_url, args, &env, "").output().unwrap()
}

/// The real binary as a child process (for signals: SIGTERM, SIGKILL, fd limits).
pub struct ServiceProcess {
    pub child: Child,
    pub port: u16,
    pub base: String,
    pub stderr_path: PathBuf,
}

impl ServiceProcess {
    /// Starts `shortener serve` with `DATABASE_URL`, a free port, JSON logs at info, and `env`
    /// over those; `shell_prefix` (e.g. `ulimit -n 64;`) runs in a shell before it. Waits until
    /// `/health` answers.
    pub async fn start(db_url: &str, env: &[(&str, String)], shell_prefix: &str, stderr_path: PathBuf) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let defaults = [("LISTEN_ADDR", listen.as_str()), ("LOG_FORMAT", "json"), ("RUST_LOG", "info")];
        let env: Vec<(&str, &str)> = defaults.into_iter().chain(env.iter().map(|(k, v)| (*k, v.as_str()))).collect();
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let child =
            binary(db_url, &["serve"], &env, shell_prefix).stdout(Stdio::null()).stderr(stderr).spawn().unwrap();
        let me = ServiceProcess { child, port, base: format!("http://{listen}"), stderr_path };
        let http = client();
        let url = me.url("/health");
        let up = eventually(Duration::from_secs(30), || {
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(url).send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        assert!(up, "service did not come up: {}", me.stderr());
        me
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// What the service logged.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a signal (`TERM`, `KILL`, …).
    pub fn signal(&self, sig: &str) {
        signal(self.child.id(), sig);
    }

    /// Waits for the process to exit.
    pub async fn wait(mut self) -> std::process::ExitStatus {
        tokio::task::spawn_blocking(move || self.child.wait().unwrap()).await.unwrap()
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
