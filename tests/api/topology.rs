//! Redis that fails over: a real Sentinel set (one master, one replica, three Sentinels) and a
//! real Cluster (three masters with a replica each), started by the test on free ports, with
//! masters really killed (`kill -9`), replicas really promoted and slots really resharded while
//! a load runs. The checks: no request fails, a link changed during or after the failover never
//! redirects to its old target, and reads come back to Redis.

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use serde_json::{json, Value};
use shortener::config::{Config, Topology};
use tempfile::TempDir;
use tokio::task::JoinSet;

use crate::{
    helpers::{eventually, seed_links, spawn_app, TestApp},
    instances::history_against,
};

/// The Redis configuration that deploy.sh installs in production.
const REDIS_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/redis-shortener.conf");

/// A free port `p` on loopback with `p + 10000` free too (a cluster node's bus), both below the
/// kernel's ephemeral range (32768 up), where no outgoing connection can take them meanwhile.
fn low_free_port() -> u16 {
    loop {
        let p = 12_000 + (rand::random::<u16>() % 10_700);
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

/// One redis-server (or Sentinel) process in the foreground, killed with `kill -9`.
pub struct Node {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    /// What `redis-cli` needs to reach it (TLS, password), before the command.
    cli_args: Vec<String>,
}

impl Node {
    /// Starts `redis-server ARGS…` on `port`; `None` if it exited (port taken) or did not answer.
    fn spawn(port: u16, args: &[String], cli_args: &[String]) -> Option<Node> {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let mut node = Node { port, child: Some(child), cli_args: cli_args.to_vec() };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = node.child.as_mut().map(|c| c.try_wait()) {
                node.child = None;
                return None;
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() && node.cli(&["PING"]).trim() == "PONG" {
                return Some(node);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// A data node: the production settings, with the port, directory and `extra` overridden.
    fn data(dir: &Path, extra: &[&str]) -> Node {
        Node::data_secured(dir, extra, None)
    }

    /// [`Node::data`], with TLS only and a password when `secure` is given.
    fn data_secured(dir: &Path, extra: &[&str], secure: Option<&Secure>) -> Node {
        for _ in 0..20 {
            let port = low_free_port();
            let d = dir.join(port.to_string());
            std::fs::create_dir_all(&d).unwrap();
            // A copy: Sentinel makes a promoted replica rewrite its configuration file.
            let conf = d.join("redis.conf");
            std::fs::copy(REDIS_CONF, &conf).unwrap();
            let mut args: Vec<String> = vec![conf.display().to_string()];
            for a in ["--bind", "127.0.0.1", "--daemonize", "no", "--logfile", ""] {
                args.push(a.to_string());
            }
            match secure {
                None => args.extend(["--port".to_string(), port.to_string()]),
                Some(sec) => args.extend(sec.server_args(port)),
            }
            args.push("--dir".into());
            args.push(d.display().to_string());
            args.extend(extra.iter().map(|s| s.to_string()));
            let cli_args = secure.map(Secure::cli_args).unwrap_or_default();
            if let Some(n) = Node::spawn(port, &args, &cli_args) {
                return n;
            }
        }
        panic!("could not start redis-server");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs `redis-cli -p PORT ARGS…` and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(&self.cli_args)
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for `check` to hold (polled every 50 ms) or panics with `what` after `timeout`.
fn wait_for(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One master, one replica, three Sentinels (quorum 2, down after 1 s).
pub struct SentinelSet {
    /// The master at the start.
    pub master: Node,
    /// Its replica, promoted when the master is killed.
    pub replica: Node,
    /// The three Sentinels.
    pub sentinels: Vec<Node>,
    _dir: TempDir,
}

/// The name the Sentinels monitor the master under.
const MASTER_NAME: &str = "cache";

impl SentinelSet {
    /// Starts every process and waits until the Sentinels know the replica and each other.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let master = Node::data(dir.path(), &[]);
        let mport = master.port.to_string();
        let replica = Node::data(dir.path(), &["--replicaof", "127.0.0.1", &mport]);
        wait_for(Duration::from_secs(10), "the replica to sync", || {
            replica.cli(&["INFO", "replication"]).contains("master_link_status:up")
        });
        let mut sentinels = Vec::new();
        while sentinels.len() < 3 {
            let port = low_free_port();
            let file = dir.path().join(format!("sentinel-{port}.conf"));
            // Sentinel rewrites its file: each its own.
            std::fs::write(
                &file,
                format!(
                    "port {port}\nbind 127.0.0.1\ndaemonize no\nlogfile \"\"\ndir {}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {mport} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            if let Some(s) = Node::spawn(port, &[file.display().to_string(), "--sentinel".into()], &[]) {
                sentinels.push(s);
            }
        }
        for s in &sentinels {
            wait_for(Duration::from_secs(15), "the sentinels to find the replica and each other", || {
                let replicas = s.cli(&["SENTINEL", "replicas", MASTER_NAME]);
                let others = s.cli(&["SENTINEL", "sentinels", MASTER_NAME]);
                replicas.contains(&replica.port.to_string()) && others.matches("runid").count() >= 2
            });
        }
        SentinelSet { master, replica, sentinels, _dir: dir }
    }

    /// The service's settings for this set.
    pub fn topology(&self) -> Topology {
        Topology::Sentinel { sentinels: self.sentinels.iter().map(Node::addr).collect(), master: MASTER_NAME.into() }
    }

    /// The master's port as the Sentinels see it now.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().filter(|s| s.child.is_some()).find_map(|s| {
            let out = s.cli(&["SENTINEL", "get-master-addr-by-name", MASTER_NAME]);
            out.lines().nth(1).and_then(|p| p.trim().parse().ok())
        })
    }
}

/// Three masters with a replica each (`redis-cli --cluster create`), node timeout 1 s.
pub struct ClusterSet {
    /// The six nodes, in the order given to `--cluster create`.
    pub nodes: Vec<Node>,
    _dir: TempDir,
}

/// TLS and a password for every node: a CA and a certificate for 127.0.0.1 made with `openssl`,
/// `requirepass` and `masterauth`, TLS for clients, replication and the cluster bus, and no
/// plain-text port at all.
pub struct Secure {
    /// The CA's certificate (PEM): what the service must trust (`SSL_CERT_FILE`).
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    /// The nodes' password.
    pub password: String,
    _dir: TempDir,
}

impl Secure {
    /// Makes the CA and the node certificate.
    pub fn new(password: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = |f: &str| dir.path().join(f);
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl").args(args).output().expect("openssl must be installed");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let s = |p: &PathBuf| p.display().to_string();
        std::fs::write(p("leaf.ext"), "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n").unwrap();
        openssl(
            &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=shortener test CA"]
                .into_iter()
                .chain(["-keyout", &s(&p("ca.key")), "-out", &s(&p("ca.crt"))])
                .collect::<Vec<_>>(),
        );
        openssl(
            &["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1"]
                .into_iter()
                .chain(["-keyout", &s(&p("node.key")), "-out", &s(&p("node.csr"))])
                .collect::<Vec<_>>(),
        );
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            &s(&p("node.csr")),
            "-CA",
            &s(&p("ca.crt")),
            "-CAkey",
            &s(&p("ca.key")),
            "-CAcreateserial",
            "-extfile",
            &s(&p("leaf.ext")),
            "-out",
            &s(&p("node.crt")),
        ]);
        Secure { ca: p("ca.crt"), cert: p("node.crt"), key: p("node.key"), password: password.into(), _dir: dir }
    }

    /// A node's arguments: TLS on `port` and nowhere else, and the password.
    fn server_args(&self, port: u16) -> Vec<String> {
        let (ca, cert, key) = (self.ca.display(), self.cert.display(), self.key.display());
        let mut args: Vec<String> = format!(
            "--port 0 --tls-port {port} --tls-cert-file {cert} --tls-key-file {key} --tls-ca-cert-file {ca} \
             --tls-auth-clients no --tls-replication yes --tls-cluster yes"
        )
        .split_whitespace()
        .map(String::from)
        .collect();
        // One argument each, spaces and all.
        for flag in ["--requirepass", "--masterauth"] {
            args.extend([flag.to_string(), self.password.clone()]);
        }
        args
    }

    /// What `redis-cli` needs to reach such a node.
    fn cli_args(&self) -> Vec<String> {
        ["--tls", "--cacert", &self.ca.display().to_string(), "-a", &self.password, "--no-auth-warning"]
            .map(String::from)
            .to_vec()
    }
}

impl ClusterSet {
    /// Starts six nodes, makes them a cluster, and waits until every node sees it `ok`.
    pub fn start() -> Self {
        ClusterSet::start_with(None)
    }

    /// [`ClusterSet::start`] with TLS only and a password on every node.
    pub fn start_secure(secure: &Secure) -> Self {
        ClusterSet::start_with(Some(secure))
    }

    fn start_with(secure: Option<&Secure>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<Node> = (0..6)
            .map(|_| {
                Node::data_secured(
                    dir.path(),
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                    ],
                    secure,
                )
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.args(secure.map(Secure::cli_args).unwrap_or_default()).arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(n.addr());
        }
        let out = create.args(["--cluster-replicas", "1", "--cluster-yes"]).output().unwrap();
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let set = ClusterSet { nodes, _dir: dir };
        set.wait_ok();
        // A replica that has not synced yet could not take over.
        wait_for(Duration::from_secs(20), "every replica to sync", || {
            set.nodes.iter().all(|n| {
                let r = n.cli(&["INFO", "replication"]);
                r.contains("role:master") || r.contains("master_link_status:up")
            })
        });
        set
    }

    /// Waits until every live node reports `cluster_state:ok` and knows three masters with slots.
    pub fn wait_ok(&self) {
        wait_for(Duration::from_secs(20), "the cluster to be ok", || {
            self.nodes
                .iter()
                .filter(|n| n.child.is_some())
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok") && self.masters_seen_by(n).len() == 3)
        });
    }

    fn live(&self) -> &Node {
        self.nodes.iter().find(|n| n.child.is_some()).expect("a live node")
    }

    /// (node id, port) of every master that serves slots and is not failed, as `n` sees it.
    fn masters_seen_by(&self, n: &Node) -> Vec<(String, u16)> {
        n.cli(&["CLUSTER", "NODES"])
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .filter(|f| f.len() > 8 && f[2].contains("master") && !f[2].contains("fail"))
            .map(|f| {
                let port = f[1].split('@').next().unwrap().rsplit(':').next().unwrap().parse().unwrap();
                (f[0].to_string(), port)
            })
            .collect()
    }

    /// (node id, port) of every master now.
    pub fn masters(&self) -> Vec<(String, u16)> {
        self.masters_seen_by(self.live())
    }

    /// The port of the master serving `key`'s slot.
    pub fn master_of(&self, key: &str) -> u16 {
        self.master_of_slot(self.live().cli(&["CLUSTER", "KEYSLOT", key]).trim().parse().unwrap())
    }

    /// The port of the master serving `slot`.
    pub fn master_of_slot(&self, slot: u16) -> u16 {
        // `CLUSTER NODES` lists each master's ranges after its eighth field.
        for line in self.live().cli(&["CLUSTER", "NODES"]).lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() > 8 && f[2].contains("master") && !f[2].contains("fail") {
                for r in &f[8..] {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    if let (Ok(a), Ok(b)) = (a.parse::<u16>(), b.parse::<u16>()) {
                        if (a..=b).contains(&slot) {
                            return f[1].split('@').next().unwrap().rsplit(':').next().unwrap().parse().unwrap();
                        }
                    }
                }
            }
        }
        panic!("slot {slot} not served");
    }

    /// The node on `port`.
    pub fn node(&mut self, port: u16) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.port == port).unwrap()
    }

    /// The service's settings for this cluster (every node a seed).
    pub fn topology(&self) -> Topology {
        Topology::Cluster { nodes: self.nodes.iter().map(Node::addr).collect() }
    }
}

