//! The original Docker deployment's checks, run through SQL: replication rows on the primary,
//! a write on the primary read back on every standby, a write on a standby refused,
//! replication lag in bytes. They are written once against `SqlCluster`, which both a local
//! cluster (tokio-postgres over TCP) and a cluster on Kubernetes (`psql`/`gsql` over the pod's
//! Unix socket through `kubectl exec`: openGauss refuses remote password logins of its initial
//! user, and its SHA256 method is beyond tokio-postgres) implement.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, bail};
use opengauss_crd::Engine;

use crate::LocalCluster;
use crate::wait::{Probe, until};

/// A table of text values (NULL as `None`).
pub type Rows = Vec<Vec<Option<String>>>;

/// A cluster whose instances can be queried by name.
pub trait SqlCluster: Sync {
    fn engine(&self) -> Engine;
    fn instance_names(&self) -> Vec<String>;
    /// Runs one query on `instance` and returns its rows as text.
    fn query(&self, instance: &str, sql: &str) -> impl Future<Output = anyhow::Result<Rows>> + Send;
    /// Runs statements on `instance`; an error carries the server's message.
    fn execute(&self, instance: &str, sql: &str) -> impl Future<Output = Result<(), String>> + Send;
}

impl SqlCluster for LocalCluster {
    fn engine(&self) -> Engine {
        self.engine
    }

    fn instance_names(&self) -> Vec<String> {
        (0..self.instances).map(|k| self.instance(k)).collect()
    }

    async fn query(&self, instance: &str, sql: &str) -> anyhow::Result<Rows> {
        if self.opengauss.is_some() {
            let out =
                self.gsql(instance, sql).await.map_err(|e| anyhow::anyhow!("{sql} on {instance}: {e}"))?;
            return Ok(parse_unaligned(&out));
        }
        let client = self.connect(instance).await?;
        let messages = client.simple_query(sql).await.with_context(|| format!("{sql} on {instance}"))?;
        Ok(messages
            .iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(String::from)).collect())
                }
                _ => None,
            })
            .collect())
    }

    async fn execute(&self, instance: &str, sql: &str) -> Result<(), String> {
        if self.opengauss.is_some() {
            return self.gsql(instance, sql).await.map(drop);
        }
        let client = self.connect(instance).await.map_err(|e| format!("{e:#}"))?;
        client.batch_execute(sql).await.map_err(|e| match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        })
    }
}

/// The options that make `psql`/`gsql` print bare rows, fields split by `FIELD_SEPARATOR`,
/// and stop at the first error.
pub fn unaligned_sql_args(sql: &str) -> Vec<String> {
    ["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-F", FIELD_SEPARATOR, "-c", sql]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A character no value of the checks contains.
pub const FIELD_SEPARATOR: &str = "\u{1f}";

/// Rows printed with `unaligned_sql_args` (an empty field is NULL).
pub fn parse_unaligned(out: &str) -> Rows {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split(FIELD_SEPARATOR).map(|v| (!v.is_empty()).then(|| v.to_string())).collect())
        .collect()
}

/// Instances that are not in recovery.
pub async fn writable_instances<C: SqlCluster>(c: &C) -> Vec<String> {
    let mut out = Vec::new();
    for name in c.instance_names() {
        if let Ok(rows) = c.query(&name, "SELECT pg_is_in_recovery()").await
            && rows.first().and_then(|r| r[0].as_deref()).is_some_and(|v| v == "f" || v == "false")
        {
            out.push(name);
        }
    }
    out
}

