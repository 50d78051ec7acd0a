//! The command line: `serve` (the default), `migrate`, `keys …`, `links import`, `links
//! export`, `db copy`.
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
    links::{
        code,
        export::{export_stream, ExportFormat},
        target,
    },
    startup,
    time_util::{now_ms, parse_rfc3339, to_rfc3339},
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
    /// Whole-database operations (moving an installation).
    #[command(subcommand)]
    Db(DbCommand),
}

/// `shortener db …`
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copy every API key, link and daily click count from one database to another (SQLite or
    /// PostgreSQL, either way), then compare both sides' row counts and checksums; exits non-zero
    /// when they differ. The target is migrated first and ends up a mirror of the source: running
    /// it again brings over what changed since, and never adds clicks twice.
    Copy {
        /// The database to copy from (`sqlite://PATH` or `postgres://…`).
        #[arg(long)]
        from: String,
        /// The database to copy into (created and migrated when needed; PostgreSQL's database
        /// itself must exist).
        #[arg(long)]
        to: String,
        /// Rows a page: read with one statement, written in one transaction.
        #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..=db::copy::MAX_BATCH as u64))]
        batch: u64,
        /// Copy nothing: only compare both sides' row counts and checksums.
        #[arg(long)]
        verify_only: bool,
    },
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
    /// Import links from CSV (`code,url` per line) or JSON lines (`{"code":…,"url":…}`), or
    /// from what `links export` wrote (CSV with its header row, or its JSON lines): then each
    /// link keeps its redirect status, creation time and expiry. Existing codes are kept;
    /// invalid lines are reported and skipped.
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
    /// Export every link (CSV with a header row, or JSON lines), read straight from the
    /// database and ordered by code: everything `links import` needs to recreate them exactly.
    /// Only the export goes to stdout; the summary goes to stderr.
    Export {
        /// The file to write (replaced once the export is complete), or `-` for stdout.
        #[arg(default_value = "-")]
        file: String,
        /// Output format (default: from the file name, else CSV).
        #[arg(long, value_enum)]
        format: Option<ImportFormat>,
    },
}

/// Import and export formats.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ImportFormat {
    /// `code,url` per line (a header line `code,url` is skipped), or the export's CSV (header
    /// `code,url,redirect_status,created_at,expires_at,…`, RFC 4180).
    Csv,
    /// One JSON object per line with `code` and `url`, and optionally the export's
    /// `redirect_status`, `created_at` and `expires_at`.
    Jsonl,
}

impl ImportFormat {
    /// The format `--format` names, else the one `file`'s name suggests, else CSV.
    fn of(file: &str, given: Option<ImportFormat>) -> ImportFormat {
        given.unwrap_or(if file.ends_with(".jsonl") || file.ends_with(".ndjson") {
            ImportFormat::Jsonl
        } else {
            ImportFormat::Csv
        })
    }
}

