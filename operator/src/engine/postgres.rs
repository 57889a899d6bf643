//! PostgreSQL (13 and later: `wal_keep_size` and `pg_stat_wal_receiver.flushed_lsn`): `initdb`, `pg_basebackup`, `pg_rewind`, `pg_ctl`, `primary_conninfo`
//! plus `standby.signal`.

use std::path::Path;

use super::conf::{conf_line, conninfo_value, managed_conf_head, quote_standby_name};
use super::{
    CloneStep, CommandLine, Dialect, Endpoint, Engine, HbaConfig, Layout, ServerConfig, StatusSql, StopMode,
    SyncConfig, SyncMethod,
};

/// PostgreSQL's default WAL segment size, to express `walKeepSegments` as `wal_keep_size`.
/// The server's current timeline: a primary's from the WAL file it writes (its control file
/// keeps the old one until the first checkpoint after a promotion), a standby's from the WAL
/// it receives, or else its last checkpoint.
macro_rules! current_timeline {
    () => {
        "CASE WHEN pg_is_in_recovery() \
              THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), \
                            (SELECT timeline_id FROM pg_control_checkpoint())) \
              ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int \
         END"
    };
}

const WAL_SEGMENT_MB: u64 = 16;

#[derive(Debug, Clone, Copy)]
pub struct Postgres;

fn data(l: &Layout) -> String {
    l.data_dir.display().to_string()
}

/// `ANY 1 ("demo-1", "demo-2")`, or empty when no standby is synchronous.
pub(super) fn sync_names(sync: Option<&SyncConfig>, name: impl Fn(&str) -> String, space: &str) -> String {
    let Some(sync) = sync.filter(|s| !s.standbys.is_empty() && s.method != SyncMethod::Off) else {
        return String::new();
    };
    let method = match sync.method {
        SyncMethod::First => "FIRST",
        _ => "ANY",
    };
    let names: Vec<String> = sync.standbys.iter().map(|s| quote_standby_name(&name(s))).collect();
    let number = sync.number.min(sync.standbys.len() as u32);
    format!("{method} {number}{space}({})", names.join(", "))
}

/// libpq settings that make a connection to a peer fail within seconds once the peer is gone,
/// rather than hang: a base backup or rewind whose source is cut off or restarted otherwise
/// waits on a dead TCP connection for as long as the kernel retries (many minutes), and the
/// instance stays busy copying from a source that is no longer the primary. Keepalives find an
/// idle dead peer in 5 + 3 x 2 s; `tcp_user_timeout` (libpq 12) drops a connection whose sent
/// data goes unacknowledged for 10 s.
const DEAD_PEER_DETECTION: [(&str, &str); 5] = [
    ("keepalives", "1"),
    ("keepalives_idle", "5"),
    ("keepalives_interval", "2"),
    ("keepalives_count", "3"),
    ("tcp_user_timeout", "10000"),
];

/// The server settings matching `DEAD_PEER_DETECTION` (a user's own values win).
const SERVER_DEAD_PEER_DETECTION: [(&str, &str); 4] = [
    ("tcp_keepalives_idle", "5"),
    ("tcp_keepalives_interval", "2"),
    ("tcp_keepalives_count", "3"),
    ("tcp_user_timeout", "10000"),
];

impl Postgres {
    /// A connection string to a peer: with the cluster's authority, over TLS with the peer's
    /// certificate and name checked (`verify-full`), never in clear text.
    fn conninfo(
        &self,
        source: &Endpoint,
        user: &str,
        passfile: &Path,
        tls: Option<&crate::tls::InstanceTls>,
        extra: &[(&str, &str)],
    ) -> String {
        let mut parts = vec![
            format!("host={}", conninfo_value(&source.host)),
            format!("port={}", source.port),
            format!("user={}", conninfo_value(user)),
            format!("passfile={}", conninfo_value(&passfile.display().to_string())),
        ];
        if let Some(files) = tls {
            let path = |p: &Path| conninfo_value(&p.display().to_string());
            parts.push("sslmode=verify-full".into());
            parts.push(format!("sslrootcert={}", path(&files.ca_file)));
            // Its own certificate, never whatever ~/.postgresql holds for the OS user.
            parts.push(format!("sslcert={}", path(&files.cert_file)));
            parts.push(format!("sslkey={}", path(&files.key_file)));
        }
        parts.extend(
            extra.iter().chain(&DEAD_PEER_DETECTION).map(|(k, v)| format!("{k}={}", conninfo_value(v))),
        );
        parts.join(" ")
    }
}

impl Dialect for Postgres {
    fn engine(&self) -> Engine {
        Engine::Postgres
    }

