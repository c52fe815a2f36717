//! Bounded queues between threads that take memory as they fill, not up front.
//!
//! `std::sync::mpsc::sync_channel(n)` allocates all `n` slots at creation: the driver's
//! 65,536-input inbox alone held about 10 MB on every node, full or empty. These queues
//! wrap the list-based `mpsc::channel` (blocks of a few dozen slots, freed as they are
//! consumed) and enforce the bound with a shared counter.
//!
//! A [`HoldingSender`] keeps values back and hands them over in one parcel: one channel
//! operation and at most one wake-up of the receiving thread per batch, instead of one
//! per value (the Redis main thread flushes once per event-loop iteration).
//!
//! A queue made by [`bounded_waking`] also wakes a receiver awaiting it on a tokio
//! runtime ([`BoundedReceiver::recv_until`]): the raft thread's inbox, which the
//! Redis main thread, the log sync thread and the peer listener's tasks all feed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// What travels through the channel: one value, or a batch counted value by value.
enum Parcel<T> {
    One(T),
    Many(Vec<T>),
}

pub struct BoundedSender<T> {
    inner: mpsc::Sender<Parcel<T>>,
    queued: Arc<AtomicUsize>,
    bound: usize,
    /// Set for a queue an async receiver awaits: told after every hand-over.
    wake: Option<Arc<Notify>>,
}

impl<T> Clone for BoundedSender<T> {
    fn clone(&self) -> Self {
        BoundedSender {
            inner: self.inner.clone(),
            queued: self.queued.clone(),
            bound: self.bound,
            wake: self.wake.clone(),
        }
    }
}

pub struct BoundedReceiver<T> {
    inner: mpsc::Receiver<Parcel<T>>,
    queued: Arc<AtomicUsize>,
    wake: Option<Arc<Notify>>,
    /// The rest of the last batch received.
    unpacked: RefCell<VecDeque<T>>,
}

/// A queue holding at most `bound` values.
pub fn bounded<T>(bound: usize) -> (BoundedSender<T>, BoundedReceiver<T>) {
    make(bound, None)
}

/// [`bounded`], whose receiver can also be awaited on a tokio runtime.
pub fn bounded_waking<T>(bound: usize) -> (BoundedSender<T>, BoundedReceiver<T>) {
    make(bound, Some(Arc::new(Notify::new())))
}

fn make<T>(bound: usize, wake: Option<Arc<Notify>>) -> (BoundedSender<T>, BoundedReceiver<T>) {
    let (inner, receiver) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        BoundedSender {
            inner,
            queued: queued.clone(),
            bound: bound.max(1),
            wake: wake.clone(),
        },
        BoundedReceiver {
            inner: receiver,
            queued,
            wake,
            unpacked: RefCell::new(VecDeque::new()),
        },
    )
}

/// How long a blocking [`BoundedSender::send`] waits between attempts on a full queue.
const FULL_QUEUE_RETRY: Duration = Duration::from_millis(1);

impl<T> BoundedSender<T> {
    /// Queues `value` unless the queue is full or the receiver is gone. Never blocks.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        if !self.reserve() {
            return Err(TrySendError::Full(value));
        }
        self.hand_over(Parcel::One(value))
            .map_err(|mpsc::SendError(parcel)| {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                match parcel {
                    Parcel::One(value) => TrySendError::Disconnected(value),
                    Parcel::Many(_) => unreachable!("sent one value"),
                }
            })
    }

    /// Queues every value of `values` in one parcel (one wake-up of the receiver), or
    /// none of them if they do not all fit. Never blocks.
    pub fn try_send_all(&self, values: Vec<T>) -> Result<(), TrySendError<Vec<T>>> {
        let count = values.len();
        if count == 0 {
            return Ok(());
        }
        if self.queued.fetch_add(count, Ordering::AcqRel) + count > self.bound {
            self.queued.fetch_sub(count, Ordering::AcqRel);
            return Err(TrySendError::Full(values));
        }
        self.send_reserved(values)
            .map_err(TrySendError::Disconnected)
    }

    fn hand_over(&self, parcel: Parcel<T>) -> Result<(), mpsc::SendError<Parcel<T>>> {
        self.inner.send(parcel)?;
        if let Some(wake) = &self.wake {
            // Stores a permit when nobody awaits yet, so a wake-up is never lost.
            wake.notify_one();
        }
        Ok(())
    }

    /// Takes one place in the queue, if there is one.
    fn reserve(&self) -> bool {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.bound {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Sends values whose places `reserve` already took; gives them back if the
    /// receiver is gone.
    fn send_reserved(&self, values: Vec<T>) -> Result<(), Vec<T>> {
        let count = values.len();
        self.hand_over(Parcel::Many(values))
            .map_err(|mpsc::SendError(parcel)| {
                self.queued.fetch_sub(count, Ordering::AcqRel);
                match parcel {
                    Parcel::Many(values) => values,
                    Parcel::One(_) => unreachable!("sent a batch"),
                }
            })
    }

    /// Queues `value`, waiting while the queue is full; `Err` once the receiver is gone.
    pub fn send(&self, value: T) -> Result<(), mpsc::SendError<T>> {
        let mut value = value;
        loop {
            match self.try_send(value) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => {
                    value = back;
                    std::thread::sleep(FULL_QUEUE_RETRY);
                }
                Err(TrySendError::Disconnected(back)) => return Err(mpsc::SendError(back)),
            }
        }
    }
}

