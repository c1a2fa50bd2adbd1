//! A channel whose queue merges what it holds, for a producer that must never wait and a
//! consumer that may be slow: what is queued is bounded by the state it describes (one entry
//! per peer, say), not by how long the consumer has been away. The merging is a
//! [`Merge`] — a plain value, tested on its own; this file is only the hand-off.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// A queue that merges: [`push`](Merge::push) never fails, [`pop`](Merge::pop) hands out
/// what is due, already merged.
pub trait Merge: Default + Send + 'static {
    type Item: Send;
    fn push(&mut self, item: Self::Item);
    fn pop(&mut self) -> Option<Self::Item>;
}

struct State<Q> {
    queue: Q,
    senders: usize,
    receiver: bool,
}

struct Shared<Q> {
    state: Mutex<State<Q>>,
    ready: Notify,
}

impl<Q> Shared<Q> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<Q>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The receiver is gone; the item was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the receiver is gone")]
pub struct Closed;

/// Queues without waiting. Cheap to clone.
pub struct Sender<Q: Merge>(Arc<Shared<Q>>);

/// Takes merged items, in the order the [`Merge`] gives them.
pub struct Receiver<Q: Merge>(Arc<Shared<Q>>);

/// A merging channel with one receiver.
pub fn channel<Q: Merge>() -> (Sender<Q>, Receiver<Q>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: Q::default(),
            senders: 1,
            receiver: true,
        }),
        ready: Notify::new(),
    });
    (Sender(shared.clone()), Receiver(shared))
}

impl<Q: Merge> Sender<Q> {
    /// Merges `item` into the queue; fails only once the receiver is gone.
    pub fn send(&self, item: Q::Item) -> Result<(), Closed> {
        {
            let mut s = self.0.lock();
            if !s.receiver {
                return Err(Closed);
            }
            s.queue.push(item);
        }
        self.0.ready.notify_one();
        Ok(())
    }
}

impl<Q: Merge> std::fmt::Debug for Sender<Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("coalesce::Sender")
    }
}

impl<Q: Merge> Clone for Sender<Q> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Self(self.0.clone())
    }
}

impl<Q: Merge> Drop for Sender<Q> {
    fn drop(&mut self) {
        self.0.lock().senders -= 1;
        self.0.ready.notify_one();
    }
}

impl<Q: Merge> Receiver<Q> {
    /// The next merged item; `None` once every sender is gone and nothing is left.
    pub async fn recv(&mut self) -> Option<Q::Item> {
        loop {
            // Registered before looking, so a send between the look and the wait wakes us.
            let ready = self.0.ready.notified();
            {
                let mut s = self.0.lock();
                if let Some(item) = s.queue.pop() {
                    return Some(item);
                }
                if s.senders == 0 {
                    return None;
                }
            }
            ready.await;
        }
    }

    /// The next merged item if one is queued now.
    pub fn try_recv(&mut self) -> Option<Q::Item> {
        self.0.lock().queue.pop()
    }
}

impl<Q: Merge> Drop for Receiver<Q> {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.receiver = false;
        s.queue = Q::default();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    /// Keeps the sum of what was pushed: one item however many sends.
    #[derive(Default)]
    struct Sum(Option<u64>);

    impl Merge for Sum {
        type Item = u64;
        fn push(&mut self, item: u64) {
            *self.0.get_or_insert(0) += item;
        }
        fn pop(&mut self) -> Option<u64> {
            self.0.take()
        }
    }

    #[tokio::test]
    async fn sends_merge_while_the_receiver_is_away() {
        let (tx, mut rx) = channel::<Sum>();
        for i in 1..=1000 {
            tx.send(i).unwrap();
        }
        assert_eq!(rx.recv().await, Some(500_500));
        assert_eq!(rx.try_recv(), None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_and_ends_after_the_last_sender() {
        let (tx, mut rx) = channel::<Sum>();
        let tx2 = tx.clone();
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await;
            let end = rx.recv().await;
            (first, end)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(7).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx);
        drop(tx2);
        let (first, end) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((first, end), (Some(7), None));
    }

    #[tokio::test]
    async fn what_is_queued_is_still_received_after_the_senders_go() {
        let (tx, mut rx) = channel::<Sum>();
        tx.send(3).unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.recv().await, None);
    }

    #[test]
    fn sending_to_a_dropped_receiver_fails() {
        let (tx, rx) = channel::<Sum>();
        drop(rx);
        assert_eq!(tx.send(1), Err(Closed));
    }
}
