//! The behaviour every [`Store`] must show. Each implementation's tests
//! instantiate the whole suite with [`store_conformance!`], handing it an
//! async `run(case)` that builds a fresh, empty, migrated store, runs the
//! case on it and cleans up.

use crate::{RepoError, Store, StoredMessage, User};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// One conformance case, bound to the store it runs on.
pub type Case = Box<dyn FnOnce(Arc<dyn Store>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Declare one `#[tokio::test]` per conformance case; `$run` is an
/// `async fn(Case)` that provides the store. The calling crate needs `tokio`
/// (features `rt`, `macros`) among its dev-dependencies.
#[macro_export]
macro_rules! store_conformance {
    ($run:path) => {
        $crate::conformance::store_conformance!(@cases $run;
            users_are_unique_case_insensitively,
            user_lookups,
            existing_users,
            ping,
            empty_batch_is_a_no_op,
            duplicate_seq_refuses_the_whole_batch,
            duplicate_client_msg_id_is_refused,
            max_seq_per_conversation,
            messages_after_pages_ascending_with_limit,
            messages_by_client_ids,
            client_msg_id_is_case_sensitive,
            ids_above_2_pow_63_round_trip,
            utf8mb4_content_round_trips,
            batch_of_500_is_atomic,
        );
    };
    (@cases $run:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                $run(Box::new(|s| Box::pin(async move { $crate::conformance::$case(&*s).await }))).await;
            }
        )*
    };
}
pub use store_conformance;

pub fn user(id: u64, username: &str) -> User {
    User {
        id,
        username: username.into(),
        password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        nickname: format!("nick {username}"),
        avatar_url: String::new(),
        created_at: 1_700_000_000_000,
    }
}

pub fn msg(id: u64, cid: &str, seq: u64, sender: u64, cmid: &str) -> StoredMessage {
    StoredMessage {
        msg_id: id,
        conversation_id: cid.into(),
        seq,
        sender_id: sender,
        client_msg_id: cmid.into(),
        content_type: "text".into(),
        content: format!(r#"{{"text":"message {seq}"}}"#),
        created_at: 1_700_000_000_000 + seq as i64,
    }
}

fn sorted(mut v: Vec<StoredMessage>) -> Vec<StoredMessage> {
    v.sort_by_key(|m| m.msg_id);
    v
}

pub async fn users_are_unique_case_insensitively(s: &dyn Store) {
    s.create_user(&user(1, "Alice")).await.unwrap();
    let r = s.create_user(&user(2, "alice")).await;
    assert!(matches!(r, Err(RepoError::UsernameTaken)), "{r:?}");
    let r = s.create_user(&user(3, "ALICE")).await;
    assert!(matches!(r, Err(RepoError::UsernameTaken)), "{r:?}");
    assert_eq!(s.user_by_username("aLiCe").await.unwrap().unwrap().id, 1);
    assert_eq!(s.existing_users(&[1, 2, 3]).await.unwrap(), vec![1]);
    s.create_user(&user(4, "alice2")).await.unwrap();
}

pub async fn user_lookups(s: &dyn Store) {
    let mut u = user(7, "bob.b-7_x");
    u.avatar_url = "https://example.com/a.png".into();
    s.create_user(&u).await.unwrap();
    assert_eq!(s.user_by_id(7).await.unwrap(), Some(u.clone()));
    assert_eq!(s.user_by_username("bob.b-7_x").await.unwrap(), Some(u.clone()));
    assert_eq!(s.user_by_id(8).await.unwrap(), None);
    assert_eq!(s.user_by_username("carol").await.unwrap(), None);
}

pub async fn existing_users(s: &dyn Store) {
    assert_eq!(s.existing_users(&[]).await.unwrap(), Vec::<u64>::new());
    for id in [10, 20, 30] {
        s.create_user(&user(id, &format!("user{id}"))).await.unwrap();
    }
    let mut found = s.existing_users(&[30, 11, 10, 99]).await.unwrap();
    found.sort_unstable();
    assert_eq!(found, vec![10, 30]);
    // More ids than one lookup query carries.
    let many: Vec<u64> = (1..=1500).collect();
    let mut found = s.existing_users(&many).await.unwrap();
    found.sort_unstable();
    assert_eq!(found, vec![10, 20, 30]);
}

pub async fn ping(s: &dyn Store) {
    s.ping().await.unwrap();
}

pub async fn empty_batch_is_a_no_op(s: &dyn Store) {
    s.insert_messages(&[]).await.unwrap();
    assert_eq!(s.messages_by_client_ids(&[]).await.unwrap(), vec![]);
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), 0);
}

