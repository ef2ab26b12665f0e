//! Entry point: parse flags, set up logging, run the agent or an offline subcommand.

use clap::Parser;
use pod_checkpointer::config::{AgentArgs, Cli, Command};
use pod_checkpointer::{agent, offline};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Render(args)) => offline::render(args),
        Some(Command::Status(args)) => offline::status(args),
        None => run_agent(cli.agent),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pod-checkpointer: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    args.log.init()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(agent::run(args))
}
