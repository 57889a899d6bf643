//! Bounded waiting for a condition: every wait in the end-to-end tests goes through `until`, so
//! none sleeps a fixed time and every one fails with what it last saw.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::bail;

/// What one probe of a condition found.
#[derive(Debug)]
pub enum Probe<T> {
    /// The condition holds; the wait returns this.
    Done(T),
    /// Not yet; the text describes what was seen, for the timeout message.
    NotYet(String),
}

/// Probes every `every` until the probe says `Done` or `timeout` has passed since the first
/// probe. The probe always runs at least once, and once more at the deadline, so a condition
/// that holds when the time runs out is still seen.
pub async fn until<T, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Fut,
) -> anyhow::Result<T>
where
    Fut: Future<Output = Probe<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Probe::Done(value) => return Ok(value),
            Probe::NotYet(seen) => seen,
        };
        let now = Instant::now();
        if now >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(every.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_what_the_probe_found_once_it_holds() {
        let mut calls = 0;
        let got = until("the third call", Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            let n = calls;
            async move { if n == 3 { Probe::Done(n) } else { Probe::NotYet(format!("call {n}")) } }
        })
        .await
        .expect("done");
        assert_eq!(got, 3);
    }

    #[tokio::test]
    async fn times_out_naming_the_condition_and_the_last_sighting() {
        let err = until::<(), _>("nothing", Duration::from_millis(30), Duration::from_millis(5), || async {
            Probe::NotYet("still nothing".into())
        })
        .await
        .expect_err("never holds");
        let text = err.to_string();
        assert!(text.contains("waiting for nothing") && text.contains("still nothing"), "{text}");
    }
}
