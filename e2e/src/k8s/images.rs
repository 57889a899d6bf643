//! Container images without a registry: each is written as a Docker image archive (a tar of
//! uncompressed layer tars, an image config and a manifest naming the reference) and imported
//! into containerd's `k8s.io` namespace under exactly the reference pods use, so nothing is
//! ever pulled.
//!
//! - `pause` and `busybox`: Debian's static busybox; the first is the pod sandbox (it sleeps),
//!   the second the storage provisioner's helper.
//! - `postgres`: a Debian bookworm root filesystem with `postgresql-15`, laid out like the
//!   official `postgres` image (user `postgres` with uid 999, the server binaries in
//!   `/usr/lib/postgresql/15/bin`), built by mmdebstrap and cached.
//! - `opengauss-operator`: the operator's static (musl) binary on the busybox layer, as the
//!   project's Dockerfile builds it.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use super::Layout;
use super::procs::run;

/// The sandbox image containerd and the kubelet agree on.
pub const PAUSE_IMAGE: &str = "localhost/pause:busybox";
/// The storage provisioner's helper image.
pub const BUSYBOX_IMAGE: &str = "localhost/busybox:debian";
/// The PostgreSQL image the suite runs `deploy/samples/postgres.yaml` with.
pub const POSTGRES_IMAGE: &str = "localhost/postgres:15-bookworm";
/// The same image under a second name, for scenarios that change a cluster's `image`.
pub const POSTGRES_ALIAS: &str = "localhost/postgres:15-bookworm-alias";
/// The operator image's repository; its tag is the binary's digest.
pub const OPERATOR_REPOSITORY: &str = "localhost/opengauss-operator";

/// What an image runs, in the image config's terms.
#[derive(Debug, Default, Clone)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
}

/// The SHA-256 of a file, in hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a Docker image archive named `references` from uncompressed layer tars (lowest
/// first). (An image named again later with `ctr images tag` is not seen by containerd's CRI
/// plugin; every name comes with the import.)
pub fn write_archive(
    out: &Path,
    references: &[&str],
    layers: &[PathBuf],
    run: &RunConfig,
) -> anyhow::Result<()> {
    let digests: Vec<String> = layers.iter().map(|l| sha256_file(l)).collect::<anyhow::Result<_>>()?;
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": if run.entrypoint.is_empty() { serde_json::Value::Null } else { run.entrypoint.clone().into() },
            "Cmd": if run.cmd.is_empty() { serde_json::Value::Null } else { run.cmd.clone().into() },
            "Env": run.env,
            "User": run.user.clone().unwrap_or_default(),
            "StopSignal": run.stop_signal,
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": digests.iter().map(|d| format!("sha256:{d}")).collect::<Vec<_>>(),
        },
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_name = format!("{}.json", sha256_bytes(&config_bytes));
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": references,
        "Layers": digests.iter().map(|d| format!("{d}/layer.tar")).collect::<Vec<_>>(),
    }]);
    let partial = out.with_extension("partial");
    let file = File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut archive = tar::Builder::new(BufWriter::new(file));
    let mut seen = std::collections::BTreeSet::new();
    for (layer, digest) in layers.iter().zip(&digests) {
        if seen.insert(digest.clone()) {
            archive.append_path_with_name(layer, format!("{digest}/layer.tar"))?;
        }
    }
    append_bytes(&mut archive, &config_name, &config_bytes, 0o644)?;
    append_bytes(&mut archive, "manifest.json", &serde_json::to_vec(&manifest)?, 0o644)?;
    archive.into_inner()?.flush()?;
    std::fs::rename(&partial, out)?;
    Ok(())
}

fn append_bytes<W: Write>(
    archive: &mut tar::Builder<W>,
    path: &str,
    bytes: &[u8],
    mode: u32,
) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    archive.append_data(&mut header, path, bytes)?;
    Ok(())
}

fn append_dir<W: Write>(archive: &mut tar::Builder<W>, path: &str, mode: u32) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(mode);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Directory);
    archive.append_data(&mut header, path, std::io::empty())?;
    Ok(())
}

