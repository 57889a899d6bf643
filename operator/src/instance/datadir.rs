//! The instance's files around the server: managed configuration, authentication rules, the
//! standby marker, the bootstrap and fence markers, and the last applied configuration.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::config::InstanceConfig;
use crate::engine::{DesiredConfig, HbaConfig, Lsn, MANAGED_CONF};
use crate::fsutil::write_atomic;

/// Where the last applied `ServerConfig` is kept, so a restarted manager knows it.
fn applied_config_path(cfg: &InstanceConfig) -> PathBuf {
    cfg.root.join("server-config.json")
}

pub fn is_initialized(cfg: &InstanceConfig) -> bool {
    cfg.bootstrap_marker().exists() && cfg.data_dir().join("PG_VERSION").exists()
}

pub fn is_standby_configured(cfg: &InstanceConfig) -> bool {
    cfg.data_dir().join(cfg.dialect().standby_signal()).exists()
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
        match fs::remove_file(&marker) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", marker.display())),
        }
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

/// Writes everything the server reads at start or reload: the managed file, the include line
/// in `postgresql.conf` (once), `pg_hba.conf`, and the standby marker matching `config`.
pub fn write_server_files(cfg: &InstanceConfig, desired: &DesiredConfig) -> anyhow::Result<()> {
    let config = &cfg.server_config(desired);
    let dialect = cfg.dialect();
    let data = cfg.data_dir();
    write_atomic(&data.join(MANAGED_CONF), dialect.managed_conf(config).as_bytes(), 0o600)?;
    ensure_include(&data.join("postgresql.conf"), &dialect.include_directive())?;
    let hba = HbaConfig {
        superuser: cfg.superuser.clone(),
        replication_user: cfg.replication_user.clone(),
        networks: cfg.hba_networks.clone(),
    };
    write_atomic(&data.join("pg_hba.conf"), dialect.hba(&hba).as_bytes(), 0o600)?;
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
