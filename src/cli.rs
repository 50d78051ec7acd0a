//! The command line: `serve` (the default), `migrate`, `keys …`, `links import`.
//!
//! Commands print their result on stdout (a new key alone on the last line, so scripts can take
//! it with `tail -n1`); logs and progress go to stderr.

use std::{
    io::{BufRead, IsTerminal, Write},
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{
    config::Config,
    db::{self, keys, links},
    links::{code, target},
    startup,
    time_util::{now_ms, to_rfc3339},
};

/// A fast, self-hosted URL shortener.
#[derive(Debug, Parser)]
#[command(name = "shortener", version, about)]
pub struct Cli {
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// Create the database if needed and apply migrations, then exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Bulk operations on links.
    #[command(subcommand)]
    Links(LinksCommand),
}

/// `shortener keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; the key is printed once, alone on the last line of stdout.
    Create {
        /// A unique name for the key (who or what uses it).
        name: String,
        /// Exempt this key from rate limits.
        #[arg(long)]
        unlimited: bool,
        /// Let this key manage every link (list, read, change, delete, clicks), not only the
        /// ones it creates; links with no recorded creator (imported) belong to admin keys.
        #[arg(long)]
        admin: bool,
    },
    /// List keys (never the keys themselves, only their first characters).
    List,
    /// Revoke a key by name; it stops working at once.
    Revoke {
        /// The key's name.
        name: String,
    },
}

/// `shortener links …`
#[derive(Debug, Subcommand)]
pub enum LinksCommand {
    /// Import links from CSV (`code,url` per line) or JSON lines (`{"code":…,"url":…}`).
    /// Existing codes are kept; invalid lines are reported and skipped.
    Import {
        /// The file to read, or `-` for stdin.
        file: String,
        /// Input format (default: from the file name, else CSV).
        #[arg(long, value_enum)]
        format: Option<ImportFormat>,
        /// Rows per transaction.
        #[arg(long, default_value_t = 20_000)]
        batch: usize,
    },
}

/// Import formats.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ImportFormat {
    /// `code,url` per line; a header line `code,url` is skipped.
    Csv,
    /// One JSON object per line with `code` and `url`.
    Jsonl,
}

type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Runs a parsed command line.
/// Runs a command; `inherited` are the listening sockets the process was started with
/// (socket activation), which `serve` serves instead of binding `LISTEN_ADDR`.
pub async fn run(cli: Cli, inherited: Vec<crate::net::listen::Inherited>) -> CliResult {
    let config = Config::from_env()?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config, inherited).await,
        Command::Migrate => {
            db::migrate(&config.db.url).await?;
            println!("migrations applied to {}", crate::config::redact_url(&config.db.url));
            Ok(())
        }
        Command::Keys(cmd) => run_keys(&config, cmd).await,
        Command::Links(LinksCommand::Import { file, format, batch }) => {
            import(&config, &file, format, batch.max(1)).await
        }
    }
}

async fn serve(config: Config, inherited: Vec<crate::net::listen::Inherited>) -> CliResult {
    tracing::info!(config = ?config, "starting");
    let signal = shutdown_signal()?;
    let app = startup::build_on(config, Default::default(), inherited).await?;
    tracing::info!(listen.addrs = ?app.addrs(), listen.inherited = app.inherited(), "listening");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    app.run_until(async {
        signal.await;
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    })
    .await?;
    Ok(())
}

/// Registers for SIGTERM and SIGINT now (before the service says it is ready: a signal that
/// arrives before registration would kill the process without a graceful shutdown) and returns
/// a future that resolves on the first of them.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    })
}

async fn connect(config: &Config) -> Result<db::OwnedConn, sqlx::Error> {
    db::OwnedConn::open(&config.db.url).await
}

