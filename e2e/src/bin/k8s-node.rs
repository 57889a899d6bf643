//! `k8s-node`: the one-node Kubernetes cluster of the real-cluster tier (see
//! `opengauss_e2e::k8s`). `make k8s-up` and `make k8s-down` run it.
//!
//!   k8s-node build                       build (or find in the cache) the upstream binaries only
//!   k8s-node up --operator-binary PATH   build or reuse everything, start, deploy the operator
//!   k8s-node down                        stop everything, undo every change, remove .k8s/

use std::path::PathBuf;
use std::process::ExitCode;

use opengauss_e2e::k8s::{self, Layout, Progress};

fn usage() -> ExitCode {
    eprintln!("usage: k8s-node build | k8s-node up --operator-binary PATH | k8s-node down");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let layout = Layout::of_this_checkout();
    let progress = Progress::new();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["up", "--operator-binary", binary] => {
            let binary = PathBuf::from(binary);
            if !binary.is_file() {
                eprintln!("error: the operator binary {} does not exist", binary.display());
                return ExitCode::from(2);
            }
            k8s::up(&layout, &binary, &progress)
        }
        ["down"] => k8s::down(&layout, &progress),
        ["build"] => k8s::components::build(&layout, &progress).map(drop),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
