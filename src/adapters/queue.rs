//! Bounded queues between threads that take memory as they fill, not up front.
//!
//! `std::sync::mpsc::sync_channel(n)` allocates all `n` slots at creation: the driver's
//! 65,536-input inbox alone held about 10 MB on every node, full or empty. These queues
//! wrap the list-based `mpsc::channel` (blocks of a few dozen slots, freed as they are
//! consumed) and enforce the bound with a shared counter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Duration;

pub struct BoundedSender<T> {
    inner: mpsc::Sender<T>,
    queued: Arc<AtomicUsize>,
    bound: usize,
}

impl<T> Clone for BoundedSender<T> {
    fn clone(&self) -> Self {
        BoundedSender {
            inner: self.inner.clone(),
            queued: self.queued.clone(),
            bound: self.bound,
        }
    }
}

pub struct BoundedReceiver<T> {
    inner: mpsc::Receiver<T>,
    queued: Arc<AtomicUsize>,
}

/// A queue holding at most `bound` values.
pub fn bounded<T>(bound: usize) -> (BoundedSender<T>, BoundedReceiver<T>) {
    let (inner, receiver) = mpsc::channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (
        BoundedSender {
            inner,
            queued: queued.clone(),
            bound: bound.max(1),
        },
        BoundedReceiver {
            inner: receiver,
            queued,
        },
    )
}

/// How long a blocking [`BoundedSender::send`] waits between attempts on a full queue.
const FULL_QUEUE_RETRY: Duration = Duration::from_millis(1);

impl<T> BoundedSender<T> {
    /// Queues `value` unless the queue is full or the receiver is gone. Never blocks.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.bound {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(TrySendError::Full(value));
        }
        self.inner.send(value).map_err(|mpsc::SendError(value)| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            TrySendError::Disconnected(value)
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

impl<T> BoundedReceiver<T> {
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        let value = self.inner.try_recv()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Ok(value)
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let value = self.inner.recv_timeout(timeout)?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Ok(value)
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
    fn a_blocking_send_waits_for_room() {
        let (sender, receiver) = bounded(1);
        sender.try_send(1).unwrap();
        let waiting = std::thread::spawn(move || sender.send(2));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(receiver.try_recv(), Ok(1));
        waiting.join().unwrap().unwrap();
        assert_eq!(receiver.recv_timeout(Duration::from_secs(5)), Ok(2));
    }
}