fn append_symlink<W: Write>(archive: &mut tar::Builder<W>, path: &str, target: &str) -> anyhow::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(0);
    header.set_mode(0o777);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Symlink);
    archive.append_link(&mut header, path, target)?;
    Ok(())
}

/// A layer with Debian's static busybox at `/bin/busybox` and every applet linked beside it.
fn busybox_layer(out: &Path) -> anyhow::Result<()> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!("/bin/busybox is missing: install Debian's busybox-static (make tools-k8s does)");
    }
    let applets = run(busybox, &["--list"])?;
    let mut archive = tar::Builder::new(BufWriter::new(File::create(out)?));
    for (dir, mode) in
        [("bin", 0o755), ("tmp", 0o1777), ("usr", 0o755), ("usr/local", 0o755), ("usr/local/bin", 0o755)]
    {
        append_dir(&mut archive, dir, mode)?;
    }
    let mut bytes = Vec::new();
    File::open(busybox)?.read_to_end(&mut bytes)?;
    append_bytes(&mut archive, "bin/busybox", &bytes, 0o755)?;
    for applet in applets.split_whitespace().filter(|a| *a != "busybox") {
        append_symlink(&mut archive, &format!("bin/{applet}"), "busybox")?;
    }
    archive.into_inner()?.flush()?;
    Ok(())
}

/// A layer holding one executable at `path` (relative to the image root).
fn single_file_layer(out: &Path, source: &Path, path: &str) -> anyhow::Result<()> {
    let mut archive = tar::Builder::new(BufWriter::new(File::create(out)?));
    let mut bytes = Vec::new();
    File::open(source).with_context(|| format!("reading {}", source.display()))?.read_to_end(&mut bytes)?;
    append_bytes(&mut archive, path, &bytes, 0o755)?;
    archive.into_inner()?.flush()?;
    Ok(())
}

