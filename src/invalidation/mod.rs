//! The invalidation bus: how a committed change reaches every cache of every instance.
//!
//! - **Publish**: [`Bus::invalidate`] deletes the changed codes' cached answers and fill leases
//!   in Redis and announces the codes on the invalidation channel, in one round trip. The other
//!   instances (and this one) drop those codes from their L1 when the message arrives.
//! - **Outbox and replay**: every change also has a row in `cache_invalidations`, written in the
//!   change's own transaction. When the delete lands its ids are queued as acknowledged (the
//!   writer deletes those rows, [`Bus::take_acked`]); when it does not, Redis is distrusted
//!   before the change is answered, and the bus replays every queued row ([`Restore`]) before
//!   the client trusts Redis again. The rows are read through [`Outbox`], so the bus knows no
//!   SQL.
//! - **Listen**: [`Bus::listen`] keeps a subscription to the invalidation and key-revocation
//!   channels, and after every (re)subscription makes the local caches start over: what was
//!   announced while unsubscribed is lost to this instance.
//! - **Revocation acks**: an instance that forgot its verified keys on a revocation increments
//!   the announcement's counter, so `shortener keys revoke` can wait for every instance.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

use futures_util::{future::BoxFuture, StreamExt};
use tokio::sync::watch;

use crate::{
    observe::Metrics,
    redis_client::{Names, RedisClient, Restore},
};

/// Where the invalidations that may be missing from Redis are queued: the database's outbox
/// (`cache_invalidations`), wired in by `startup`.
pub trait Outbox: Send + Sync {
    /// Up to `limit` queued invalidations after row `after`, as (row id, code), in id order.
    fn queued_after(&self, after: i64, limit: i64) -> BoxFuture<'_, Result<Vec<(i64, String)>, String>>;
}

/// What the listener calls; every callback is cheap and synchronous.
pub struct Listeners<F, K, A> {
    /// A code changed somewhere: forget it.
    pub forget: F,
    /// An API key was revoked somewhere: forget every verified key.
    pub forget_keys: K,
    /// (Re)subscribed: announcements may have been missed, forget everything.
    pub forget_all: A,
}

/// The bus. One per process, shared through `Arc`.
pub struct Bus {
    client: Arc<RedisClient>,
    outbox: Arc<dyn Outbox>,
    acked: Mutex<Vec<i64>>,
    /// Invalidations replayed after outages.
    pub replayed: AtomicU64,
}

impl Bus {
    /// A bus over `client`, replaying from `outbox`.
    pub fn new(client: Arc<RedisClient>, outbox: Arc<dyn Outbox>) -> Arc<Self> {
        Arc::new(Bus { client, outbox, acked: Mutex::new(Vec::new()), replayed: AtomicU64::new(0) })
    }

    fn names(&self) -> &Names {
        self.client.names()
    }

    /// Deletes the cached answers (and any fill leases) of changed codes and announces them.
    /// `ids` are their rows in `cache_invalidations`; when the delete lands they are queued for
    /// removal, otherwise Redis is distrusted until the rows are replayed. Returns whether it
    /// landed.
    pub async fn invalidate(&self, codes: &[String], ids: &[i64]) -> bool {
        if codes.is_empty() {
            return true;
        }
        let landed = self.client.is_up() && self.delete_codes(codes).await;
        if landed {
            self.acked.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(ids);
        } else {
            self.client.distrust();
        }
        landed
    }

