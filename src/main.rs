//! Entry point: parse flags, set up logging, run the agent or an offline subcommand.

use clap::Parser;
use pod_checkpointer::config::{AgentArgs, Cli, Command};
use pod_checkpointer::{agent, offline};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Render(args)) => offline::render(args),
        Some(Command::Status(args)) => offline::status(args),
        Some(Command::Probe(args)) => probe(args),
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

/// Prints what the probe saw (the kubelet records it in the probe's Event) and fails on a miss.
fn probe(args: &pod_checkpointer::config::ProbeArgs) -> anyhow::Result<()> {
    match pod_checkpointer::lock::probe::probe(&args.lock_path(), args.kind) {
        Ok(seen) => {
            println!("{seen}");
            Ok(())
        }
        Err(why) => anyhow::bail!("{why}"),
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
