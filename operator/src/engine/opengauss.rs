//! openGauss: `gs_initdb`, `gs_ctl build|failover|stop|reload`, `gaussdb -M primary|standby`,
//! replication peers in `replconninfoN`, xlog-named SQL functions. See
//! `../shared/reference/opengauss.md` for the facts this follows.

use std::collections::BTreeMap;
use std::path::Path;

use super::conf::{conf_line, managed_conf_head};
use super::postgres::sync_names;
use super::{
    CloneStep, CommandLine, Dialect, Endpoint, Engine, HbaConfig, Layout, Peer, ServerConfig, StatusSql,
    StopMode,
};

#[derive(Debug, Clone, Copy)]
pub struct OpenGauss;

/// openGauss allows at most eight replication peers per node.
pub const MAX_PEERS: usize = 8;

/// A WAL segment, in the kB `max_size_for_xlog_prune` counts in.
const WAL_SEGMENT_KB: u64 = 16 * 1024;

fn data(l: &Layout) -> String {
    l.data_dir.display().to_string()
}

impl Dialect for OpenGauss {
    fn engine(&self) -> Engine {
        Engine::OpenGauss
    }

    fn superuser(&self) -> &'static str {
        "omm"
    }

    fn sql_shell(&self) -> &'static str {
        "gsql"
    }

    /// `local ... trust` holds for the initial user only when the peer's OS user has its name,
    /// and gs_ctl build and the walreceiver connect as the OS user (hba.cpp, postinit.cpp).
    fn superuser_is_os_user(&self) -> bool {
        true
    }

    fn peers_by_address(&self) -> bool {
        true
    }

    /// gs_initdb's postgresql.conf closes sessions idle for ten minutes; the manager keeps its
    /// connection open between probes.
    fn session_options(&self) -> Option<&'static str> {
        Some("-c session_timeout=0")
    }

    fn required_tools(&self) -> &'static [&'static str] {
        &["gs_initdb", "gaussdb", "gs_ctl", "pg_controldata"]
    }

    /// openGauss always binds `port + 1` for HA (its `PoolerPort`, guc.cpp) and the official
    /// deployments put the heartbeat on `port + 5`.
    fn ha_ports(&self, port: u16) -> Option<super::HaPorts> {
        Some(super::HaPorts { replication: port.saturating_add(1), heartbeat: port.saturating_add(5) })
    }

    /// Ten apart, so no instance's `port + 1` or `port + 5` is another's database port.
    fn port_stride(&self) -> u16 {
        10
    }

    fn image_layout(&self, _image: &str) -> super::ImageLayout {
        super::image::opengauss()
    }

    /// An installation is `$GAUSSHOME/bin` with its libraries in `$GAUSSHOME/lib`, which the
    /// programs are not linked to find on their own.
    fn install_env(&self, bin_dir: &Path) -> Vec<(String, String)> {
        let Some(home) = bin_dir.parent() else { return Vec::new() };
        let lib = home.join("lib").display().to_string();
        let library_path = match std::env::var("LD_LIBRARY_PATH") {
            Ok(existing) if !existing.is_empty() => format!("{lib}:{existing}"),
            _ => lib,
        };
        vec![("GAUSSHOME".into(), home.display().to_string()), ("LD_LIBRARY_PATH".into(), library_path)]
    }

    /// Node names allow lowercase letters, digits and `_` only.
    fn application_name(&self, instance: &str) -> String {
        instance.replace('-', "_")
    }

    /// Cluster names are DNS labels (no `_`), so every `_` was a `-`.
    fn instance_of(&self, application_name: &str) -> String {
        application_name.replace('_', "-")
    }

    fn initdb(&self, l: &Layout, pwfile: &Path) -> CommandLine {
        CommandLine::new(l.tool("gs_initdb")).args([
            "-D".to_string(),
            data(l),
            format!("--nodename={}", self.application_name(&l.instance)),
            "--username".to_string(),
            l.superuser.clone(),
            format!("--pwfile={}", pwfile.display()),
            "--encoding=UTF-8".to_string(),
            "--locale=C".to_string(),
        ])
    }

    fn version(&self, l: &Layout) -> CommandLine {
        CommandLine::new(l.tool("gaussdb")).arg("--version")
    }

    /// 5.0.0 (the first LTS of the 5 series): what this dialect relies on (`gs_ctl build -b
    /// full|incremental -M standby -q`, `replconninfoN` without include files,
    /// `sync_config_strategy`, `most_available_sync`, `max_size_for_xlog_prune`) was checked in
    /// the sources of v5.0.0, v6.0.0 and v7.0.0-RC1 and run on 7.0.0-RC2.
    fn check_version(&self, output: &str) -> Result<(), String> {
        super::version::at_least(output, "openGauss", "openGauss", (5, 0, 0))
    }

    fn server(&self, l: &Layout, standby: bool) -> CommandLine {
        let mode = if standby { "standby" } else { "primary" };
        CommandLine::new(l.tool("gaussdb")).args(["-D", &data(l), "-M", mode])
    }

    /// `gs_ctl build` needs a data directory whose configuration already names the primary, so
    /// the standby is initialised first, configured, then rebuilt from the primary. `-q` keeps
    /// `gs_ctl` from starting the server: the instance manager starts and supervises it.
    fn clone_steps(&self, l: &Layout, _source: &Endpoint, pwfile: &Path) -> Vec<CloneStep> {
        vec![
            CloneStep::Run(self.initdb(l, pwfile)),
            CloneStep::WriteConfig,
            CloneStep::Run(CommandLine::new(l.tool("gs_ctl")).args([
                "build",
                "-D",
                &data(l),
                "-b",
                "full",
                "-M",
                "standby",
                "-q",
            ])),
            CloneStep::WriteConfig,
        ]
    }

    fn rewind(&self, l: &Layout, _source: &Endpoint) -> CommandLine {
        CommandLine::new(l.tool("gs_ctl")).args([
            "build",
            "-D",
            &data(l),
            "-b",
            "incremental",
            "-M",
            "standby",
            "-q",
        ])
    }

    /// `gs_ctl build` reads the primary's state over the HA channel itself, and the initial
    /// user may not log in remotely to request a checkpoint.
    fn checkpoint_source_before_rewind(&self) -> bool {
        false
    }

    fn promote(&self, l: &Layout) -> CommandLine {
        CommandLine::new(l.tool("gs_ctl")).args(["failover", "-D", &data(l)])
    }

    fn stop(&self, l: &Layout, mode: StopMode) -> CommandLine {
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        CommandLine::new(l.tool("gs_ctl")).args(["stop", "-D", &data(l), "-m", mode])
    }

    fn reload(&self, l: &Layout) -> CommandLine {
        CommandLine::new(l.tool("gs_ctl")).args(["reload", "-D", &data(l)])
    }

    fn controldata(&self, l: &Layout) -> CommandLine {
        CommandLine::new(l.tool("pg_controldata")).arg(data(l)).env("LC_ALL", "C")
    }

    /// Besides the common head: the WAL to keep for standbys, this node's name, the
    /// synchronous set, and the replication peers. Settings of openGauss's own that would
    /// defeat the operator are pinned: the primary must not push its `postgresql.conf` to
    /// standbys (`sync_config_strategy`), server messages go to the server log the manager
    /// keeps (`logging_collector`), and the replication slots every standby creates on the
    /// primary are bounded (`max_replication_slots`, `max_size_for_xlog_prune`; openGauss
    /// otherwise keeps up to 2 TB of WAL for a standby that is gone).
    fn managed_conf(&self, c: &ServerConfig) -> String {
        let mut out = managed_conf_head(c, "unix_socket_directory", "hot_standby");
        out += &conf_line("wal_keep_segments", &c.wal_keep_segments.to_string());
        out += &conf_line("max_replication_slots", &c.max_wal_senders.max(1).to_string());
        out += &conf_line(
            "max_size_for_xlog_prune",
            &(u64::from(c.wal_keep_segments.max(1)) * WAL_SEGMENT_KB).to_string(),
        );
        out += &conf_line("sync_config_strategy", "none_node");
        out += &conf_line("logging_collector", "off");
        out += &conf_line("application_name", &self.application_name(&c.instance));
        out += &conf_line(
            "synchronous_standby_names",
            &sync_names(c.synchronous.as_ref(), |s| self.application_name(s), ""),
        );
        out += &conf_line("most_available_sync", if c.most_available_sync { "on" } else { "off" });
        // A primary lists every peer (a peer is trusted for replication only when listed).
        // An attached standby lists its upstream alone, so neither it nor `gs_ctl build`
        // (which copies from the first listed peer that claims to be primary) can follow
        // another; a detached standby lists none, so it cannot reconnect to an old primary
        // while a failover chooses the new one.
        let peers: Vec<&Peer> = match (&c.upstream, c.standby) {
            (_, false) => c.peers.iter().filter(|p| !p.host.is_empty()).collect(),
            (None, true) => Vec::new(),
            (Some(up), true) => {
                let up_ha = self.ha_ports(up.port).map_or(up.port, |h| h.replication);
                c.peers.iter().filter(|p| p.host == up.host && p.ha_port == up_ha).collect()
            }
        };
        let own = self.ha_ports(c.port).map_or(c.ha_port, |h| h.heartbeat);
        for (i, peer) in peers.iter().take(MAX_PEERS).enumerate() {
            let peer_heartbeat = peer.ha_port.saturating_add(4);
            let value = format!(
                "localhost={} localport={} localheartbeatport={own} remotehost={} remoteport={} remoteheartbeatport={peer_heartbeat}",
                c.ha_listen, c.ha_port, peer.host, peer.ha_port,
            );
            out += &conf_line(&format!("replconninfo{}", i + 1), &value);
        }
        for i in peers.len().min(MAX_PEERS)..MAX_PEERS {
            out += &conf_line(&format!("replconninfo{}", i + 1), "");
        }
        out
    }

    fn managed_settings(&self) -> super::ManagedSettings {
        // gs_ctl build refuses any include line in postgresql.conf, and it and gs_rewind read
        // replconninfoN and application_name from that file alone (pg_ctl.cpp
        // check_nested_pgconf; pg_build.cpp get_conninfo).
        super::ManagedSettings::InlineBlock
    }

    /// Unix-socket connections are trusted (the socket directory is private to the instance's
    /// OS user). The initial user is trusted from loopback and from every peer: openGauss
    /// honours remote `trust` only for its own tools (`gs_ctl failover` and `query` reach the
    /// local server over TCP without a password; the rewind inside `gs_ctl build -b
    /// incremental` logs in from the peer as the initial user), refusing it to every other
    /// client (hba.cpp check_hba). HA (walsender) connections from peers are trusted through
    /// replconninfo. Every other TCP connection needs a password.
    fn hba(&self, h: &HbaConfig) -> String {
        let mut out = String::from(
            "# Managed by opengauss-operator.\n\
             # TYPE  DATABASE     USER             ADDRESS                 METHOD\n\
             local   all          all                                      trust\n",
        );
        let mut trusted: Vec<String> = vec!["127.0.0.1/32".into(), "::1/128".into()];
        for peer in &h.peers {
            match peer.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(ip)) if !ip.is_loopback() => trusted.push(format!("{ip}/32")),
                Ok(std::net::IpAddr::V6(ip)) if !ip.is_loopback() => trusted.push(format!("{ip}/128")),
                _ => {}
            }
        }
        trusted.dedup();
        for addr in &trusted {
            out += &format!("host    all          {:<16} {addr:<23} trust\n", h.superuser);
        }
        // With TLS, `hostssl` only: a connection without it matches no line and is refused.
        let host = if h.tls { "hostssl" } else { "host   " };
        for net in &h.networks {
            out += &format!("{host} all          all              {net:<23} sha256\n");
        }
        out
    }

    fn wal_dir(&self) -> &'static str {
        "pg_xlog"
    }

    fn standby_signal(&self) -> &'static str {
        // openGauss takes its role from `-M`; the instance manager keeps this marker so it knows
        // which mode to start in.
        "opengauss-operator.standby"
    }

    /// The initial user may not log in remotely ("Forbid remote connection with initial
    /// user", openGauss's auth.cpp), and no other role of the operator's may read files.
    fn timeline_history_sql(&self) -> Option<&'static str> {
        None
    }

    fn status_sql(&self) -> StatusSql {
        StatusSql {
            // openGauss never changes its timeline on a failover; the checkpoint's is reported
            // (the same value pg_controldata shows for a stopped instance). Newer versions
            // return the replay position as a record `(term, lsn)`, older ones as text.
            node: "SELECT pg_is_in_recovery() AS in_recovery, \
                   CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_xlog_location()::text END AS current_lsn, \
                   pg_last_xlog_receive_location()::text AS received_lsn, \
                   regexp_replace(pg_last_xlog_replay_location()::text, '^\\(\\d+,(.*)\\)$', '\\1') AS replayed_lsn, \
                   (SELECT timeline_id FROM pg_control_checkpoint())::int4 AS timeline, \
                   current_setting('synchronous_standby_names') AS synchronous_standby_names",
            // The receiver reports a database state (Normal, Catchup...) rather than a
            // connection state, and its channel names the upstream by IP and HA port, which
            // cannot be compared with the upstream's SQL endpoint: the host and port are left
            // unknown.
            receiver: "SELECT CASE WHEN state IN ('Normal', 'Catchup') THEN 'streaming' ELSE lower(state) END AS status, \
                       NULL::text AS upstream_host, NULL::int4 AS upstream_port, \
                       receiver_flush_location::text AS flushed_lsn FROM pg_stat_get_wal_receiver()",
            // application_name reads `WalSender to Standby[<name>]` for streaming standbys and
            // `WalSender to Build[...]` for a base backup in progress, which is no standby;
            // states are capitalised.
            replication: "SELECT substring(application_name from '\\[(.*)\\]$') AS application_name, \
                          host(client_addr) AS client_addr, lower(state) AS state, lower(sync_state) AS sync_state, \
                          sender_sent_location::text AS sent_lsn, \
                          receiver_flush_location::text AS flush_lsn, receiver_replay_location::text AS replay_lsn, \
                          pg_xlog_location_diff(pg_current_xlog_location(), receiver_replay_location)::int8 AS lag_bytes, \
                          NULL::float8 AS lag_seconds \
                          FROM pg_stat_replication WHERE application_name LIKE 'WalSender to Standby[%' \
                          ORDER BY application_name",
            // pg_settings has no pending_restart column (system_views.sql: 16 columns).
            pending_restart: None,
            postmaster_settings: "SELECT name FROM pg_settings WHERE context = 'postmaster' ORDER BY name",
        }
    }

    /// openGauss does not size itself from the container: `max_process_memory` defaults to
    /// 12 GB (at least 2 GB; guc_memory.cpp) and its memory protection trusts that figure, so
    /// under a smaller limit the kernel kills the server before openGauss refuses an
    /// allocation. Four fifths of the limit leave room for what it does not count; the column
    /// store's buffers shrink to what the lite build ships (liteom/opengauss_lite.conf), as
    /// gs_initdb's 512MB would take a quarter of a small limit for tables nobody has.
    fn memory_settings(&self, limit_bytes: u64) -> BTreeMap<String, String> {
        const MIN_PROCESS_MEMORY_MB: u64 = 2 * 1024;
        let process_mb = (limit_bytes / (1024 * 1024) * 4 / 5).max(MIN_PROCESS_MEMORY_MB);
        BTreeMap::from([
            ("max_process_memory".to_string(), format!("{process_mb}MB")),
            ("cstore_buffers".to_string(), "16MB".to_string()),
        ])
    }

    /// Every standby's walreceiver creates a persistent physical slot named after it on the
    /// primary (libpqwalreceiver.cpp CreateRemoteReplicationSlot), which keeps WAL for it
    /// forever: those of instances that are gone are dropped.
    fn stale_slots_sql(&self, keep: &[String]) -> Option<String> {
        let keep: Vec<String> =
            keep.iter().map(|n| format!("'{}'", self.application_name(n).replace('\'', "''"))).collect();
        let not_kept = if keep.is_empty() {
            String::new()
        } else {
            format!(" AND slot_name NOT IN ({})", keep.join(", "))
        };
        Some(format!(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_type = 'physical' AND NOT active{not_kept}"
        ))
    }

    fn replication_role_sql(&self, _user: &str, _password: &str) -> Option<String> {
        // Peers listed in replconninfo replicate without a role of their own.
        None
    }
}
