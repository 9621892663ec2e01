//! Free space promised to offers being received, per filesystem: two receives that each
//! fit the free space but not together must not both start and both fail with "disk
//! full". An offer that fits what is free minus what is promised gets a promise for its
//! size (from before the question is asked, so the second is refused before anyone is
//! asked); the promise shrinks as its bytes are written, and ends with its transfer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A filesystem, as `stat`'s device number names it.
pub type Filesystem = u64;

#[derive(Debug, Default)]
pub struct SpaceLedger {
    /// Per filesystem, per promise: the bytes still to be written.
    promised: Mutex<HashMap<Filesystem, HashMap<u64, u64>>>,
    next: AtomicU64,
}

/// Space held for one transfer until it is dropped.
#[derive(Debug)]
pub struct Promise {
    ledger: Arc<SpaceLedger>,
    fs: Filesystem,
    ticket: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The offer does not fit: how much is free and how much of that is promised.
#[derive(Debug, PartialEq, Eq)]
pub struct Short {
    pub free: u64,
    pub promised: u64,
}

impl SpaceLedger {
    /// Promises `bytes` on `fs` if they fit in `free` minus what is promised already.
    pub fn promise(
        self: &Arc<Self>,
        fs: Filesystem,
        free: u64,
        bytes: u64,
    ) -> Result<Promise, Short> {
        let mut promised = lock(&self.promised);
        let held: u64 = promised.get(&fs).map_or(0, |p| p.values().sum());
        if bytes > free.saturating_sub(held) {
            return Err(Short {
                free,
                promised: held,
            });
        }
        let ticket = self.next.fetch_add(1, Ordering::Relaxed);
        promised.entry(fs).or_default().insert(ticket, bytes);
        Ok(Promise {
            ledger: self.clone(),
            fs,
            ticket,
        })
    }
}

impl Promise {
    /// The transfer has `left` bytes still to write (what it wrote already uses the disk
    /// and shows in the free space).
    pub fn still_to_write(&self, left: u64) {
        if let Some(entry) = lock(&self.ledger.promised)
            .get_mut(&self.fs)
            .and_then(|p| p.get_mut(&self.ticket))
        {
            *entry = left.min(*entry);
        }
    }
}

impl Drop for Promise {
    fn drop(&mut self) {
        let mut promised = lock(&self.ledger.promised);
        if let Some(p) = promised.get_mut(&self.fs) {
            p.remove(&self.ticket);
            if p.is_empty() {
                promised.remove(&self.fs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_offers_that_fit_alone_but_not_together() {
        let ledger = Arc::new(SpaceLedger::default());
        let first = ledger.promise(1, 100, 60).unwrap();
        assert_eq!(
            ledger.promise(1, 100, 60).unwrap_err(),
            Short {
                free: 100,
                promised: 60
            }
        );
        // Another filesystem is another budget.
        let _other = ledger.promise(2, 100, 60).unwrap();
        // As the first is written the free space falls and its promise with it.
        first.still_to_write(20);
        assert!(ledger.promise(1, 60, 40).is_ok());
        drop(first);
        assert!(ledger.promise(1, 60, 60).is_ok());
    }
}
