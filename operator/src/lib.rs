//! The openGauss operator: the decision core (`plan`), engine dialects (`engine`), the instance
//! manager (`instance`), the platforms instances run on (`platform`) and the reconcile loop
//! (`controller`).

pub mod engine;
pub mod fsutil;
pub mod instance;
pub mod process;
pub mod signals;
