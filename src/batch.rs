//! Coalescing of concurrent calls into batches: the miss path's Redis and SQLite round trips.
//!
//! Under load hundreds of redirects wait on Redis or SQLite at the same moment. Sent one by one,
//! every one of them pays a round trip's fixed cost: a command to encode and parse, a hand-off
//! to the connection's task (or SQLite's thread) and back, syscalls, and in Redis a read and a
//! reply. A [`Batcher`] instead has one task take everything that is waiting, run it as one
//! call (`MGET`, one script over many keys, one `SELECT … IN (…)`), and hand each caller its
//! answer. A few batches are in flight at a time, and while they are, callers queue: batches
//! grow with the load by themselves. An idle service sends a batch of one at once, a loaded one
//! sends a few hundred codes per round trip.

use std::{future::Future, sync::Arc};

use tokio::sync::{mpsc, oneshot, Semaphore};

/// Batches of one batcher in flight at once. More than one, so that a large or slow batch does
/// not hold every other caller back (a burst of expiries at c=10,000 queued behind 512-code
/// batches one at a time); few, so that under load batches stay large.
const IN_FLIGHT: usize = 4;

type Request<I, O> = (I, oneshot::Sender<O>);

/// A handle to a batching task. Cheap to clone; the task stops when every handle is gone.
pub struct Batcher<I, O> {
    tx: mpsc::UnboundedSender<Request<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Batcher { tx: self.tx.clone() }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the task on the current runtime. `run` gets at most `max` items and returns one
    /// output per item, in order (missing outputs leave their callers with `None`).
    pub fn spawn<F, Fut>(max: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Request<I, O>>();
        let run = Arc::new(run);
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
        tokio::spawn(async move {
            loop {
                // Wait for a free slot first: while all are busy, callers queue up and the next
                // batch grows.
                let Ok(slot) = in_flight.clone().acquire_owned().await else { return };
                let mut buf = Vec::with_capacity(max);
                if rx.recv_many(&mut buf, max).await == 0 {
                    return;
                }
                let run = run.clone();
                tokio::spawn(async move {
                    let (items, replies): (Vec<I>, Vec<oneshot::Sender<O>>) = buf.into_iter().unzip();
                    let outputs = run(items).await;
                    for (reply, output) in replies.into_iter().zip(outputs) {
                        let _ = reply.send(output);
                    }
                    drop(slot);
                });
            }
        });
        Batcher { tx }
    }

    /// Queues `item` for the next batch and waits for its output; `None` if the batch gave none
    /// (or the task is gone).
    pub async fn call(&self, item: I) -> Option<O> {
        let (reply, rx) = oneshot::channel();
        self.tx.send((item, reply)).ok()?;
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn concurrent_calls_share_batches_and_get_their_own_answers() {
        let batches = Arc::new(AtomicUsize::new(0));
        let b = batches.clone();
        let batcher = Batcher::spawn(64, move |items: Vec<u32>| {
            b.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                items.into_iter().map(|i| i * 2).collect::<Vec<_>>()
            }
        });
        let calls: Vec<_> = (0..500u32)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (i, batcher.call(i).await) })
            })
            .collect();
        for call in calls {
            let (i, out) = call.await.unwrap();
            assert_eq!(out, Some(i * 2));
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(n >= 500 / 64, "at most 64 a batch, so at least 8 batches: {n}");
        assert!(n < 100, "500 concurrent calls should share batches, got {n}");
    }

    #[tokio::test]
    async fn a_short_batch_leaves_the_rest_without_an_answer() {
        let batcher =
            Batcher::spawn(8, |items: Vec<u32>| async move { items.into_iter().take(0).collect::<Vec<u32>>() });
        assert_eq!(batcher.call(1).await, None);
    }
}
