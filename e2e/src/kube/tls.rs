//! TLS on a real cluster, as a client inside it sees it: the `-rw` Service's server proves its
//! name against the cluster's authority (`sslmode=verify-full`), a client without TLS is
//! refused, and every standby streams from the primary over an encrypted connection.

use std::time::Duration;

use anyhow::{Context, bail};
use opengauss_crd::Engine;
use opengauss_operator::platform::kubernetes::builders::paths;
use opengauss_operator::tls::{Authority, KeyedCertificate};

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

/// Each instance's certificate expiry as the status reports it (unix seconds), once every
/// instance reports one.
fn expiries(c: &KubeCluster, s: &opengauss_crd::OpenGaussClusterStatus) -> Option<Vec<i64>> {
    c.instance_names()
        .iter()
        .map(|n| s.instance(n).and_then(|i| i.certificate_expires.as_ref()).map(|t| t.0.as_second()))
        .collect()
}

/// Short-lived certificates (`lifetime`) are renewed in the Secret, delivered by the kubelet,
/// copied and loaded by each manager, while the cluster stays Healthy under the same primary
/// and verify-full clients keep connecting: no failover, no restart, no refused client.
pub async fn renewal_without_downtime(c: &KubeCluster, lifetime: Duration) -> anyhow::Result<()> {
    let status = c.wait_healthy(Duration::from_secs(600)).await?;
    let primary = status.current_primary.clone().context("a primary")?;
    let first = until(
        "every instance to report its certificate's expiry",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || async {
            match c.status().await.as_ref().and_then(|s| expiries(c, s)) {
                Some(e) => Probe::Done(e),
                None => Probe::NotYet("not every instance reports one".to_string()),
            }
        },
    )
    .await?;
    let client = c.instance_names().into_iter().find(|n| *n != primary).unwrap_or_else(|| primary.clone());
    // Renewal starts 150 s before expiry at the latest (a third of the lifetime for longer
    // ones); the kubelet takes up to about 90 s to deliver a changed Secret. The wait outlasts
    // the first certificates, so one that expired before its renewal arrived is seen refused.
    let deadline = lifetime + Duration::from_secs(30);
    until("every certificate renewed and loaded", deadline, Duration::from_secs(5), || async {
        let Some(s) = c.status().await else { return Probe::NotYet("no status".into()) };
        if s.current_primary.as_deref() != Some(primary.as_str())
            || s.phase != Some(opengauss_crd::Phase::Healthy)
        {
            return Probe::Done(Err(format!(
                "the cluster was disturbed: phase {:?} ({}), primary {:?}",
                s.phase,
                s.phase_reason.clone().unwrap_or_default(),
                s.current_primary
            )));
        }
        if let Err(e) = psql_to_rw(c, &client, "verify-full", "SELECT 1").await {
            return Probe::Done(Err(format!("a verify-full client was refused: {e}")));
        }
        match expiries(c, &s) {
            Some(now) if now.iter().zip(&first).all(|(n, f)| n > f) => Probe::Done(Ok(())),
            other => Probe::NotYet(format!("expiries {other:?}, first {first:?}")),
        }
    })
    .await?
    .map_err(|e| anyhow::anyhow!("while certificates were renewed, {e}"))?;
    database_tls_checks(c, &primary).await
}

/// Each instance's name and the pair supplied for it.
pub type SuppliedPairs = Vec<(String, KeyedCertificate)>;

/// The user's Secrets for cluster `name` in `namespace` with `instances`: the authority's
/// certificate alone in `<name>-ca`, and in `<name>-tls` a pair per instance naming its pod
/// and the `-rw`/`-ro` Services. Returns them and the pairs.
pub fn supplied_secrets(
    name: &str,
    namespace: &str,
    instances: u32,
) -> anyhow::Result<(Vec<serde_json::Value>, SuppliedPairs)> {
    let now = time::OffsetDateTime::now_utc();
    let users = Authority::generate("the user's", now)?;
    let mut data = serde_json::Map::new();
    data.insert("ca.crt".into(), users.cert_pem().into());
    let mut pairs = Vec::new();
    for instance in opengauss_crd::names::instance_names(name, instances) {
        let pod = format!("{instance}.{name}-headless.{namespace}.svc.cluster.local");
        let names = [
            pod.clone(),
            format!("{name}-rw.{namespace}.svc.cluster.local"),
            format!("{name}-ro.{namespace}.svc.cluster.local"),
        ];
        let pair = users.issue(&pod, &names, now, Duration::from_secs(24 * 3600))?;
        data.insert(format!("{instance}.crt"), pair.cert_pem.clone().into());
        data.insert(format!("{instance}.key"), pair.key_pem.clone().into());
        pairs.push((instance, pair));
    }
    let secret = |secret: String, data: serde_json::Map<String, serde_json::Value>| serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret}, "stringData": data});
    let ca = secret(
        format!("{name}-ca"),
        serde_json::Map::from_iter([("ca.crt".to_string(), users.cert_pem().into())]),
    );
    Ok((vec![ca, secret(format!("{name}-tls"), data)], pairs))
}

/// Every pod serves exactly the pair the user supplied, and the authority's key is nowhere.
pub async fn serves_the_supplied_pairs(
    c: &KubeCluster,
    pairs: &[(String, KeyedCertificate)],
) -> anyhow::Result<()> {
    for (instance, pair) in pairs {
        let served = c
            .exec(instance, &["cat".into(), format!("{}/server.crt", paths::TLS_DIR)])
            .await
            .map_err(|e| anyhow::anyhow!("reading the certificate in {instance}: {e}"))?;
        expect_eq(&format!("the certificate {instance} serves"), served.trim(), pair.cert_pem.trim())?;
    }
    let keys = c.kubectl(&["get", "secret", &format!("{}-ca", c.name), "-o", "jsonpath={.data}"]).await?;
    if keys.contains("ca.key") {
        bail!("the operator wrote a key into the user's authority Secret: {keys}");
    }
    Ok(())
}
