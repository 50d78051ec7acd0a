//! The invalidation bus: how a committed change reaches every cache of every instance, and how
//! the writer knows it has.
//!
//! - **Publish**: [`Bus::invalidate`] deletes the changed codes' cached answers and fill leases
//!   in Redis and announces the codes on the invalidation channel, in one round trip. Every
//!   instance subscribed (this one included) drops those codes from its L1 when the message
//!   arrives, then confirms it on the writer's own channel.
//! - **Confirm**: the change is answered once every instance that may be trusting its L1 has
//!   confirmed it, or after [`CONFIRM_WITHIN`], whichever comes first. Who may be trusting is
//!   known from pings (below): when the writer's own listener receives its own announcement, it
//!   has received every ping published before it, so the instances whose last ping came less
//!   than [`TRUST_FOR`] (plus slack) before are all that can still be serving from L1. Counting
//!   PUBLISH's receivers would not do: an instance whose subscription has just died is not a
//!   receiver, yet trusts its L1 until it notices. An instance that does not confirm in time
//!   cannot be serving the old target from its L1 either: it trusts its L1 only for
//!   [`TRUST_FOR`] after one of its own pings came back, and a ping that came back before the
//!   change's message was sent before it. So a stopped (SIGSTOP), overloaded or partitioned
//!   instance costs each change at most [`CONFIRM_WITHIN`], never a stale redirect; one that
//!   shuts down says goodbye first and costs nothing.
//! - **Trust**: every [`PING_EVERY`] each listener publishes a ping on the presence channel;
//!   Redis delivers a subscriber's messages in the order it executed the PUBLISHes, so an
//!   instance's own ping that comes back proves that every change announced before it was sent
//!   has been applied there. Each extends that instance's L1 trust to the ping's send time plus
//!   [`TRUST_FOR`]; losing the subscription ends it at once. With Redis unreachable, the writer
//!   cannot announce: it waits until every instance's trust has run out (the last ping any of
//!   them can have had is within [`PING_EVERY`] of this one's last) before answering, which only
//!   the first changes of an outage pay.
//! - **The outbox as a second channel**: every instance also reads the outbox every
//!   [`OUTBOX_POLL`] and forgets every code queued since its last read; each read trusts L1 for
//!   [`OUTBOX_TRUST`]. Rows stay queued while Redis cannot be reached (nothing acknowledges
//!   them), so during a Redis outage every instance keeps serving from L1, and a change that
//!   could not be announced is answered [`OUTBOX_TRUST`] after its commit, by when every
//!   instance has read it (or stopped trusting its L1). Outbox ids only grow (AUTOINCREMENT), so
//!   a read never skips a row, and a row stays [`OUTBOX_RETAIN`] after its change landed, so
//!   an instance cut off from Redis (but not from the database) still reads every change; one
//!   that has not read the outbox for that long starts its L1 over.
//! - **Outbox and replay**: every change also has a row in `cache_invalidations`, written in the
//!   change's own transaction. When the delete lands its ids are queued as acknowledged (the
//!   writer deletes those rows, [`Bus::take_acked`]); when it does not, Redis is distrusted
//!   before the change is answered, and the bus replays every queued row ([`Restore`]) before
//!   the client trusts Redis again. The rows are read through [`Outbox`], so the bus knows no
//!   SQL.
//! - **Listen**: [`Bus::listen`] keeps a subscription to the invalidation, key-revocation and own
//!   channels, and after every (re)subscription makes the local caches start over: what was
//!   announced while unsubscribed is lost to this instance.
//! - **Revocation acks**: an instance that forgot its verified keys on a revocation increments
//!   the announcement's counter, so `shortener keys revoke` can wait for every instance.
//!
//! - **Topologies**: everything above relies on one node executing every instance's pings and
//!   announcements in one order. With Sentinel that node is the master (found again after a
//!   failover; losing it loses the subscriptions, so every L1 starts over). In a Cluster the bus
//!   uses classic pub/sub, not sharded: the channels share a hash tag, so every `PUBLISH` is
//!   executed by the master of that one slot, and the listeners subscribe there too
//!   (`RedisClient::bus_connections`). Classic rather than sharded because our message rate is
//!   low (a cluster broadcasting it costs little), and because `shortener keys revoke`
//!   publishes with a plain connection to whichever node it reaches, which only classic pub/sub
//!   carries to every node.
//!
//! What this does not cover: an instance cut off from Redis (not from the database) for longer
//! than [`PRESENT_WITHIN`] while Redis still works for the others is no longer waited for, and
//! learns of a change from the outbox only at its next read: it may serve the old target for up
//! to one [`OUTBOX_POLL`] after the change was answered.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures_util::{future::BoxFuture, StreamExt};
use tokio::sync::{watch, Notify};

