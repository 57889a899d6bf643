//! A cluster's status as a table, in the spirit of `gs_ctl query` and `pg_stat_replication`:
//! what `local status` and `kubectl opengauss status` print.

use opengauss_crd::OpenGaussClusterStatus;

fn or_dash(s: Option<String>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into())
}

/// Renders the status for a terminal.
pub fn render(cluster: &str, status: &OpenGaussClusterStatus) -> String {
    let mut out = String::new();
    let phase = status.phase.map(|p| p.as_str()).unwrap_or("Unknown");
    out += &format!("Cluster:  {cluster}\n");
    out += &format!("Phase:    {phase}");
    if let Some(reason) = &status.phase_reason {
        out += &format!(" ({reason})");
    }
    out += "\n";
    out += &format!("Primary:  {}\n", or_dash(status.current_primary.clone()));
    if let Some(sync) = &status.synchronous {
        out += &format!(
            "Sync:     {} {} ({})\n",
            sync.method.to_uppercase(),
            sync.number,
            sync.standbys.join(", ")
        );
    }
    if let Some(t) = &status.transition {
        out += &format!(
            "Transition: {:?} from {} to {} at step {:?}: {}\n",
            t.kind,
            t.from,
            or_dash(t.to.clone()),
            t.step,
            t.reason
        );
    }
    out += &format!("Ready:    {}/{}\n\n", status.ready_instances, status.instances.len());
    let header = [
        "NAME",
        "ROLE",
        "STATE",
        "READY",
        "ADDRESS",
        "TL",
        "WAL (current | received replayed)",
        "REPLICATION",
        "SYNC",
        "LAG (bytes)",
    ];
    let rows: Vec<[String; 10]> = status
        .instances
        .iter()
        .map(|i| {
            let wal = match (&i.current_lsn, &i.received_lsn, &i.replayed_lsn) {
                (Some(c), _, _) => c.clone(),
                (None, r, p) if r.is_some() || p.is_some() => {
                    // LSNs hold a slash themselves: a space keeps the two apart.
                    format!("{} {}", or_dash(r.clone()), or_dash(p.clone()))
                }
                _ => "-".into(),
            };
            [
                i.name.clone(),
                i.role.to_string(),
                or_dash(Some(i.state.clone())),
                if i.ready { "yes" } else { "no" }.into(),
                or_dash(Some(i.address.clone())),
                or_dash(i.timeline.map(|t| t.to_string())),
                wal,
                or_dash(i.replication_state.clone()),
                or_dash(i.sync_state.clone()),
                or_dash(i.lag_bytes.map(|l| l.to_string())),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        parts.join("  ").trim_end().to_string() + "\n"
    };
    out += &line(header.to_vec());
    for r in &rows {
        out += &line(r.iter().map(String::as_str).collect());
    }
    for i in &status.instances {
        if let Some(m) = &i.message {
            out += &format!("\n{}: {m}", i.name);
        }
    }
    if status.instances.iter().any(|i| i.message.is_some()) {
        out += "\n";
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use opengauss_crd::{InstanceStatus, Phase, Role};

    #[test]
    fn table_shows_roles_states_and_lag() {
        let status = OpenGaussClusterStatus {
            phase: Some(Phase::Healthy),
            current_primary: Some("demo-0".into()),
            ready_instances: 2,
            instances: vec![
                InstanceStatus {
                    name: "demo-0".into(),
                    role: Role::Primary,
                    ready: true,
                    state: "running".into(),
                    address: "127.0.0.1:15432".into(),
                    current_lsn: Some("0/3000148".into()),
                    ..Default::default()
                },
                InstanceStatus {
                    name: "demo-1".into(),
                    role: Role::Standby,
                    ready: true,
                    state: "streaming".into(),
                    received_lsn: Some("0/3000148".into()),
                    replayed_lsn: Some("0/3000100".into()),
                    replication_state: Some("streaming".into()),
                    sync_state: Some("quorum".into()),
                    lag_bytes: Some(72),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let t = render("demo", &status);
        assert!(t.contains("Phase:    Healthy"), "{t}");
        let standby = t.lines().find(|l| l.starts_with("demo-1")).expect("standby row");
        for cell in ["standby", "streaming", "0/3000148 0/3000100", "quorum", "72"] {
            assert!(standby.contains(cell), "{cell} missing in {standby}");
        }
        assert!(
            t.lines().any(|l| l.starts_with("demo-0") && l.contains("primary") && l.contains("0/3000148"))
        );
    }
}