/// Values held back until `flush`; their places in the queue are taken at once, so a
/// full queue is still refused when the value is offered.
pub struct HoldingSender<T> {
    sender: BoundedSender<T>,
    held: Vec<T>,
}

impl<T> HoldingSender<T> {
    pub fn new(sender: BoundedSender<T>) -> HoldingSender<T> {
        HoldingSender {
            sender,
            held: Vec::new(),
        }
    }

    /// Holds `value` for the next flush, unless the queue is full.
    pub fn try_send(&mut self, value: T) -> Result<(), TrySendError<T>> {
        if !self.sender.reserve() {
            return Err(TrySendError::Full(value));
        }
        self.held.push(value);
        Ok(())
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Gives back every held value without handing it over (the receiver never sees them).
    pub fn take_held(&mut self) -> Vec<T> {
        std::mem::take(&mut self.held)
    }

    /// Hands every held value over at once. `Err` gives them back: the receiver is gone.
    pub fn flush(&mut self) -> Result<(), Vec<T>> {
        if self.held.is_empty() {
            return Ok(());
        }
        self.sender.send_reserved(std::mem::take(&mut self.held))
    }
}

impl<T> BoundedReceiver<T> {
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let value = match self.unpack() {
            Some(value) => value,
            None => self.open(self.inner.try_recv()?),
        };
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Ok(value)
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let value = match self.unpack() {
            Some(value) => value,
            None => self.open(self.inner.recv_timeout(timeout)?),
        };
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Ok(value)
    }

