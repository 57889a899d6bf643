//! Finding the engine's programs on this machine.

use std::path::{Path, PathBuf};

use anyhow::bail;
use opengauss_crd::Engine;

/// Programs each engine needs (the engine's own list).
pub fn required_tools(engine: Engine) -> &'static [&'static str] {
    crate::engine::dialect(engine).required_tools()
}

fn has_all(dir: &Path, tools: &[&str]) -> bool {
    tools.iter().all(|t| dir.join(t).is_file())
}

/// Directories where the engine's programs are commonly installed, best first.
fn candidates(engine: Engine) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    match engine {
        Engine::Postgres => {
            // Debian and Ubuntu keep server programs out of PATH, one directory per version.
            let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    let v: u32 = e.file_name().to_str()?.parse().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .collect();
            versions.sort_by_key(|v| std::cmp::Reverse(v.0));
            dirs.extend(versions.into_iter().map(|(_, d)| d));
            dirs.push("/usr/pgsql/bin".into());
        }
        Engine::OpenGauss => {
            if let Some(home) = std::env::var_os("GAUSSHOME") {
                dirs.push(PathBuf::from(home).join("bin"));
            }
            dirs.push("/usr/local/opengauss/bin".into());
        }
    }
    dirs
}

/// The directory holding every program `engine` needs: `explicit` when given, else the first
/// candidate that has them all.
pub fn find_bin_dir(engine: Engine, explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    find_in(engine, explicit, &candidates(engine))
}

fn find_in(engine: Engine, explicit: Option<&Path>, dirs: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let tools = required_tools(engine);
    if let Some(dir) = explicit {
        if has_all(dir, tools) {
            return Ok(dir.to_path_buf());
        }
        let missing: Vec<&str> = tools.iter().copied().filter(|t| !dir.join(t).is_file()).collect();
        bail!("{} lacks the {} programs {}", dir.display(), engine, missing.join(", "));
    }
    if let Some(found) = dirs.iter().find(|d| has_all(d, tools)) {
        return Ok(found.clone());
    }
    let looked: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let hint = match engine {
        Engine::Postgres => {
            "install the PostgreSQL server (13 or later; e.g. apt-get install postgresql) or pass --bin-dir"
        }
        Engine::OpenGauss => {
            "install openGauss and set GAUSSHOME, or pass --bin-dir; the sample deploy/samples/local.yaml uses engine postgres"
        }
    };
    bail!(
        "{} binaries not found: need {} in one directory; looked in {}; {hint}",
        engine,
        tools.join(", "),
        looked.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_directory_must_hold_every_tool() {
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("initdb"), "").expect("write");
        let err = find_bin_dir(Engine::Postgres, Some(tmp.path())).unwrap_err().to_string();
        assert!(err.contains("lacks") && err.contains("pg_rewind") && !err.contains("initdb,"), "{err}");
        for t in required_tools(Engine::Postgres) {
            std::fs::write(tmp.path().join(t), "").expect("write");
        }
        assert_eq!(find_bin_dir(Engine::Postgres, Some(tmp.path())).expect("found"), tmp.path());
    }

    #[test]
    fn missing_binaries_are_explained() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dirs = vec![tmp.path().join("a"), tmp.path().join("b")];
        let err = find_in(Engine::OpenGauss, None, &dirs).unwrap_err().to_string();
        assert!(err.contains("openGauss binaries not found") && err.contains("gs_initdb"), "{err}");
        assert!(err.contains(&dirs[1].display().to_string()), "names where it looked: {err}");
    }

    #[test]
    fn first_complete_candidate_wins() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (partial, full) = (tmp.path().join("partial"), tmp.path().join("full"));
        for d in [&partial, &full] {
            std::fs::create_dir(d).expect("mkdir");
        }
        std::fs::write(partial.join("initdb"), "").expect("write");
        for t in required_tools(Engine::Postgres) {
            std::fs::write(full.join(t), "").expect("write");
        }
        assert_eq!(find_in(Engine::Postgres, None, &[partial, full.clone()]).expect("found"), full);
    }
}
