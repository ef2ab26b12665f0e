use super::*;

#[test]
fn durations() {
    assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert!(parse_duration("soon").is_err());
}

#[test]
fn durations_are_bounded() {
    assert!(parse_poll_interval("0s").is_err());
    assert!(parse_poll_interval("0ms").is_err());
    assert!(parse_poll_interval("-1s").is_err());
    assert_eq!(parse_poll_interval("1ms"), Ok(Duration::from_millis(1)));
    assert_eq!(parse_poll_interval("1h"), Ok(MAX_POLL_INTERVAL));
    assert!(parse_poll_interval("1h1s").is_err());
    // Ten intervals (the /healthz stall limit) cannot overflow.
    assert!(MAX_POLL_INTERVAL.checked_mul(10).is_some());
    assert!(parse_long_duration("0s").is_err());
    assert_eq!(parse_long_duration("8760h"), Ok(MAX_LONG_DURATION));
    assert!(parse_long_duration("8761h").is_err());
    assert!(parse_long_duration("--poll-interval").is_err());
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("pod-checkpointer").chain(args.iter().copied()))
}

#[test]
fn durations_name_the_flag_and_value_even_when_dash_led() {
    for (args, flag, value) in [
        (&["--grace-period", "-5s"][..], "--grace-period", "-5s"),
        (&["--poll-interval=-1s"], "--poll-interval", "-1s"),
        (&["--poll-interval", "0s"], "--poll-interval", "0s"),
        (&["--fallback-timeout", "0s"], "--fallback-timeout", "0s"),
        (&["--fallback-timeout", "-5m"], "--fallback-timeout", "-5m"),
    ] {
        let mut all = vec!["--all-namespaces"];
        all.extend(args);
        let err = parse(&all).expect_err("refused").to_string();
        assert!(err.contains(flag) && err.contains(value), "{args:?}: {err}");
    }
}

#[test]
fn a_flag_where_a_value_belongs_is_a_missing_value() {
    let err = parse(&[
        "--all-namespaces",
        "--grace-period",
        "--poll-interval",
        "1s",
    ])
    .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::InvalidValue);
    assert!(err.to_string().contains("'--grace-period'"), "{err}");
    // Values after a subcommand are the subcommand's business.
    assert!(parse(&["status", "--root", "/x"]).is_ok());
}

#[test]
fn timing_defaults() {
    let t = parse(&["--all-namespaces"]).expect("parses").agent.timing;
    assert_eq!(t.poll_interval, Duration::from_secs(1));
    assert_eq!(t.grace_period, Duration::from_secs(60));
    assert_eq!(t.fallback_timeout, Duration::from_secs(300));
    let t = parse(&["--all-namespaces", "--fallback-timeout", "90s"])
        .expect("parses")
        .agent
        .timing;
    assert_eq!(t.fallback_timeout, Duration::from_secs(90));
}

#[test]
fn namespaces_are_an_allow_list_or_explicitly_all() {
    let ids = |args: &[&str]| parse(args).map(|c| c.agent.identity);
    let some = ids(&["--namespaces", "a,b", "--namespaces", "c"]).expect("parses");
    assert_eq!(some.namespaces, ["a", "b", "c"]);
    assert!(!some.all_namespaces);
    // "All" reads as an empty list to the rest of the agent.
    let all = ids(&["--all-namespaces"]).expect("parses");
    assert!(all.namespaces.is_empty() && all.all_namespaces);

    // (args, error, whether the message must point at both flags)
    for (args, kind, both) in [
        (&[][..], ErrorKind::MissingRequiredArgument, true),
        (&["--namespaces", ""], ErrorKind::ValueValidation, true),
        (&["--namespaces="], ErrorKind::ValueValidation, true),
        (&["--namespaces", "a,,b"], ErrorKind::ValueValidation, true),
        (
            &["--namespaces", "Kube-System"],
            ErrorKind::ValueValidation,
            false,
        ),
        (
            &["--namespaces", "a", "--all-namespaces"],
            ErrorKind::ArgumentConflict,
            true,
        ),
    ] {
        let err = ids(args).expect_err("refused");
        assert_eq!(err.kind(), kind, "{args:?}: {err}");
        let text = err.to_string();
        assert!(text.contains("--namespaces"), "{args:?}: {text}");
        assert!(
            !both || text.contains("--all-namespaces"),
            "{args:?}: {text}"
        );
    }
}

#[test]
fn namespace_names() {
    assert!(parse_namespace("kube-system").is_ok());
    assert!(parse_namespace(&"a".repeat(63)).is_ok());
    for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64)] {
        assert!(parse_namespace(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn root_prefixes_every_default_path() {
    let cli = Cli::parse_from([
        "pod-checkpointer",
        "--root",
        "/tmp/n",
        "--node-name",
        "a",
        "--all-namespaces",
    ]);
    let layout = cli.agent.paths.layout();
    assert_eq!(
        layout.manifest_dir,
        PathBuf::from("/tmp/n/etc/kubernetes/manifests")
    );
    assert_eq!(
        cli.agent.lock.path(&cli.agent.paths),
        PathBuf::from("/tmp/n/var/run/lock/pod-checkpointer.lock")
    );
    let explicit = Cli::parse_from([
        "pod-checkpointer",
        "--manifest-dir",
        "/m",
        "--namespaces",
        "a",
    ]);
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
    // The agent's namespace choice is the agent's: subcommands need none.
    assert!(cli.agent.identity.namespaces.is_empty() && !cli.agent.identity.all_namespaces);
}