async fn run_keys(config: &Config, cmd: KeysCommand) -> CliResult {
    let mut owned = connect(config).await?;
    let mut conn = owned.conn();
    match cmd {
        KeysCommand::Create { name, unlimited, admin } => {
            let name = name.trim();
            if name.is_empty() || name.len() > 100 || name.chars().any(char::is_control) {
                return Err("key name must be 1 to 100 printable characters".into());
            }
            let rights = keys::KeyRights { unlimited, admin };
            let key = keys::insert_key(&mut conn, name, rights, now_ms()).await.map_err(|e| match e {
                sqlx::Error::Database(d) if d.is_unique_violation() => format!("a key named {name:?} already exists"),
                other => other.to_string(),
            })?;
            let what = match (admin, unlimited) {
                (true, true) => " (admin, unlimited)",
                (true, false) => " (admin)",
                (false, true) => " (unlimited)",
                (false, false) => "",
            };
            eprintln!("created API key {name:?}{what}; it is shown only once:");
            println!("{key}");
        }
        KeysCommand::List => {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{:<24} {:<10} {:<5} {:<9} {:<30} REVOKED",
                "NAME", "PREFIX", "ADMIN", "UNLIMITED", "CREATED"
            )?;
            let yes_no = |b: bool| if b { "yes" } else { "no" };
            for k in keys::find_keys(&mut conn).await? {
                writeln!(
                    out,
                    "{:<24} {:<10} {:<5} {:<9} {:<30} {}",
                    k.name,
                    format!("{}…", k.key_prefix),
                    yes_no(k.admin),
                    yes_no(k.unlimited),
                    to_rfc3339(k.created_at),
                    k.revoked_at.map(to_rfc3339).unwrap_or_else(|| "-".into())
                )?;
            }
        }
        KeysCommand::Revoke { name } => {
            if !keys::revoke_key(&mut conn, &name, now_ms()).await? {
                return Err(format!("no active key named {name:?}").into());
            }
            announce_revocation(config, &name).await;
            println!("revoked {name}");
        }
    }
    Ok(())
}

