//! The single writer: one connection that commits concurrent changes together.
//!
//! Handlers submit a [`Change`] and wait for its [`Outcome`]. The writer takes every change that
//! is waiting (up to `WRITE_BATCH_MAX`) and commits them together (group commit: one fsync for
//! the whole batch). A batch made only of creates under random codes is one multi-row `INSERT`,
//! atomic by itself; any other batch is one `BEGIN IMMEDIATE` transaction in which each change
//! to a code that may be cached also queues a cache invalidation row. After the commit, a task
//! deletes the changed codes from Redis (one `DEL`), bumps their L1 epochs, and only then
//! answers each caller, while the writer already commits the next batch. So an acknowledged
//! change is durable and already visible on the redirect path.
//!
//! The writer runs on a thread of its own with a single-threaded runtime, so the round trips to
//! SQLite's thread do not queue behind the HTTP connections on the shared runtime.
//!
//! On PostgreSQL each instance has such a writer, and each batch takes a connection from the
//! pool for its transaction. Writers of several instances commit side by side; a batch that
//! PostgreSQL aborted to break a deadlock between them is tried again (the other one went
//! through), a few times at most.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use sqlx::{pool::PoolConnection, Postgres};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    links::{self, LinkPatch, LinkRow, Scope},
    Conn, DbError, WriterConn,
};
use crate::time_util::now_ms;
use futures_util::future::BoxFuture;

/// What the writer tells the rest of the service about committed changes. `startup` wires it to
/// the caches and the invalidation bus, so this layer knows nothing of them.
pub trait Announce: Send + Sync + 'static {
    /// The links with these codes changed (`ids`: their rows in `cache_invalidations`); resolves
    /// once no cache can serve their old state. Each change is answered only after this.
    fn committed<'a>(&'a self, codes: &'a [String], ids: &'a [i64]) -> BoxFuture<'a, ()>;
    /// Rows of `cache_invalidations` whose invalidation is known to have landed: the writer
    /// deletes them.
    fn take_applied(&self) -> Vec<i64>;
    /// Puts back rows whose delete failed.
    fn requeue_applied(&self, ids: Vec<i64>);
}

/// Makes a random code (of the configured length and alphabet: the domain's rule).
pub type NewCode = Arc<dyn Fn() -> String + Send + Sync>;

/// A change to the links table.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new link; `code: None` picks a random one.
    Create {
        /// Custom code, already validated.
        code: Option<String>,
        /// Target URL, already validated.
        url: String,
        /// Redirect status.
        status: i64,
        /// Expiry, epoch milliseconds.
        expires_at: Option<i64>,
        /// The creating key's id.
        created_by: Option<i64>,
    },
    /// A partial update.
    Update {
        /// The link.
        code: String,
        /// Whose links the caller may change; a link outside it is [`Outcome::NotFound`].
        scope: Scope,
        /// What to change.
        patch: LinkPatch,
    },
    /// A delete.
    Delete {
        /// The link.
        code: String,
        /// Whose links the caller may delete; a link outside it is [`Outcome::NotFound`].
        scope: Scope,
    },
    /// A change to the admin app's sessions (`super::sessions`).
    Session(super::sessions::SessionChange),
    /// Buffered clicks to add (see `crate::clicks`).
    Clicks {
        /// (code, clicks, last click epoch ms).
        batch: ClickBatch,
        /// The UTC day they are counted on.
        day: String,
    },
}

impl Change {
    /// A create as the row to insert under `code`; `None` for other changes.
    fn new_link<'a>(&'a self, code: &'a str) -> Option<links::NewLink<'a>> {
        match self {
            Change::Create { url, status, expires_at, created_by, .. } => Some(links::NewLink {
                code,
                url,
                status: *status,
                expires_at: *expires_at,
                created_by: *created_by,
                created_at: None,
            }),
            _ => None,
        }
    }
}

/// Clicks per code: (code, count, last click in epoch milliseconds).
pub type ClickBatch = Vec<(String, u64, i64)>;

/// What a change did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The created link.
    Created(LinkRow),
    /// The updated link.
    Updated(LinkRow),
    /// The link is gone.
    Deleted,
    /// No link with that code (update, delete).
    NotFound,
    /// The custom code is taken (create).
    Taken,
    /// Clicks were added (links deleted meanwhile are skipped).
    ClicksAdded,
    /// A session change touched this many rows.
    Session(u64),
}

struct Job {
    change: Change,
    reply: oneshot::Sender<Result<Outcome, DbError>>,
}

/// The handle handlers submit changes through. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    /// What the writer has done, for `/metrics`.
    pub stats: Arc<WriterStats>,
}