pub async fn duplicate_seq_refuses_the_whole_batch(s: &dyn Store) {
    s.insert_messages(&[msg(10, "s_1_2", 1, 1, "a"), msg(11, "s_1_2", 2, 2, "a")]).await.unwrap();
    // Seq 3 is new but seq 2 is taken: nothing of the batch lands.
    let r = s.insert_messages(&[msg(12, "s_1_2", 3, 1, "b"), msg(13, "s_1_2", 2, 1, "c")]).await;
    assert!(matches!(r, Err(RepoError::Conflict)), "{r:?}");
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), 2);
    assert!(s.messages_by_client_ids(&[(1, "b".into()), (1, "c".into())]).await.unwrap().is_empty());
    // A duplicate inside the batch itself is refused too.
    let r = s.insert_messages(&[msg(14, "s_1_2", 3, 1, "d"), msg(15, "s_1_2", 3, 1, "e")]).await;
    assert!(matches!(r, Err(RepoError::Conflict)), "{r:?}");
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), 2);
    // The refused keys are free afterwards.
    s.insert_messages(&[msg(12, "s_1_2", 3, 1, "b")]).await.unwrap();
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), 3);
}

pub async fn duplicate_client_msg_id_is_refused(s: &dyn Store) {
    s.insert_messages(&[msg(10, "s_1_2", 1, 1, "a")]).await.unwrap();
    // Same sender and client_msg_id, even in another conversation.
    let r = s.insert_messages(&[msg(11, "s_1_3", 1, 1, "a")]).await;
    assert!(matches!(r, Err(RepoError::Conflict)), "{r:?}");
    assert_eq!(s.max_seq("s_1_3").await.unwrap(), 0);
    // Another sender may reuse it.
    s.insert_messages(&[msg(12, "s_1_2", 2, 2, "a")]).await.unwrap();
}

pub async fn max_seq_per_conversation(s: &dyn Store) {
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), 0);
    s.insert_messages(&[msg(10, "s_1_2", 1, 1, "a"), msg(11, "s_1_2", 2, 1, "b"), msg(12, "s_1_3", 7, 1, "c")])
        .await
        .unwrap();
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), 2);
    assert_eq!(s.max_seq("s_1_3").await.unwrap(), 7);
    assert_eq!(s.max_seq("s_2_3").await.unwrap(), 0);
    assert_eq!(s.max_seq("s_1_2x").await.unwrap(), 0);
    assert_eq!(s.max_seq("s_1_2 ").await.unwrap(), 0);
    assert_eq!(s.max_seq("S_1_2").await.unwrap(), 0);
    assert!(s.messages_after("s_1_2 ", 0, 10).await.unwrap().is_empty());
    assert_eq!(s.max_seq("s_é_😀").await.unwrap(), 0);
}

pub async fn messages_after_pages_ascending_with_limit(s: &dyn Store) {
    // Inserted out of order, across two batches, next to another conversation.
    let mut batch: Vec<_> = (1..=10).rev().map(|q| msg(100 + q, "s_1_2", q, 1 + q % 2, &format!("m{q}"))).collect();
    batch.push(msg(500, "s_1_3", 1, 1, "other"));
    let (first, second) = batch.split_at(4);
    s.insert_messages(second).await.unwrap();
    s.insert_messages(first).await.unwrap();

    let seqs = |v: &[StoredMessage]| v.iter().map(|m| m.seq).collect::<Vec<_>>();
    let page = s.messages_after("s_1_2", 0, 4).await.unwrap();
    assert_eq!(seqs(&page), vec![1, 2, 3, 4]);
    assert_eq!(page[0], msg(101, "s_1_2", 1, 2, "m1"));
    let page = s.messages_after("s_1_2", 4, 4).await.unwrap();
    assert_eq!(seqs(&page), vec![5, 6, 7, 8]);
    let page = s.messages_after("s_1_2", 8, 4).await.unwrap();
    assert_eq!(seqs(&page), vec![9, 10]);
    assert!(s.messages_after("s_1_2", 10, 4).await.unwrap().is_empty());
    assert!(s.messages_after("s_1_2", u64::MAX, 4).await.unwrap().is_empty());
    assert!(s.messages_after("s_1_2", 0, 0).await.unwrap().is_empty());
    assert!(s.messages_after("s_9_9", 0, 4).await.unwrap().is_empty());
    assert_eq!(seqs(&s.messages_after("s_1_3", 0, 100).await.unwrap()), vec![1]);
}

pub async fn messages_by_client_ids(s: &dyn Store) {
    let stored = vec![msg(10, "s_1_2", 1, 1, "a"), msg(11, "s_1_2", 2, 2, "a"), msg(12, "s_1_2", 3, 1, "b")];
    s.insert_messages(&stored).await.unwrap();
    let found = s.messages_by_client_ids(&[(1, "a".into()), (2, "a".into()), (3, "a".into())]).await.unwrap();
    assert_eq!(sorted(found), stored[..2].to_vec());
    assert!(s.messages_by_client_ids(&[(2, "b".into())]).await.unwrap().is_empty());
    // More keys than one lookup query carries.
    let mut keys: Vec<(u64, String)> = (0..1200).map(|i| (9, format!("missing-{i}"))).collect();
    keys.push((1, "b".into()));
    assert_eq!(s.messages_by_client_ids(&keys).await.unwrap(), vec![stored[2].clone()]);
}