/// The service on `topology`, L1 off (every read asks Redis or the database).
async fn app_on(topology: Topology, tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app(None, move |c| {
        c.redis.enabled = true;
        if let Topology::Cluster { nodes } = &topology {
            c.redis.url = format!("redis://{}", nodes[0]);
        }
        c.redis.topology = topology;
        c.cache.l1_capacity = 0;
        tweak(c);
    })
    .await
}

/// What a load saw: answers right, wrong (or failed), and reads of a changed link that gave a
/// target older than one acknowledged before the read started.
#[derive(Default, Debug)]
struct Seen {
    ok: u64,
    failed: u64,
    stale: u64,
    changes: u64,
    /// The first failures and stale reads, described: the assertion's message carries them.
    what: Vec<String>,
}

impl Seen {
    fn note(&mut self, what: String) {
        if self.what.len() < 10 {
            self.what.push(what);
        }
    }
}

const HOT: usize = 300;
const MOVING: usize = 8;

/// `workers` loops over hot links (each answer checked) and over moving links (each checked
/// against the last acknowledged change), plus one writer per moving link, until `stop`.
async fn load(app: &Arc<TestApp>, workers: usize, stop: &Arc<AtomicBool>) -> JoinSet<Seen> {
    let clients = clients_runtime();
    seed_links(&app.db_url, "hot", "https://example.com/hot/", HOT).await;
    for i in 0..MOVING {
        app.create_code(&format!("mv{i}"), "https://example.com/mv/0").await;
    }
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..MOVING).map(|_| AtomicU64::new(0)).collect());
    let mut set = JoinSet::new();
    for i in 0..MOVING {
        let (app, acked, stop) = (app.clone(), acked.clone(), stop.clone());
        set.spawn_on(
            async move {
                let mut seen = Seen::default();
                let mut v = 0;
                while !stop.load(Ordering::Relaxed) {
                    v += 1;
                    let s = app.patch(&format!("mv{i}"), json!({"url": format!("https://example.com/mv/{v}")})).await;
                    if s == StatusCode::OK {
                        acked[i].store(v, Ordering::SeqCst);
                        seen.changes += 1;
                    } else {
                        seen.note(format!("change of mv{i} failed: {s}"));
                        seen.failed += 1;
                    }
                    // Pacing: a steady stream of changes through the failover, not a SQLite spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                seen
            },
            &clients,
        );
    }
    for w in 0..workers {
        let (app, acked, stop) = (app.clone(), acked.clone(), stop.clone());
        set.spawn_on(
            async move {
                let mut seen = Seen::default();
                let mut i = w * 7;
                while !stop.load(Ordering::Relaxed) {
                    i += 13;
                    if i % 10 == 0 {
                        let m = i / 10 % MOVING;
                        let floor = acked[m].load(Ordering::SeqCst);
                        match target(&app, &format!("mv{m}")).await {
                            Ok(loc) => {
                                let v: u64 = loc.rsplit('/').next().unwrap().parse().unwrap();
                                if v < floor {
                                    seen.note(format!("stale: mv{m} gave v{v} after v{floor} was acknowledged"));
                                    seen.stale += 1;
                                }
                                seen.ok += 1;
                            }
                            Err(s) => {
                                seen.note(format!("mv{m}: {s}"));
                                seen.failed += 1;
                            }
                        }
                    } else {
                        let h = i % HOT;
                        match target(&app, &format!("hot{h}")).await {
                            Ok(loc) if loc == format!("https://example.com/hot/{h}") => seen.ok += 1,
                            other => {
                                seen.note(format!("hot{h}: {other:?}"));
                                seen.failed += 1;
                            }
                        }
                    }
                }
                seen
            },
            &clients,
        );
    }
    set
}