use crate::{
    observe::Metrics,
    redis_client::{Conn, Names, RedisClient, Restore},
};

/// Where the invalidations that may be missing from Redis are queued: the database's outbox
/// (`cache_invalidations`), wired in by `startup`.
pub trait Outbox: Send + Sync {
    /// Up to `limit` queued invalidations after row `after`, as (row id, code), in id order.
    fn queued_after(&self, after: i64, limit: i64) -> BoxFuture<'_, Result<Vec<(i64, String)>, String>>;
}

/// How often an instance pings itself through its subscription.
pub const PING_EVERY: Duration = Duration::from_millis(100);

/// How long a ping that came back vouches for this instance's L1, counted from when it was sent.
pub const TRUST_FOR: Duration = Duration::from_millis(1000);

/// The longest a change waits for confirmations: by then an instance that has not confirmed has
/// stopped serving from its L1 (its last ping from before the change has run out).
pub const CONFIRM_WITHIN: Duration = Duration::from_millis(1100);

/// An instance whose last ping came this long ago is no longer waited for: its trust has run
/// out ([`TRUST_FOR`], plus slack for the ping's way through Redis).
const PRESENT_WITHIN: Duration = Duration::from_millis(1500);

/// Instances remembered at most (pruned by age first).
const MAX_INSTANCES: usize = 1024;

/// How long a row stays in the outbox after its change landed in Redis: an instance reading
/// the outbox less often than this (a stalled or stopped one) starts its L1 over.
pub const OUTBOX_RETAIN: Duration = Duration::from_secs(5);

/// How often every instance reads the outbox for changes it may have missed.
pub const OUTBOX_POLL: Duration = Duration::from_millis(100);

/// How long a successful read of the outbox vouches for L1, counted from when it started; and
/// how long a change that could not be announced waits after its commit (so that every instance
/// has read it from the outbox, or stopped trusting its L1).
pub const OUTBOX_TRUST: Duration = Duration::from_millis(300);

/// What the listener calls; every callback is cheap and synchronous.
pub struct Listeners<F, K, A, T, D> {
    /// A code changed somewhere: forget it.
    pub forget: F,
    /// An API key was revoked somewhere: forget every verified key.
    pub forget_keys: K,
    /// (Re)subscribed: announcements may have been missed, forget everything.
    pub forget_all: A,
    /// A ping came back: L1 may be served until the given instant.
    pub trust_until: T,
    /// The subscription was lost: stop serving L1 now.
    pub distrust: D,
}

/// A change waiting for its confirmations.
#[derive(Default)]
struct Waiting {
    state: Mutex<WaitState>,
    notify: Notify,
}

#[derive(Default)]
struct WaitState {
    /// The instances that must confirm, known once the writer's own listener has received the
    /// announcement.
    expected: Option<Vec<String>>,
    confirmed: std::collections::HashSet<String>,
}

impl Waiting {
    /// Every expected instance has confirmed.
    fn done(&self) -> bool {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.expected.as_ref().is_some_and(|e| e.iter().all(|i| st.confirmed.contains(i)))
    }

    /// (expected, confirmed) for the log.
    fn counts(&self) -> (Option<usize>, usize) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (st.expected.as_ref().map(Vec::len), st.confirmed.len())
    }
}

/// How changes were confirmed.
#[derive(Default)]
pub struct ConfirmStats {
    /// Changes every receiving instance confirmed.
    pub confirmed: AtomicU64,
    /// Changes answered after `CONFIRM_WITHIN` without every confirmation.
    pub timed_out: AtomicU64,
    /// Changes that could not be announced (Redis unreachable) and waited for pings' trust to run out.
    pub unannounced: AtomicU64,
    /// Total time changes spent waiting, in microseconds.
    pub wait_us: AtomicU64,
}

