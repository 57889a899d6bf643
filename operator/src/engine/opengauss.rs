//! openGauss: `gs_initdb`, `gs_ctl build|failover|stop|reload`, `gaussdb -M primary|standby`,
//! replication peers in `replconninfoN`, xlog-named SQL functions. See
//! `../shared/reference/opengauss.md` for the facts this follows.

use std::path::Path;

use super::conf::{conf_line, managed_conf_head};
use super::postgres::sync_names;
use super::{
    CloneStep, CommandLine, Dialect, Endpoint, Engine, HbaConfig, Layout, ServerConfig, StatusSql, StopMode,
};

#[derive(Debug, Clone, Copy)]
pub struct OpenGauss;

/// openGauss allows at most eight replication peers per node.
pub const MAX_PEERS: usize = 8;

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

    fn managed_conf(&self, c: &ServerConfig) -> String {
        let mut out = managed_conf_head(c, "unix_socket_directory", "hot_standby");
        out += &conf_line("wal_keep_segments", &c.wal_keep_segments.to_string());
        out += &conf_line("application_name", &self.application_name(&c.instance));
        out += &conf_line(
            "synchronous_standby_names",
            &sync_names(c.synchronous.as_ref(), |s| self.application_name(s), ""),
        );
        out += &conf_line("most_available_sync", if c.most_available_sync { "on" } else { "off" });
        // A detached standby lists no peers, so it cannot reconnect to an old primary while a
        // failover chooses the new one. An attached standby lists its upstream first.
        let detached = c.standby && c.upstream.is_none();
        let mut peers: Vec<_> = if detached { Vec::new() } else { c.peers.iter().collect() };
        if let Some(up) = &c.upstream {
            peers.sort_by_key(|p| p.host != up.host);
        }
        for (i, peer) in peers.iter().take(MAX_PEERS).enumerate() {
            let value = format!(
                "localhost={} localport={} localheartbeatport={} remotehost={} remoteport={} remoteheartbeatport={}",
                c.ha_listen,
                c.ha_port,
                c.ha_port + 4,
                peer.host,
                peer.ha_port,
                peer.ha_port + 4
            );
            out += &conf_line(&format!("replconninfo{}", i + 1), &value);
        }
        for i in peers.len().min(MAX_PEERS)..MAX_PEERS {
            out += &conf_line(&format!("replconninfo{}", i + 1), "");
        }
        out
    }

    fn hba(&self, h: &HbaConfig) -> String {
        let mut out = String::from(
            "# Managed by opengauss-operator.\n\
             # Unix-socket connections are trusted: the socket directory is private to the\n\
             # instance's OS user. Replication peers are trusted through replconninfo; every\n\
             # other TCP connection needs a password.\n\
             # TYPE  DATABASE     USER             ADDRESS                 METHOD\n\
             local   all          all                                      trust\n",
        );
        for net in &h.networks {
            out += &format!("host    all          all              {net:<23} sha256\n");
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

    fn status_sql(&self) -> StatusSql {
        StatusSql {
            node: "SELECT pg_is_in_recovery(), \
                   CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_xlog_location()::text END, \
                   pg_last_xlog_receive_location()::text, \
                   pg_last_xlog_replay_location()::text, \
                   NULL::int4, \
                   current_setting('synchronous_standby_names')",
            // The receiver reports a database state (Normal, Catchup...) rather than a
            // connection state, and its channel names the upstream by IP and HA port, which
            // cannot be compared with the upstream's SQL endpoint: the host and port are left
            // unknown.
            receiver: "SELECT CASE WHEN state IN ('Normal', 'Catchup') THEN 'streaming' ELSE lower(state) END, \
                       NULL::text, NULL::int4, receiver_flush_location::text FROM pg_stat_get_wal_receiver()",
            // application_name reads `WalSender to Standby[<name>]`; states are capitalised.
            replication: "SELECT COALESCE(substring(application_name from '\\[(.*)\\]$'), application_name), \
                          client_addr::text, lower(state), sync_state, \
                          sender_sent_location::text, receiver_write_location::text, \
                          receiver_flush_location::text, receiver_replay_location::text, \
                          pg_xlog_location_diff(pg_current_xlog_location(), receiver_replay_location)::int8, \
                          NULL::float8 \
                          FROM pg_stat_replication ORDER BY application_name",
            // pg_settings has no pending_restart column (PostgreSQL 9.5 added it).
            pending_restart: None,
        }
    }

    fn replication_role_sql(&self, _user: &str, _password: &str) -> Option<String> {
        // Peers listed in replconninfo replicate without a role of their own.
        None
    }
}