/// A runtime of its own for the load's clients: in production they are other processes, and
/// on the service's runtime the thousand of them would queue the service's own background
/// tasks (the supervisor, the bus) behind them.
fn clients_runtime() -> tokio::runtime::Handle {
    static CLIENTS: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    CLIENTS
        .get_or_init(|| tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap())
        .handle()
        .clone()
}

/// Where `code` redirects to; anything else (another status, a transport error) is a failure,
/// described.
async fn target(app: &TestApp, code: &str) -> Result<String, String> {
    match app.client.get(app.url(&format!("/{code}"))).send().await {
        Ok(r) if r.status().is_redirection() => Ok(r.headers()["location"].to_str().unwrap().to_string()),
        Ok(r) => Err(r.status().to_string()),
        Err(e) => Err(format!("{e:?}")),
    }
}

/// One load of a thousand clients at a time in this binary: two at once on two cores would
/// measure the machine, not the failover.
static ONE_LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn collect(mut set: JoinSet<Seen>) -> Seen {
    let mut total = Seen::default();
    while let Some(s) = set.join_next().await {
        let s = s.unwrap();
        total.ok += s.ok;
        total.failed += s.failed;
        total.stale += s.stale;
        total.changes += s.changes;
        for w in s.what {
            total.note(w);
        }
    }
    total
}

