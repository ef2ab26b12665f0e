//! Command-line flags (SPEC §7): the agent's, in one group per part they configure, and the
//! offline subcommands'. Each flag that the DaemonSet sets from the downward API also reads its
//! environment variable.

mod agent;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

pub use self::agent::{
    AdminArgs, AgentArgs, ApiArgs, ApiClients, CriArgs, IdentityArgs, KubeletArgs, LockArgs,
    LogArgs, TimingArgs,
};
use crate::model::Layout;

/// The parsed command line: clap's flags, plus the checks that span several flags (which
/// namespaces; see [`IdentityArgs::namespaces`]). They run only when the agent runs, so the
/// offline subcommands need none of the agent's flags.
#[derive(Debug)]
pub struct Cli {
    pub command: Option<Command>,
    pub agent: AgentArgs,
}

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
struct Flags {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    agent: AgentArgs,
}

impl Cli {
    fn checked(flags: Flags) -> Result<Self, clap::Error> {
        if flags.command.is_none() {
            flags.agent.identity.check()?;
        }
        Ok(Self {
            command: flags.command,
            agent: flags.agent,
        })
    }
}

impl CommandFactory for Cli {
    fn command() -> clap::Command {
        Flags::command()
    }

    fn command_for_update() -> clap::Command {
        Flags::command_for_update()
    }
}

impl FromArgMatches for Cli {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Self::checked(Flags::from_arg_matches(matches)?)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let mut flags = Flags {
            command: self.command.clone(),
            agent: self.agent.clone(),
        };
        flags.update_from_arg_matches(matches)?;
        *self = Self::checked(flags)?;
        Ok(())
    }
}

/// clap's own parsing, after [`flag_taken_as_value`].
impl Parser for Cli {
    fn parse() -> Self {
        Self::parse_from(std::env::args_os())
    }

    fn try_parse() -> Result<Self, clap::Error> {
        Self::try_parse_from(std::env::args_os())
    }

    fn parse_from<I, T>(itr: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::try_parse_from(itr).unwrap_or_else(|e| e.exit())
    }

    fn try_parse_from<I, T>(itr: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = itr.into_iter().map(Into::into).collect();
        let mut cmd = Self::command();
        cmd.build();
        flag_taken_as_value(&mut cmd, &args)?;
        let mut matches = cmd.clone().try_get_matches_from(args)?;
        Self::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut cmd))
    }
}

/// The agent's flags take values that begin with a dash, so that `--grace-period -5s` reaches
/// the duration parser and is refused naming the flag and the value (instead of clap's
/// "unexpected argument '-5'"). clap would then also take the next flag as the value of one whose
/// value is missing (`--grace-period --poll-interval 1s`) and complain about the stray `1s`;
/// this says what happened instead. No value of these flags begins with `--`.
fn flag_taken_as_value(cmd: &mut clap::Command, args: &[OsString]) -> Result<(), clap::Error> {
    let takes_dash: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.is_allow_hyphen_values_set())
        .filter_map(|a| a.get_long())
        .map(|long| format!("--{long}"))
        .collect();
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    let args: Vec<_> = args.iter().skip(1).map(|a| a.to_string_lossy()).collect();
    for pair in args.windows(2) {
        let (flag, next) = (&pair[0], &pair[1]);
        if flag == "--" || subcommands.iter().any(|s| s == flag) {
            break;
        }
        if next.starts_with("--") && takes_dash.iter().any(|t| t == flag) {
            return Err(cmd.error(
                ErrorKind::InvalidValue,
                format!("a value is required for '{flag}' but none was supplied (found the flag '{next}' where its value belongs)"),
            ));
        }
    }
    Ok(())
}

/// Offline tools for operators; neither talks to the API server.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print the checkpoint manifest the agent would write for a pod (and write its files with --root).
    Render(RenderArgs),
    /// List the checkpoints on this node's disk.
    Status(StatusArgs),
    /// The kubelet's exec probe for this copy of the agent: asks its admin server when it holds
    /// the node lock, checks its standby heartbeat otherwise. Exit 0 when it passes.
    Probe(ProbeArgs),
}

/// Flags of `probe`: which probe, and where the lock is (as the agent was given it).
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// live, ready or startup.
    #[arg(value_enum)]
    pub kind: crate::lock::probe::ProbeKind,
    #[command(flatten)]
    pub lock: LockArgs,
    /// Prefix for the default lock path (as the agent's --root).
    #[arg(long, default_value = "/", allow_hyphen_values = true, value_parser = parse_path)]
    pub root: PathBuf,
}