    /// Deletes the codes' entries and leases, and announces the codes to the other instances
    /// (their L1 caches), in one round trip.
    async fn delete_codes(&self, codes: &[String]) -> bool {
        let names = self.names();
        let mut pipe = redis::pipe();
        let del = pipe.cmd("DEL");
        for code in codes {
            del.arg(names.link(code)).arg(names.lease(code));
        }
        pipe.ignore().cmd("PUBLISH").arg(names.invalidation_channel()).arg(codes.join(" ")).ignore();
        self.client.run(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await.is_some()
    }

    /// Takes the ids of invalidations Redis acknowledged (the writer deletes their rows).
    pub fn take_acked(&self) -> Vec<i64> {
        std::mem::take(&mut *self.acked.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts back acknowledged ids whose cleanup transaction failed.
    pub fn requeue_acked(&self, ids: Vec<i64>) {
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).extend(ids);
    }

    /// Re-applies every queued invalidation. Rows stay until the writer deletes them (it takes
    /// the acknowledged ids), so this walks them by id.
    async fn replay(&self) -> Result<u64, String> {
        let mut after = 0i64;
        let mut total = 0u64;
        loop {
            let rows = self.outbox.queued_after(after, 500).await?;
            let Some(last) = rows.last() else { break };
            after = last.0;
            let codes: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
            if !self.delete_codes(&codes).await {
                return Err("redis delete failed".into());
            }
            total += codes.len() as u64;
            let ids: Vec<i64> = rows.iter().map(|r| r.0).collect();
            self.acked.lock().unwrap_or_else(|e| e.into_inner()).extend(ids);
        }
        self.replayed.fetch_add(total, Ordering::Relaxed);
        Ok(total)
    }

    /// Keeps a subscription to the invalidation channel and calls the listeners for every code
    /// another instance (or this one) changed and every API key revocation. After every
    /// (re)subscription `forget_all` runs: announcements made while unsubscribed are lost, so L1
    /// starts over (the L1 TTL bounds staleness for whatever slips through a broken
    /// subscription). `subscribed` fires after the first subscription.
    pub async fn listen<F: Fn(&str), K: Fn(), A: Fn()>(
        &self,
        url: &str,
        listeners: Listeners<F, K, A>,
        subscribed: tokio::sync::oneshot::Sender<()>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut subscribed = Some(subscribed);
        let client = match redis::Client::open(url) {
            Ok(c) => c,
            Err(e) => return tracing::warn!(error = %e, "invalidation listener not started"),
        };
        let channel = self.names().invalidation_channel();
        let keys_channel = self.names().keys_channel();
        loop {
            if let Ok(Ok(mut ps)) = tokio::time::timeout(self.client.connect_timeout(), client.get_async_pubsub()).await
            {
                if ps.subscribe(&[&channel, &keys_channel]).await.is_ok() {
                    (listeners.forget_all)();
                    if let Some(tx) = subscribed.take() {
                        let _ = tx.send(());
                    }
                    tracing::debug!(redis.channel = %channel, "subscribed to invalidations");
                    let mut messages = ps.on_message();
                    loop {
                        tokio::select! {
                            msg = messages.next() => match msg {
                                Some(msg) => {
                                    if msg.get_channel_name() == keys_channel {
                                        (listeners.forget_keys)();
                                        self.acknowledge_revocation(msg.get_payload::<String>().ok()).await;
                                    } else if let Ok(payload) = msg.get_payload::<String>() {
                                        payload.split(' ').filter(|c| !c.is_empty()).for_each(&listeners.forget);
                                    }
                                }
                                None => break,
                            },
                            _ = shutdown.changed() => return,
                        }
                    }
                    tracing::debug!("invalidation subscription lost; resubscribing");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.client.probe_interval()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Tells the `keys revoke` command that this instance has forgotten its verified keys: it
    /// waits for one acknowledgement per subscriber. The payload is `<name> <nonce>`.
    async fn acknowledge_revocation(&self, payload: Option<String>) {
        let Some(nonce) = payload.as_deref().and_then(|p| p.rsplit_once(' ')).map(|(_, n)| n.to_string()) else {
            return;
        };
        let key = self.names().revocation_acks(&nonce);
        let acked: Option<()> = self
            .client
            .run(|mut c| async move {
                redis::pipe()
                    .cmd("INCR")
                    .arg(&key)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(60)
                    .ignore()
                    .query_async(&mut c)
                    .await
            })
            .await;
        if acked.is_none() {
            tracing::warn!("could not acknowledge a key revocation (it is applied here all the same)");
        }
    }

    /// Copies the bus's counters into `m`.
    pub fn export_metrics(&self, m: &Metrics) {
        m.copy_counter("shortener_redis_invalidations_replayed_total", vec![], &self.replayed);
    }
}

impl Restore for Bus {
    fn restore(&self) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(self.replay())
    }
}