async fn health(app: &TestApp) -> Value {
    app.client.get(app.url("/health/redis")).send().await.unwrap().json().await.unwrap()
}

/// Whether Redis has served 3,000 hits within 20 s.
async fn redis_serves(app: &TestApp) -> bool {
    eventually(Duration::from_secs(20), || async { app.stat("redis_hits").await >= 3000 }).await
}

/// Redis hits and database reads so far.
async fn tiers(app: &TestApp) -> (u64, u64) {
    (app.stat("redis_hits").await, app.stat("db_lookups").await)
}

/// Whether reads come back to Redis: within 30 s, some window of 3,000 Redis hits in which more
/// than 95 % of reads were Redis hits (windows follow each other, so a first one that still
/// carries the failover's tail — a late timeout, a slot map being re-read — does not decide it).
/// Returns the best window's ratio too.
async fn reads_return_to_redis(app: &TestApp) -> (bool, f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut best = 0.0f64;
    while Instant::now() < deadline {
        let (h0, d0) = tiers(app).await;
        let left = deadline.saturating_duration_since(Instant::now());
        if !eventually(left, || async { app.stat("redis_hits").await >= h0 + 3000 }).await {
            break;
        }
        let (h1, d1) = tiers(app).await;
        let ratio = (h1 - h0) as f64 / ((h1 - h0) + (d1 - d0)).max(1) as f64;
        best = best.max(ratio);
        if ratio > 0.95 {
            return (true, ratio);
        }
    }
    (false, best)
}

