//! Running the engine's tools: bounded in time, killed with their process group when the
//! caller gives up, errors that carry the tool's own last words.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::engine::CommandLine;

/// How much of a failing tool's output an error message keeps.
const TAIL_LINES: usize = 12;

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}

/// Runs `line` to completion within `timeout` and returns its standard output. A non-zero
/// exit, a time-out or a missing program is an error naming the program.
pub async fn run_checked(line: &CommandLine, timeout: Duration) -> anyhow::Result<String> {
    tracing::debug!(command = %line, "running");
    let mut cmd = line.to_tokio();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child =
        crate::reaper::spawn(&mut cmd).with_context(|| format!("cannot run {}", line.program.display()))?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(out) => out.with_context(|| format!("waiting for {} failed", line.name()))?,
        Err(_) => bail!("{} did not finish within {}s", line.name(), timeout.as_secs()),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = tail(&format!("{stdout}\n{stderr}"));
        bail!("{} failed ({}): {said}", line.name(), output.status);
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failure_carries_the_tools_words() {
        let line = CommandLine::new("/bin/sh").args(["-c", "echo first >&2; echo last words >&2; exit 3"]);
        let err = run_checked(&line, Duration::from_secs(10)).await.unwrap_err().to_string();
        assert!(err.contains("sh failed") && err.contains("last words") && err.contains('3'), "{err}");
    }

    #[tokio::test]
    async fn success_returns_stdout() {
        let line = CommandLine::new("/bin/sh").args(["-c", "echo hello"]);
        assert_eq!(run_checked(&line, Duration::from_secs(10)).await.expect("runs"), "hello\n");
    }

    #[tokio::test]
    async fn timeout_kills_and_reports() {
        let line = CommandLine::new("/bin/sleep").arg("30");
        let started = std::time::Instant::now();
        let err = run_checked(&line, Duration::from_millis(200)).await.unwrap_err().to_string();
        assert!(err.contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn missing_program_is_named() {
        let line = CommandLine::new("/nonexistent/initdb");
        let err = format!("{:#}", run_checked(&line, Duration::from_secs(1)).await.unwrap_err());
        assert!(err.contains("/nonexistent/initdb"), "{err}");
    }
}