/// Counters of the writer, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Changes in them.
    pub changes: AtomicU64,
    /// Time spent from `BEGIN` to the end of `COMMIT`, in microseconds.
    pub commit_micros: AtomicU64,
    /// Batches rolled back.
    pub failed: AtomicU64,
}

impl WriterStats {
    /// Copies the writer's counters into `m`.
    pub fn export_metrics(&self, m: &crate::observe::Metrics) {
        let result = |r: &'static str| vec![metrics::Label::new("result", r)];
        m.copy_counter("shortener_write_batches_total", result("committed"), &self.batches);
        m.copy_counter("shortener_write_batches_total", result("rolled_back"), &self.failed);
        m.copy_counter("shortener_write_changes_total", vec![], &self.changes);
        m.copy_counter("shortener_write_transaction_microseconds_total", vec![], &self.commit_micros);
    }
}

/// Tries a random code this many times before giving up (at 7 base62 characters a collision is
/// a one-in-billions event; eight in a row means something else is wrong).
const RANDOM_CODE_ATTEMPTS: usize = 8;

impl Writer {
    /// Starts the writer task on `conn`. It stops when `shutdown` fires and the queue is drained.
    pub fn spawn(
        conn: WriterConn,
        announce: Arc<dyn Announce>,
        new_code: NewCode,
        batch_max: usize,
        shutdown: watch::Receiver<bool>,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(batch_max * 8);
        let stats = Arc::new(WriterStats::default());
        let task = WriterTask {
            conn,
            announce,
            new_code,
            batch_max,
            stats: stats.clone(),
            finishing: Arc::new(tokio::sync::Semaphore::new(FINISHING_MAX)),
        };
        // The writer runs on a thread of its own, with its own single-threaded runtime. A
        // transaction is a handful of statements, each a round trip to SQLite's thread; on the
        // shared runtime every one of those wake-ups would queue behind the HTTP connections
        // that are ready to run, which under load stretched a 500-row commit from about 2 ms to
        // 20 ms and capped creates at that rate.
        let (done_tx, done_rx) = oneshot::channel::<()>();
        let spawned = std::thread::Builder::new().name("shortener-writer".into()).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt.block_on(task.run(rx, shutdown)),
                Err(e) => tracing::error!(error = %e, "could not start the writer's runtime"),
            }
            let _ = done_tx.send(());
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the writer thread");
        }
        let handle = tokio::spawn(async move {
            let _ = done_rx.await;
        });
        (Writer { tx, stats }, handle)
    }

    /// Applies a change; returns once it is committed and invalidated.
    pub async fn submit(&self, change: Change) -> Result<Outcome, DbError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { change, reply }).await.map_err(|_| DbError::Busy)?;
        rx.await.map_err(|_| DbError::Busy)?
    }
}

struct WriterTask {
    conn: WriterConn,
    announce: Arc<dyn Announce>,
    new_code: NewCode,
    batch_max: usize,
    stats: Arc<WriterStats>,
    /// Committed batches whose invalidation and answers are still under way.
    finishing: Arc<tokio::sync::Semaphore>,
}

/// Most committed batches being invalidated and answered at once.
const FINISHING_MAX: usize = 4;

/// How often a batch aborted by a conflict with another instance's writer is tried again.
const CONFLICT_RETRIES: u32 = 3;

