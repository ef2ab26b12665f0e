use std::sync::Arc;

use base64::Engine as _;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::*;

fn jwt(claims: serde_json::Value) -> String {
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.{}",
        b64(br#"{"alg":"RS256"}"#),
        b64(claims.to_string().as_bytes()),
        b64(b"signature")
    )
}

fn spec() -> TokenSpec {
    TokenSpec {
        audience: None,
        expiration_seconds: 3600,
    }
}

fn parent(uid: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"namespace": "ns", "name": "web", "uid": uid},
        "spec": {"serviceAccountName": "web", "containers": []},
    }))
    .expect("pod")
}

/// An API server that accepts connections and never answers: what a hung one looks like.
async fn hung_api() -> (Client, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    let config = kube::Config::new(url.parse().expect("url"));
    (Client::try_from(config).expect("client"), server)
}

#[test]
fn debug_of_a_cached_token_shows_its_size_never_the_token() {
    let secret = "eyJhbGciOiJSUzI1NiJ9.s3cr3t-claims.s1gnature";
    let cached = CachedToken {
        token: secret.to_owned(),
        refresh_at: Instant::now(),
    };
    for text in [format!("{cached:?}"), format!("{cached:#?}")] {
        assert!(!text.contains(secret), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains(&format!("{} bytes", secret.len())), "{text}");
    }
}

/// Issue 11.4: the lifetime is what the server granted (`exp - iat`, both its own clock), not
/// `exp` minus the local time, which a local clock behind the server's stretches past expiry.
#[test]
fn a_tokens_lifetime_is_what_the_server_granted_whatever_the_local_clock() {
    let issued_long_ago = jwt(serde_json::json!({"iat": 1_000, "exp": 4_600}));
    assert_eq!(
        granted_lifetime(&issued_long_ago),
        Some(Duration::from_secs(3600))
    );
    assert_eq!(
        granted_lifetime(&jwt(serde_json::json!({"exp": 4_600}))),
        None
    );
    assert_eq!(granted_lifetime("not-a-jwt"), None);
    assert_eq!(
        granted_lifetime(&jwt(serde_json::json!({"iat": 5, "exp": 1}))),
        None
    );
}

/// Issue 10.10: a parent deleted and recreated under the same name is another object; the token
/// bound to the deleted one is not handed to the new one.
#[tokio::test]
async fn a_parent_recreated_under_the_same_name_does_not_get_the_old_objects_token() {
    let tokens = Tokens::new(Arc::new(Notify::new()));
    let key = PodKey::new("ns", "web");
    tokens.state().cache.insert(
        (key.clone(), "uid-old".into(), spec()),
        CachedToken {
            token: "old".into(),
            refresh_at: Instant::now() + Duration::from_secs(60),
        },
    );
    assert_eq!(tokens.for_pod(&key, "uid-old").len(), 1);
    assert!(tokens.for_pod(&key, "uid-new").is_empty());
    tokens.retain(&BTreeSet::from([(key.clone(), "uid-new".to_owned())]));
    assert!(tokens.for_pod(&key, "uid-old").is_empty(), "forgotten");
}

/// Issue 10.5: a hung API server must not hold up the pass that asks for a token: the request
/// runs in the background, gives up at its deadline, and is retried later.
#[tokio::test]
async fn a_hung_api_server_never_holds_up_the_pass_asking_for_a_token() {
    let (client, _server) = hung_api().await;
    let metrics = Metrics::new().expect("metrics");
    let tokens = Tokens::with_deadline(Arc::new(Notify::new()), Duration::from_millis(300));
    let started = Instant::now();
    tokens.refresh(
        &client,
        &parent("uid-1"),
        &BTreeSet::from([spec()]),
        true,
        &metrics,
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(tokens.in_flight(), 1);
    // Asked again while the first is out: no second request.
    tokens.refresh(
        &client,
        &parent("uid-1"),
        &BTreeSet::from([spec()]),
        true,
        &metrics,
    );
    assert_eq!(tokens.in_flight(), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokens.in_flight() > 0 {
        assert!(Instant::now() < deadline, "the request never gave up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let retry = tokens.next_refresh().expect("a retry is scheduled");
    assert!(retry > Instant::now(), "with back-off, not at once");
    assert!(
        tokens
            .for_pod(&PodKey::new("ns", "web"), "uid-1")
            .is_empty()
    );
    assert!(
        metrics
            .render()
            .contains(r#"reason="timeout",resource="serviceaccounts/token""#),
        "{}",
        metrics.render()
    );
}
