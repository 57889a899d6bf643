//! The control file as `pg_controldata` prints it (both engines print the same fields): the
//! cluster state and the last checkpoint, which tell a stopped instance's position and whether
//! it shut down cleanly.

use serde::{Deserialize, Serialize};

use super::Lsn;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlReport {
    /// `Database cluster state` as the control file says it.
    pub state: String,
    /// Shut down cleanly (as a primary or in recovery): no crash recovery pending.
    pub clean_shutdown: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
}

fn field(out: &str, name: &str) -> Option<String> {
    out.lines().find_map(|l| l.strip_prefix(name).map(|rest| rest.trim_start_matches(':').trim().to_string()))
}

/// Reads `pg_controldata`'s output (run with `LC_ALL=C`).
pub fn parse(out: &str) -> ControlReport {
    let field = |name: &str| field(out, name);
    let state = field("Database cluster state").unwrap_or_default();
    ControlReport {
        clean_shutdown: state == "shut down" || state == "shut down in recovery",
        state,
        checkpoint_lsn: field("Latest checkpoint location").and_then(|s| s.parse().ok()),
        timeline: field("Latest checkpoint's TimeLineID").and_then(|s| s.parse().ok()),
    }
}

/// The point a server in recovery must replay up to before it is consistent, with its
/// timeline; `None` when unset (`0/0`: a primary, or a standby already past it).
pub fn min_recovery_point(out: &str) -> Option<(u32, Lsn)> {
    let point: Lsn = field(out, "Minimum recovery ending location")?.parse().ok()?;
    let timeline = field(out, "Min recovery ending loc's timeline")?.parse().ok()?;
    (point != Lsn(0)).then_some((timeline, point))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controldata_fields() {
        let out = "pg_control version number:            1300\n\
                   Database cluster state:               in production\n\
                   Latest checkpoint location:           0/3000060\n\
                   Latest checkpoint's REDO location:    0/3000028\n\
                   Latest checkpoint's TimeLineID:       2\n";
        let c = parse(out);
        assert_eq!(c.state, "in production");
        assert!(!c.clean_shutdown);
        assert_eq!(c.checkpoint_lsn.map(|l| l.to_string()).as_deref(), Some("0/3000060"));
        assert_eq!(c.timeline, Some(2));
        assert!(parse("Database cluster state:               shut down\n").clean_shutdown);
        assert!(parse("Database cluster state:   shut down in recovery\n").clean_shutdown);
    }

    #[test]
    fn the_minimum_recovery_point_with_its_timeline() {
        let out = "Database cluster state:               in archive recovery\n\
                   Minimum recovery ending location:     0/5000158\n\
                   Min recovery ending loc's timeline:   3\n";
        assert_eq!(min_recovery_point(out), Some((3, "0/5000158".parse().unwrap())));
        let unset = "Minimum recovery ending location:     0/0\n\
                     Min recovery ending loc's timeline:   0\n";
        assert_eq!(min_recovery_point(unset), None);
        assert_eq!(min_recovery_point("Database cluster state:   in production\n"), None);
    }
}
