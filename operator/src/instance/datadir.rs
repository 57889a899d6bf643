//! The instance's files around the server: managed configuration, authentication rules, the
//! standby marker, the bootstrap and fence markers, and the last applied configuration.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::config::InstanceConfig;
use crate::engine::{
    DesiredConfig, HbaConfig, Lsn, MANAGED_CONF, ManagedSettings, include_directive, with_managed_block,
};
use crate::fsutil::write_atomic;

/// Where the last applied `ServerConfig` is kept, so a restarted manager knows it.
fn applied_config_path(cfg: &InstanceConfig) -> PathBuf {
    cfg.root.join("server-config.json")
}

pub fn is_initialized(cfg: &InstanceConfig) -> bool {
    cfg.bootstrap_marker().exists() && cfg.data_dir().join("PG_VERSION").exists()
}

/// Files every data directory a server runs on holds (both engines); without them new
/// connections fail even though the running server keeps answering on old ones.
const ESSENTIAL_FILES: &[&str] = &["PG_VERSION", "global/pg_control"];

/// The first essential file missing from the data directory, if any: a server running on it
/// cannot serve new connections, whatever its open connections still answer.
pub fn missing_essential(data_dir: &std::path::Path) -> Option<&'static str> {
    ESSENTIAL_FILES.iter().copied().find(|f| !data_dir.join(f).exists())
}

pub fn is_standby_configured(cfg: &InstanceConfig) -> bool {
    cfg.data_dir().join(cfg.dialect().standby_signal()).exists()
}

/// Present from the start of a rejoin until its standby accepts connections: a rejoin asked
/// again then rewinds again rather than taking the data directory as already following.
fn rejoin_marker(cfg: &InstanceConfig) -> std::path::PathBuf {
    cfg.root.join("rejoin-incomplete")
}

pub fn rejoin_incomplete(cfg: &InstanceConfig) -> bool {
    rejoin_marker(cfg).exists()
}

pub fn set_rejoin_incomplete(cfg: &InstanceConfig, incomplete: bool) -> anyhow::Result<()> {
    let marker = rejoin_marker(cfg);
    if incomplete {
        return write_atomic(&marker, b"a rejoin started and has not completed\n", 0o600);
    }
    crate::fsutil::remove_if_present(&marker)
}

pub fn is_fenced(cfg: &InstanceConfig) -> bool {
    cfg.fence_marker().exists()
}

/// Fences (`Some(final position)`, or `Some(None)` when it is unknown) or unfences (`None`).
pub fn set_fenced(cfg: &InstanceConfig, fenced: Option<Option<Lsn>>) -> anyhow::Result<()> {
    let marker = cfg.fence_marker();
    if let Some(position) = fenced {
        let body = match position {
            Some(lsn) => format!("fenced by the controller; last WAL position {lsn}\n"),
            None => "fenced by the controller\n".to_string(),
        };
        write_atomic(&marker, body.as_bytes(), 0o600)
    } else {
        crate::fsutil::remove_if_present(&marker)
    }
}

/// The WAL position recorded when the instance was fenced: it cannot receive more while fenced.
pub fn fenced_position(cfg: &InstanceConfig) -> Option<Lsn> {
    let text = fs::read_to_string(cfg.fence_marker()).ok()?;
    text.trim().rsplit_once("last WAL position ").and_then(|(_, lsn)| lsn.trim().parse().ok())
}

pub fn mark_bootstrapped(cfg: &InstanceConfig) -> anyhow::Result<()> {
    write_atomic(&cfg.bootstrap_marker(), b"data directory complete\n", 0o600)
}

