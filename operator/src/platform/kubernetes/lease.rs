//! Leader election with a `coordination.k8s.io/v1` Lease, so that several operator replicas can
//! run and exactly one reconciles.
//!
//! - A missing Lease is created (a plain create: of two racing replicas, one gets 409).
//! - The holder renews it every `retry_period` with a server-side apply that carries the
//!   Lease's `resourceVersion`, so a write based on a stale read fails with 409 instead of
//!   overwriting another replica's claim.
//! - Another replica takes it over only after it has seen the Lease unchanged for the lease
//!   duration, measured on its own clock (clocks of different nodes are never compared).
//! - The holder gives up when it could not renew within `renew_deadline` (shorter than the
//!   lease duration), so it has stopped acting before anyone else may start.
//! - On a clean shutdown the holder releases the Lease, so a successor starts at once.

use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};

use super::FIELD_MANAGER;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to do about the Lease as it was just read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it, held by us.
    Create,
    /// Nobody holds it, or its holder stopped renewing: take it over.
    Take,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it and renews it.
    Wait { holder: String },
}

/// Decides from the Lease and how long it has been seen unchanged. Pure.
pub fn decide(
    lease: Option<&Lease>,
    identity: &str,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.as_ref();
    let holder = spec.and_then(|s| s.holder_identity.clone()).unwrap_or_default();
    if holder.is_empty() {
        return Decision::Take;
    }
    if holder == identity {
        return Decision::Renew;
    }
    let duration = spec
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(default_duration, Duration::from_secs);
    if unchanged_for >= duration { Decision::Take } else { Decision::Wait { holder } }
}

