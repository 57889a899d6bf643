//! WAL segment files, named alike by both engines: 8 hex digits of timeline, then the
//! segment number split in two 8-digit halves (`000000020000000000000004`).

use std::path::Path;

use super::Lsn;

/// The segment size of every data directory this operator initialises (both engines' default;
/// the operator never passes another size to initdb).
pub const WAL_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;

/// Where the segment `name` starts, or `None` for anything that is not a complete segment
/// (`.partial`, `.history`, `.backup`, `archive_status`...).
pub fn segment_start(name: &str) -> Option<Lsn> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let high = u64::from_str_radix(&name[8..16], 16).ok()?;
    let low = u64::from_str_radix(&name[16..24], 16).ok()?;
    if low >= (1 << 32) / WAL_SEGMENT_BYTES {
        return None;
    }
    Some(Lsn((high << 32) + low * WAL_SEGMENT_BYTES))
}

/// The start of the oldest segment the WAL directory `dir` still holds, on any timeline: a
/// standby whose position is before it cannot get what it needs from this server.
pub fn oldest_segment_start(dir: &Path) -> Option<Lsn> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(segment_start))
        .min()
}

/// The start of the segment holding `lsn`.
pub fn segment_start_of(lsn: Lsn) -> Lsn {
    Lsn(lsn.0 - lsn.0 % WAL_SEGMENT_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_map_to_their_start() {
        assert_eq!(segment_start("000000010000000000000004"), Some("0/4000000".parse().unwrap()));
        assert_eq!(segment_start("0000000300000002000000FF"), Some("2/FF000000".parse().unwrap()));
        assert_eq!(segment_start("000000020000000000000004.partial"), None);
        assert_eq!(segment_start("00000002.history"), None);
        assert_eq!(segment_start("000000010000000000000100"), None, "no segment 256 in a 4 GiB xlogid");
        assert_eq!(segment_start("archive_status"), None);
    }

    #[test]
    fn the_oldest_complete_segment_of_any_timeline_counts() {
        let dir = tempfile::tempdir().expect("tmp");
        for name in [
            "000000020000000000000007",
            "000000030000000000000005",
            "000000010000000000000003.partial",
            "00000003.history",
        ] {
            std::fs::write(dir.path().join(name), b"").expect("write");
        }
        std::fs::create_dir(dir.path().join("archive_status")).expect("mkdir");
        assert_eq!(oldest_segment_start(dir.path()), Some("0/5000000".parse().unwrap()));
        assert_eq!(oldest_segment_start(&dir.path().join("missing")), None);
    }

    #[test]
    fn positions_round_down_to_their_segment() {
        assert_eq!(segment_start_of("0/40000A0".parse().unwrap()), "0/4000000".parse().unwrap());
        assert_eq!(segment_start_of("1/0".parse().unwrap()), "1/0".parse().unwrap());
    }
}