pub fn load_applied_config(cfg: &InstanceConfig) -> Option<DesiredConfig> {
    let text = fs::read_to_string(applied_config_path(cfg)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Writes everything the server reads at start or reload: the managed settings (a file
/// `postgresql.conf` includes, or a block inside it, as the engine needs), `pg_hba.conf`, and
/// the standby marker matching `config`.
pub fn write_server_files(cfg: &InstanceConfig, desired: &DesiredConfig) -> anyhow::Result<()> {
    let config = &cfg.server_config(desired);
    let dialect = cfg.dialect();
    let data = cfg.data_dir();
    let managed = dialect.managed_conf(config);
    let postgresql_conf = data.join("postgresql.conf");
    match dialect.managed_settings() {
        ManagedSettings::IncludedFile => {
            write_atomic(&data.join(MANAGED_CONF), managed.as_bytes(), 0o600)?;
            ensure_include(&postgresql_conf, &include_directive())?;
        }
        ManagedSettings::InlineBlock => {
            let text = fs::read_to_string(&postgresql_conf)
                .with_context(|| format!("cannot read {}", postgresql_conf.display()))?;
            write_atomic(&postgresql_conf, with_managed_block(&text, &managed).as_bytes(), 0o600)?;
            let _ = fs::remove_file(data.join(MANAGED_CONF));
        }
    }
    let hba = HbaConfig {
        superuser: cfg.superuser.clone(),
        replication_user: cfg.replication_user.clone(),
        networks: cfg.hba_networks.clone(),
        peers: config.peers.iter().map(|p| p.host.clone()).collect(),
        tls: cfg.tls.is_some(),
        replication_certificates: cfg.replication_by_certificate.then(|| {
            let mut names: Vec<String> = config.peers.iter().map(|p| p.host.clone()).collect();
            names.push(cfg.own_address());
            names
        }),
    };
    write_atomic(&data.join("pg_hba.conf"), dialect.hba(&hba).as_bytes(), 0o600)?;
    if let Some(ident) = dialect.ident(&hba) {
        write_atomic(&data.join("pg_ident.conf"), ident.as_bytes(), 0o600)?;
    }
    let signal = data.join(dialect.standby_signal());
    if config.standby {
        write_atomic(&signal, b"", 0o600)?;
    } else if signal.exists() {
        fs::remove_file(&signal).with_context(|| format!("cannot remove {}", signal.display()))?;
    }
    let json = serde_json::to_vec_pretty(desired).context("serialising server config")?;
    write_atomic(&applied_config_path(cfg), &json, 0o600)
}

/// Appends the include directive unless `postgresql.conf` already ends with it.
fn ensure_include(conf: &Path, directive: &str) -> anyhow::Result<()> {
    let text = fs::read_to_string(conf).with_context(|| format!("cannot read {}", conf.display()))?;
    if text.lines().any(|l| l.trim() == directive.trim()) {
        return Ok(());
    }
    let mut new = text;
    if !new.ends_with('\n') {
        new.push('\n');
    }
    new.push_str(directive);
    write_atomic(conf, new.as_bytes(), 0o600)
}

/// The settings the server reads from its configuration files right now.
pub fn configured_settings(cfg: &InstanceConfig) -> std::collections::BTreeMap<String, String> {
    let data = cfg.data_dir();
    let mut text = fs::read_to_string(data.join("postgresql.conf")).unwrap_or_default();
    // The included managed file comes last, so its settings win.
    text.push('\n');
    text.push_str(&fs::read_to_string(data.join(MANAGED_CONF)).unwrap_or_default());
    crate::engine::parse_settings(&text)
}

fn started_settings_path(cfg: &InstanceConfig) -> PathBuf {
    cfg.root.join("server-started-settings.json")
}

/// Records the settings the server is started with.
pub fn record_started_settings(cfg: &InstanceConfig) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(&configured_settings(cfg))?;
    write_atomic(&started_settings_path(cfg), &json, 0o600)
}

/// The parameters among `postmaster` (those read only at a server start) whose configured
/// value differs from the one the running server started with; empty when the start was not
/// recorded.
pub fn pending_restart(cfg: &InstanceConfig, postmaster: &std::collections::BTreeSet<String>) -> Vec<String> {
    let Some(started) = fs::read(started_settings_path(cfg))
        .ok()
        .and_then(|b| serde_json::from_slice::<std::collections::BTreeMap<String, String>>(&b).ok())
    else {
        return Vec::new();
    };
    let now = configured_settings(cfg);
    postmaster.iter().filter(|name| started.get(*name) != now.get(*name)).cloned().collect()
}

/// Moves a data directory out of the way instead of deleting it, replacing an older copy
/// kept under the same name.
pub fn set_aside(cfg: &InstanceConfig, suffix: &str) -> anyhow::Result<Option<PathBuf>> {
    let data = cfg.data_dir();
    if !data.exists() {
        return Ok(None);
    }
    let target = cfg.root.join(format!("data.{suffix}"));
    if target.exists() {
        fs::remove_dir_all(&target).with_context(|| format!("cannot remove {}", target.display()))?;
    }
    fs::rename(&data, &target)
        .with_context(|| format!("cannot move {} to {}", data.display(), target.display()))?;
    Ok(Some(target))
}