type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Runs a parsed command line.
/// Runs a command; `inherited` are the listening sockets the process was started with
/// (socket activation), which `serve` serves instead of binding `LISTEN_ADDR`.
pub async fn run(cli: Cli, inherited: Vec<crate::net::listen::Inherited>) -> CliResult {
    let command = match cli.command.unwrap_or(Command::Serve) {
        // Its databases are its arguments; the service's settings play no part.
        Command::Db(DbCommand::Copy { from, to, batch, verify_only }) => {
            return db_copy(&from, &to, batch as usize, verify_only).await;
        }
        other => other,
    };
    let config = Config::from_env()?;
    match command {
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
        Command::Links(LinksCommand::Export { file, format }) => {
            export(&config, &file, ImportFormat::of(&file, format)).await
        }
        Command::Db(_) => unreachable!("handled before the configuration is read"),
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

/// One link to import: the code and URL, and what an export adds (otherwise 302, created at
/// import, no expiry).
#[derive(Debug, PartialEq, Eq)]
struct ImportRow {
    code: String,
    url: String,
    status: i64,
    created_at: Option<i64>,
    expires_at: Option<i64>,
}

/// Checks and completes one link read from an import: the code's shape, the URL (parsed and
/// stored as the API would), the status, the times. Reserved words are accepted: an export may
/// hold a link created before its code became one.
fn import_row(
    config: &Config,
    code: &str,
    url: &str,
    status: Option<&str>,
    created_at: Option<&str>,
    expires_at: Option<&str>,
) -> Result<ImportRow, String> {
    if !code::is_code_shaped(code) {
        return Err(format!("invalid code {code:?}"));
    }
    let url = target::parse_target(url, &target::OwnOrigin::new(&config.http.public_base_url, config.http.listen_addr))
        .map_err(|e| e.message)?;
    let status = match status.filter(|s| !s.is_empty()) {
        None => 302,
        Some(s) => match s.parse::<i64>() {
            Ok(n @ (301 | 302 | 307 | 308)) => n,
            _ => return Err(format!("redirect_status must be 301, 302, 307 or 308, not {s:?}")),
        },
    };
    let time = |field: &str, raw: Option<&str>| match raw.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(raw) => parse_rfc3339(raw).map(Some).ok_or_else(|| format!("{field} is not an RFC 3339 time: {raw:?}")),
    };
    Ok(ImportRow {
        code: code.to_string(),
        url,
        status,
        created_at: time("created_at", created_at)?,
        expires_at: time("expires_at", expires_at)?,
    })
}

/// Parses one line of a plain import (`code,url`, or a JSON object) into a link; `Ok(None)` for
/// blank lines and the CSV header.
fn parse_import_line(line: &str, format: ImportFormat, config: &Config) -> Result<Option<ImportRow>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Ok(None);
    }
    match format {
        ImportFormat::Csv => {
            let (c, u) = line.split_once(',').ok_or("expected code,url")?;
            let (c, u) = (c.trim().trim_matches('"'), u.trim().trim_matches('"'));
            if c.eq_ignore_ascii_case("code") || c.eq_ignore_ascii_case("short_code") {
                return Ok(None);
            }
            import_row(config, c, u, None, None, None).map(Some)
        }
        ImportFormat::Jsonl => {
            #[derive(serde::Deserialize)]
            struct Row {
                code: String,
                url: String,
                #[serde(default)]
                redirect_status: Option<u16>,
                #[serde(default)]
                created_at: Option<String>,
                #[serde(default)]
                expires_at: Option<String>,
            }
            let r: Row = serde_json::from_str(line).map_err(|e| e.to_string())?;
            let status = r.redirect_status.map(|s| s.to_string());
            import_row(config, &r.code, &r.url, status.as_deref(), r.created_at.as_deref(), r.expires_at.as_deref())
                .map(Some)
        }
    }
}

/// Whether an import's first line is the header of the export's CSV.
fn is_export_csv_header(first_line: &[u8]) -> bool {
    first_line.starts_with(b"code,url,redirect_status,")
}

/// What an import has done so far, and the batch it is filling.
struct Importer<'c> {
    conn: db::Conn<'c>,
    batch: usize,
    rows: Vec<ImportRow>,
    inserted: u64,
    rejected: u64,
    tty: bool,
    total_bytes: Option<u64>,
    started: Instant,
    last_progress: Instant,
}

impl Importer<'_> {
    /// Takes one line's outcome; writes a batch when it is full.
    async fn take(&mut self, parsed: Result<Option<ImportRow>, String>, line: u64, read_bytes: u64) -> CliResult {
        match parsed {
            Ok(Some(row)) => self.rows.push(row),
            Ok(None) => {}
            Err(e) => {
                self.rejected += 1;
                if self.rejected <= 10 {
                    eprintln!("line {line}: {e}; skipped");
                }
            }
        }
        if self.rows.len() >= self.batch {
            self.write().await?;
            if self.last_progress.elapsed() >= Duration::from_millis(250) {
                progress(self.tty, line, read_bytes, self.total_bytes, self.started);
                self.last_progress = Instant::now();
            }
        }
        Ok(())
    }

    /// Writes the batch (one transaction).
    async fn write(&mut self) -> CliResult {
        let links: Vec<links::NewLink<'_>> = self
            .rows
            .iter()
            .map(|r| links::NewLink {
                code: &r.code,
                url: &r.url,
                status: r.status,
                expires_at: r.expires_at,
                created_by: None,
                created_at: r.created_at,
            })
            .collect();
        self.inserted += links::insert_imported_links(&mut self.conn, &links, now_ms()).await?;
        self.rows.clear();
        Ok(())
    }
}