/// What every failover under load must show: no failed redirect or change, no redirect older
/// than an acknowledged change, changes made throughout, and reads back on Redis afterwards.
fn assert_failover_served(seen: &Seen, back: bool, ratio: f64) {
    assert_eq!(seen.failed, 0, "no failed redirect or change: {seen:?}");
    assert_eq!(seen.stale, 0, "no redirect to a target older than an acknowledged change: {seen:?}");
    assert!(seen.changes > 50, "links changed through the failover: {seen:?}");
    assert!(back, "reads returned to Redis after the failover (hit ratio {ratio:.3})");
}

/// The load's concurrency: a thousand requests in flight.
const WORKERS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_sentinel_master_under_load_fails_no_redirect_and_reads_return_to_the_promoted_replica() {
    let _one = ONE_LOAD.lock().await;
    let mut set = SentinelSet::start();
    let app = Arc::new(app_on(set.topology(), |_| {}).await);
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&app, WORKERS, &stop).await;
    assert!(redis_serves(&app).await, "Redis served before the kill: {}", app.cache_stats().await);
    let replica = set.replica.port;

    set.master.kill();
    let promoted = eventually(Duration::from_secs(30), || async {
        let h = health(&app).await;
        h["breaker"] == "closed" && h["topology"]["current_master"] == format!("127.0.0.1:{replica}")
    })
    .await;
    assert!(promoted, "the service follows the failover: {}", health(&app).await);
    let (back, ratio) = reads_return_to_redis(&app).await;
    // Changes keep coming for a while after the failover too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = collect(running).await;

    assert_failover_served(&seen, back, ratio);
    assert_eq!(set.master_port(), Some(replica));
    let h = health(&app).await;
    assert_eq!(h["topology"]["kind"], "sentinel");
    assert_eq!(h["topology"]["role"], "master");
    assert!(app.metric("shortener_redis_failovers_total").await >= 1.0, "the failover is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_cluster_master_under_load_fails_no_redirect_and_reads_return_after_its_replica_is_promoted() {
    let _one = ONE_LOAD.lock().await;
    let mut set = ClusterSet::start();
    let app = Arc::new(app_on(set.topology(), |_| {}).await);
    let h = health(&app).await;
    assert_eq!(h["topology"]["cluster_state"], "ok", "{h}");
    assert_eq!(h["topology"]["slots_covered"], 16384, "{h}");
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&app, WORKERS, &stop).await;
    assert!(redis_serves(&app).await, "Redis served before the kill: {}", app.cache_stats().await);

    // The master that carries the bus too: the subscriptions fail over with it.
    let victim = set.master_of("shortener:{bus}invalidate");
    set.node(victim).kill();
    let recovered = eventually(Duration::from_secs(30), || async {
        let h = health(&app).await;
        h["breaker"] == "closed" && h["topology"]["cluster_state"] == "ok" && h["topology"]["slots_covered"] == 16384
    })
    .await;
    assert!(
        recovered,
        "the service follows the failover: {}\n{}",
        health(&app).await,
        set.nodes.iter().map(|n| n.cli(&["CLUSTER", "NODES"])).collect::<Vec<_>>().join("\n")
    );
    let (back, ratio) = reads_return_to_redis(&app).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = collect(running).await;

    assert_failover_served(&seen, back, ratio);
    assert!(!set.masters().iter().any(|(_, p)| *p == victim), "a replica took the killed master's place");
    assert!(app.metric("shortener_redis_failovers_total").await >= 1.0, "the failover is counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_cluster_slots_under_load_fails_no_redirect_and_the_redirections_are_counted() {
    let _one = ONE_LOAD.lock().await;
    let set = ClusterSet::start();
    let app = Arc::new(app_on(set.topology(), |_| {}).await);
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(&app, WORKERS, &stop).await;
    assert!(redis_serves(&app).await, "Redis served before the reshard: {}", app.cache_stats().await);
    // Slots are taken from the start of the source's range: the first thousand hold three of
    // the cache's hash-tag buckets (slots 115, 247 and 511).
    let masters = set.masters();
    let from = masters.iter().find(|(_, p)| *p == set.master_of_slot(0)).unwrap().0.clone();
    let to = masters.iter().find(|(id, _)| *id != from).unwrap().0.clone();
    let out = Command::new("redis-cli")
        .args(["--cluster", "reshard", &set.nodes[0].addr(), "--cluster-from", &from, "--cluster-to", &to])
        .args(["--cluster-slots", "1000", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(out.status.success(), "reshard: {}", String::from_utf8_lossy(&out.stdout));
    let (back, ratio) = reads_return_to_redis(&app).await;
    stop.store(true, Ordering::Relaxed);
    let seen = collect(running).await;

    assert_eq!(seen.failed, 0, "no failed redirect or change: {seen:?}");
    assert_eq!(seen.stale, 0, "no redirect to a target older than an acknowledged change: {seen:?}");
    assert!(back, "reads stay on Redis after the reshard (hit ratio {ratio:.3})");
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let moved = text
        .lines()
        .find_map(|l| l.strip_prefix("shortener_redis_redirections_total{kind=\"moved\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(moved >= 1.0, "the MOVED answers were followed and counted: {moved}");
}

/// Three instances on one database and `topology`, each with a large, long-lived L1.
async fn three_instances_on(topology: &Topology, db: &TempDir) -> Vec<Arc<TestApp>> {
    let db_url = crate::helpers::test_db_url(db.path(), "shared");
    let mut apps = Vec::new();
    for _ in 0..3 {
        let url = db_url.clone();
        apps.push(Arc::new(
            app_on(topology.clone(), move |c| {
                c.db.url = url;
                c.cache.l1_capacity = 10_000;
                c.cache.l1_ttl = Duration::from_secs(600);
            })
            .await,
        ));
    }
    apps
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sentinel_instances_never_serve_a_target_older_than_an_acknowledged_change() {
    let set = SentinelSet::start();
    let db = tempfile::tempdir().unwrap();
    let apps = three_instances_on(&set.topology(), &db).await;
    let h = history_against(&apps, vec![set.master.url()], vec![set.master.url()]).await;
    h.enough(40);
    assert_eq!(h.stale, 0, "{} of {} reads were stale", h.stale, h.reads);
    assert!(h.kills > 0, "subscriptions were killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_instances_never_serve_a_target_older_than_an_acknowledged_change() {
    let set = ClusterSet::start();
    let db = tempfile::tempdir().unwrap();
    let apps = three_instances_on(&set.topology(), &db).await;
    let masters: Vec<String> = set.masters().iter().map(|(_, p)| format!("redis://127.0.0.1:{p}")).collect();
    let h = history_against(&apps, masters.clone(), masters).await;
    h.enough(40);
    assert_eq!(h.stale, 0, "{} of {} reads were stale", h.stale, h.reads);
    assert!(h.kills > 0, "subscriptions were killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_redis_process_behind_the_same_address_is_not_trusted_before_the_replay() {
    // As after a managed failover behind one DNS name: the new process may lack the last
    // invalidation. The breaker never opens here (high threshold, heartbeat seconds away), so
    // only noticing the new process keeps the stale value from being served.
    let mut redis = crate::helpers::RedisServer::start();
    let app = spawn_app(Some(&redis), |c| {
        c.cache.l1_capacity = 0;
        c.redis.breaker_threshold = 1000;
        c.redis.probe_interval = Duration::from_secs(5);
    })
    .await;
    app.create_code("moved", "https://example.com/old").await;
    assert_eq!(target(&app, "moved").await.unwrap(), "https://example.com/old");
    assert!(
        eventually(Duration::from_secs(2), || async { redis.cli(&["GET", "shortener:l:moved"]).contains("/old") })
            .await,
        "cached in Redis"
    );
    assert_eq!(app.patch("moved", json!({"url": "https://example.com/new"})).await, StatusCode::OK);

    redis.restart();
    redis.cli(&["SET", "shortener:l:moved", "302||https://example.com/old"]);
    let started = Instant::now();
    let mut reads = 0;
    while started.elapsed() < Duration::from_secs(1) {
        assert_eq!(target(&app, "moved").await.unwrap(), "https://example.com/new", "read {reads} after the switch");
        reads += 1;
    }
    let replayed = eventually(Duration::from_secs(5), || async {
        app.cache_stats().await["redis_breaker"] == "closed"
            && !redis.cli(&["GET", "shortener:l:moved"]).contains("/old")
    })
    .await;
    assert!(replayed, "the replay removed the stale value and Redis is trusted again: {}", app.cache_stats().await);
    let served = eventually(Duration::from_secs(5), || async {
        target(&app, "moved").await.as_deref() == Ok("https://example.com/new")
            && redis.cli(&["GET", "shortener:l:moved"]).contains("/new")
    })
    .await;
    assert!(served, "Redis serves the new target again");
}

/// `keys revoke` with the topology's variables, while one instance holds the key verified.
async fn a_revoked_key_is_refused_at_once_on(topology: Topology) {
    let env: Vec<(&str, String)> = match &topology {
        Topology::Sentinel { sentinels, master } => {
            vec![("REDIS_SENTINELS", sentinels.join(",")), ("REDIS_SENTINEL_MASTER", master.clone())]
        }
        Topology::Cluster { nodes } => vec![("REDIS_CLUSTER_NODES", nodes.join(","))],
        Topology::Single => unreachable!("tested in links_api.rs"),
    };
    let app = app_on(topology, |c| c.auth.cache_ttl = Duration::from_secs(3600)).await;
    let key = crate::helpers::create_key(&app.db_url, "soon-revoked", false).await;
    let r = app.client.get(app.url("/api/v1/links")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "verified, and remembered for an hour");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = crate::helpers::run_cli(&app.db_url, &["keys", "revoke", "soon-revoked"], &env);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("announced to 1 running instance"), "{stderr}");
    let r = app.client.get(app.url("/api/v1/links")).bearer_auth(&key).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "refused at once, not after the hour");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sentinel_a_key_revoked_from_the_command_line_is_refused_at_once() {
    let set = SentinelSet::start();
    a_revoked_key_is_refused_at_once_on(set.topology()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_a_key_revoked_from_the_command_line_is_refused_at_once() {
    let set = ClusterSet::start();
    a_revoked_key_is_refused_at_once_on(set.topology()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_from_a_password_protected_cluster_over_tls_only() {
    let secure = Secure::new("s3cret pass/word");
    let set = ClusterSet::start_secure(&secure);
    let db = tempfile::tempdir().unwrap();
    let db_url = crate::helpers::test_db_url(db.path(), "tls");
    let nodes: Vec<String> = set.nodes.iter().map(Node::addr).collect();
    let env = [
        ("REDIS_CLUSTER_NODES", nodes.join(",")),
        ("REDIS_TLS", "true".to_string()),
        ("REDIS_PASSWORD", secure.password.clone()),
        // The test CA: rustls reads the system's roots, or this bundle instead.
        ("SSL_CERT_FILE", secure.ca.display().to_string()),
        ("L1_CAPACITY", "0".to_string()),
    ];
    let run = crate::helpers::run_cli(&db_url, &["migrate"], &[]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    seed_links(&db_url, "tls", "https://example.com/tls/", 50).await;
    let stderr = db.path().join("service.log");
    let svc = crate::helpers::ServiceProcess::start(&db_url, &env, "", stderr).await;
    let http = crate::helpers::client();

    let redis_health = |svc: &crate::helpers::ServiceProcess| {
        let (http, url) = (http.clone(), svc.url("/health/redis"));
        async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let trusted = eventually(Duration::from_secs(20), || async {
        let h = redis_health(&svc).await;
        h["breaker"] == "closed" && h["topology"]["cluster_state"] == "ok"
    })
    .await;
    assert!(trusted, "the service trusts the cluster: {}\n{}", redis_health(&svc).await, svc.stderr());
    let h = redis_health(&svc).await;
    assert_eq!(h["topology"]["kind"], "cluster", "{h}");
    assert_eq!(h["topology"]["slots_covered"], 16384, "{h}");

    // Every link twice: the first read fills Redis, the second must be a Redis hit.
    for round in 0..2 {
        for i in 0..50 {
            let r = http.get(svc.url(&format!("/tls{i}"))).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::FOUND, "round {round}, tls{i}");
            assert_eq!(r.headers()["location"], format!("https://example.com/tls/{i}"));
        }
    }
    let cache: Value = http.get(svc.url("/health/cache")).send().await.unwrap().json().await.unwrap();
    assert!(cache["redis_hits"].as_u64().unwrap() >= 50, "second reads came from the cluster: {cache}");
    // What was cached is really in the cluster, under the password and over TLS.
    let keys: u64 = set
        .masters()
        .iter()
        .map(|(_, port)| {
            set.nodes.iter().find(|n| n.port == *port).unwrap().cli(&["DBSIZE"]).trim().parse::<u64>().unwrap()
        })
        .sum();
    assert!(keys >= 50, "{keys} keys in the cluster");
    assert!(!svc.stderr().contains("s3cret"), "the password is never logged");
}
