//! The database the tests run on: SQLite files in temp dirs by default, or, with
//! `TEST_DATABASE=postgres`, a real PostgreSQL server ([`PgServer`]) that the tests start
//! themselves (Debian's `postgresql`: `initdb` and `pg_ctl` as the unprivileged `postgres` user
//! when run as root), one server per test binary and a fresh database per test.
//!
//! [`test_db_url`] is how a test gets its database; a test that needs a server of its own (to
//! kill it) starts a [`PgServer`] itself.

use std::{
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use tempfile::TempDir;

use crate::helpers::free_port;

/// Which backend this run of the suite uses (`TEST_DATABASE`: `sqlite`, the default, or
/// `postgres`).
pub fn on_postgres() -> bool {
    match std::env::var("TEST_DATABASE").as_deref() {
        Ok("postgres") | Ok("postgresql") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("TEST_DATABASE={other}: expected sqlite or postgres"),
    }
}

/// A fresh, empty database for one test: a SQLite file `name.db` in `dir`, or a new database on
/// the run's PostgreSQL server.
pub fn test_db_url(dir: &Path, name: &str) -> String {
    if on_postgres() {
        shared().create_database()
    } else {
        sqlite_url(dir, name)
    }
}

/// A SQLite file `name.db` in `dir`, on either run (tests of SQLite's own file behaviour).
pub fn sqlite_url(dir: &Path, name: &str) -> String {
    format!("sqlite://{}", dir.join(format!("{name}.db")).display())
}

/// The run's PostgreSQL server, started on first use and stopped when the test binary exits.
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(PgServer::start)
}

fn bin_dir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL must be installed (apt-get install postgresql)")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort_by_key(|p| {
        p.parent().and_then(|v| v.file_name()).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok())
    });
    dirs.pop().expect("no /usr/lib/postgresql/*/bin/initdb")
}

fn is_root() -> bool {
    // `id -u` rather than libc: the crate has no unsafe code, its tests included.
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

/// Runs a PostgreSQL program, as the `postgres` user when we are root (initdb refuses root).
fn pg_command(program: &str) -> Command {
    let path = bin_dir().join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

/// A real PostgreSQL server of our own on a free port, in a temp dir.
pub struct PgServer {
    pub port: u16,
    data: PathBuf,
    /// Holds the watchdog's stdin: when this process exits, for any reason, the pipe closes and
    /// the watchdog stops the server (a static is never dropped).
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
    next_db: AtomicU64,
    _dir: TempDir,
}

impl PgServer {
    /// `initdb` (about 0.4 s) and start on a free port; waits until it accepts connections.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// [`PgServer::start`], but accepting TLS connections only, as RDS does by default
    /// (`rds.force_ssl`): a self-signed certificate, and `hostssl` as the only TCP rule.
    pub fn start_tls_only() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls_only: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut perms = std::fs::metadata(dir.path()).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(dir.path(), perms).unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        if is_root() {
            let ok = Command::new("chown").arg("postgres").arg(&data).status().unwrap().success();
            assert!(ok, "chown postgres {}", data.display());
        }
        let out = pg_command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        if tls_only {
            let ok = Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
                .arg("-keyout")
                .arg(data.join("server.key"))
                .arg("-out")
                .arg(data.join("server.crt"))
                .stderr(Stdio::null())
                .status()
                .expect("openssl")
                .success();
            assert!(ok, "openssl req");
            std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
                .unwrap();
            let mut key = std::fs::metadata(data.join("server.key")).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut key, 0o600);
            std::fs::set_permissions(data.join("server.key"), key).unwrap();
            std::fs::write(
                data.join("postgresql.auto.conf"),
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
            )
            .unwrap();
            if is_root() {
                for f in ["server.key", "server.crt", "pg_hba.conf", "postgresql.auto.conf"] {
                    let ok = Command::new("chown").arg("postgres").arg(data.join(f)).status().unwrap().success();
                    assert!(ok, "chown postgres {f}");
                }
            }
        }
        let mut server = PgServer { port: 0, data, watchdog: Mutex::new(None), next_db: AtomicU64::new(0), _dir: dir };
        for _ in 0..10 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start PostgreSQL; log: {}", server.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.join("log")).unwrap_or_default()
    }

    fn spawn(&mut self) -> bool {
        // Fast and small: a test server needs no durability across machine crashes
        // (fsync off), and many databases with few connections each.
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=400 -c shared_buffers=64MB",
            self.port,
            self.data.display()
        );
        let started = pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.data.join("log"))
            .args(["-w", "-t", "20", "-o", &opts, "start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        if !started {
            return false;
        }
        // The watchdog: `read` returns when our end of its stdin closes (we exit, or stop()).
        let stop = format!(
            "read _; exec {} {} -D {} -m immediate stop >/dev/null 2>&1",
            if is_root() { "runuser -u postgres --" } else { "" },
            bin_dir().join("pg_ctl").display(),
            self.data.display()
        );
        let mut child = Command::new("sh").arg("-c").arg(stop).stdin(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        *self.watchdog.lock().unwrap() = Some((child, stdin));
        true
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs one statement with `psql`; panics on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(bin_dir().join("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", &self.url(db), "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A new, empty database; returns its URL.
    pub fn create_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("t{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// Stops the server at once (`pg_ctl -m immediate`: the postmaster and every backend are
    /// killed without a checkpoint, as in a crash; what was committed survives).
    pub fn kill(&self) {
        if let Some((mut child, stdin)) = self.watchdog.lock().unwrap().take() {
            drop(stdin);
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data (the databases and their rows are kept).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "PostgreSQL did not restart on port {}: {}", self.port, self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
    }
}