impl WriterTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Job>, mut shutdown: watch::Receiver<bool>) {
        let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut jobs = Vec::with_capacity(self.batch_max);
        loop {
            tokio::select! {
                biased;
                n = rx.recv_many(&mut jobs, self.batch_max) => {
                    if n == 0 {
                        break;
                    }
                    self.apply(std::mem::take(&mut jobs)).await;
                }
                _ = housekeeping.tick() => self.clean_acked().await,
                _ = shutdown.changed() => {
                    // Stop taking new work; what is queued still gets committed and answered.
                    rx.close();
                }
            }
        }
        // Wait for the last invalidations and answers.
        let _ = self.finishing.acquire_many(FINISHING_MAX as u32).await;
        self.clean_acked().await;
        tracing::debug!("writer stopped");
    }

    async fn apply(&mut self, jobs: Vec<Job>) {
        let acked = self.announce.take_applied();
        let started = Instant::now();
        let only_random_creates = jobs.iter().all(|j| matches!(j.change, Change::Create { code: None, .. }));
        let mut held: Option<PoolConnection<Postgres>> = None;
        let result = match batch_conn(&mut self.conn, &mut held).await {
            Err(e) => Err(e),
            Ok(mut conn) => {
                let mut attempt = 0;
                loop {
                    let r = if only_random_creates && acked.is_empty() && jobs.len() <= links::MAX_ROWS_PER_INSERT {
                        create_random(&mut conn, &self.new_code, &jobs).await
                    } else {
                        commit(&mut conn, &self.new_code, &jobs, &acked).await
                    };
                    match r {
                        Err(e) if super::is_retryable_conflict(&e) && attempt < CONFLICT_RETRIES => {
                            attempt += 1;
                            tracing::info!(error = %e, attempt, "write batch aborted by a conflict; trying again");
                        }
                        r => break r,
                    }
                }
            }
        };
        drop(held);
        self.stats.commit_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        match result {
            Ok((outcomes, codes, ids)) => {
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.changes.fetch_add(jobs.len() as u64, Ordering::Relaxed);
                // The batch is durable. Invalidating it takes a Redis round trip; the next batch
                // need not wait for that, so it runs beside the next commit (a few at most).
                // Each change is still answered only after its own invalidation.
                let permit = self.finishing.clone().acquire_owned().await.expect("the semaphore is never closed");
                let announce = self.announce.clone();
                tokio::spawn(async move {
                    announce.committed(&codes, &ids).await;
                    for (job, outcome) in jobs.into_iter().zip(outcomes) {
                        let _ = job.reply.send(Ok(outcome));
                    }
                    drop(permit);
                });
            }
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, batch.size = jobs.len(), "write batch failed and was rolled back");
                self.announce.requeue_applied(acked);
                let busy = matches!(DbError::from(e), DbError::Busy);
                for job in jobs {
                    let err = if busy { DbError::Busy } else { DbError::Sql(sqlx::Error::WorkerCrashed) };
                    let _ = job.reply.send(Err(err));
                }
            }
        }
    }

    async fn clean_acked(&mut self) {
        let acked = self.announce.take_applied();
        if acked.is_empty() {
            return;
        }
        let mut held = None;
        let r = async {
            let mut conn = batch_conn(&mut self.conn, &mut held).await?;
            super::begin(&mut conn).await?;
            let done = links::delete_invalidations(&mut conn, &acked).await;
            super::end(&mut conn, done).await
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not clean applied invalidations; will retry");
            self.announce.requeue_applied(acked);
        }
    }
}

/// One transaction for the whole batch. Returns the outcomes (in job order), the codes to
/// invalidate and their invalidation row ids.
async fn commit(
    conn: &mut Conn<'_>,
    new_code: &NewCode,
    jobs: &[Job],
    acked: &[i64],
) -> Result<(Vec<Outcome>, Vec<String>, Vec<i64>), sqlx::Error> {
    super::begin(conn).await?;
    let done = apply_in_tx(conn, new_code, jobs, acked).await;
    super::end(conn, done).await
}

/// The common batch under load: only creates under random codes. One `INSERT` outside a
/// transaction is atomic and durable by itself, so the batch costs one statement (one round
/// trip to SQLite's thread) instead of four. If a random code collided (the insert reports
/// fewer rows), one query finds which, and those go in again under fresh codes. No
/// invalidation rows: see the end of [`apply_in_tx`].
async fn create_random(
    conn: &mut Conn<'_>,
    new_code: &NewCode,
    jobs: &[Job],
) -> Result<(Vec<Outcome>, Vec<String>, Vec<i64>), sqlx::Error> {
    let now = now_ms();
    let mut codes: Vec<String> = jobs.iter().map(|_| new_code()).collect();
    let mut pending: Vec<usize> = (0..jobs.len()).collect();
    for _ in 0..RANDOM_CODE_ATTEMPTS {
        let rows: Vec<links::NewLink<'_>> =
            pending.iter().map(|&i| jobs[i].change.new_link(&codes[i]).expect("only creates take this path")).collect();
        let refs: Vec<&links::NewLink<'_>> = rows.iter().collect();
        let inserted = links::insert_links_skipping_taken(conn, &refs, now).await?;
        if inserted == rows.len() as u64 {
            let outcomes = jobs
                .iter()
                .zip(&codes)
                .map(|(job, c)| Outcome::Created(job.change.new_link(c).expect("only creates take this path").row(now)))
                .collect();
            return Ok((outcomes, codes, Vec::new()));
        }
        let taken: std::collections::HashSet<String> =
            links::find_taken_by_others(conn, &refs, now).await?.into_iter().collect();
        tracing::warn!(collided = taken.len(), "random codes collided; trying others");
        drop(rows);
        pending.retain(|&i| taken.contains(&codes[i]));
        for &i in &pending {
            codes[i] = new_code();
        }
    }
    Err(sqlx::Error::Protocol("no free random code found".into()))
}