/// Leader election for one replica.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The Lease's resourceVersion as last seen, and when it was first seen so.
    observed: std::sync::Mutex<Option<(String, Instant)>>,
    /// Transitions count and acquire time of our current tenure.
    tenure: std::sync::Mutex<Option<(i32, Timestamp)>>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl LeaderElector {
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        let api = Api::namespaced(client, &settings.namespace);
        Self { api, settings, observed: Default::default(), tenure: Default::default() }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn lease_object(&self, resource_version: Option<String>, transitions: i32, acquired: Timestamp) -> Lease {
        let s = &self.settings;
        serde_json::from_value(serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": { "name": s.name, "namespace": s.namespace, "resourceVersion": resource_version },
            "spec": {
                "holderIdentity": s.identity,
                "leaseDurationSeconds": s.lease_duration.as_secs(),
                "acquireTime": MicroTime(acquired),
                "renewTime": MicroTime(Timestamp::now()),
                "leaseTransitions": transitions,
            }
        }))
        .expect("a Lease is well-formed")
    }

    fn unchanged_for(&self, lease: Option<&Lease>) -> Duration {
        let rv = lease.and_then(|l| l.resource_version()).unwrap_or_default();
        let mut observed = self.observed.lock().expect("observed lock");
        match observed.as_ref() {
            Some((seen, since)) if *seen == rv => since.elapsed(),
            _ => {
                *observed = Some((rv, Instant::now()));
                Duration::ZERO
            }
        }
    }

    /// One round: reads the Lease and claims or renews it when it may. True when we hold it
    /// now.
    pub async fn try_acquire_or_renew(&self) -> anyhow::Result<bool> {
        let s = &self.settings;
        let lease = self.api.get_opt(&s.name).await.with_context(|| format!("reading Lease {}", s.name))?;
        let unchanged = self.unchanged_for(lease.as_ref());
        let decision = decide(lease.as_ref(), &s.identity, unchanged, s.lease_duration);
        let transitions =
            lease.as_ref().and_then(|l| l.spec.as_ref()).and_then(|s| s.lease_transitions).unwrap_or(0);
        let result = match &decision {
            Decision::Wait { holder } => {
                tracing::debug!(%holder, "another replica leads");
                return Ok(false);
            }
            Decision::Create => {
                let now = Timestamp::now();
                let object = self.lease_object(None, 0, now);
                let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
                self.api.create(&pp, &object).await.map(|l| (l, 0, now))
            }
            Decision::Take | Decision::Renew => {
                let (count, acquired) = match (&decision, *self.tenure.lock().expect("tenure lock")) {
                    (Decision::Renew, Some(t)) => t,
                    (Decision::Renew, None) => (
                        transitions,
                        lease
                            .as_ref()
                            .and_then(|l| l.spec.as_ref())
                            .and_then(|s| s.acquire_time.clone())
                            .map_or_else(Timestamp::now, |t| t.0),
                    ),
                    _ => (transitions + 1, Timestamp::now()),
                };
                let rv = lease.as_ref().and_then(|l| l.resource_version());
                let object = self.lease_object(rv, count, acquired);
                let pp = PatchParams::apply(FIELD_MANAGER).force();
                self.api.patch(&s.name, &pp, &Patch::Apply(&object)).await.map(|l| (l, count, acquired))
            }
        };
        match result {
            Ok((lease, count, acquired)) => {
                if decision != Decision::Renew {
                    tracing::info!(identity = %s.identity, lease = %s.name, "became the leader");
                }
                *self.tenure.lock().expect("tenure lock") = Some((count, acquired));
                *self.observed.lock().expect("observed lock") =
                    Some((lease.resource_version().unwrap_or_default(), Instant::now()));
                Ok(true)
            }
            // Someone else wrote first.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e).with_context(|| format!("writing Lease {}", s.name)),
        }
    }

    /// Waits until this replica leads.
    pub async fn acquire(&self) -> anyhow::Result<()> {
        let mut announced = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return Ok(()),
                Ok(false) if !announced => {
                    tracing::info!(identity = %self.settings.identity, "waiting to become the leader");
                    announced = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = format!("{e:#}"), "leader election"),
            }
            tokio::time::sleep(self.settings.retry_period).await;
        }
    }

    /// Renews the Lease until leadership is lost; returns why. Every renewal is bounded by
    /// what is left of the renew deadline: a call hanging on a half-open connection must not
    /// keep this replica acting after another may have taken the lease.
    pub async fn keep(&self) -> String {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.settings.retry_period).await;
            let left = self.settings.renew_deadline.saturating_sub(renewed.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => renewed = Instant::now(),
                Ok(Ok(false)) => return "another replica holds the lease".into(),
                Ok(Err(e)) => tracing::warn!(error = format!("{e:#}"), "cannot renew the lease"),
                Err(_) => tracing::warn!("renewing the lease did not answer in time"),
            }
            if renewed.elapsed() >= self.settings.renew_deadline {
                return format!("the lease could not be renewed for {:?}", renewed.elapsed());
            }
        }
    }

    /// Gives the Lease up so a successor does not wait for it to expire.
    pub async fn release(&self) -> anyhow::Result<()> {
        let s = &self.settings;
        let Some(lease) = self.api.get_opt(&s.name).await? else {
            return Ok(());
        };
        let holder = lease.spec.as_ref().and_then(|x| x.holder_identity.clone()).unwrap_or_default();
        if holder != s.identity {
            return Ok(());
        }
        let body = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": { "name": s.name, "namespace": s.namespace, "resourceVersion": lease.resource_version() },
            "spec": {
                "holderIdentity": "",
                "leaseDurationSeconds": 1,
                // Server-side apply would drop what is left out: keep the count.
                "leaseTransitions": lease.spec.as_ref().and_then(|x| x.lease_transitions),
            }
        });
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        self.api.patch(&s.name, &pp, &Patch::Apply(&body)).await.context("releasing the lease")?;
        tracing::info!(lease = %s.name, "released the lease");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, duration: Option<i32>) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "l", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration}
        }))
        .expect("lease")
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "a", Duration::ZERO, D), Decision::Create);
        assert_eq!(decide(Some(&lease(Some("a"), Some(15))), "a", Duration::ZERO, D), Decision::Renew);
        assert_eq!(decide(Some(&lease(None, Some(15))), "a", Duration::ZERO, D), Decision::Take);
        assert_eq!(decide(Some(&lease(Some(""), Some(15))), "a", Duration::ZERO, D), Decision::Take);
        assert_eq!(
            decide(Some(&lease(Some("b"), Some(15))), "a", Duration::from_secs(14), D),
            Decision::Wait { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&lease(Some("b"), Some(15))), "a", Duration::from_secs(15), D),
            Decision::Take
        );
        // The lease's own duration wins over ours.
        assert_eq!(
            decide(Some(&lease(Some("b"), Some(60))), "a", Duration::from_secs(30), D),
            Decision::Wait { holder: "b".into() }
        );
        assert_eq!(decide(Some(&lease(Some("b"), None)), "a", Duration::from_secs(15), D), Decision::Take);
    }

    #[test]
    fn a_leader_gives_up_before_others_may_take_over() {
        let s = LeaseSettings::new("ns", "l", "a");
        assert!(s.renew_deadline + s.retry_period <= s.lease_duration);
    }
}
