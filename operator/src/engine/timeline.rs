//! Timeline histories: where each earlier timeline of a server ended. A standby in recovery
//! must replay up to the recovery point its copy recorded, on the timeline it recorded it
//! on; it can follow a source only if that point lies in the source's history. PostgreSQL
//! checks the same at start-up (xlogrecovery.c, "requested timeline %u does not contain
//! minimum recovery point") and while streaming (a new timeline that "forked off current
//! database system timeline ... before current recovery point"), and waits for ever when it
//! does not: a rewound standby whose source was itself rewound onto a newer primary's
//! history (after flapping links) never becomes consistent following it.

use super::Lsn;

/// One line of a timeline history file: `timeline` ended at `at` (the WAL from `at` on
/// belongs to a later timeline).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Switch {
    pub timeline: u32,
    pub at: Lsn,
}

/// A server's current timeline and the switches that led to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    pub timeline: u32,
    pub switches: Vec<Switch>,
}

/// Reads a `<timeline>.history` file: one `<timeline>\t<switch position>\t<reason>` line per
/// earlier timeline, `#` comments and blank lines ignored.
pub fn parse_switches(text: &str) -> Result<Vec<Switch>, String> {
    let mut switches = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let timeline = fields.next().and_then(|t| t.parse().ok());
        let at = fields.next().and_then(|l| l.parse().ok());
        match (timeline, at) {
            (Some(timeline), Some(at)) => switches.push(Switch { timeline, at }),
            _ => return Err(format!("{line:?} is not a timeline history line")),
        }
    }
    Ok(switches)
}

impl History {
    /// Why WAL up to `point` on `timeline` is not part of this history, or `None` when it
    /// is (or when `point` is unset: nothing to reach).
    pub fn missing(&self, timeline: u32, point: Lsn) -> Option<String> {
        if point == Lsn(0) || timeline == self.timeline {
            return None;
        }
        match self.switches.iter().find(|s| s.timeline == timeline) {
            Some(s) if point <= s.at => None,
            Some(s) => Some(format!(
                "its history left timeline {timeline} at {} (now on timeline {}), before {point}",
                s.at, self.timeline
            )),
            None => Some(format!(
                "timeline {timeline} is not in its history (it is on timeline {})",
                self.timeline
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(s: &str) -> Lsn {
        s.parse().unwrap()
    }

    #[test]
    fn history_files_are_read_line_by_line() {
        let text = "1\t0/3000000\tno recovery target specified\n\n\
                    # a comment\n\
                    2\t0/5000158\tno recovery target specified\n";
        assert_eq!(
            parse_switches(text),
            Ok(vec![
                Switch { timeline: 1, at: lsn("0/3000000") },
                Switch { timeline: 2, at: lsn("0/5000158") }
            ])
        );
        assert_eq!(parse_switches(""), Ok(vec![]));
        assert!(parse_switches("1 nowhere reason\n").unwrap_err().contains("not a timeline history line"));
        assert!(parse_switches("x 0/1\n").is_err());
    }

    /// Every position of a point relative to a switch: before it, at it, after it; on the
    /// current timeline, an earlier one, one that is not in the history, a later one.
    #[test]
    fn a_point_is_in_the_history_up_to_its_timelines_switch() {
        let history = History {
            timeline: 3,
            switches: vec![
                Switch { timeline: 1, at: lsn("0/3000000") },
                Switch { timeline: 2, at: lsn("0/5000000") },
            ],
        };
        assert_eq!(history.missing(3, lsn("9/0")), None, "its own timeline");
        assert_eq!(history.missing(2, lsn("0/4FFFFFF")), None);
        assert_eq!(history.missing(2, lsn("0/5000000")), None, "exactly at the switch");
        assert_eq!(history.missing(1, lsn("0/2000000")), None);
        assert_eq!(history.missing(2, Lsn(0)), None, "no recovery point to reach");
        let forked = history.missing(2, lsn("0/5000001")).expect("after the switch");
        assert!(
            forked.contains("left timeline 2 at 0/5000000") && forked.contains("before 0/5000001"),
            "{forked}"
        );
        assert!(history.missing(1, lsn("0/3000001")).is_some());
        let unknown = history.missing(4, lsn("0/1")).expect("a later timeline");
        assert!(unknown.contains("timeline 4 is not in its history"), "{unknown}");
        let first = History { timeline: 1, switches: vec![] };
        assert_eq!(first.missing(1, lsn("1/0")), None);
        assert!(first.missing(2, lsn("0/1")).is_some());
    }
}
