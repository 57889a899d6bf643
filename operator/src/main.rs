//! `opengauss-operator`: the controller, the instance manager and the local platform in one
//! binary.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use opengauss_operator::platform::kubernetes;
use opengauss_operator::platform::local::Placement;
use opengauss_operator::platform::local::commands::{self, Output, Target, UpArgs};

#[derive(Parser, Debug)]
#[command(
    name = "opengauss-operator",
    version,
    about = "High availability for openGauss: Kubernetes operator and local runner"
)]
struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the OpenGaussCluster CustomResourceDefinition.
    Crd,
    /// Run the operator on Kubernetes (in a pod, or against the current kubeconfig context).
    Run(kubernetes::run::RunArgs),
    /// Print every object the operator would create for a cluster, offline (secrets redacted).
    Render(kubernetes::render::RenderArgs),
    /// Run a cluster as local processes.
    #[command(subcommand)]
    Local(LocalCommand),
    /// The instance manager that runs next to each database server.
    #[command(subcommand)]
    Instance(InstanceCommand),
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct Which {
    /// The cluster file (its state directory is ./.opengauss/<name>).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// The cluster's state directory.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

impl Which {
    fn target(self) -> Target {
        match (self.file, self.state_dir) {
            (_, Some(d)) => Target::StateDir(d),
            (Some(f), None) => Target::File(f),
            (None, None) => unreachable!("clap requires one"),
        }
    }
}

#[derive(Subcommand, Debug)]
enum LocalCommand {
    /// Run the cluster in the foreground until SIGINT or SIGTERM.
    Up {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Where data, logs and status live [default: ./.opengauss/<name>].
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Instance k listens on 127.0.0.1:(base port + k) [default: 15432].
        #[arg(long)]
        base_port: Option<u16>,
        /// Directory of the engine's programs [default: searched].
        #[arg(long, env = "OPENGAUSS_OPERATOR_BIN_DIR")]
        bin_dir: Option<PathBuf>,
        /// OS user for the databases when run as root [default: postgres, else nobody].
        #[arg(long)]
        run_as: Option<String>,
        /// Run instance ORDINAL inside the network namespace NETNS (/var/run/netns/NETNS, as
        /// `ip netns add` makes it), listening on and advertised at ADDRESS, and let the subnet
        /// ADDRESS/PREFIXLEN log in with a password. Repeat for each instance to place; needs
        /// root. Placements are not recorded: give the same --netns flags at every `local up`
        /// of the cluster. Example: --netns 0=ogp7-i0/10.213.7.10/24
        #[arg(long, value_name = "ORDINAL=NETNS/ADDRESS/PREFIXLEN")]
        netns: Vec<Placement>,
    },
    /// Hand the cluster a new spec (scaling, parameters, fencing); the running controller
    /// applies it.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// The cluster's state directory [default: ./.opengauss/<name>].
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Wait until the running cluster is healthy with this spec, for at most this many
        /// seconds.
        #[arg(long)]
        wait: Option<u64>,
    },
    /// Stop the cluster; data is kept unless --purge.
    Down {
        #[command(flatten)]
        which: Which,
        /// Also delete the state directory (all data).
        #[arg(long)]
        purge: bool,
    },
    /// Show roles, replication state and lag.
    Status {
        #[command(flatten)]
        which: Which,
        #[arg(short = 'o', long, value_enum, default_value_t = OutputArg::Table)]
        output: OutputArg,
    },
    /// Planned switchover: make INSTANCE the primary without losing committed data.
    Switchover {
        #[command(flatten)]
        which: Which,
        instance: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OutputArg {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum InstanceCommand {
    /// Run the instance manager.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
}

fn init_logging(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: in a pod or a log file they are escape codes.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(terminal);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crd => print!("{}", opengauss_crd::crd_yaml()),
        Command::Run(args) => kubernetes::run::run(args).await?,
        Command::Render(args) => print!("{}", kubernetes::render::render(&args)?),
        Command::Local(cmd) => match cmd {
            LocalCommand::Up { file, state_dir, base_port, bin_dir, run_as, netns } => {
                commands::up(UpArgs { file, state_dir, base_port, bin_dir, run_as, netns }).await?
            }
            LocalCommand::Down { which, purge } => commands::down(which.target(), purge).await?,
            LocalCommand::Apply { file, state_dir, wait } => {
                commands::apply(&file, state_dir, wait.map(Duration::from_secs)).await?
            }
            LocalCommand::Status { which, output } => {
                let output = match output {
                    OutputArg::Table => Output::Table,
                    OutputArg::Json => Output::Json,
                };
                let report = commands::status(which.target(), output)?;
                print!("{}", report.text);
                if !report.watched {
                    std::process::exit(3);
                }
            }
            LocalCommand::Switchover { which, instance, timeout } => {
                commands::switchover(which.target(), &instance, Duration::from_secs(timeout)).await?
            }
        },
        Command::Instance(InstanceCommand::Run { config }) => {
            opengauss_operator::instance::run(&config).await?
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Instance(_) | Command::Run(_) => "info",
        _ => "warn",
    };
    init_logging(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
