//! The whole Store conformance suite through `RepoClient` → gRPC → `serve`,
//! backed by (a) in-memory SQLite and (b) MySQL/MariaDB
//! (`GOCHAT_TEST_MYSQL_URL`, default `mysql://root@127.0.0.1:13306`; each
//! case creates, migrates and drops its own database; an unreachable server
//! fails the test, it is never skipped).

use gochat_repo::conformance::Case;
use gochat_repo::Store;
use gochat_repo_grpc::{serve, RepoClient};
use std::sync::Arc;

/// Serve `store` on 127.0.0.1:0, run `case` on a `RepoClient` of it, stop
/// the server; a panic of the case is re-raised after the server stopped.
async fn through_grpc(store: Arc<dyn Store>, case: Case) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(store, listener, async {
        stopped.await.ok();
    }));
    let client = RepoClient::connect(&format!("http://{addr}")).expect("client");
    let outcome = tokio::spawn(case(Arc::new(client))).await;
    stop.send(()).ok();
    server.await.expect("server task").expect("serve");
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

mod sqlite {
    use super::*;
    use gochat_repo::sqlite::SqliteStore;

    async fn run(case: Case) {
        let store = SqliteStore::open("sqlite::memory:", 1, false).await.expect("open in-memory sqlite");
        through_grpc(Arc::new(store), case).await;
    }

    gochat_repo::conformance::store_conformance!(run);
}

mod mysql {
    use super::*;
    use gochat_repo::mysql::MySqlStore;
    use sqlx::migrate::MigrateDatabase;
    use sqlx::MySql;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    const DEFAULT_URL: &str = "mysql://root@127.0.0.1:13306";

    fn server_url() -> String {
        std::env::var("GOCHAT_TEST_MYSQL_URL").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| DEFAULT_URL.into())
    }

    /// `base` with its database path replaced by `db`, query string kept.
    fn with_database(base: &str, db: &str) -> String {
        let (head, query) = base.split_once('?').map_or((base, None), |(h, q)| (h, Some(q)));
        let auth_start = head.find("://").map_or(0, |i| i + 3);
        let path_start = head[auth_start..].find('/').map_or(head.len(), |i| auth_start + i);
        let mut url = format!("{}/{db}", &head[..path_start]);
        if let Some(q) = query {
            url.push('?');
            url.push_str(q);
        }
        url
    }

    fn unique_db_name() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        format!("gochat_tg_{}_{nanos}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// A fresh migrated database behind the gRPC service; dropped afterwards
    /// whether the case passed or panicked (the panic is re-raised).
    async fn run(case: Case) {
        let base = server_url();
        let url = with_database(&base, &unique_db_name());
        if let Err(e) = MySqlStore::create_database_if_missing(&url).await {
            panic!(
                "MySQL test server at {base} is unreachable or refused CREATE DATABASE: {e}\n\
                 start it with `deploy/test-services.sh up` or point GOCHAT_TEST_MYSQL_URL at one"
            );
        }
        let store = MySqlStore::connect(&url, 4).await.expect("connect to the test database");
        let s = store.clone();
        let outcome = tokio::spawn(async move {
            s.migrate().await.expect("migrate the test database");
            through_grpc(Arc::new(s), case).await;
        })
        .await;
        store.pool().close().await;
        let dropped = MySql::drop_database(&url).await;
        match outcome {
            Ok(()) => dropped.expect("drop the test database"),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("test task failed: {e}"),
        }
    }

    gochat_repo::conformance::store_conformance!(run);
}