async fn import(config: &Config, file: &str, format: Option<ImportFormat>, batch: usize) -> CliResult {
    let format = ImportFormat::of(file, format);
    let (mut reader, total_bytes): (Box<dyn BufRead>, Option<u64>) = if file == "-" {
        (Box::new(std::io::BufReader::new(std::io::stdin())), None)
    } else {
        let f = std::fs::File::open(file).map_err(|e| format!("{file}: {e}"))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(std::io::BufReader::with_capacity(1 << 20, f)), len)
    };
    let mut owned = connect(config).await?;
    let tty = std::io::stderr().is_terminal();
    let mut importer = Importer {
        conn: owned.conn(),
        batch,
        rows: Vec::with_capacity(batch),
        inserted: 0,
        rejected: 0,
        tty,
        total_bytes,
        started: Instant::now(),
        last_progress: Instant::now(),
    };
    let export_csv = format == ImportFormat::Csv && is_export_csv_header(reader.fill_buf()?);
    let (mut lines, mut read_bytes) = (0u64, 0u64);
    if export_csv {
        // The export's CSV: RFC 4180 (quoted fields may hold commas and quotes), columns found
        // by the header's names.
        let mut csv = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(reader);
        let headers = csv.headers()?.clone();
        let column = |name: &str| headers.iter().position(|h| h == name);
        let (c_code, c_url) = (column("code").ok_or("no code column")?, column("url").ok_or("no url column")?);
        let (c_status, c_created, c_expires) = (column("redirect_status"), column("created_at"), column("expires_at"));
        let mut record = csv::StringRecord::new();
        loop {
            let parsed = match csv.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {
                    let get = |i: Option<usize>| i.and_then(|i| record.get(i));
                    match (record.get(c_code), record.get(c_url)) {
                        (Some(code), Some(url)) => {
                            import_row(config, code, url, get(c_status), get(c_created), get(c_expires)).map(Some)
                        }
                        _ => Err("expected code and url".to_string()),
                    }
                }
                Err(e) if matches!(e.kind(), csv::ErrorKind::Io(_)) => return Err(e.into()),
                Err(e) => Err(e.to_string()),
            };
            // The record's own line (a quoted field could span lines), and the bytes read.
            let line = record.position().map_or(lines + 1, |p| p.line());
            (lines, read_bytes) = (csv.position().line().saturating_sub(1), csv.position().byte());
            importer.take(parsed, line, read_bytes).await?;
        }
    } else {
        for line in reader.lines() {
            let line = line?;
            lines += 1;
            read_bytes += line.len() as u64 + 1;
            importer.take(parse_import_line(&line, format, config), lines, read_bytes).await?;
        }
    }
    if !importer.rows.is_empty() {
        importer.write().await?;
    }
    progress(tty, lines, read_bytes, total_bytes, importer.started);
    if tty {
        eprintln!();
    }
    println!(
        "imported {} links ({} lines, {} rejected) in {:.1}s",
        importer.inserted,
        lines,
        importer.rejected,
        importer.started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `links export`: every link, from a read pool of the database, to `file` (written beside it
/// and renamed once complete, so a failed export never leaves a truncated file under the name)
/// or stdout.
async fn export(config: &Config, file: &str, format: ImportFormat) -> CliResult {
    use futures_util::StreamExt;
    let format = match format {
        ImportFormat::Csv => ExportFormat::Csv,
        ImportFormat::Jsonl => ExportFormat::Jsonl,
    };
    let db = db::open_for_reading(&config.db.url).await?;
    let started = Instant::now();
    let partial = format!("{file}.partial");
    let mut out: Box<dyn Write> = if file == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(std::io::BufWriter::new(std::fs::File::create(&partial).map_err(|e| format!("{partial}: {e}"))?))
    };
    let mut stream = std::pin::pin!(export_stream(db.clone(), links::Scope::Every, format));
    let (mut bytes, mut newlines) = (0u64, 0u64);
    let done: CliResult = async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            bytes += chunk.len() as u64;
            newlines += chunk.iter().filter(|b| **b == b'\n').count() as u64;
            out.write_all(&chunk)?;
        }
        out.flush()?;
        Ok(())
    }
    .await;
    drop(out);
    db.close().await;
    if let Err(e) = done {
        if file != "-" {
            let _ = std::fs::remove_file(&partial);
        }
        return Err(format!("export failed: {e}").into());
    }
    if file != "-" {
        std::fs::rename(&partial, file).map_err(|e| format!("{partial} -> {file}: {e}"))?;
    }
    // A record is one line (no field can hold a line break: URLs and key names refuse control
    // characters); CSV has a header line more.
    let links = if format == ExportFormat::Csv { newlines.saturating_sub(1) } else { newlines };
    eprintln!(
        "exported {links} links ({bytes} bytes) to {} in {:.1}s",
        if file == "-" { "stdout" } else { file },
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

/// `db copy`: the copy (unless `verify_only`), then the verification, whose report is printed on
/// stdout; progress on stderr.
async fn db_copy(from: &str, to: &str, batch: usize, verify_only: bool) -> CliResult {
    let (shown_from, shown_to) = (crate::config::redact_url(from), crate::config::redact_url(to));
    if !verify_only {
        eprintln!("copying {shown_from} -> {shown_to} ({batch} rows a page)");
        let mut bar = CopyProgress::new(std::io::stderr().is_terminal());
        let summary = db::copy::copy(from, to, batch, &mut |p| bar.update(p)).await;
        bar.finish();
        let summary = summary?;
        let rows: u64 = summary.copied.iter().map(|(_, n)| n).sum();
        let secs = summary.elapsed.as_secs_f64();
        let per_table: Vec<String> = summary
            .copied
            .iter()
            .zip(&summary.deleted)
            .map(|((t, n), (_, d))| {
                if *d > 0 {
                    format!("{} {n} ({d} no longer in the source deleted)", t.name())
                } else {
                    format!("{} {n}", t.name())
                }
            })
            .collect();
        println!(
            "copied {} rows in {secs:.1}s ({:.0} rows/s): {}",
            rows,
            rows as f64 / secs.max(0.001),
            per_table.join(", ")
        );
        if summary.pending_invalidations > 0 {
            eprintln!(
                "warning: the source has {} cache invalidations not yet applied to its Redis (not copied): \
                 start the instances on the target with an empty cache (a new REDIS_KEY_PREFIX, or flush the old one)",
                summary.pending_invalidations
            );
        }
    }
    eprintln!("verifying: row counts and checksums of both sides");
    let checks = db::copy::verify(from, to).await?;
    println!(
        "{:<18} {:>12} {:>12}  {:<16}  {:<16}  RESULT",
        "TABLE", "SOURCE ROWS", "TARGET ROWS", "SOURCE SHA-256", "TARGET SHA-256"
    );
    for c in &checks {
        println!(
            "{:<18} {:>12} {:>12}  {:<16}  {:<16}  {}",
            c.table.name(),
            c.source.rows,
            c.target.rows,
            &c.source.sha256[..16],
            &c.target.sha256[..16],
            if c.same() { "same" } else { "DIFFERENT" }
        );
    }
    let differ: Vec<&str> = checks.iter().filter(|c| !c.same()).map(|c| c.table.name()).collect();
    if !differ.is_empty() {
        return Err(format!(
            "verification failed: {} differ between {shown_from} and {shown_to} (was the source written during the copy? run it again)",
            differ.join(", ")
        )
        .into());
    }
    println!("verified: {shown_to} holds the same rows as {shown_from}");
    Ok(())
}

/// How `db copy` shows where it is: a progress bar on a terminal; otherwise (a log, a pipe) a
/// plain line when a table starts, every 2 s, and when it ends.
struct CopyProgress {
    bar: Option<indicatif::ProgressBar>,
    table: Option<db::copy::Table>,
    /// The (table, rows) of the last plain line: a table's end is reported once.
    printed: Option<(db::copy::Table, u64)>,
    last_line: Instant,
    started: Instant,
}

impl CopyProgress {
    fn new(tty: bool) -> Self {
        let bar = tty.then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
            let style = indicatif::ProgressStyle::with_template(
                "{msg:<17} [{wide_bar}] {percent:>3}% {human_pos}/{human_len} rows, {eta} left",
            )
            .expect("a valid template")
            .progress_chars("#>-");
            bar.set_style(style);
            bar
        });
        CopyProgress { bar, table: None, printed: None, last_line: Instant::now(), started: Instant::now() }
    }

    fn update(&mut self, p: db::copy::Progress) {
        let new_table = self.table != Some(p.table);
        self.table = Some(p.table);
        if let Some(bar) = &self.bar {
            bar.set_length(p.total);
            bar.set_position(p.done);
            if new_table {
                bar.set_message(p.table.name());
            }
            return;
        }
        let table_end = p.table_done >= p.table_total && !(new_table && p.table_total > 0);
        let due = new_table || table_end || self.last_line.elapsed() >= Duration::from_secs(2);
        if due && self.printed != Some((p.table, p.table_done)) {
            self.printed = Some((p.table, p.table_done));
            let rate = p.done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
            eprintln!(
                "{}: {}/{} rows; all tables {}/{} rows, {rate:.0} rows/s",
                p.table.name(),
                p.table_done,
                p.table_total,
                p.done,
                p.total
            );
            self.last_line = Instant::now();
        }
    }

    /// Clears the bar: the summary line on stdout says the rest.
    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
