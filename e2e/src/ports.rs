//! Port blocks unique to one test: chosen at random, checked free, and reserved with a lock
//! file for the test's lifetime so parallel tests never pick the same block.

use std::fs::File;
use std::net::TcpListener;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};

/// A reserved block of consecutive ports.
#[derive(Debug)]
pub struct PortBlock {
    pub base: u16,
    _lock: Flock<File>,
}

fn lock_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("opengauss-e2e-ports");
    std::fs::create_dir_all(&dir).expect("creating the port lock directory");
    dir
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Reserves `count` consecutive free ports starting at a multiple of 16 in 20000..60000.
pub fn reserve(count: u16) -> PortBlock {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let slots = (60000 - 20000) / 16;
    for attempt in 0..slots as u64 {
        let slot = (seed.wrapping_mul(6364136223846793005).wrapping_add(attempt * 7919)) % slots as u64;
        let base = 20000 + (slot as u16) * 16;
        let file = File::create(lock_dir().join(format!("{base}.lock"))).expect("creating a port lock file");
        let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
            continue;
        };
        if (base..base + count).all(free) {
            return PortBlock { base, _lock: lock };
        }
    }
    panic!("no block of {count} free ports found");
}
