//! The openGauss operator: the decision core (`plan`), engine dialects (`engine`), the instance
//! manager (`instance`), the platforms instances run on (`platform`) and the reconcile loop
//! (`controller`).

pub mod controller;
pub mod credentials;
pub mod engine;
pub mod failpoint;
pub mod fsutil;
pub mod instance;
pub mod lease;
pub mod metrics;
pub mod plan;
pub mod platform;
pub mod plugin;
pub mod process;
pub mod reaper;
pub mod signals;
pub mod table;
pub mod tls;