/// The bus. One per process, shared through `Arc`.
pub struct Bus {
    client: Arc<RedisClient>,
    outbox: Arc<dyn Outbox>,
    /// Outbox rows known to have landed, each with when it may be deleted ([`OUTBOX_RETAIN`]).
    acked: Mutex<Vec<(Instant, i64)>>,
    /// Invalidations replayed after outages.
    pub replayed: AtomicU64,
    /// This process' name on the bus (random, new at every start).
    instance: String,
    born: Instant,
    waiting: Mutex<HashMap<u64, Arc<Waiting>>>,
    /// Outbox rows this instance has applied from an announcement, and when: the outbox reader
    /// skips them (forgetting a code twice would split its single-flight in two).
    applied: Mutex<HashMap<i64, Instant>>,
    /// Other instances, by name, and when their last ping arrived.
    presence: Mutex<HashMap<String, Instant>>,
    /// When (ms since `born`, plus one) the last ping that came back was sent; 0: none yet.
    last_ping_sent: AtomicU64,
    /// How changes were confirmed.
    pub confirms: ConfirmStats,
}

impl Bus {
    /// A bus over `client`, replaying from `outbox`.
    pub fn new(client: Arc<RedisClient>, outbox: Arc<dyn Outbox>) -> Arc<Self> {
        Arc::new(Bus {
            client,
            outbox,
            acked: Mutex::new(Vec::new()),
            replayed: AtomicU64::new(0),
            instance: format!("{:016x}", rand::random::<u64>()),
            born: Instant::now(),
            waiting: Mutex::new(HashMap::new()),
            presence: Mutex::new(HashMap::new()),
            applied: Mutex::new(HashMap::new()),
            last_ping_sent: AtomicU64::new(0),
            confirms: ConfirmStats::default(),
        })
    }

    fn names(&self) -> &Names {
        self.client.names()
    }

    /// Deletes the cached answers (and any fill leases) of changed codes, announces them, and
    /// waits until every instance has forgotten them (or can no longer serve them: see the
    /// module's doc). `ids` are their rows in `cache_invalidations`; when the delete lands they
    /// are queued for removal, otherwise Redis is distrusted until the rows are replayed. Returns
    /// whether it landed.
    pub async fn invalidate(&self, codes: &[String], ids: &[i64]) -> bool {
        if codes.is_empty() {
            return true;
        }
        // This instance forgets them itself (the writer's caller does, after this).
        self.mark_applied(ids.iter().copied());
        let landed = self.client.is_up() && self.announce_confirmed(codes, ids).await;
        if landed {
            self.ack(ids.iter().copied());
        } else {
            self.client.distrust();
            self.outlast_trust().await;
        }
        landed
    }

