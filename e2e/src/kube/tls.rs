//! TLS on a real cluster, as a client inside it sees it: the `-rw` Service's server proves its
//! name against the cluster's authority (`sslmode=verify-full`), a client without TLS is
//! refused, and every standby streams from the primary over an encrypted connection.

use std::time::Duration;

use anyhow::bail;
use opengauss_crd::Engine;
use opengauss_operator::platform::kubernetes::builders::paths;

use super::cluster::{KubeCluster, expect_eq};
use crate::checks::SqlCluster;
use crate::wait::{Probe, until};

/// The authority's certificate inside every pod (the manager's copy of the mounted Secret).
pub fn authority_in_pod() -> String {
    format!("{}/ca.crt", paths::TLS_DIR)
}

/// psql in `pod` to the `-rw` Service by its full DNS name with `sslmode`.
async fn psql_to_rw(c: &KubeCluster, pod: &str, sslmode: &str, sql: &str) -> Result<String, String> {
    let conninfo = format!(
        "host={}-rw.{}.svc.cluster.local port={} user=postgres dbname=postgres passfile={} \
         sslmode={sslmode} sslrootcert={} connect_timeout=10",
        c.name,
        c.namespace,
        c.port,
        paths::PGPASS,
        authority_in_pod(),
    );
    let argv: Vec<String> =
        ["psql", "-X", "-At", "-d", &conninfo, "-c", sql].iter().map(|s| s.to_string()).collect();
    c.exec(pod, &argv).await
}

/// The checks, from a standby's pod (its traffic to `-rw` crosses the pod network).
pub async fn database_tls_checks(c: &KubeCluster, primary: &str) -> anyhow::Result<()> {
    if c.engine != Engine::Postgres {
        // gsql's connection options differ; openGauss's TLS is checked by the local tiers.
        eprintln!("skipping the in-cluster TLS client checks: they use psql (engine {:?})", c.engine);
        return Ok(());
    }
    let standbys: Vec<String> = c.instance_names().into_iter().filter(|n| n != primary).collect();
    let client = standbys.first().map_or(primary, String::as_str);

    let ssl =
        psql_to_rw(c, client, "verify-full", "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .await
            .map_err(|e| anyhow::anyhow!("verify-full to the -rw Service from {client}: {e}"))?;
    expect_eq("ssl of a verify-full connection to -rw", ssl.trim(), "t")?;

    match psql_to_rw(c, client, "disable", "SELECT 1").await {
        Ok(out) => bail!("a client without TLS was let in through -rw: {out:?}"),
        Err(e) if e.contains("no pg_hba.conf entry") && e.contains("no encryption") => {}
        Err(e) => bail!("a client without TLS was refused, but not by the hba rules: {e}"),
    }

    until(
        &format!("{} standbys streaming from {primary} over TLS", standbys.len()),
        Duration::from_secs(60),
        Duration::from_secs(1),
        || async {
            let sql = "SELECT r.application_name, r.state, s.ssl FROM pg_stat_replication r \
                       JOIN pg_stat_ssl s USING (pid) ORDER BY 1";
            match c.query(primary, sql).await {
                Ok(rows)
                    if rows.len() == standbys.len()
                        && rows.iter().all(|r| {
                            r.get(1).and_then(|v| v.as_deref()) == Some("streaming")
                                && r.get(2).and_then(|v| v.as_deref()) == Some("t")
                        }) =>
                {
                    Probe::Done(())
                }
                Ok(rows) => Probe::NotYet(format!("{rows:?}")),
                Err(e) => Probe::NotYet(format!("{e:#}")),
            }
        },
    )
    .await
}