    fn superuser(&self) -> &'static str {
        "postgres"
    }

    fn sql_shell(&self) -> &'static str {
        "psql"
    }

    fn required_tools(&self) -> &'static [&'static str] {
        &["initdb", "postgres", "pg_ctl", "pg_basebackup", "pg_rewind", "pg_controldata"]
    }

    /// Replication connects to the database port.
    fn ha_ports(&self, _port: u16) -> Option<super::HaPorts> {
        None
    }

    fn image_layout(&self, image: &str) -> super::ImageLayout {
        super::image::postgres(image)
    }

    fn application_name(&self, instance: &str) -> String {
        instance.to_string()
    }

    fn instance_of(&self, application_name: &str) -> String {
        application_name.to_string()
    }

    fn initdb(&self, l: &Layout, pwfile: &Path) -> CommandLine {
        CommandLine::new(l.tool("initdb")).args([
            "-D".to_string(),
            data(l),
            "--username".to_string(),
            l.superuser.clone(),
            format!("--pwfile={}", pwfile.display()),
            "--auth-local=trust".to_string(),
            "--auth-host=scram-sha-256".to_string(),
            "--encoding=UTF8".to_string(),
            "--locale=C".to_string(),
        ])
    }

    fn version(&self, l: &Layout) -> CommandLine {
        CommandLine::new(l.tool("postgres")).arg("--version")
    }

    /// 13 brought `wal_keep_size` and `pg_stat_wal_receiver.flushed_lsn`, which this dialect uses.
    fn check_version(&self, output: &str) -> Result<(), String> {
        super::version::at_least(output, "(PostgreSQL)", "PostgreSQL", (13, 0, 0))
    }

    fn server(&self, l: &Layout, _standby: bool) -> CommandLine {
        // The role comes from standby.signal, which the instance manager writes.
        CommandLine::new(l.tool("postgres")).args(["-D".to_string(), data(l)])
    }

    fn clone_steps(&self, l: &Layout, source: &Endpoint, _pwfile: &Path) -> Vec<CloneStep> {
        let conninfo = self.conninfo(
            source,
            &l.replication_user,
            &l.passfile,
            l.tls.as_ref(),
            &[("application_name", &format!("{}-clone", l.instance)), ("connect_timeout", "5")],
        );
        vec![
            CloneStep::Run(CommandLine::new(l.tool("pg_basebackup")).args([
                "-D".to_string(),
                data(l),
                "-d".to_string(),
                conninfo,
                "--wal-method=stream".to_string(),
                "--checkpoint=fast".to_string(),
                "--no-password".to_string(),
            ])),
            CloneStep::WriteConfig,
        ]
    }

    fn rewind(&self, l: &Layout, source: &Endpoint) -> CommandLine {
        let conninfo = self.conninfo(
            source,
            &l.superuser,
            &l.passfile,
            l.tls.as_ref(),
            &[("dbname", "postgres"), ("connect_timeout", "5")],
        );
        CommandLine::new(l.tool("pg_rewind")).args([
            "-D".to_string(),
            data(l),
            format!("--source-server={conninfo}"),
            "--progress".to_string(),
        ])
    }

    fn checkpoint_source_before_rewind(&self) -> bool {
        true
    }

    fn promote(&self, l: &Layout) -> CommandLine {
        CommandLine::new(l.tool("pg_ctl")).args(["promote", "-D", &data(l), "-w", "-t", "60"])
    }

    fn stop(&self, l: &Layout, mode: StopMode) -> CommandLine {
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        CommandLine::new(l.tool("pg_ctl")).args(["stop", "-D", &data(l), "-m", mode, "-w", "-t", "60"])
    }

    fn reload(&self, l: &Layout) -> CommandLine {
        CommandLine::new(l.tool("pg_ctl")).args(["reload", "-D", &data(l)])
    }

    fn controldata(&self, l: &Layout) -> CommandLine {
        CommandLine::new(l.tool("pg_controldata")).args(["-D", &data(l)]).env("LC_ALL", "C")
    }

    fn managed_conf(&self, c: &ServerConfig) -> String {
        let mut out = managed_conf_head(c, "unix_socket_directories", "replica");
        out += &conf_line("max_replication_slots", &c.max_wal_senders.to_string());
        out += &conf_line("wal_keep_size", &format!("{}MB", u64::from(c.wal_keep_segments) * WAL_SEGMENT_MB));
        out += &conf_line("wal_log_hints", "on");
        out += &conf_line(
            "synchronous_standby_names",
            &sync_names(c.synchronous.as_ref(), |s| self.application_name(s), " "),
        );
        out += &conf_line("recovery_target_timeline", "latest");
        // The server's side of dead-peer detection: a WAL sender writing to a standby that is
        // cut off or gone would otherwise block for as long as the kernel retransmits, and a
        // fast shutdown (fencing, rejoin) waits for every WAL sender.
        for (name, value) in SERVER_DEAD_PEER_DETECTION {
            if !c.parameters.contains_key(name) {
                out += &conf_line(name, value);
            }
        }
        let conninfo = match (&c.upstream, c.standby) {
            (Some(up), true) => self.conninfo(
                up,
                &c.replication_user,
                &c.passfile,
                c.tls.as_ref(),
                &[("application_name", &self.application_name(&c.instance)), ("connect_timeout", "2")],
            ),
            _ => String::new(),
        };
        out += &conf_line("primary_conninfo", &conninfo);
        out
    }

    fn managed_settings(&self) -> super::ManagedSettings {
        super::ManagedSettings::IncludedFile
    }

    fn hba(&self, h: &HbaConfig) -> String {
        let mut out = String::from(
            "# Managed by opengauss-operator.\n\
             # Unix-socket connections are trusted: the socket directory is private to the\n\
             # instance's OS user. Everything over TCP needs a password.\n\
             # TYPE  DATABASE     USER             ADDRESS                 METHOD\n\
             local   all          all                                      trust\n",
        );
        // With TLS, `hostssl` only: a connection without it matches no line and is refused.
        let host = if h.tls { "hostssl" } else { "host   " };
        // With member certificates, the replication user's replication connections present
        // one (`cert` verifies it against ssl_ca_file) and its name maps to the user.
        let replication = match (&h.replication_certificates, h.tls) {
            (Some(_), true) => format!("cert map={}", super::MEMBERS_MAP),
            _ => "scram-sha-256".to_string(),
        };
        for net in &h.networks {
            out += &format!("{host} replication  {:<16} {net:<23} {replication}\n", h.replication_user);
            out += &format!("{host} all          all              {net:<23} scram-sha-256\n");
        }
        out
    }

    fn ident(&self, h: &HbaConfig) -> Option<String> {
        let names = h.replication_certificates.as_ref().filter(|_| h.tls)?;
        let mut out = String::from(
            "# Managed by opengauss-operator.\n\
             # The common names of the members' certificates, each standing for the replication user.\n\
             # MAPNAME  SYSTEM-USERNAME                          PG-USERNAME\n",
        );
        let mut names = names.clone();
        names.sort();
        names.dedup();
        for name in names {
            out += &format!("{:<10} {name:<40} {}\n", super::MEMBERS_MAP, h.replication_user);
        }
        Some(out)
    }

    fn wal_dir(&self) -> &'static str {
        "pg_wal"
    }

    fn standby_signal(&self) -> &'static str {
        "standby.signal"
    }

    fn status_sql(&self) -> StatusSql {
        StatusSql {
            node: concat!(
                "SELECT pg_is_in_recovery() AS in_recovery, \
                   CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END AS current_lsn, \
                   pg_last_wal_receive_lsn()::text AS received_lsn, \
                   pg_last_wal_replay_lsn()::text AS replayed_lsn, \
                   ",
                current_timeline!(),
                " AS timeline, current_setting('synchronous_standby_names') AS synchronous_standby_names"
            ),
            receiver: "SELECT status, sender_host AS upstream_host, sender_port AS upstream_port, \
                       flushed_lsn::text AS flushed_lsn FROM pg_stat_wal_receiver",
            replication: "SELECT application_name, host(client_addr) AS client_addr, state, sync_state, \
                          sent_lsn::text AS sent_lsn, flush_lsn::text AS flush_lsn, replay_lsn::text AS replay_lsn, \
                          pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint AS lag_bytes, \
                          EXTRACT(EPOCH FROM replay_lag)::float8 AS lag_seconds \
                          FROM pg_stat_replication ORDER BY application_name",
            pending_restart: Some("SELECT name FROM pg_settings WHERE pending_restart ORDER BY name"),
            postmaster_settings: "SELECT name FROM pg_settings WHERE context = 'postmaster' ORDER BY name",
        }
    }

    /// The history file of the current timeline, read from the WAL directory (superuser).
    fn timeline_history_sql(&self) -> Option<&'static str> {
        Some(concat!(
            "SELECT tli AS timeline, CASE WHEN tli > 1 THEN \
                    pg_read_file('pg_wal/' || lpad(to_hex(tli), 8, '0') || '.history') END AS history \
             FROM (SELECT ",
            current_timeline!(),
            " AS tli) AS current"
        ))
    }

    fn replication_role_sql(&self, user: &str, password: &str) -> Option<String> {
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let ident = format!("\"{}\"", user.replace('"', "\"\""));
        let secret = verifier.replace('\'', "''");
        Some(format!(
            "SET synchronous_commit = local;\nDO $operator$\nBEGIN\n  CREATE ROLE {ident} WITH LOGIN REPLICATION PASSWORD '{secret}';\n\
             EXCEPTION WHEN duplicate_object THEN\n  ALTER ROLE {ident} WITH LOGIN REPLICATION PASSWORD '{secret}';\nEND\n$operator$"
        ))
    }
}
