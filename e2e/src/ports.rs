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

/// The ports blocks are taken from: 20000 up to where the kernel's ephemeral range begins
/// (ports it hands to outgoing connections and to listeners bound to port 0, such as the
/// instance managers' APIs), so a port checked free now cannot be taken by one of those
/// before the test's server binds it. Above the range when it starts too low.
fn candidate_ports() -> (u16, u16) {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((32768, 60999));
    match ephemeral {
        (low, _) if low >= 24000 => (20000, low),
        (_, high) if high < 61000 => (high + 1, 65000),
        _ => (20000, 60000),
    }
}

/// Reserves `count` consecutive free ports starting at a multiple of 16 outside the kernel's
/// ephemeral range (see `candidate_ports`).
pub fn reserve(count: u16) -> PortBlock {
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    let (first, end) = candidate_ports();
    let slots = (end - first - count) / 16;
    for attempt in 0..slots as u64 {
        let slot = (seed.wrapping_mul(6364136223846793005).wrapping_add(attempt * 7919)) % slots as u64;
        let base = first + (slot as u16) * 16;
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