async fn apply_in_tx(
    conn: &mut Conn<'_>,
    new_code: &NewCode,
    jobs: &[Job],
    acked: &[i64],
) -> Result<(Vec<Outcome>, Vec<String>, Vec<i64>), sqlx::Error> {
    links::delete_invalidations(conn, acked).await?;
    let now = now_ms();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; jobs.len()];

    // All creates of the batch go in as one multi-row INSERT (a handful of statements per
    // batch instead of two per create: each statement is a round trip to SQLite's thread).
    // A random code that collided gets a fresh one in the next round.
    let mut pending: Vec<(usize, String)> = jobs
        .iter()
        .enumerate()
        .filter_map(|(i, j)| match &j.change {
            Change::Create { code, .. } => Some((i, code.clone().unwrap_or_else(|| new_code()))),
            _ => None,
        })
        .collect();
    for round in 0..RANDOM_CODE_ATTEMPTS {
        if pending.is_empty() {
            break;
        }
        let rows: Vec<links::NewLink<'_>> =
            pending.iter().map(|(i, c)| jobs[*i].change.new_link(c).expect("only creates are pending")).collect();
        let mut inserted: std::collections::HashMap<String, LinkRow> =
            links::insert_links(conn, &rows, now).await?.into_iter().map(|r| (r.short_code.clone(), r)).collect();
        let mut retry = Vec::new();
        for (i, c) in pending {
            let custom = matches!(&jobs[i].change, Change::Create { code: Some(_), .. });
            match inserted.remove(&c) {
                Some(row) => outcomes[i] = Some(Outcome::Created(row)),
                None if custom => outcomes[i] = Some(Outcome::Taken),
                None => {
                    tracing::warn!("random code collided; trying another");
                    retry.push((i, new_code()));
                }
            }
        }
        pending = retry;
        if round + 1 == RANDOM_CODE_ATTEMPTS && !pending.is_empty() {
            return Err(sqlx::Error::Protocol("no free random code found".into()));
        }
    }

    for (i, job) in jobs.iter().enumerate() {
        let outcome = match &job.change {
            Change::Create { .. } => continue,
            Change::Update { code, scope, patch } => match links::update_link(conn, code, *scope, patch, now).await? {
                Some(row) => Outcome::Updated(row),
                None => Outcome::NotFound,
            },
            Change::Delete { code, scope } => {
                if links::delete_link(conn, code, *scope).await? {
                    Outcome::Deleted
                } else {
                    Outcome::NotFound
                }
            }
            Change::Clicks { batch, day } => {
                links::add_clicks(conn, batch, day).await?;
                Outcome::ClicksAdded
            }
            Change::Session(change) => Outcome::Session(super::sessions::apply_session_change(conn, change).await?),
        };
        outcomes[i] = Some(outcome);
    }

    let outcomes: Vec<Outcome> = outcomes.into_iter().map(|o| o.expect("every job has an outcome")).collect();
    // Every changed code is deleted from Redis after the commit, but only changes to codes
    // that may already be cached need a durable invalidation row: a link created under a
    // fresh random code (the insert proves no link had it) can at most have a stray "no
    // such code" entry if someone guessed that exact code before it existed — a 1 in 62^7
    // event per probe, and such an entry expires in NEGATIVE_CACHE_TTL_SECS anyway. This
    // halves the rows a create writes.
    let mut codes = Vec::new();
    let mut durable = Vec::new();
    for (outcome, job) in outcomes.iter().zip(jobs) {
        let (code, random) = match (outcome, &job.change) {
            (Outcome::Created(row), Change::Create { code, .. }) => (&row.short_code, code.is_none()),
            (Outcome::Updated(row), _) => (&row.short_code, false),
            (Outcome::Deleted, Change::Delete { code, .. }) => (code, false),
            _ => continue,
        };
        if !random {
            durable.push(code.clone());
        }
        codes.push(code.clone());
    }
    let ids = links::insert_invalidations(conn, &durable, now).await?;
    Ok((outcomes, codes, ids))
}

/// The connection for one batch: SQLite's own, or one from the PostgreSQL pool (kept in `held`
/// for the batch).
async fn batch_conn<'a>(
    conn: &'a mut WriterConn,
    held: &'a mut Option<PoolConnection<Postgres>>,
) -> Result<Conn<'a>, sqlx::Error> {
    Ok(match conn {
        WriterConn::Sqlite(c) => Conn::Sqlite(c),
        WriterConn::Postgres(pool) => Conn::Postgres(held.insert(pool.acquire().await?)),
    })
}
