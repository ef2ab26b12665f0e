//! Command-line flags (SPEC §7): the agent's, in one group per part they configure, and the
//! offline subcommands'. Each flag that the DaemonSet sets from the downward API also reads its
//! environment variable.

mod agent;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use self::agent::{
    AdminArgs, AgentArgs, ApiArgs, CriArgs, IdentityArgs, KubeletArgs, LockArgs, LogArgs,
    TimingArgs,
};
use crate::model::Layout;

/// Keeps annotated pods recoverable on this node while the Kubernetes API server is unreachable.
///
/// Without a subcommand it runs the node agent. Pods annotated
/// `checkpointer.alpha.coreos.com/checkpoint: "true"` are saved as static-pod manifests and
/// started by the kubelet when their parent stops running here.
#[derive(Debug, Parser)]
#[command(
    name = "pod-checkpointer",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub agent: AgentArgs,
}

/// Offline tools for operators; neither talks to the API server.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the checkpoint manifest the agent would write for a pod (and write its files with --root).
    Render(RenderArgs),
    /// List the checkpoints on this node's disk.
    Status(StatusArgs),
}

/// Where files live; every path is a flag, and `--root` prefixes the defaults.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Paths")]
pub struct PathArgs {
    /// Prefix for every default path below (e.g. a test directory); `/` on a real node.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// The kubelet's static pod directory: a checkpoint placed here is "active".
    #[arg(long)]
    pub manifest_dir: Option<PathBuf>,
    /// Where every checkpoint is kept, active or not.
    #[arg(long)]
    pub inactive_manifest_dir: Option<PathBuf>,
    /// Root of the checkpointed Secret files (and projected volumes).
    #[arg(long)]
    pub secret_dir: Option<PathBuf>,
    /// Root of the checkpointed ConfigMap files.
    #[arg(long)]
    pub configmap_dir: Option<PathBuf>,
    /// Agent state that must survive restarts (grace deadlines).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl PathArgs {
    /// The layout these flags describe.
    pub fn layout(&self) -> Layout {
        let d = Layout::under_root(&self.root);
        Layout {
            manifest_dir: self.manifest_dir.clone().unwrap_or(d.manifest_dir),
            inactive_manifest_dir: self
                .inactive_manifest_dir
                .clone()
                .unwrap_or(d.inactive_manifest_dir),
            secret_dir: self.secret_dir.clone().unwrap_or(d.secret_dir),
            configmap_dir: self.configmap_dir.clone().unwrap_or(d.configmap_dir),
            state_dir: self.state_dir.clone().unwrap_or(d.state_dir),
        }
    }

    /// A default path under `--root`.
    pub fn rooted(&self, default: &str) -> PathBuf {
        self.root.join(Path::new(default.trim_start_matches('/')))
    }
}

/// Input and output of `render`.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The parent Pod, JSON or YAML; `-` reads standard input.
    #[arg(long)]
    pub pod: PathBuf,
    /// Secrets and ConfigMaps the pod references: a v1 List or several YAML documents.
    #[arg(long)]
    pub objects: Option<PathBuf>,
    #[command(flatten)]
    pub paths: RenderPaths,
}

/// `render` writes under `--root` only when it is given.
#[derive(Debug, Args)]
pub struct RenderPaths {
    /// Also write the manifest and every side file under this directory, as the agent would on
    /// a node whose `/` is DIR.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// Output of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub paths: PathArgs,
}

/// How `status` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Parses `500ms`, `1s`, `2m`, `1h` (and combinations jiff understands, like `1m30s`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("invalid duration {s:?} (use e.g. 500ms, 1s, 1m): {e}"))?;
    Duration::try_from(d).map_err(|_| format!("duration {s:?} must not be negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn root_prefixes_every_default_path() {
        let cli = Cli::parse_from(["pod-checkpointer", "--root", "/tmp/n", "--node-name", "a"]);
        let layout = cli.agent.paths.layout();
        assert_eq!(
            layout.manifest_dir,
            PathBuf::from("/tmp/n/etc/kubernetes/manifests")
        );
        assert_eq!(
            cli.agent.lock.path(&cli.agent.paths),
            PathBuf::from("/tmp/n/var/run/lock/pod-checkpointer.lock")
        );
        let explicit = Cli::parse_from(["pod-checkpointer", "--manifest-dir", "/m"]);
        assert_eq!(
            explicit.agent.paths.layout().manifest_dir,
            PathBuf::from("/m")
        );
    }

    #[test]
    fn subcommands_parse() {
        let cli = Cli::parse_from(["pod-checkpointer", "status", "--output", "json"]);
        assert!(matches!(
            cli.command,
            Some(Command::Status(StatusArgs {
                output: OutputFormat::Json,
                ..
            }))
        ));
        let cli = Cli::parse_from(["pod-checkpointer", "render", "--pod", "-"]);
        assert!(matches!(cli.command, Some(Command::Render(_))));
    }
}
