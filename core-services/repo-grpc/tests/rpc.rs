//! The service and client beyond the Store contract: health, outages,
//! message-size limits. All on in-memory SQLite behind `serve`.

use gochat_repo::conformance::{group, member, msg};
use gochat_repo::sqlite::SqliteStore;
use gochat_repo::{GroupRole, RepoError, Store};
use gochat_repo_grpc::{serve, RepoClient};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.send(()).ok();
        self.task.await.expect("server task");
    }
}

async fn memory_store() -> Arc<dyn Store> {
    Arc::new(SqliteStore::open("sqlite::memory:", 1, false).await.expect("open in-memory sqlite"))
}

async fn start(store: Arc<dyn Store>, listener: tokio::net::TcpListener) -> Running {
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve(store, listener, async {
            stopped.await.ok();
        })
        .await
        .expect("serve");
    });
    Running { addr, stop, task }
}

async fn start_on_any_port(store: Arc<dyn Store>) -> Running {
    start(store, tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0")).await
}

#[tokio::test]
async fn health_reports_serving() {
    let server = start_on_any_port(memory_store().await).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    for service in ["gochat.repo.v1.Repo", ""] {
        let status = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .unwrap_or_else(|e| panic!("health check of {service:?}: {e}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service {service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await;
    assert_eq!(unknown.unwrap_err().code(), tonic::Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn client_survives_a_server_outage_on_the_same_port() {
    let store = memory_store().await;
    let server = start_on_any_port(store.clone()).await;
    let addr = server.addr;
    let client = RepoClient::connect(&addr.to_string()).expect("client");
    client.ping().await.expect("ping while up");
    gochat_repo::conformance::append_expecting(&client, &[msg(1, "s_1_2", 1, 1, "a")]).await;

    server.stop().await;
    for _ in 0..3 {
        let r = client.max_seq("s_1_2").await;
        assert!(matches!(r, Err(RepoError::Rpc(_))), "{r:?}");
        let r = client.ping().await;
        assert!(matches!(r, Err(RepoError::Rpc(_))), "{r:?}");
    }

    // Back on the same port (same data): the same client recovers.
    let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind the same port");
    let server = start(store, listener).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.max_seq("s_1_2").await {
            Ok(n) => {
                assert_eq!(n, 1);
                break;
            }
            Err(RepoError::Rpc(e)) if Instant::now() < deadline => {
                eprintln!("not yet back: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("client did not recover: {e:?}"),
        }
    }
    client.clone().ping().await.expect("ping after recovery");
    server.stop().await;
}

#[tokio::test]
async fn never_reachable_server_is_an_rpc_error() {
    // Bind then drop: a port nothing listens on.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let client = RepoClient::connect(&format!("http://{addr}")).expect("client");
    let r = client.user_by_id(1).await;
    assert!(matches!(r, Err(RepoError::Rpc(_))), "{r:?}");
}

/// `bytes` of message content in `n` messages of one conversation.
fn big_batch(n: u64, bytes: usize) -> Vec<gochat_repo::StoredMessage> {
    let each = bytes / n as usize;
    (1..=n)
        .map(|q| {
            let mut m = msg(1000 + q, "s_1_2", q, 1, &format!("big-{q}"));
            m.content = format!(r#"{{"text":"{}"}}"#, "x".repeat(each));
            m
        })
        .collect()
}

async fn batch_round_trips(bytes: usize) {
    let server = start_on_any_port(memory_store().await).await;
    let client = RepoClient::connect(&format!("http://{}", server.addr)).expect("client");
    let batch = big_batch(64, bytes);
    gochat_repo::conformance::append_expecting(&client, &batch).await;
    assert_eq!(client.max_seq("s_1_2").await.unwrap(), 64);
    let page = client.messages_after("s_1_2", 0, 1000).await.expect("read big page");
    assert_eq!(page, batch);
    let keys: Vec<_> = batch.iter().map(|m| (m.sender_id, m.client_msg_id.clone())).collect();
    assert_eq!(client.messages_by_client_ids(&keys).await.unwrap().len(), 64);
    server.stop().await;
}

#[tokio::test]
async fn batch_of_3_mib_round_trips() {
    batch_round_trips(3 << 20).await;
}

/// Past tonic's 4 MiB default: the 64 MiB limits are in force both ways.
#[tokio::test]
async fn batch_of_6_mib_round_trips() {
    batch_round_trips(6 << 20).await;
}

/// A 20,000-member group (the largest group logic allows) both ways: ids
/// near u64::MAX make every member ~25 bytes on the wire, ~0.5 MiB in all.
#[tokio::test]
async fn group_of_20000_members_round_trips() {
    let server = start_on_any_port(memory_store().await).await;
    let client = RepoClient::connect(&format!("http://{}", server.addr)).expect("client");
    let mut members: Vec<_> = (0..20_000u64).map(|i| member(u64::MAX - 20_000 + i, GroupRole::Member)).collect();
    members[0].role = GroupRole::Owner;
    client.create_group(&group(u64::MAX, "twenty thousand", members[0].user_id), &members[..10_000]).await.unwrap();
    let added = client.add_group_members(u64::MAX, &members).await.expect("add 10,000 more");
    assert_eq!(added, members[10_000..].iter().map(|m| m.user_id).collect::<Vec<_>>());
    assert_eq!(client.group_members(u64::MAX).await.expect("list 20,000"), members);
    server.stop().await;
}

/// `repo.auth_token`: calls without the bearer token (or with another one)
/// are refused with UNAUTHENTICATED before they reach the store; the
/// client configured with the token works; health stays open for probes.
#[tokio::test]
async fn a_repo_with_a_token_refuses_clients_without_it() {
    use gochat_repo_grpc::pb::repo_client::RepoClient as RawClient;
    use gochat_repo_grpc::pb::CreateUserRequest;
    use tonic::Code;

    const TOKEN: &str = "a-long-random-repo-token-for-tests";
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let store = memory_store().await;
    let task = tokio::spawn(async move {
        gochat_repo_grpc::serve_with_token(store, listener, Some(TOKEN.into()), async {
            stopped.await.ok();
        })
        .await
        .expect("serve");
    });
    let url = format!("http://{addr}");
    let channel = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.expect("connect");
    let mut raw = RawClient::new(channel);
    let call = |auth: Option<&str>| {
        let mut req = tonic::Request::new(CreateUserRequest { user: None });
        if let Some(a) = auth {
            req.metadata_mut().insert("authorization", a.parse().unwrap());
        }
        req
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer a-long-random-repo-token-for-test"),
        Some("Bearer a-long-random-repo-token-for-testsX"),
        Some("a-long-random-repo-token-for-tests"),
        Some("Basic a-long-random-repo-token-for-tests"),
    ] {
        let e = raw.create_user(call(auth)).await.expect_err("refused");
        assert_eq!(e.code(), Code::Unauthenticated, "{auth:?}: {e:?}");
    }
    // The right token gets through to the service (which then finds the
    // request empty).
    let e = raw.create_user(call(Some(&format!("Bearer {TOKEN}")))).await.expect_err("empty request");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // The Store client: without the token every call fails, with it it works.
    let anonymous = RepoClient::connect(&url).unwrap();
    let r = anonymous.create_user(&gochat_repo::conformance::user(1, "alice")).await;
    assert!(matches!(&r, Err(RepoError::Rpc(m)) if m.to_lowercase().contains("token")), "{r:?}");
    let client = RepoClient::connect_with_token(&url, Some(TOKEN)).unwrap();
    client.create_user(&gochat_repo::conformance::user(1, "alice")).await.expect("with the token");
    assert_eq!(client.user_by_id(1).await.unwrap().map(|u| u.username), Some("alice".to_owned()));

    // Health is not behind the token.
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest { service: "gochat.repo.v1.Repo".into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
    stop.send(()).ok();
    task.await.unwrap();
}