/// How the PostgreSQL root filesystem is made; its hash keys the cache.
fn postgres_recipe() -> Vec<String> {
    [
        "--variant=minbase",
        "--mode=root",
        "--format=tar",
        // The official image's user, created before any package could pick another uid.
        r#"--essential-hook=echo "postgres:x:999:" >> "$1/etc/group"; echo "postgres:x:999:999::/var/lib/postgresql:/bin/bash" >> "$1/etc/passwd"; echo "postgres:*:20000:0:99999:7:::" >> "$1/etc/shadow""#,
        "--include=postgresql-common",
        // As the official image does: no `main` cluster from the package's postinst.
        r#"--customize-hook=sed -ri "s/#(create_main_cluster) .*$/\1 = false/" "$1/etc/postgresql-common/createcluster.conf""#,
        r#"--customize-hook=chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15"#,
        r#"--customize-hook=mkdir -p "$1/var/run/postgresql" "$1/var/lib/postgresql/data" && chown 999:999 "$1/var/run/postgresql" "$1/var/lib/postgresql/data" && chmod 3777 "$1/var/run/postgresql" && chmod 1777 "$1/var/lib/postgresql/data""#,
        r#"--customize-hook=chroot "$1" apt-get clean; rm -rf "$1"/var/lib/apt/lists/*"#,
        "bookworm",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The PostgreSQL image archive, from the cache or built from a root filesystem made by
/// mmdebstrap (about a minute, and ~100 MB of Debian packages).
fn postgres_archive(layout: &Layout) -> anyhow::Result<PathBuf> {
    let recipe = postgres_recipe();
    let names = format!("{POSTGRES_IMAGE} {POSTGRES_ALIAS}");
    let key = &sha256_bytes(format!("{}\n{names}", recipe.join("\n")).as_bytes())[..16];
    let dir = layout.image_cache();
    std::fs::create_dir_all(&dir)?;
    let archive = dir.join(format!("postgres-{key}.tar"));
    if archive.exists() {
        return Ok(archive);
    }
    let rootfs = dir.join(format!("postgres-rootfs-{key}.partial"));
    let mut args: Vec<&str> = recipe.iter().map(String::as_str).collect();
    let rootfs_arg = rootfs.to_string_lossy().into_owned();
    args.push(&rootfs_arg);
    run("mmdebstrap", &args).context("building the PostgreSQL root filesystem with mmdebstrap")?;
    let postgres_run = RunConfig {
        cmd: vec!["postgres".into()],
        env: vec![
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/usr/lib/postgresql/15/bin"
                .into(),
            "PGDATA=/var/lib/postgresql/data".into(),
            "LANG=C.UTF-8".into(),
        ],
        stop_signal: Some("SIGINT".into()),
        ..RunConfig::default()
    };
    let written = write_archive(
        &archive,
        &[POSTGRES_IMAGE, POSTGRES_ALIAS],
        std::slice::from_ref(&rootfs),
        &postgres_run,
    );
    let _ = std::fs::remove_file(&rootfs);
    written?;
    Ok(archive)
}

/// The images `up` imported, by role: what the test drivers put into the samples.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Images {
    pub operator: String,
    pub postgres: String,
    pub postgres_alias: String,
    pub pause: String,
    pub busybox: String,
}

impl Images {
    pub fn read(layout: &Layout) -> anyhow::Result<Self> {
        let path = layout.images_file();
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (is the cluster up? make k8s-up)", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// Builds (or reuses) every image archive and returns their paths with the references.
pub fn build(layout: &Layout, operator_binary: &Path) -> anyhow::Result<(Images, Vec<PathBuf>)> {
    let dir = layout.root.join("images");
    std::fs::create_dir_all(&dir)?;
    let busybox = dir.join("busybox-layer.tar");
    busybox_layer(&busybox)?;
    let operator_layer = dir.join("operator-layer.tar");
    single_file_layer(&operator_layer, operator_binary, "usr/local/bin/opengauss-operator")?;
    let operator_tag = &sha256_file(operator_binary)?[..16];
    let images = Images {
        operator: format!("{OPERATOR_REPOSITORY}:{operator_tag}"),
        postgres: POSTGRES_IMAGE.into(),
        postgres_alias: POSTGRES_ALIAS.into(),
        pause: PAUSE_IMAGE.into(),
        busybox: BUSYBOX_IMAGE.into(),
    };
    let sleeper = RunConfig {
        entrypoint: vec!["/bin/busybox".into(), "sleep".into(), "infinity".into()],
        ..RunConfig::default()
    };
    let mut archives = Vec::new();
    let pause = dir.join("pause.tar");
    write_archive(&pause, &[&images.pause], std::slice::from_ref(&busybox), &sleeper)?;
    archives.push(pause);
    let helper = dir.join("busybox.tar");
    let shell = RunConfig { cmd: vec!["/bin/sh".into()], ..RunConfig::default() };
    write_archive(&helper, &[&images.busybox], std::slice::from_ref(&busybox), &shell)?;
    archives.push(helper);
    let operator = dir.join("operator.tar");
    let operator_run = RunConfig {
        entrypoint: vec!["/usr/local/bin/opengauss-operator".into()],
        cmd: vec!["run".into()],
        user: Some("65532:65532".into()),
        ..RunConfig::default()
    };
    write_archive(&operator, &[&images.operator], &[busybox.clone(), operator_layer], &operator_run)?;
    archives.push(operator);
    archives.push(postgres_archive(layout)?);
    std::fs::write(layout.images_file(), serde_json::to_vec_pretty(&images)?)?;
    Ok((images, archives))
}

/// Imports image archives into containerd's `k8s.io` namespace.
pub fn import(layout: &Layout, archives: &[PathBuf]) -> anyhow::Result<()> {
    let socket = layout.containerd_socket().to_string_lossy().into_owned();
    for archive in archives {
        let path = archive.to_string_lossy().into_owned();
        run(
            "ctr",
            &["--address", &socket, "-n", "k8s.io", "images", "import", "--snapshotter", "overlayfs", &path],
        )
        .with_context(|| format!("importing {}", archive.display()))?;
    }
    Ok(())
}
