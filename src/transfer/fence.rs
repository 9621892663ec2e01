//! One receiving job's disk work at a time. A lost connection drops the receive future, but
//! its writer, publisher and checkpoint threads run on until their queues close; a resume
//! that starts at once would otherwise truncate or rename files those threads still touch.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

/// Held for as long as anything writes, renames or removes a job's partial files.
#[derive(Debug, Clone, Default)]
pub struct DiskFence(Arc<Mutex<()>>);

/// Proof of holding the fence; moved into the blocking thread that does the work.
pub type DiskGuard = OwnedMutexGuard<()>;

impl DiskFence {
    /// Waits until the previous holder (a thread of a dropped run, say) has finished.
    pub async fn enter(&self) -> DiskGuard {
        self.0.clone().lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_second_holder_waits_for_a_blocking_thread_to_finish() {
        let fence = DiskFence::default();
        let guard = fence.enter().await;
        let (tx, rx) = std::sync::mpsc::channel();
        let worker = tokio::task::spawn_blocking(move || {
            let _guard = guard;
            std::thread::sleep(Duration::from_millis(200));
            tx.send("worker done").unwrap();
        });
        // Not awaiting `worker`, as a dropped future would not.
        let _second = fence.enter().await;
        assert_eq!(rx.try_recv(), Ok("worker done"));
        worker.await.unwrap();
    }
}
