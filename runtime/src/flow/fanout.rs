//! Per-subscriber bounded queues.
//!
//! The producer side never waits: a full queue counts the flow as lost instead.
//! Losses are kept in order as a marker at the tail of the queue (one per loss
//! source), so the subscriber reads the flows it had, then one `LostEvent` saying
//! how many came after them and were dropped, then newer flows — what Hubble's
//! clients expect. The store offers flows in sequence order, so a subscriber that
//! has read a flow has also read every earlier flow or the marker counting it.

use std::collections::VecDeque;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

use loupe_proto::flow::{Flow, LostEvent, LostEventSource};

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum Event {
    /// A stored flow with its store sequence number (increasing).
    Flow {
        /// Sequence number in the store; later flows have larger numbers.
        seq: u64,
        /// The flow, shared with the ring and other subscribers.
        flow: Arc<Flow>,
    },
    /// Events were lost: by this subscriber falling behind (`HUBBLE_RING_BUFFER`,
    /// as Hubble reports a reader the ring overran) or
    /// upstream (reported with [`super::FlowStore::push_lost`]).
    Lost(LostEvent),
    /// The store will send nothing more (the agent is stopping): a stream over
    /// the subscription ends here, after everything queued before it.
    End,
}

#[derive(Debug)]
enum Entry {
    Flow(u64, Arc<Flow>),
    /// A loss: our own overflow (`HUBBLE_RING_BUFFER`) or one a producer
    /// reported. While the queue is full, later losses of the same source merge
    /// into it as long as no flow follows it.
    Lost(LostEvent),
}

/// Decides whether a flow goes to a subscriber; runs on the producer's thread,
/// so it must be cheap.
pub type FlowPredicate = Box<dyn Fn(&Flow) -> bool + Send + Sync>;

pub(super) struct Slot {
    queue: Mutex<VecDeque<Entry>>,
    capacity: usize,
    notify: Arc<Notify>,
    closed: AtomicBool,
    /// Set by the store when it sends nothing more.
    ended: AtomicBool,
    predicate: Option<FlowPredicate>,
    lost: AtomicU64,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("capacity", &self.capacity)
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

fn lock(queue: &Mutex<VecDeque<Entry>>) -> MutexGuard<'_, VecDeque<Entry>> {
    // A panic while holding the lock leaves a consistent queue: keep using it.
    queue
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Slot {
    pub(super) fn new(capacity: usize, predicate: Option<FlowPredicate>) -> Self {
        Self {
            queue: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity: capacity.max(1),
            notify: Arc::new(Notify::new()),
            closed: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            predicate,
            lost: AtomicU64::new(0),
        }
    }

    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Nothing more will be offered: the subscriber gets [`Event::End`] once its
    /// queue is drained.
    pub(super) fn end(&self) {
        self.ended.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Offers a flow; returns false when it was lost to overflow.
    pub(super) fn offer(&self, seq: u64, flow: &Arc<Flow>) -> bool {
        if self.predicate.as_ref().is_some_and(|p| !p(flow)) {
            return true;
        }
        let mut queue = lock(&self.queue);
        let queued = if queue.len() >= self.capacity {
            merge_loss(
                &mut queue,
                &LostEvent {
                    source: LostEventSource::HubbleRingBuffer as i32,
                    num_events_lost: 1,
                    cpu: None,
                    first: flow.time,
                    last: flow.time,
                },
            );
            false
        } else {
            queue.push_back(Entry::Flow(seq, flow.clone()));
            true
        };
        drop(queue);
        if !queued {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        self.notify.notify_one();
        queued
    }

    /// Passes on a producer's loss report. Never dropped: when the queue is full
    /// it is merged into the tail marker of its source, so the count survives.
    pub(super) fn offer_lost(&self, event: &LostEvent) {
        let mut queue = lock(&self.queue);
        if queue.len() >= self.capacity {
            merge_loss(&mut queue, event);
        } else {
            queue.push_back(Entry::Lost(*event));
        }
        drop(queue);
        self.notify.notify_one();
    }
}

/// Adds a loss to a full queue: merged into the marker of the same source among
/// those after the last flow, else a new marker. Past capacity only markers are
/// added, at most one per source.
fn merge_loss(queue: &mut VecDeque<Entry>, event: &LostEvent) {
    for entry in queue.iter_mut().rev() {
        match entry {
            Entry::Lost(lost) if lost.source == event.source => {
                lost.num_events_lost += event.num_events_lost;
                lost.last = event.last;
                return;
            }
            Entry::Lost(_) => {}
            Entry::Flow(..) => break,
        }
    }
    queue.push_back(Entry::Lost(*event));
}

/// A live feed of the store's new flows, with its own bounded queue.
///
/// Dropping it unsubscribes.
pub struct Subscription {
    slot: Arc<Slot>,
    /// The wake-up being waited for while the queue is empty.
    waiting: Option<Pin<Box<OwnedNotified>>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(super) fn new(slot: Arc<Slot>) -> Self {
        Self {
            slot,
            waiting: None,
        }
    }

    /// The next event; waits while the queue is empty.
    pub async fn recv(&mut self) -> Event {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next event, or `Pending` with `cx` woken when one is queued (for a
    /// stream that reads the subscription directly).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        loop {
            // A queued event costs nothing more than the queue's lock.
            if let Some(event) = self.try_recv() {
                self.waiting = None;
                return Poll::Ready(event);
            }
            match self.waiting.as_mut() {
                Some(waiting) => {
                    if waiting.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.waiting = None;
                }
                None => {
                    // Waiting starts before the queue is read again, so a flow
                    // queued in between still wakes us (`notify_one` also keeps a
                    // permit when nobody waits).
                    let mut waiting = Box::pin(self.slot.notify.clone().notified_owned());
                    waiting.as_mut().enable();
                    self.waiting = Some(waiting);
                }
            }
        }
    }

    /// The next event, if one is queued ([`Event::End`] once the store has ended
    /// the subscription and its queue is drained).
    pub fn try_recv(&mut self) -> Option<Event> {
        let Some(entry) = lock(&self.slot.queue).pop_front() else {
            return self
                .slot
                .ended
                .load(Ordering::Acquire)
                .then_some(Event::End);
        };
        Some(match entry {
            Entry::Flow(seq, flow) => Event::Flow { seq, flow },
            Entry::Lost(lost) => Event::Lost(lost),
        })
    }

    /// Flows this subscriber lost to its full queue so far.
    pub fn lost(&self) -> u64 {
        self.slot.lost.load(Ordering::Relaxed)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.slot.closed.store(true, Ordering::Relaxed);
    }
}