impl ProbeArgs {
    /// The lock file the agent uses with the same flags.
    pub fn lock_path(&self) -> PathBuf {
        self.lock.lock_file.clone().unwrap_or_else(|| {
            self.root
                .join(Path::new("var/run/lock/pod-checkpointer.lock"))
        })
    }
}

/// Where files live; every path is a flag, and `--root` prefixes the defaults.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Paths")]
pub struct PathArgs {
    /// Prefix for every default path below (e.g. a test directory); `/` on a real node.
    #[arg(long, default_value = "/", allow_hyphen_values = true, value_parser = parse_path)]
    pub root: PathBuf,
    /// The kubelet's static pod directory: a checkpoint placed here is "active".
    #[arg(long, allow_hyphen_values = true, value_parser = parse_path)]
    pub manifest_dir: Option<PathBuf>,
    /// Where every checkpoint is kept, active or not.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_path)]
    pub inactive_manifest_dir: Option<PathBuf>,
    /// Root of the checkpointed Secret files (and projected volumes).
    #[arg(long, allow_hyphen_values = true, value_parser = parse_path)]
    pub secret_dir: Option<PathBuf>,
    /// Root of the checkpointed ConfigMap files.
    #[arg(long, allow_hyphen_values = true, value_parser = parse_path)]
    pub configmap_dir: Option<PathBuf>,
    /// Agent state that must survive restarts (grace deadlines).
    #[arg(long, allow_hyphen_values = true, value_parser = parse_path)]
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
#[derive(Debug, Clone, Args)]
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
#[derive(Debug, Clone, Args)]
pub struct RenderPaths {
    /// Also write the manifest and every side file under this directory, as the agent would on
    /// a node whose `/` is DIR.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// Output of `status`.
#[derive(Debug, Clone, Args)]
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

/// The longest poll interval: the agent looks at the node at least hourly, and ten intervals
/// (the `/healthz` stall limit) stay far from any overflow.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(3600);

/// The longest grace period or fallback timeout: a year. Longer is a typo, and a deadline that
/// far out cannot overflow a clock.
pub const MAX_LONG_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration in `(0, max]`; clap prefixes the error with the flag and the value.
fn positive_duration(s: &str, max: Duration, max_text: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        Err(format!("duration {s:?} must be more than zero"))
    } else if d > max {
        Err(format!("duration {s:?} must be at most {max_text}"))
    } else {
        Ok(d)
    }
}

/// `--poll-interval`: zero would make the poller panic and the standby loop spin.
pub fn parse_poll_interval(s: &str) -> Result<Duration, String> {
    positive_duration(s, MAX_POLL_INTERVAL, "1h")
}

/// `--grace-period`, `--fallback-timeout`: zero would remove (or fall back) at once.
pub fn parse_long_duration(s: &str) -> Result<Duration, String> {
    positive_duration(s, MAX_LONG_DURATION, "8760h (a year)")
}

/// Refuses a value that begins with `-`: flags take values that may begin with a dash (so
/// `--grace-period -5s` reports the flag and its value, not "unexpected argument '-5'"), and
/// such a value is almost always a missing value followed by the next flag.
fn not_flag_like(s: &str, what: &str) -> Result<(), String> {
    if s.starts_with('-') {
        Err(format!(
            "{s:?} begins with '-': a missing value before the next flag? ({what})"
        ))
    } else {
        Ok(())
    }
}

/// A path flag's value: not empty, not dash-led (`./-x` names a file called `-x`).
pub fn parse_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("empty path".into());
    }
    not_flag_like(
        s,
        "write ./-name for a relative path that starts with a dash",
    )?;
    Ok(PathBuf::from(s))
}

/// A free-text flag's value (names, URLs, filters), refused when dash-led.
pub fn parse_text(s: &str) -> Result<String, String> {
    not_flag_like(s, "no value of this flag begins with a dash")?;
    Ok(s.to_string())
}

/// One `--namespaces` entry: a namespace name (an RFC 1123 label). An empty entry is refused:
/// "every namespace" is only ever `--all-namespaces`, never an empty list.
pub fn parse_namespace(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err(
            "an empty namespace; name at least one namespace, or pass --all-namespaces for every namespace"
                .into(),
        );
    }
    let label = s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if label {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a namespace name (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)"
        ))
    }
}

#[cfg(test)]
mod tests;