pub async fn client_msg_id_is_case_sensitive(s: &dyn Store) {
    s.insert_messages(&[msg(10, "s_1_2", 1, 1, "A")]).await.unwrap();
    assert!(s.messages_by_client_ids(&[(1, "a".into())]).await.unwrap().is_empty());
    s.insert_messages(&[msg(11, "s_1_2", 2, 1, "a")]).await.unwrap();
    let found = s.messages_by_client_ids(&[(1, "A".into())]).await.unwrap();
    assert_eq!(found, vec![msg(10, "s_1_2", 1, 1, "A")]);
    let found = s.messages_by_client_ids(&[(1, "a".into()), (1, "A".into())]).await.unwrap();
    assert_eq!(sorted(found).iter().map(|m| m.client_msg_id.as_str()).collect::<Vec<_>>(), vec!["A", "a"]);
    // Trailing spaces are significant too (MySQL's PAD SPACE collations would ignore them).
    s.insert_messages(&[msg(12, "s_1_2", 3, 1, "a ")]).await.unwrap();
    let found = s.messages_by_client_ids(&[(1, "a ".into())]).await.unwrap();
    assert_eq!(found, vec![msg(12, "s_1_2", 3, 1, "a ")]);
}

pub async fn ids_above_2_pow_63_round_trip(s: &dyn Store) {
    let (uid, peer, mid) = (u64::MAX - 5, (1u64 << 63) + 1, u64::MAX - 1);
    let u = user(uid, "big");
    s.create_user(&u).await.unwrap();
    s.create_user(&user(peer, "big2")).await.unwrap();
    assert_eq!(s.user_by_id(uid).await.unwrap(), Some(u.clone()));
    assert_eq!(s.user_by_username("big").await.unwrap(), Some(u));
    let mut found = s.existing_users(&[uid, peer, 5]).await.unwrap();
    found.sort_unstable();
    assert_eq!(found, vec![peer, uid]);

    let cid = format!("s_{peer}_{uid}");
    let m = msg(mid, &cid, 1, uid, "big-1");
    s.insert_messages(&[m.clone(), msg(mid - 1, &cid, 2, peer, "big-2")]).await.unwrap();
    assert_eq!(s.messages_after(&cid, 0, 1).await.unwrap(), vec![m.clone()]);
    assert_eq!(s.messages_by_client_ids(&[(uid, "big-1".into())]).await.unwrap(), vec![m]);
    assert_eq!(s.max_seq(&cid).await.unwrap(), 2);
}

pub async fn utf8mb4_content_round_trips(s: &dyn Store) {
    let mut m = msg(10, "s_1_2", 1, 1, "émoji-😀");
    m.content = r#"{"text":"héllo 😀👍🏽 𝄞 中文 \u0000"}"#.into();
    s.insert_messages(std::slice::from_ref(&m)).await.unwrap();
    assert_eq!(s.messages_after("s_1_2", 0, 10).await.unwrap(), vec![m.clone()]);
    assert_eq!(s.messages_by_client_ids(&[(1, "émoji-😀".into())]).await.unwrap(), vec![m]);
    // A different emoji is a different key.
    assert!(s.messages_by_client_ids(&[(1, "émoji-😁".into())]).await.unwrap().is_empty());
    let mut u = user(3, "emoji_user");
    u.nickname = "Zoë 🦀".into();
    s.create_user(&u).await.unwrap();
    assert_eq!(s.user_by_id(3).await.unwrap(), Some(u));
}

pub async fn batch_of_500_is_atomic(s: &dyn Store) {
    let batch: Vec<_> = (1..=500).map(|q| msg(1000 + q, "s_1_2", q, 1, &format!("c{q}"))).collect();
    s.insert_messages(&batch).await.unwrap();
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), 500);
    assert_eq!(s.messages_after("s_1_2", 0, 1000).await.unwrap(), batch);

    // 499 fresh rows and, last, one duplicate (sender, client_msg_id): none land.
    let mut bad: Vec<_> = (501..1000).map(|q| msg(1000 + q, "s_1_2", q, 2, &format!("c{q}"))).collect();
    bad.push(msg(5000, "s_1_2", 1000, 1, "c1"));
    let r = s.insert_messages(&bad).await;
    assert!(matches!(r, Err(RepoError::Conflict)), "{r:?}");
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), 500);
    let keys: Vec<_> = bad.iter().map(|m| (m.sender_id, m.client_msg_id.clone())).collect();
    assert!(s.messages_by_client_ids(&keys[..499]).await.unwrap().is_empty());
}