/// Tells running instances (through Redis) to forget the keys they verified recently, and waits
/// (up to 2 s) until each has done so, so the revocation applies at once; without Redis it
/// applies within `AUTH_CACHE_TTL_MS`. Each instance acknowledges by incrementing a counter named
/// after this announcement's nonce.
async fn announce_revocation(config: &Config, name: &str) {
    if !config.redis.enabled {
        return;
    }
    let names = crate::redis_client::Names::new(&config.redis.key_prefix);
    let channel = names.keys_channel();
    let nonce = format!("{:016x}", rand::random::<u64>());
    let acks_key = names.revocation_acks(&nonce);
    let announce = async {
        let client = redis::Client::open(config.redis.url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let listeners: i64 =
            redis::cmd("PUBLISH").arg(&channel).arg(format!("{name} {nonce}")).query_async(&mut conn).await?;
        let started = std::time::Instant::now();
        loop {
            let acks: Option<i64> = redis::cmd("GET").arg(&acks_key).query_async(&mut conn).await?;
            let acks = acks.unwrap_or(0);
            if acks >= listeners || started.elapsed() >= Duration::from_millis(1500) {
                return Ok::<_, redis::RedisError>((listeners, acks));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    match tokio::time::timeout(Duration::from_secs(2), announce).await {
        Ok(Ok((n, acks))) if acks >= n => eprintln!("revocation announced to {n} running instance(s)"),
        Ok(Ok((n, acks))) => eprintln!(
            "warning: revocation announced to {n} running instance(s), but only {acks} confirmed it; the others refuse the key within AUTH_CACHE_TTL_MS ({} ms)",
            config.auth.cache_ttl.as_millis()
        ),
        _ => eprintln!(
            "warning: could not announce the revocation through Redis; running instances refuse the key within AUTH_CACHE_TTL_MS ({} ms)",
            config.auth.cache_ttl.as_millis()
        ),
    }
}

/// Parses one import line into (code, url); `Ok(None)` for blank lines and the CSV header.
fn parse_import_line(line: &str, format: ImportFormat, config: &Config) -> Result<Option<(String, String)>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(None);
    }
    let (c, u) = match format {
        ImportFormat::Csv => {
            let (c, u) = line.split_once(',').ok_or("expected code,url")?;
            let (c, u) = (c.trim().trim_matches('"'), u.trim().trim_matches('"'));
            if c.eq_ignore_ascii_case("code") || c.eq_ignore_ascii_case("short_code") {
                return Ok(None);
            }
            (c.to_string(), u.to_string())
        }
        ImportFormat::Jsonl => {
            #[derive(serde::Deserialize)]
            struct Row {
                code: String,
                url: String,
            }
            let r: Row = serde_json::from_str(line).map_err(|e| e.to_string())?;
            (r.code, r.url)
        }
    };
    if !code::is_code_shaped(&c) {
        return Err(format!("invalid code {c:?}"));
    }
    let url = target::parse_target(&u, &target::OwnOrigin::new(&config.http.public_base_url, config.http.listen_addr))
        .map_err(|e| e.message)?;
    Ok(Some((c, url)))
}

async fn import(config: &Config, file: &str, format: Option<ImportFormat>, batch: usize) -> CliResult {
    let format = format.unwrap_or(if file.ends_with(".jsonl") || file.ends_with(".ndjson") {
        ImportFormat::Jsonl
    } else {
        ImportFormat::Csv
    });
    let (reader, total_bytes): (Box<dyn BufRead>, Option<u64>) = if file == "-" {
        (Box::new(std::io::BufReader::new(std::io::stdin())), None)
    } else {
        let f = std::fs::File::open(file).map_err(|e| format!("{file}: {e}"))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(std::io::BufReader::with_capacity(1 << 20, f)), len)
    };
    let mut owned = connect(config).await?;
    let mut conn = owned.conn();
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let (mut read_bytes, mut lines, mut inserted, mut rejected) = (0u64, 0u64, 0u64, 0u64);
    let mut rows = Vec::with_capacity(batch);
    let mut last_progress = Instant::now();
    for line in reader.lines() {
        let line = line?;
        lines += 1;
        read_bytes += line.len() as u64 + 1;
        match parse_import_line(&line, format, config) {
            Ok(Some(row)) => rows.push(row),
            Ok(None) => {}
            Err(e) => {
                rejected += 1;
                if rejected <= 10 {
                    eprintln!("line {lines}: {e}; skipped");
                }
            }
        }
        if rows.len() >= batch {
            inserted += links::insert_links_bulk(&mut conn, &rows, now_ms()).await?;
            rows.clear();
            if last_progress.elapsed() >= Duration::from_millis(250) {
                progress(tty, lines, read_bytes, total_bytes, started);
                last_progress = Instant::now();
            }
        }
    }
    if !rows.is_empty() {
        inserted += links::insert_links_bulk(&mut conn, &rows, now_ms()).await?;
    }
    progress(tty, lines, read_bytes, total_bytes, started);
    if tty {
        eprintln!();
    }
    println!(
        "imported {inserted} links ({} lines, {rejected} rejected) in {:.1}s",
        lines,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn progress(tty: bool, lines: u64, read: u64, total: Option<u64>, started: Instant) {
    let rate = lines as f64 / started.elapsed().as_secs_f64().max(0.001);
    let line = match total {
        Some(t) if t > 0 => {
            let frac = (read as f64 / t as f64).min(1.0);
            let filled = (frac * 30.0) as usize;
            format!(
                "[{}{}] {:>3.0}% {lines} lines, {rate:.0}/s",
                "#".repeat(filled),
                " ".repeat(30 - filled),
                frac * 100.0
            )
        }
        _ => format!("{lines} lines, {rate:.0}/s"),
    };
    if tty {
        eprint!("\r{line}");
    } else {
        eprintln!("{line}");
    }
}
