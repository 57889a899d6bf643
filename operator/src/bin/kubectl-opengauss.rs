//! `kubectl opengauss`: a kubectl plugin for OpenGaussCluster objects. Install the binary on
//! PATH as `kubectl-opengauss`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use opengauss_operator::plugin;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-opengauss",
    version,
    about = "Operate openGauss clusters managed by opengauss-operator"
)]
struct Cli {
    /// Namespace of the cluster [default: the kubeconfig context's].
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Roles, replication state, sync state and lag (one cluster), or every cluster in a line.
    Status {
        cluster: Option<String>,
        #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
        output: String,
    },
    /// Planned switchover to INSTANCE; waits until it is the primary.
    Switchover {
        cluster: String,
        instance: String,
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Fence INSTANCE: stop its server, keep it out of promotion and traffic.
    Fence { cluster: String, instance: String },
    /// Unfence INSTANCE.
    Unfence { cluster: String, instance: String },
    /// Print the cluster's certificate authority (PEM) for `sslmode=verify-full` clients:
    /// `kubectl opengauss ca og > ca.crt`, then `psql "... sslmode=verify-full sslrootcert=ca.crt"`.
    Ca { cluster: String },
    /// Open psql (gsql for openGauss) in INSTANCE, the primary by default; arguments after
    /// `--` go to the shell (`-- -c "SELECT 1"`).
    Psql {
        cluster: String,
        instance: Option<String>,
        #[arg(last = true)]
        args: Vec<String>,
    },
}

async fn fence(
    client: &kube::Client,
    namespace: &str,
    cluster: &str,
    instance: &str,
    on: bool,
) -> anyhow::Result<()> {
    let changed = plugin::set_fenced(client, namespace, cluster, instance, on).await?;
    let what = if on { "fenced" } else { "unfenced" };
    println!("{instance} {}{what}", if changed { "" } else { "was already " });
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await?;
    let namespace = cli.namespace.unwrap_or_else(|| client.default_namespace().to_string());
    match cli.command {
        Command::Status { cluster, output } => {
            print!("{}", plugin::status(&client, &namespace, cluster.as_deref(), output == "json").await?)
        }
        Command::Switchover { cluster, instance, timeout } => {
            plugin::switchover(&client, &namespace, &cluster, &instance, Duration::from_secs(timeout))
                .await?;
            println!("{instance} is the primary of {namespace}/{cluster}");
        }
        Command::Fence { cluster, instance } => fence(&client, &namespace, &cluster, &instance, true).await?,
        Command::Unfence { cluster, instance } => {
            fence(&client, &namespace, &cluster, &instance, false).await?
        }
        Command::Ca { cluster } => print!("{}", plugin::authority(&client, &namespace, &cluster).await?),
        Command::Psql { cluster, instance, args } => {
            let terminal = std::io::IsTerminal::is_terminal(&std::io::stdin());
            let argv =
                plugin::psql_command(&client, &namespace, &cluster, instance.as_deref(), &args, terminal)
                    .await?;
            let status = std::process::Command::new(&argv[0]).args(&argv[1..]).status()?;
            if !status.success() {
                anyhow::bail!("{} exited with {status}", argv[0]);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
