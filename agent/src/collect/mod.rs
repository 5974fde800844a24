//! Collectors: each reads one part of the host and returns a snapshot of domain
//! values (no wire format: the protocol room renders them). Parsing is from text so
//! tests feed fixtures; roots (`/proc`, `/sys`) are passed in, never assumed.

pub mod cpu;
pub mod disks;
pub mod gpu;
pub mod journal;
pub mod memory;
pub mod metrics;
pub mod network;
pub mod pid_cache;
pub(crate) mod probe;
pub mod process_detail;
pub mod process_groups;
pub mod processes;
pub mod temperature;

/// Something that collects one kind of snapshot on request. The service runs it on
/// a blocking thread, unless it says it never waits.
pub trait Collect: Send + 'static {
    /// What one collection returns; shared by every client that asks within the TTL.
    type Snapshot: Send + Sync + 'static;

    fn collect(&mut self) -> Result<Self::Snapshot, CollectError>;

    /// True when the next collection only reads procfs, sysfs and memory, a few
    /// microseconds, and cannot wait on a device, a disk or the network. Such a
    /// collection runs on the async worker itself: handing it to the blocking pool
    /// costs two thread wake-ups, more CPU than the collection. Asked before each
    /// collection (what a collector reads may change, as mounts do); it must itself
    /// never wait.
    fn never_waits(&mut self) -> bool {
        false
    }

    /// Lets go of what is kept only to make the next collection cheaper (buffers,
    /// open files, recycled vectors), keeping what the next answer needs to be right
    /// (the readings CPU shares are measured from). Called when nobody watches.
    fn release(&mut self) {}
}

/// Why a collection gave no snapshot; its text goes into the error answer.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The processes scan could not list `/proc`.
    #[error("listing processes failed: {0}")]
    ListingProcesses(#[source] std::io::Error),
    /// The collection ended without a result: the collector panicked (the panic
    /// is logged), or the runtime shut down under it.
    #[error("collection failed")]
    Aborted(#[source] tokio::task::JoinError),
}