    /// The next value, awaited on a tokio runtime until `deadline`. Only for a queue
    /// made by [`bounded_waking`]; `&mut` keeps the awaiting future `Send`.
    pub async fn recv_until(&mut self, deadline: Instant) -> Result<T, RecvTimeoutError> {
        let wake = self
            .wake
            .clone()
            .expect("recv_until needs a queue made by bounded_waking");
        loop {
            match self.try_recv() {
                Ok(value) => return Ok(value),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) => {}
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {
                    return self.try_recv().map_err(|error| match error {
                        TryRecvError::Empty => RecvTimeoutError::Timeout,
                        TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                    });
                }
            }
        }
    }

    fn unpack(&self) -> Option<T> {
        self.unpacked.borrow_mut().pop_front()
    }

    fn open(&self, parcel: Parcel<T>) -> T {
        match parcel {
            Parcel::One(value) => value,
            Parcel::Many(values) => {
                let mut unpacked = self.unpacked.borrow_mut();
                unpacked.extend(values);
                unpacked.pop_front().expect("batches are never empty")
            }
        }
    }

    /// Values waiting.
    pub fn len(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_whole_or_not_at_all() {
        let (sender, receiver) = bounded(3);
        sender.try_send_all(vec![1, 2]).unwrap();
        assert!(matches!(
            sender.try_send_all(vec![3, 4]),
            Err(TrySendError::Full(v)) if v == vec![3, 4]
        ));
        sender.try_send_all(vec![3]).unwrap();
        assert_eq!(receiver.len(), 3);
        let got: Vec<i32> = (0..3).map(|_| receiver.try_recv().unwrap()).collect();
        assert_eq!(got, vec![1, 2, 3]);
        drop(receiver);
        assert!(matches!(
            sender.try_send_all(vec![5]),
            Err(TrySendError::Disconnected(_))
        ));
    }

    #[test]
    fn the_bound_refuses_and_frees_as_values_are_taken() {
        let (sender, receiver) = bounded(2);
        sender.try_send(1).unwrap();
        sender.clone().try_send(2).unwrap();
        assert!(matches!(sender.try_send(3), Err(TrySendError::Full(3))));
        assert_eq!(receiver.len(), 2);
        assert_eq!(receiver.try_recv(), Ok(1));
        sender.try_send(3).unwrap();
        assert_eq!(receiver.recv_timeout(Duration::from_millis(10)), Ok(2));
        assert_eq!(receiver.try_recv(), Ok(3));
        assert_eq!(receiver.try_recv(), Err(TryRecvError::Empty));
        assert!(receiver.is_empty());
    }

    #[test]
    fn a_gone_receiver_is_reported_and_frees_the_count() {
        let (sender, receiver) = bounded(1);
        drop(receiver);
        assert!(matches!(
            sender.try_send(1),
            Err(TrySendError::Disconnected(1))
        ));
        assert!(sender.send(2).is_err());
    }

    #[test]
    fn held_values_take_their_places_and_arrive_in_order_in_one_batch() {
        let (sender, receiver) = bounded(3);
        let mut holding = HoldingSender::new(sender.clone());
        holding.try_send(1).unwrap();
        holding.try_send(2).unwrap();
        // Held values count against the bound before they are flushed.
        assert_eq!(receiver.len(), 2);
        assert_eq!(receiver.try_recv(), Err(TryRecvError::Empty));
        sender.try_send(3).unwrap();
        assert!(matches!(holding.try_send(4), Err(TrySendError::Full(4))));
        holding.flush().unwrap();
        assert_eq!(holding.held(), 0);
        assert_eq!(receiver.try_recv(), Ok(3));
        assert_eq!(receiver.try_recv(), Ok(1));
        holding.try_send(5).unwrap();
        holding.flush().unwrap();
        assert_eq!(receiver.recv_timeout(Duration::from_millis(10)), Ok(2));
        assert_eq!(receiver.recv_timeout(Duration::from_millis(10)), Ok(5));
        assert!(receiver.is_empty());
        assert_eq!(holding.flush(), Ok(()));
    }

    #[test]
    fn held_values_come_back_when_the_receiver_is_gone() {
        let (sender, receiver) = bounded(2);
        let mut holding = HoldingSender::new(sender);
        holding.try_send(2).unwrap();
        holding.try_send(3).unwrap();
        drop(receiver);
        assert_eq!(holding.flush(), Err(vec![2, 3]));
        holding.try_send(4).unwrap();
    }

    #[test]
    fn a_blocking_send_waits_for_room() {
        let (sender, receiver) = bounded(1);
        sender.try_send(1).unwrap();
        let waiting = std::thread::spawn(move || sender.send(2));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(receiver.try_recv(), Ok(1));
        waiting.join().unwrap().unwrap();
        assert_eq!(receiver.recv_timeout(Duration::from_secs(5)), Ok(2));
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    #[test]
    fn an_awaiting_receiver_wakes_for_a_value_from_another_thread() {
        let (sender, mut receiver) = bounded_waking(4);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        let feeder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            sender.try_send_all(vec![1, 2]).unwrap();
            sender
        });
        let got = runtime().block_on(async {
            let first = receiver.recv_until(deadline).await;
            (first, receiver.recv_until(deadline).await)
        });
        assert_eq!(got, (Ok(1), Ok(2)));
        // Woken by the hand-over, not by the deadline.
        assert!(started.elapsed() < Duration::from_secs(10));
        let sender = feeder.join().unwrap();
        // Sent before anyone awaits: the stored wake-up is not lost.
        sender.try_send(3).unwrap();
        let got = runtime().block_on(receiver.recv_until(Instant::now() + Duration::from_secs(30)));
        assert_eq!(got, Ok(3));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn an_awaiting_receiver_times_out_at_the_deadline_and_sees_a_gone_sender() {
        let (sender, mut receiver) = bounded_waking::<u8>(4);
        let deadline = Instant::now() + Duration::from_millis(30);
        let got = runtime().block_on(receiver.recv_until(deadline));
        assert_eq!(got, Err(RecvTimeoutError::Timeout));
        assert!(Instant::now() >= deadline);
        drop(sender);
        let got = runtime().block_on(receiver.recv_until(Instant::now() + Duration::from_secs(30)));
        assert_eq!(got, Err(RecvTimeoutError::Disconnected));
    }
}
