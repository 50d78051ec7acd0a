//! The single writer: one SQLite connection that commits concurrent changes together.
//!
//! Handlers submit a [`Change`] and wait for its [`Outcome`]. The writer takes every change that
//! is waiting (up to `WRITE_BATCH_MAX`), applies them in one `BEGIN IMMEDIATE` transaction —
//! each change also queues a cache invalidation row in that transaction — and commits once
//! (group commit: one fsync for the whole batch). Then it deletes the changed codes from Redis
//! (one `DEL`), bumps their L1 epochs, and only then answers each caller. So an acknowledged
//! change is durable and already visible on the redirect path.

use std::{sync::Arc, time::Duration};

use sqlx::SqliteConnection;
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    links::{self, LinkPatch, LinkRow},
    DbError,
};
use crate::{links::code, links::resolve::Resolver, time_util::now_ms};

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
        /// What to change.
        patch: LinkPatch,
    },
    /// A delete.
    Delete {
        /// The link.
        code: String,
    },
    /// Buffered clicks to add (see `crate::clicks`).
    Clicks {
        /// (code, clicks, last click epoch ms).
        batch: ClickBatch,
        /// The UTC day they are counted on.
        day: String,
    },
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
}

struct Job {
    change: Change,
    reply: oneshot::Sender<Result<Outcome, DbError>>,
}

/// The handle handlers submit changes through. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

/// Tries a random code this many times before giving up (at 7 base62 characters a collision is
/// a one-in-billions event; eight in a row means something else is wrong).
const RANDOM_CODE_ATTEMPTS: usize = 8;

impl Writer {
    /// Starts the writer task on `conn`. It stops when `shutdown` fires and the queue is drained.
    pub fn spawn(
        conn: SqliteConnection,
        resolver: Arc<Resolver>,
        code_length: usize,
        batch_max: usize,
        shutdown: watch::Receiver<bool>,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(batch_max * 8);
        let task = WriterTask { conn, resolver, code_length, batch_max };
        let handle = tokio::spawn(task.run(rx, shutdown));
        (Writer { tx }, handle)
    }

    /// Applies a change; returns once it is committed and invalidated.
    pub async fn submit(&self, change: Change) -> Result<Outcome, DbError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { change, reply }).await.map_err(|_| DbError::Busy)?;
        rx.await.map_err(|_| DbError::Busy)?
    }
}

struct WriterTask {
    conn: SqliteConnection,
    resolver: Arc<Resolver>,
    code_length: usize,
    batch_max: usize,
}

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
        self.clean_acked().await;
        tracing::debug!("writer stopped");
    }

    async fn apply(&mut self, jobs: Vec<Job>) {
        let acked = self.resolver.redis.as_ref().map(|r| r.take_acked()).unwrap_or_default();
        let result = self.commit(&jobs, &acked).await;
        match result {
            Ok((outcomes, codes, ids)) => {
                if let Some(redis) = &self.resolver.redis {
                    redis.invalidate(&codes, &ids).await;
                }
                for code in &codes {
                    self.resolver.forget_locally(code);
                }
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch.size = jobs.len(), "write batch failed and was rolled back");
                if let Some(redis) = &self.resolver.redis {
                    redis.requeue_acked(acked);
                }
                let busy = matches!(DbError::from(e), DbError::Busy);
                for job in jobs {
                    let err = if busy { DbError::Busy } else { DbError::Sql(sqlx::Error::WorkerCrashed) };
                    let _ = job.reply.send(Err(err));
                }
            }
        }
    }

    /// One transaction for the whole batch. Returns the outcomes (in job order), the codes to
    /// invalidate and their invalidation row ids.
    async fn commit(
        &mut self,
        jobs: &[Job],
        acked: &[i64],
    ) -> Result<(Vec<Outcome>, Vec<String>, Vec<i64>), sqlx::Error> {
        sqlx::query("BEGIN IMMEDIATE").execute(&mut self.conn).await?;
        match self.apply_in_tx(jobs, acked).await {
            Ok(done) => match sqlx::query("COMMIT").execute(&mut self.conn).await {
                Ok(_) => Ok(done),
                Err(e) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
                    Err(e)
                }
            },
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
                Err(e)
            }
        }
    }

    async fn apply_in_tx(
        &mut self,
        jobs: &[Job],
        acked: &[i64],
    ) -> Result<(Vec<Outcome>, Vec<String>, Vec<i64>), sqlx::Error> {
        let conn = &mut self.conn;
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
                Change::Create { code, .. } => {
                    Some((i, code.clone().unwrap_or_else(|| code::generate(self.code_length))))
                }
                _ => None,
            })
            .collect();
        for round in 0..RANDOM_CODE_ATTEMPTS {
            if pending.is_empty() {
                break;
            }
            let rows: Vec<links::NewLink<'_>> = pending
                .iter()
                .map(|(i, c)| match &jobs[*i].change {
                    Change::Create { url, status, expires_at, created_by, .. } => links::NewLink {
                        code: c,
                        url,
                        status: *status,
                        expires_at: *expires_at,
                        created_by: *created_by,
                    },
                    _ => unreachable!("only creates are pending"),
                })
                .collect();
            let mut inserted: std::collections::HashMap<String, LinkRow> =
                links::insert_links(conn, &rows, now).await?.into_iter().map(|r| (r.short_code.clone(), r)).collect();
            let mut retry = Vec::new();
            for (i, c) in pending {
                let custom = matches!(&jobs[i].change, Change::Create { code: Some(_), .. });
                match inserted.remove(&c) {
                    Some(row) => outcomes[i] = Some(Outcome::Created(row)),
                    None if custom => outcomes[i] = Some(Outcome::Taken),
                    None => {
                        tracing::warn!(link.code_length = self.code_length, "random code collided; trying another");
                        retry.push((i, code::generate(self.code_length)));
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
                Change::Update { code, patch } => match links::update_link(conn, code, patch, now).await? {
                    Some(row) => Outcome::Updated(row),
                    None => Outcome::NotFound,
                },
                Change::Delete { code } => {
                    if links::delete_link(conn, code).await? {
                        Outcome::Deleted
                    } else {
                        Outcome::NotFound
                    }
                }
                Change::Clicks { batch, day } => {
                    for (code, n, last) in batch {
                        links::add_clicks(conn, code, *n, *last, day).await?;
                    }
                    Outcome::ClicksAdded
                }
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
                (Outcome::Deleted, Change::Delete { code }) => (code, false),
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

    async fn clean_acked(&mut self) {
        let Some(redis) = self.resolver.redis.clone() else { return };
        let acked = redis.take_acked();
        if acked.is_empty() {
            return;
        }
        let r = async {
            sqlx::query("BEGIN IMMEDIATE").execute(&mut self.conn).await?;
            if let Err(e) = links::delete_invalidations(&mut self.conn, &acked).await {
                let _ = sqlx::query("ROLLBACK").execute(&mut self.conn).await;
                return Err(e);
            }
            sqlx::query("COMMIT").execute(&mut self.conn).await.map(|_| ())
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not clean applied invalidations; will retry");
            redis.requeue_acked(acked);
        }
    }
}