/// The primary's replication rows: (instance, state, sync state), lower case.
pub async fn replication_rows<C: SqlCluster>(
    c: &C,
    primary: &str,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let dialect = opengauss_operator::engine::dialect(c.engine());
    let rows =
        c.query(primary, "SELECT application_name, state, sync_state FROM pg_stat_replication").await?;
    let mut out: Vec<(String, String, String)> = rows
        .into_iter()
        .map(|r| {
            let app = r[0].clone().unwrap_or_default();
            // openGauss names its WAL senders `WalSender to Standby[<node name>]`.
            let node = app
                .rsplit_once('[')
                .and_then(|(_, rest)| rest.strip_suffix(']'))
                .map(String::from)
                .unwrap_or(app);
            let lower = |v: &Option<String>| v.clone().unwrap_or_default().to_lowercase();
            (dialect.instance_of(&node), lower(&r[1]), lower(&r[2]))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Every standby streams from the primary, at least one of them synchronously.
pub async fn check_replication<C: SqlCluster>(
    c: &C,
    primary: &str,
    standbys: &[String],
) -> anyhow::Result<()> {
    let rows = replication_rows(c, primary).await?;
    let names: Vec<&String> = rows.iter().map(|r| &r.0).collect();
    let mut want: Vec<&String> = standbys.iter().collect();
    want.sort();
    if names != want {
        bail!("replication rows on {primary} name {names:?}, expected {want:?}");
    }
    // openGauss reports a streaming sender as `streaming` too (its `Normal` is the receiver's).
    if let Some(r) = rows.iter().find(|r| r.1 != "streaming") {
        bail!("{} is {:?}, not streaming", r.0, r.1);
    }
    if !rows.iter().any(|r| matches!(r.2.as_str(), "sync" | "quorum" | "potential")) {
        bail!("no synchronous standby among {rows:?}");
    }
    Ok(())
}

/// A row written on the primary is read back on every standby.
pub async fn check_write_then_read<C: SqlCluster>(
    c: &C,
    primary: &str,
    standbys: &[String],
    table: &str,
    note: &str,
) -> anyhow::Result<()> {
    c.execute(primary, &format!("CREATE TABLE IF NOT EXISTS {table} (id int PRIMARY KEY, note text)"))
        .await
        .map_err(|e| anyhow::anyhow!("create table on {primary}: {e}"))?;
    c.execute(primary, &format!("INSERT INTO {table} VALUES (1, '{note}')"))
        .await
        .map_err(|e| anyhow::anyhow!("write on {primary}: {e}"))?;
    for s in standbys {
        let sql = format!("SELECT note FROM {table} WHERE id = 1");
        let what = format!("the row written on {primary} to reach {s}");
        until(&what, Duration::from_secs(30), Duration::from_millis(200), || async {
            match c.query(s, &sql).await {
                Ok(rows) if rows.first().and_then(|r| r[0].as_deref()) == Some(note) => Probe::Done(()),
                other => Probe::NotYet(format!("{other:?}")),
            }
        })
        .await?;
    }
    Ok(())
}

/// A standby refuses writes.
pub async fn check_standby_refuses_writes<C: SqlCluster>(
    c: &C,
    standby: &str,
    table: &str,
) -> anyhow::Result<()> {
    match c.execute(standby, &format!("INSERT INTO {table} VALUES (2, 'from a standby')")).await {
        Ok(()) => bail!("{standby} accepted a write"),
        Err(e) if e.contains("read-only transaction") => Ok(()),
        Err(e) => bail!("{standby} refused the write, but not as a standby would: {e}"),
    }
}

/// Replication lag in bytes per standby, as the primary sees it.
pub async fn lag_bytes<C: SqlCluster>(c: &C, primary: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let sql = match c.engine() {
        Engine::Postgres => {
            "SELECT application_name, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint FROM pg_stat_replication"
        }
        Engine::OpenGauss => {
            "SELECT application_name, pg_xlog_location_diff(pg_current_xlog_location(), receiver_replay_location)::bigint FROM pg_stat_replication"
        }
    };
    let rows = c.query(primary, sql).await?;
    rows.into_iter()
        .map(|r| {
            let lag = r[1].as_deref().unwrap_or("").parse::<i64>().context("lag is a number")?;
            Ok((r[0].clone().unwrap_or_default(), u64::try_from(lag.max(0)).unwrap_or(0)))
        })
        .collect()
}

/// Everything the original deployment checked by hand, on a cluster whose primary is
/// `primary`; `table` must be new.
pub async fn original_deployment_checks<C: SqlCluster>(
    c: &C,
    primary: &str,
    table: &str,
) -> anyhow::Result<()> {
    let writable = writable_instances(c).await;
    if writable != [primary.to_string()] {
        bail!("exactly {primary} should accept writes, found {writable:?}");
    }
    let standbys: Vec<String> = c.instance_names().into_iter().filter(|n| n != primary).collect();
    check_replication(c, primary, &standbys).await?;
    check_write_then_read(c, primary, &standbys, table, "from the primary").await?;
    for s in &standbys {
        check_standby_refuses_writes(c, s, table).await?;
    }
    let lag = lag_bytes(c, primary).await?;
    if lag.len() != standbys.len() {
        bail!("lag reported for {lag:?}, expected {} standbys", standbys.len());
    }
    if let Some((name, bytes)) = lag.iter().find(|(_, b)| *b >= 64 * 1024 * 1024) {
        bail!("{name} lags {bytes} bytes behind");
    }
    Ok(())
}
