//! The decision core: a pure function of (spec, last status, observation, now) to (new status,
//! actions, events). No clocks, no I/O, no randomness: everything it needs is passed in, so
//! every decision is reproducible in tests and in the simulation.
//!
//! Rules it keeps:
//! - intent is recorded in the returned status before the actions that act on it; the caller
//!   persists the status first and acts only if that succeeded;
//! - at most one disruptive step (fence, promote, rejoin) per pass;
//! - a returning old primary is never started as primary; it rejoins as a standby;
//! - with synchronous replication and `dataDurability: required`, a standby is promoted only
//!   when it holds every acknowledged commit.

mod choice;
mod config;
mod failover;
mod health;
#[cfg(test)]
mod sim;
mod steady;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use opengauss_crd::{OpenGaussClusterSpec, OpenGaussClusterStatus, Phase};

use crate::engine::Endpoint;
use crate::instance::report::{InstanceReport, Request};

pub use config::desired_config;
pub use health::{InstanceHealth, classify};

/// What the platform knows of an instance, independent of its manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformState {
    /// Not created (no process, no pod).
    Missing,
    /// Created and running (process alive, pod running).
    Running,
    /// Created but its manager died and has not been restarted (yet).
    Dead,
}

/// One instance as observed in this pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub platform: PlatformState,
    /// Where the database listens.
    pub endpoint: Endpoint,
    /// The openGauss HA (replication) port.
    pub ha_port: u16,
    /// The manager's report; `None` when it did not answer.
    pub report: Option<InstanceReport>,
    /// The database port accepted a TCP connection (checked when the manager did not answer).
    pub server_answers: bool,
    /// The instance runs from an older definition than the cluster's (see
    /// `controller::PlatformInstance::outdated`); a rolling replacement renews it.
    pub outdated: bool,
    /// Where its manager's API answers, when the platform knows.
    pub manager_url: Option<String>,
    /// How long this controller has not heard from its manager, on the controller's own
    /// monotonic clock (since it started watching, at most): a primary's lease has certainly
    /// ended once this exceeds `lease::replaceable_after`.
    pub unrenewed_for: std::time::Duration,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    pub instances: BTreeMap<String, Observed>,
}

/// Requests from users that are not part of the spec.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserRequests {
    /// Planned switchover to this instance.
    pub switchover_to: Option<String>,
}

#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub cluster: &'a str,
    pub generation: Option<i64>,
    pub spec: &'a OpenGaussClusterSpec,
    pub status: &'a OpenGaussClusterStatus,
    pub observed: &'a Observation,
    pub requests: &'a UserRequests,
    pub now: Timestamp,
    /// When this controller process started observing: silence from before is not held
    /// against an instance.
    pub watching_since: Timestamp,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Create the instance (process or pod with its volume).
    Create { instance: String },
    /// Start a dead instance's manager again, as a kubelet restarts a container.
    Restart { instance: String },
    /// Replace a running instance with one made from the cluster's current definition,
    /// keeping its data (a pod whose image or resources changed).
    Recreate { instance: String },
    /// Send a request to the instance's manager.
    Send { instance: String, request: Request },
    /// Remove an instance the spec no longer asks for: its process or pod and its data.
    Delete { instance: String },
}

impl Action {
    pub fn instance(&self) -> &str {
        match self {
            Action::Create { instance }
            | Action::Restart { instance }
            | Action::Recreate { instance }
            | Action::Send { instance, .. }
            | Action::Delete { instance } => instance,
        }
    }

    /// Disruptive steps interrupt service on an instance; the plan takes one per pass.
    pub fn is_disruptive(&self) -> bool {
        matches!(self, Action::Delete { .. } | Action::Recreate { .. })
            || matches!(
                self,
                Action::Send {
                    request: Request::Fence
                        | Request::Promote { .. }
                        | Request::Rejoin { .. }
                        | Request::Rebuild { .. }
                        | Request::Restart { .. },
                    ..
                }
            )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

/// Something worth telling users: printed locally, a Kubernetes Event on Kubernetes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub type_: EventType,
    pub reason: &'static str,
    pub message: String,
}

impl Event {
    pub fn normal(reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_: EventType::Normal, reason, message: message.into() }
    }

    pub fn warning(reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_: EventType::Warning, reason, message: message.into() }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub status: OpenGaussClusterStatus,
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
    /// A transition is in flight: probe again soon.
    pub urgent: bool,
    /// The outcome of a user request handled this pass (accepted, or refused and why).
    pub request_outcome: Option<Result<String, String>>,
    /// A switchover the steady state wants (the primary must restart for new parameters, or
    /// leave the cluster in a scale-down), with why; the failover module starts it.
    switchover_wanted: Option<String>,
    /// A phase decided explicitly this pass, overriding the summary's.
    phase_override: Option<(Phase, String)>,
}

impl Plan {
    fn act(&mut self, action: Action) {
        if action.is_disruptive() && self.actions.iter().any(Action::is_disruptive) {
            return;
        }
        if !self.actions.contains(&action) {
            self.actions.push(action);
        }
    }

    fn send(&mut self, instance: &str, request: Request) {
        self.act(Action::Send { instance: instance.to_string(), request });
    }

    fn event(&mut self, event: Event) {
        self.events.push(event);
    }

    fn set_phase(&mut self, phase: Phase, reason: impl Into<String>) {
        self.phase_override = Some((phase, reason.into()));
    }
}

/// Decides one reconcile pass.
pub fn decide(input: Input<'_>) -> Plan {
    let mut plan = Plan { status: input.status.clone(), ..Plan::default() };
    plan.status.observed_generation = input.generation;
    if let Err(problems) = health::validate(&input) {
        health::invalid_spec(&input, &mut plan, &problems);
        return plan;
    }
    health::record_sightings(&input, &mut plan);
    if !plan.status.initialized {
        steady::bootstrap(&input, &mut plan);
    } else if plan.status.transition.is_some() {
        failover::continue_transition(&input, &mut plan);
    } else if !failover::start_transition_if_needed(&input, &mut plan) {
        steady::reconcile(&input, &mut plan);
        if let Some(reason) = plan.switchover_wanted.take() {
            failover::planned_switchover(&input, &mut plan, reason);
        }
    }
    health::summarize(&input, &mut plan);
    plan.urgent |= plan.status.transition.is_some();
    plan
}