    /// Reads the outbox every [`OUTBOX_POLL`] until shutdown, through `outbox` (a connection of
    /// its own: the bus's is shared with the replay and the request path): `forget` gets every
    /// code queued since the last read (at startup, every code queued), and each complete read
    /// trusts L1 for [`OUTBOX_TRUST`] from when it started.
    pub async fn watch_outbox<F: Fn(&str), A: Fn(), T: Fn(Instant)>(
        &self,
        outbox: &dyn Outbox,
        forget: F,
        forget_all: A,
        trust_until: T,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut after = 0i64;
        let mut last_read: Option<Instant> = None;
        let mut ticks = tokio::time::interval(OUTBOX_POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => return,
            }
            let started = Instant::now();
            let mut complete = false;
            while let Ok(rows) = outbox.queued_after(after, 1000).await {
                for (id, code) in &rows {
                    if !self.was_applied(*id) {
                        forget(code);
                    }
                    after = after.max(*id);
                }
                if rows.len() < 1000 {
                    complete = true;
                    break;
                }
            }
            if !complete {
                continue;
            }
            // Rows older than `OUTBOX_RETAIN` may have been deleted unread since the last read:
            // start over (a second of slack for the writer's housekeeping).
            if let Some(gap) = last_read.map(|t| started.duration_since(t)) {
                if gap + Duration::from_secs(1) >= OUTBOX_RETAIN {
                    tracing::warn!(
                        outbox.gap_ms = gap.as_millis() as u64,
                        "the outbox was not read for too long: L1 starts over"
                    );
                    forget_all();
                }
            }
            last_read = Some(started);
            trust_until(started + OUTBOX_TRUST);
        }
    }

    /// Announces `codes` with a nonce and waits for the confirmations; false if the announcement
    /// did not land.
    async fn announce_confirmed(&self, codes: &[String], ids: &[i64]) -> bool {
        let nonce = rand::random::<u64>();
        let waiting = Arc::new(Waiting::default());
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(nonce, waiting.clone());
        // The rows' ids ride along when they are one range (a batch's rows are), so that the
        // receivers' outbox readers can skip them.
        let (first, last) = (ids.iter().min().copied(), ids.iter().max().copied());
        let tag = match (first, last) {
            (Some(f), Some(l)) if (l - f + 1) as usize == ids.len() => format!("!{}:{nonce:x}:{f}-{l}", self.instance),
            _ => format!("!{}:{nonce:x}", self.instance),
        };
        let landed = self.delete_codes(codes, Some(&tag)).await;
        let started = Instant::now();
        if landed {
            let deadline = tokio::time::Instant::from_std(started + CONFIRM_WITHIN);
            loop {
                let notified = waiting.notify.notified();
                if waiting.done() {
                    self.confirms.confirmed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    self.confirms.timed_out.fetch_add(1, Ordering::Relaxed);
                    let (expected, confirmed) = waiting.counts();
                    tracing::warn!(
                        invalidation.expected = ?expected,
                        invalidation.confirmed = confirmed,
                        "a change was not confirmed by every instance in time; those left have stopped trusting their L1"
                    );
                    break;
                }
            }
        }
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&nonce);
        self.confirms.wait_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        landed
    }

    /// A change that could not be announced: waits until no instance can still be trusting an L1
    /// that may hold the old target. Every instance reading the outbox has read the change
    /// [`OUTBOX_TRUST`] after its commit (which came just before this), or stopped trusting its L1.
    /// And an instance trusting its L1 on pings: their last pings were sent before Redis went
    /// away, at most `PING_EVERY` after this instance's last one (which were sent every
    /// `PING_EVERY`), so their trust runs out by this instance's plus `PING_EVERY` (twice, for
    /// slack). `unannounced` counts the changes that waited for the pings.
    async fn outlast_trust(&self) {
        let started = Instant::now();
        let mut until = started + OUTBOX_TRUST;
        let last = self.last_ping_sent.load(Ordering::SeqCst);
        if last != 0 {
            let pings_run_out = self.born + Duration::from_millis(last - 1) + TRUST_FOR + 2 * PING_EVERY;
            if pings_run_out > until {
                self.confirms.unannounced.fetch_add(1, Ordering::Relaxed);
                until = pings_run_out;
            }
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
        self.confirms.wait_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    /// Deletes the codes' entries and leases, and announces the codes to every instance (their
    /// L1 caches), in one round trip, after `tag` when the writer waits for confirmations.
    /// Returns whether it landed.
    async fn delete_codes(&self, codes: &[String], tag: Option<&str>) -> bool {
        let names = self.names();
        let mut pipe = redis::pipe();
        let del = pipe.cmd("DEL");
        for code in codes {
            del.arg(names.link(code)).arg(names.lease(code));
        }
        let payload = match tag {
            Some(tag) => format!("{tag} {}", codes.join(" ")),
            None => codes.join(" "),
        };
        pipe.ignore().cmd("PUBLISH").arg(names.invalidation_channel()).arg(payload).ignore();
        self.client.run(|mut c| async move { pipe.query_async::<()>(&mut c).await }).await.is_some()
    }

    /// Outbox rows applied here from an announcement; entries older than the outbox keeps its
    /// rows are dropped (their rows are gone).
    fn mark_applied(&self, ids: impl Iterator<Item = i64>) {
        let now = Instant::now();
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        applied.extend(ids.map(|id| (id, now)));
        if applied.len() > 100_000 {
            applied.retain(|_, at| now.duration_since(*at) < OUTBOX_RETAIN + Duration::from_secs(2));
        }
    }

    /// Whether outbox row `id` was applied here from an announcement.
    fn was_applied(&self, id: i64) -> bool {
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&id)
    }

    /// Records `from`'s confirmation of this instance's change `nonce`.
    fn confirmed(&self, nonce: u64, from: &str) {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner()).get(&nonce).cloned();
        if let Some(w) = waiting {
            w.state.lock().unwrap_or_else(|e| e.into_inner()).confirmed.insert(from.to_string());
            w.notify.notify_one();
        }
    }

    /// This instance's own announcement `nonce` came back: every ping published before it has
    /// been received, so the instances that may be trusting their L1 are known now.
    fn own_announcement_back(&self, nonce: u64) {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner()).get(&nonce).cloned();
        if let Some(w) = waiting {
            let now = Instant::now();
            let expected: Vec<String> = self
                .presence
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(_, seen)| now.duration_since(**seen) < PRESENT_WITHIN)
                .map(|(name, _)| name.clone())
                .collect();
            w.state.lock().unwrap_or_else(|e| e.into_inner()).expected = Some(expected);
            w.notify.notify_one();
        }
    }

    /// Another instance's ping arrived (or, `gone`, its goodbye).
    fn seen(&self, name: &str, gone: bool) {
        let mut presence = self.presence.lock().unwrap_or_else(|e| e.into_inner());
        if gone {
            presence.remove(name);
            return;
        }
        let now = Instant::now();
        if presence.len() >= MAX_INSTANCES && !presence.contains_key(name) {
            presence.retain(|_, seen| now.duration_since(*seen) < PRESENT_WITHIN);
            if presence.len() >= MAX_INSTANCES {
                return;
            }
        }
        presence.insert(name.to_string(), now);
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Takes the ids of invalidations Redis acknowledged (the writer deletes their rows).
    pub fn take_acked(&self) -> Vec<i64> {
        let now = Instant::now();
        let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        let (due, kept): (Vec<_>, Vec<_>) = acked.drain(..).partition(|(at, _)| *at <= now);
        *acked = kept;
        due.into_iter().map(|(_, id)| id).collect()
    }

    /// Puts back acknowledged ids whose cleanup transaction failed.
    pub fn requeue_acked(&self, ids: Vec<i64>) {
        let now = Instant::now();
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).extend(ids.into_iter().map(|id| (now, id)));
    }

    /// Rows that landed: deletable once every instance reading the outbox has had time to read
    /// them.
    fn ack(&self, ids: impl Iterator<Item = i64>) {
        let at = Instant::now() + OUTBOX_RETAIN;
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).extend(ids.map(|id| (at, id)));
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
            // Instances that missed the original announcement have resubscribed since, and
            // started over: this one needs no confirmations.
            if !self.delete_codes(&codes, None).await {
                return Err("redis delete failed".into());
            }
            total += codes.len() as u64;
            self.ack(rows.iter().map(|r| r.0));
        }
        self.replayed.fetch_add(total, Ordering::Relaxed);
        Ok(total)
    }

    /// Keeps a subscription to the invalidation, key-revocation and own channels and calls the
    /// listeners for every code another instance (or this one) changed, every API key revocation,
    /// and every ping that came back; confirms every change it applied. After every
    /// (re)subscription `forget_all` runs: announcements made while unsubscribed are lost, so L1
    /// starts over. `subscribed` fires once the first ping has come back (L1 is trusted).
    pub async fn listen<F: Fn(&str), K: Fn(), A: Fn(), T: Fn(Instant), D: Fn()>(
        &self,
        listeners: Listeners<F, K, A, T, D>,
        subscribed: tokio::sync::oneshot::Sender<()>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut subscribed = Some(subscribed);
        let channel = self.names().invalidation_channel();
        let keys_channel = self.names().keys_channel();
        let own_channel = self.names().instance_channel(&self.instance);
        let presence_channel = self.names().presence_channel();
        loop {
            // The subscription, and a connection of its own for pings and confirmations (the
            // request path's may be busy or its breaker open; these must not wait behind it),
            // both on the node that carries the bus (with Sentinel or Cluster, found anew at
            // every reconnection: after a failover it is another node).
            let connect = self.client.bus_connections();
            if let Ok(Ok((mut ps, control))) = tokio::time::timeout(self.client.connect_timeout() * 2, connect).await {
                if ps.subscribe(&[&channel, &keys_channel, &own_channel, &presence_channel]).await.is_ok() {
                    (listeners.forget_all)();
                    tracing::debug!(redis.channel = %channel, "subscribed to invalidations");
                    let mut ticks = tokio::time::interval(PING_EVERY);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut messages = ps.on_message();
                    loop {
                        tokio::select! {
                            msg = messages.next() => match msg {
                                Some(msg) => {
                                    let name = msg.get_channel_name();
                                    let payload = msg.get_payload::<String>().ok();
                                    if name == presence_channel {
                                        self.on_presence(payload.as_deref(), &listeners, &mut subscribed);
                                    } else if name == own_channel {
                                        self.on_confirmation(payload.as_deref());
                                    } else if name == keys_channel {
                                        (listeners.forget_keys)();
                                        self.acknowledge_revocation(payload).await;
                                    } else if let Some(payload) = payload {
                                        self.on_change(&payload, &listeners, &control);
                                    }
                                }
                                None => break,
                            },
                            _ = ticks.tick() => self.ping(&control, &presence_channel, "p"),
                            _ = shutdown.changed() => {
                                // Leaving: stop serving L1, then tell the writers not to wait.
                                (listeners.distrust)();
                                self.ping(&control, &presence_channel, "b");
                                return;
                            }
                        }
                    }
                    (listeners.distrust)();
                    tracing::debug!("invalidation subscription lost; L1 distrusted until resubscribed");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.client.probe_interval()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// A change announced by some instance: forget its codes, then confirm it to its writer.
    fn on_change<F: Fn(&str), K, A, T, D>(&self, payload: &str, listeners: &Listeners<F, K, A, T, D>, control: &Conn) {
        let mut words = payload.split(' ').filter(|c| !c.is_empty()).peekable();
        let tag = words.next_if(|w| w.starts_with('!')).and_then(|t| t[1..].split_once(':'));
        words.for_each(&listeners.forget);
        let Some((writer, nonce)) = tag else { return };
        let (nonce, rows) = nonce.split_once(':').unwrap_or((nonce, ""));
        if let Some((f, l)) = rows.split_once('-') {
            if let (Ok(f), Ok(l)) = (f.parse::<i64>(), l.parse::<i64>()) {
                if f <= l && l - f < 100_000 {
                    self.mark_applied(f..=l);
                }
            }
        }
        let Ok(nonce) = u64::from_str_radix(nonce, 16) else { return };
        if writer == self.instance {
            self.own_announcement_back(nonce);
            return;
        }
        let mut c = control.clone();
        let cmd = redis::cmd("PUBLISH")
            .arg(self.names().instance_channel(writer))
            .arg(format!("a {nonce:x} {}", self.instance))
            .clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONFIRM_WITHIN, cmd.query_async::<i64>(&mut c)).await;
        });
    }

    /// A ping on the presence channel (`p <instance> <sent ms>`, or `b <instance> <ms>` when it
    /// leaves): this instance's own extends its L1 trust; another's says it is there.
    fn on_presence<F, K, A, T: Fn(Instant), D>(
        &self,
        payload: Option<&str>,
        listeners: &Listeners<F, K, A, T, D>,
        subscribed: &mut Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let mut words = payload.unwrap_or("").split(' ');
        let (Some(kind), Some(name), Some(sent)) = (words.next(), words.next(), words.next()) else { return };
        if name != self.instance {
            self.seen(name, kind == "b");
            return;
        }
        if kind != "p" {
            return;
        }
        let Ok(sent) = sent.parse::<u64>() else { return };
        self.last_ping_sent.fetch_max(sent + 1, Ordering::SeqCst);
        (listeners.trust_until)(self.born + Duration::from_millis(sent) + TRUST_FOR);
        if let Some(tx) = subscribed.take() {
            let _ = tx.send(());
        }
    }

    /// A confirmation of one of this instance's changes: `a <nonce> <instance>`.
    fn on_confirmation(&self, payload: Option<&str>) {
        let mut words = payload.unwrap_or("").split(' ');
        if let (Some("a"), Some(nonce), Some(from)) = (words.next(), words.next(), words.next()) {
            if let Ok(nonce) = u64::from_str_radix(nonce, 16) {
                self.confirmed(nonce, from);
            }
        }
    }

    /// Publishes a ping (`kind` `p`) or a goodbye (`b`) on the presence channel, without waiting.
    fn ping(&self, control: &Conn, presence_channel: &str, kind: &str) {
        let mut c = control.clone();
        let cmd = redis::cmd("PUBLISH")
            .arg(presence_channel)
            .arg(format!("{kind} {} {}", self.instance, self.now_ms()))
            .clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TRUST_FOR, cmd.query_async::<i64>(&mut c)).await;
        });
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
        let outcome = |o: &'static str| vec![metrics::Label::new("outcome", o)];
        let c = &self.confirms;
        m.copy_counter("shortener_invalidation_confirmations_total", outcome("confirmed"), &c.confirmed);
        m.copy_counter("shortener_invalidation_confirmations_total", outcome("timed_out"), &c.timed_out);
        m.copy_counter("shortener_invalidation_confirmations_total", outcome("unannounced"), &c.unannounced);
        m.copy_counter("shortener_invalidation_confirm_wait_microseconds_total", vec![], &c.wait_us);
    }
}

impl Restore for Bus {
    fn restore(&self) -> BoxFuture<'_, Result<u64, String>> {
        Box::pin(self.replay())
    }
}
