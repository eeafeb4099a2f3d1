//! The behaviour every [`Store`] must show. Each implementation's tests
//! instantiate the whole suite with [`store_conformance!`], handing it an
//! async `run(case)` that builds a fresh, empty, migrated store, runs the
//! case on it and cleans up.

use crate::{Appended, Group, GroupMember, GroupRole, NewMessage, RepoError, Store, StoredMessage, User};
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
            failed_batch_stores_nothing_and_moves_no_counter,
            repeated_client_msg_id_returns_the_stored_row,
            concurrent_appends_to_one_conversation_never_skip_or_repeat,
            max_seq_per_conversation,
            messages_after_pages_ascending_with_limit,
            messages_by_client_ids,
            client_msg_id_is_case_sensitive,
            ids_above_2_pow_63_round_trip,
            utf8mb4_content_round_trips,
            batch_of_500_is_atomic,
            group_create_and_lookups,
            groups_of_user_ascending_and_after_removal,
            add_group_members_returns_only_new_ids,
            add_to_unknown_group_is_group_not_found,
            remove_and_set_role_report_membership,
            delete_group_drops_memberships_keeps_messages,
            group_of_5000_members,
            group_ids_above_2_pow_63_round_trip,
            // privacy
            shares_conversation_through_a_1to1_message_or_a_group,
            group_read_floor_is_the_join_seq,
            group_read_floor_with_history_visible_and_big_ids,
            refresh_rotation_and_reuse_revokes_the_family,
            refresh_expired_unknown_and_concurrent_rotation,
            revoke_family_and_all_sessions_bump_the_version,
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

pub fn group(id: u64, name: &str, owner_id: u64) -> Group {
    Group {
        id,
        name: name.into(),
        owner_id,
        created_at: 1_700_000_000_000 + id as i64 % 1000,
        history_visible_to_new_members: false,
    }
}

pub fn member(user_id: u64, role: GroupRole) -> GroupMember {
    GroupMember { user_id, role, joined_at: 1_700_000_000_000 + user_id as i64 % 1000 }
}

fn ids(members: &[GroupMember]) -> Vec<u64> {
    members.iter().map(|m| m.user_id).collect()
}

fn group_ids(groups: &[Group]) -> Vec<u64> {
    groups.iter().map(|g| g.id).collect()
}

/// The message of an expected row, as logic appends it (no seq).
pub fn new(m: &StoredMessage) -> NewMessage {
    NewMessage::from(m)
}

/// Append `rows` as new messages and check that the store stored each and
/// gave it the seq the case expects.
pub async fn append_expecting(s: &dyn Store, rows: &[StoredMessage]) {
    let batch: Vec<NewMessage> = rows.iter().map(new).collect();
    let out = s.append_messages(&batch).await.unwrap();
    let expected: Vec<Appended> = rows.iter().map(|m| Appended { message: m.clone(), fresh: true }).collect();
    assert_eq!(out, expected);
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
    assert!(s.append_messages(&[]).await.unwrap().is_empty());
    assert_eq!(s.messages_by_client_ids(&[]).await.unwrap(), vec![]);
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), 0);
}

pub async fn failed_batch_stores_nothing_and_moves_no_counter(s: &dyn Store) {
    append_expecting(s, &[msg(10, "s_1_2", 1, 1, "a"), msg(11, "s_1_2", 2, 2, "a")]).await;
    // Message id 10 is taken: the batch fails as a whole. Its other message
    // is not stored and neither conversation's counter moves.
    let r = s.append_messages(&[new(&msg(12, "s_1_2", 3, 1, "b")), new(&msg(10, "s_1_3", 1, 1, "c"))]).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), 2);
    assert_eq!(s.max_seq("s_1_3").await.unwrap(), 0);
    assert!(s.messages_by_client_ids(&[(1, "b".into()), (1, "c".into())]).await.unwrap().is_empty());
    // The next append continues the conversation without a gap.
    append_expecting(s, &[msg(12, "s_1_2", 3, 1, "b"), msg(13, "s_1_3", 1, 1, "c")]).await;
}

pub async fn repeated_client_msg_id_returns_the_stored_row(s: &dyn Store) {
    let first = msg(10, "s_1_2", 1, 1, "a");
    append_expecting(s, std::slice::from_ref(&first)).await;
    // A retry (another msg id, other content) gets the stored row back and takes no seq.
    let mut retry = new(&msg(99, "s_1_2", 0, 1, "a"));
    retry.content = r#"{"text":"changed"}"#.into();
    let out = s.append_messages(&[retry, new(&msg(11, "s_1_2", 2, 2, "b"))]).await.unwrap();
    assert_eq!(out[0], Appended { message: first.clone(), fresh: false });
    assert_eq!(out[1], Appended { message: msg(11, "s_1_2", 2, 2, "b"), fresh: true });
    // Reused in another conversation: the stored row (and its conversation)
    // comes back, and the other conversation's counter does not move.
    let out = s.append_messages(&[new(&msg(12, "s_1_3", 1, 1, "a"))]).await.unwrap();
    assert_eq!(out, vec![Appended { message: first.clone(), fresh: false }]);
    assert_eq!(s.max_seq("s_1_3").await.unwrap(), 0);
    // Within one batch: the first copy is stored, later copies answer with it.
    let out = s.append_messages(&[new(&msg(13, "s_1_2", 3, 1, "c")), new(&msg(14, "s_1_2", 4, 1, "c"))]).await.unwrap();
    assert_eq!(out[0], Appended { message: msg(13, "s_1_2", 3, 1, "c"), fresh: true });
    assert_eq!(out[1], Appended { message: msg(13, "s_1_2", 3, 1, "c"), fresh: false });
    // Another sender may use the same client_msg_id.
    append_expecting(s, &[msg(15, "s_1_2", 4, 2, "a")]).await;
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), 4);
}

/// Appends racing on one conversation (what two logic members do during a
/// rebalance) serialise on its counter: seqs 1..N, each once. A failed
/// append (a deadlock victim, say) is retried with the same batch, as logic
/// does.
pub async fn concurrent_appends_to_one_conversation_never_skip_or_repeat(s: &dyn Store) {
    let (writers, batches, per_batch) = (4u64, 8u64, 5u64);
    let mut appends = Vec::new();
    for w in 0..writers {
        appends.push(async move {
            for b in 0..batches {
                let batch: Vec<NewMessage> = (0..per_batch)
                    .map(|i| {
                        let id = 1000 + (w * batches + b) * per_batch + i;
                        new(&msg(id, "s_1_2", 0, 1 + w, &format!("w{w}-{b}-{i}")))
                    })
                    .collect();
                let mut tries = 0;
                loop {
                    match s.append_messages(&batch).await {
                        Ok(out) => {
                            assert_eq!(out.len(), batch.len());
                            break;
                        }
                        Err(e) if tries < 20 => {
                            tries += 1;
                            let _ = e;
                            tokio::time::sleep(std::time::Duration::from_millis(5 * tries)).await;
                        }
                        Err(e) => panic!("append kept failing: {e}"),
                    }
                }
            }
        });
    }
    futures_util::future::join_all(appends).await;
    let total = writers * batches * per_batch;
    let all = s.messages_after("s_1_2", 0, 1000).await.unwrap();
    assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>());
    let mut keys: Vec<_> = all.iter().map(|m| (m.sender_id, m.client_msg_id.clone())).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len() as u64, total, "every message stored once");
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), total);
}

pub async fn max_seq_per_conversation(s: &dyn Store) {
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), 0);
    append_expecting(s, &[msg(10, "s_1_2", 1, 1, "a"), msg(12, "s_1_3", 1, 1, "c"), msg(11, "s_1_2", 2, 1, "b")]).await;
    append_expecting(s, &[msg(13, "s_1_3", 2, 2, "c")]).await;
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), 2);
    assert_eq!(s.max_seq("s_1_3").await.unwrap(), 2);
    assert_eq!(s.max_seq("s_2_3").await.unwrap(), 0);
    assert_eq!(s.max_seq("s_1_2x").await.unwrap(), 0);
    assert_eq!(s.max_seq("s_1_2 ").await.unwrap(), 0);
    assert_eq!(s.max_seq("S_1_2").await.unwrap(), 0);
    assert!(s.messages_after("s_1_2 ", 0, 10).await.unwrap().is_empty());
    assert_eq!(s.max_seq("s_é_😀").await.unwrap(), 0);
}

pub async fn messages_after_pages_ascending_with_limit(s: &dyn Store) {
    // Across two batches, next to another conversation.
    let conv: Vec<_> = (1..=10).map(|q| msg(100 + q, "s_1_2", q, 1 + q % 2, &format!("m{q}"))).collect();
    let mut first = conv[..6].to_vec();
    first.insert(3, msg(500, "s_1_3", 1, 1, "other"));
    append_expecting(s, &first).await;
    append_expecting(s, &conv[6..]).await;

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
    append_expecting(s, &stored).await;
    let found = s.messages_by_client_ids(&[(1, "a".into()), (2, "a".into()), (3, "a".into())]).await.unwrap();
    assert_eq!(sorted(found), stored[..2].to_vec());
    assert!(s.messages_by_client_ids(&[(2, "b".into())]).await.unwrap().is_empty());
    // More keys than one lookup query carries.
    let mut keys: Vec<(u64, String)> = (0..1200).map(|i| (9, format!("missing-{i}"))).collect();
    keys.push((1, "b".into()));
    assert_eq!(s.messages_by_client_ids(&keys).await.unwrap(), vec![stored[2].clone()]);
}

pub async fn client_msg_id_is_case_sensitive(s: &dyn Store) {
    append_expecting(s, &[msg(10, "s_1_2", 1, 1, "A")]).await;
    assert!(s.messages_by_client_ids(&[(1, "a".into())]).await.unwrap().is_empty());
    append_expecting(s, &[msg(11, "s_1_2", 2, 1, "a")]).await;
    let found = s.messages_by_client_ids(&[(1, "A".into())]).await.unwrap();
    assert_eq!(found, vec![msg(10, "s_1_2", 1, 1, "A")]);
    let found = s.messages_by_client_ids(&[(1, "a".into()), (1, "A".into())]).await.unwrap();
    assert_eq!(sorted(found).iter().map(|m| m.client_msg_id.as_str()).collect::<Vec<_>>(), vec!["A", "a"]);
    // Trailing spaces are significant too (MySQL's PAD SPACE collations would ignore them).
    append_expecting(s, &[msg(12, "s_1_2", 3, 1, "a ")]).await;
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
    append_expecting(s, &[m.clone(), msg(mid - 1, &cid, 2, peer, "big-2")]).await;
    assert_eq!(s.messages_after(&cid, 0, 1).await.unwrap(), vec![m.clone()]);
    assert_eq!(s.messages_by_client_ids(&[(uid, "big-1".into())]).await.unwrap(), vec![m]);
    assert_eq!(s.max_seq(&cid).await.unwrap(), 2);
}

pub async fn utf8mb4_content_round_trips(s: &dyn Store) {
    let mut m = msg(10, "s_1_2", 1, 1, "émoji-😀");
    m.content = r#"{"text":"héllo 😀👍🏽 𝄞 中文 \u0000"}"#.into();
    append_expecting(s, std::slice::from_ref(&m)).await;
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
    append_expecting(s, &batch).await;
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), 500);
    assert_eq!(s.messages_after("s_1_2", 0, 1000).await.unwrap(), batch);

    // 499 fresh rows and, last, one whose message id is taken: none land.
    let mut bad: Vec<_> = (501..1000).map(|q| new(&msg(1000 + q, "s_1_2", q, 2, &format!("c{q}")))).collect();
    bad.push(new(&msg(1001, "s_1_2", 1000, 3, "other")));
    let r = s.append_messages(&bad).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!(s.max_seq("s_1_2").await.unwrap(), 500);
    let keys: Vec<_> = bad.iter().map(|m| (m.sender_id, m.client_msg_id.clone())).collect();
    assert!(s.messages_by_client_ids(&keys).await.unwrap().is_empty());
}

pub async fn group_create_and_lookups(s: &dyn Store) {
    // A 64-character utf8mb4 name (4-byte characters included).
    let g = group(100, &format!("Rust 🦀 中文 {}", "😀".repeat(54)), 3);
    assert_eq!(g.name.chars().count(), 64);
    // Given out of order; listed by user id.
    let members = vec![member(9, GroupRole::Member), member(3, GroupRole::Owner), member(5, GroupRole::Admin)];
    s.create_group(&g, &members).await.unwrap();
    assert_eq!(s.group_by_id(100).await.unwrap(), Some(g.clone()));
    assert_eq!(s.group_by_id(101).await.unwrap(), None);
    assert_eq!(s.group_members(100).await.unwrap(), vec![members[1].clone(), members[2].clone(), members[0].clone()]);
    assert_eq!(s.group_member(100, 5).await.unwrap(), Some(member(5, GroupRole::Admin)));
    assert_eq!(s.group_member(100, 3).await.unwrap().unwrap().role, GroupRole::Owner);
    assert_eq!(s.group_member(100, 4).await.unwrap(), None);
    assert_eq!(s.group_member(101, 3).await.unwrap(), None);
    assert!(s.group_members(101).await.unwrap().is_empty());
    // A group with only its owner.
    let solo = group(7, "solo", 9);
    s.create_group(&solo, &[member(9, GroupRole::Owner)]).await.unwrap();
    assert_eq!(ids(&s.group_members(7).await.unwrap()), vec![9]);
    assert_eq!(s.groups_of_user(9).await.unwrap(), vec![solo, g]);
}

pub async fn groups_of_user_ascending_and_after_removal(s: &dyn Store) {
    for gid in [30, 10, 20] {
        s.create_group(
            &group(gid, &format!("g{gid}"), 1),
            &[member(1, GroupRole::Owner), member(2, GroupRole::Member)],
        )
        .await
        .unwrap();
    }
    s.create_group(&group(40, "other", 3), &[member(3, GroupRole::Owner)]).await.unwrap();
    assert_eq!(group_ids(&s.groups_of_user(1).await.unwrap()), vec![10, 20, 30]);
    assert_eq!(s.groups_of_user(2).await.unwrap()[0], group(10, "g10", 1));
    assert!(s.groups_of_user(99).await.unwrap().is_empty());
    assert!(s.remove_group_member(20, 2).await.unwrap());
    assert_eq!(group_ids(&s.groups_of_user(2).await.unwrap()), vec![10, 30]);
    assert_eq!(group_ids(&s.groups_of_user(1).await.unwrap()), vec![10, 20, 30]);
    assert_eq!(ids(&s.group_members(20).await.unwrap()), vec![1]);
    assert_eq!(s.add_group_members(20, &[member(2, GroupRole::Member)]).await.unwrap(), vec![2]);
    assert_eq!(group_ids(&s.groups_of_user(2).await.unwrap()), vec![10, 20, 30]);
}

pub async fn add_group_members_returns_only_new_ids(s: &dyn Store) {
    s.create_group(&group(1, "g", 10), &[member(10, GroupRole::Owner), member(20, GroupRole::Admin)]).await.unwrap();
    // 20 is already an admin and 10 the owner: they stay as they are. 40
    // twice in one call is added once, with the first entry's role.
    let add = [
        member(50, GroupRole::Member),
        member(20, GroupRole::Member),
        member(40, GroupRole::Admin),
        member(10, GroupRole::Member),
        member(30, GroupRole::Member),
        member(40, GroupRole::Member),
    ];
    assert_eq!(s.add_group_members(1, &add).await.unwrap(), vec![30, 40, 50]);
    let all = s.group_members(1).await.unwrap();
    assert_eq!(ids(&all), vec![10, 20, 30, 40, 50]);
    assert_eq!(all[0], member(10, GroupRole::Owner));
    assert_eq!(all[1], member(20, GroupRole::Admin));
    assert_eq!(all[3].role, GroupRole::Admin);
    // Nothing new, nothing to add.
    assert!(s.add_group_members(1, &add).await.unwrap().is_empty());
    assert!(s.add_group_members(1, &[]).await.unwrap().is_empty());
    assert_eq!(ids(&s.group_members(1).await.unwrap()), vec![10, 20, 30, 40, 50]);
    // More rows than one INSERT carries, around the existing ones.
    let many: Vec<_> = (1..=2500).map(|u| member(u, GroupRole::Member)).collect();
    let added = s.add_group_members(1, &many).await.unwrap();
    assert_eq!(added.len(), 2495);
    assert_eq!(added, (1..=2500).filter(|u| ![10, 20, 30, 40, 50].contains(u)).collect::<Vec<_>>());
    assert_eq!(s.group_members(1).await.unwrap().len(), 2500);
    assert_eq!(s.group_member(1, 10).await.unwrap(), Some(member(10, GroupRole::Owner)));
}

pub async fn add_to_unknown_group_is_group_not_found(s: &dyn Store) {
    let r = s.add_group_members(5, &[member(1, GroupRole::Member)]).await;
    assert!(matches!(r, Err(RepoError::GroupNotFound)), "{r:?}");
    let r = s.add_group_members(5, &[]).await;
    assert!(matches!(r, Err(RepoError::GroupNotFound)), "{r:?}");
    assert!(s.group_members(5).await.unwrap().is_empty());
    assert!(s.groups_of_user(1).await.unwrap().is_empty());
    // A group that exists elsewhere does not make this one exist.
    s.create_group(&group(6, "six", 1), &[member(1, GroupRole::Owner)]).await.unwrap();
    let r = s.add_group_members(5, &[member(2, GroupRole::Member)]).await;
    assert!(matches!(r, Err(RepoError::GroupNotFound)), "{r:?}");
    assert_eq!(ids(&s.group_members(6).await.unwrap()), vec![1]);
}

pub async fn remove_and_set_role_report_membership(s: &dyn Store) {
    s.create_group(&group(1, "g", 1), &[member(1, GroupRole::Owner), member(2, GroupRole::Member)]).await.unwrap();
    s.create_group(&group(2, "h", 1), &[member(1, GroupRole::Owner), member(2, GroupRole::Member)]).await.unwrap();
    assert!(s.set_group_member_role(1, 2, GroupRole::Admin).await.unwrap());
    assert_eq!(s.group_member(1, 2).await.unwrap().unwrap().role, GroupRole::Admin);
    // The same role again is still "is a member".
    assert!(s.set_group_member_role(1, 2, GroupRole::Admin).await.unwrap());
    // Only that group's membership changed.
    assert_eq!(s.group_member(2, 2).await.unwrap().unwrap().role, GroupRole::Member);
    assert!(!s.set_group_member_role(1, 3, GroupRole::Admin).await.unwrap());
    assert!(!s.set_group_member_role(9, 2, GroupRole::Admin).await.unwrap());
    assert_eq!(s.group_member(1, 3).await.unwrap(), None);

    assert!(s.remove_group_member(1, 2).await.unwrap());
    assert!(!s.remove_group_member(1, 2).await.unwrap());
    assert!(!s.remove_group_member(9, 1).await.unwrap());
    assert_eq!(s.group_member(1, 2).await.unwrap(), None);
    assert!(!s.set_group_member_role(1, 2, GroupRole::Member).await.unwrap());
    assert_eq!(ids(&s.group_members(1).await.unwrap()), vec![1]);
    assert_eq!(ids(&s.group_members(2).await.unwrap()), vec![1, 2]);
    // The group itself stays, even when its last member leaves.
    assert!(s.remove_group_member(1, 1).await.unwrap());
    assert!(s.group_members(1).await.unwrap().is_empty());
    assert!(s.group_by_id(1).await.unwrap().is_some());
}

pub async fn delete_group_drops_memberships_keeps_messages(s: &dyn Store) {
    let members = [member(1, GroupRole::Owner), member(2, GroupRole::Member), member(3, GroupRole::Admin)];
    s.create_group(&group(77, "doomed", 1), &members).await.unwrap();
    s.create_group(&group(78, "kept", 1), &members).await.unwrap();
    let history = vec![msg(500, "g_77", 1, 1, "g1"), msg(501, "g_77", 2, 2, "g2")];
    append_expecting(s, &history).await;

    assert!(s.delete_group(77).await.unwrap());
    assert_eq!(s.group_by_id(77).await.unwrap(), None);
    assert!(s.group_members(77).await.unwrap().is_empty());
    assert_eq!(s.group_member(77, 2).await.unwrap(), None);
    for u in [1, 2, 3] {
        assert_eq!(group_ids(&s.groups_of_user(u).await.unwrap()), vec![78]);
    }
    assert_eq!(s.messages_after("g_77", 0, 10).await.unwrap(), history);
    assert_eq!(s.max_seq("g_77").await.unwrap(), 2);
    // Gone for good: deleting again or adding to it.
    assert!(!s.delete_group(77).await.unwrap());
    let r = s.add_group_members(77, &[member(4, GroupRole::Member)]).await;
    assert!(matches!(r, Err(RepoError::GroupNotFound)), "{r:?}");
    assert!(!s.delete_group(12345).await.unwrap());
    // The other group is untouched.
    assert_eq!(ids(&s.group_members(78).await.unwrap()), vec![1, 2, 3]);
    // The id may be created anew, empty of the old members.
    s.create_group(&group(77, "reborn", 2), &[member(2, GroupRole::Owner)]).await.unwrap();
    assert_eq!(s.group_members(77).await.unwrap(), vec![member(2, GroupRole::Owner)]);
}

pub async fn group_of_5000_members(s: &dyn Store) {
    let mut members: Vec<_> = (1..=5000u64).map(|u| member(u * 7, GroupRole::Member)).collect();
    members[0].role = GroupRole::Owner;
    members[1].role = GroupRole::Admin;
    // Given in descending order; listed ascending.
    let given: Vec<_> = members.iter().rev().cloned().collect();
    s.create_group(&group(1, "big", 7), &given).await.unwrap();
    assert_eq!(s.group_members(1).await.unwrap(), members);
    assert_eq!(s.group_member(1, 7 * 5000).await.unwrap(), Some(members[4999].clone()));
    assert_eq!(group_ids(&s.groups_of_user(7 * 2500).await.unwrap()), vec![1]);
    // create_group is atomic: a repeated member refuses the whole group.
    let mut bad: Vec<_> = (1..=3000u64).map(|u| member(u, GroupRole::Member)).collect();
    bad.push(member(1500, GroupRole::Admin));
    assert!(s.create_group(&group(2, "bad", 1), &bad).await.is_err());
    assert_eq!(s.group_by_id(2).await.unwrap(), None);
    assert!(s.group_members(2).await.unwrap().is_empty());
    assert_eq!(group_ids(&s.groups_of_user(1).await.unwrap()), Vec::<u64>::new());
}

pub async fn group_ids_above_2_pow_63_round_trip(s: &dyn Store) {
    let (gid, low_gid) = (u64::MAX - 3, 5u64);
    let (owner, big, max) = ((1u64 << 63) + 1, u64::MAX - 1, u64::MAX);
    let g = group(gid, "big ids", owner);
    s.create_group(&g, &[member(max, GroupRole::Member), member(owner, GroupRole::Owner), member(3, GroupRole::Admin)])
        .await
        .unwrap();
    s.create_group(&group(low_gid, "small id", owner), &[member(owner, GroupRole::Owner)]).await.unwrap();
    assert_eq!(s.group_by_id(gid).await.unwrap(), Some(g.clone()));
    // Ascending as u64, across 2^63.
    assert_eq!(ids(&s.group_members(gid).await.unwrap()), vec![3, owner, max]);
    assert_eq!(group_ids(&s.groups_of_user(owner).await.unwrap()), vec![low_gid, gid]);
    assert_eq!(s.groups_of_user(max).await.unwrap(), vec![g]);
    assert_eq!(s.group_member(gid, max).await.unwrap(), Some(member(max, GroupRole::Member)));
    assert_eq!(
        s.add_group_members(
            gid,
            &[member(big, GroupRole::Member), member(max, GroupRole::Admin), member(4, GroupRole::Member)]
        )
        .await
        .unwrap(),
        vec![4, big]
    );
    assert_eq!(ids(&s.group_members(gid).await.unwrap()), vec![3, 4, owner, big, max]);
    assert!(s.set_group_member_role(gid, big, GroupRole::Admin).await.unwrap());
    assert_eq!(s.group_member(gid, big).await.unwrap().unwrap().role, GroupRole::Admin);
    assert!(s.remove_group_member(gid, max).await.unwrap());
    assert!(s.groups_of_user(max).await.unwrap().is_empty());
    let m = msg(u64::MAX, &format!("g_{gid}"), 1, owner, "big-g");
    append_expecting(s, std::slice::from_ref(&m)).await;
    assert!(s.delete_group(gid).await.unwrap());
    assert_eq!(group_ids(&s.groups_of_user(owner).await.unwrap()), vec![low_gid]);
    assert!(s.group_members(gid).await.unwrap().is_empty());
    assert_eq!(s.messages_after(&format!("g_{gid}"), 0, 10).await.unwrap(), vec![m]);
}

// privacy

pub async fn shares_conversation_through_a_1to1_message_or_a_group(s: &dyn Store) {
    for (a, b) in [(1, 2), (2, 1), (1, 3), (3, 4)] {
        assert!(!s.shares_conversation(a, b).await.unwrap(), "{a} and {b} are strangers");
    }
    assert!(s.shares_conversation(5, 5).await.unwrap(), "a user always shares with themself");
    // A failed append creates no conversation.
    append_expecting(s, &[msg(10, "s_1_9", 1, 1, "x")]).await;
    assert!(s.append_messages(&[new(&msg(10, "s_1_2", 1, 1, "y"))]).await.is_err());
    assert!(!s.shares_conversation(1, 2).await.unwrap());
    // One message makes a 1:1 conversation, seen from both sides.
    append_expecting(s, &[msg(11, "s_1_2", 1, 2, "a")]).await;
    assert!(s.shares_conversation(1, 2).await.unwrap());
    assert!(s.shares_conversation(2, 1).await.unwrap());
    assert!(!s.shares_conversation(2, 3).await.unwrap());
    // Co-members of a group share it, whatever else either is in.
    s.create_group(&group(100, "other", 3), &[member(3, GroupRole::Owner), member(5, GroupRole::Member)])
        .await
        .unwrap();
    s.create_group(&group(101, "ours", 3), &[member(3, GroupRole::Owner), member(4, GroupRole::Member)]).await.unwrap();
    assert!(s.shares_conversation(3, 4).await.unwrap());
    assert!(s.shares_conversation(4, 3).await.unwrap());
    assert!(s.shares_conversation(5, 3).await.unwrap());
    assert!(!s.shares_conversation(4, 5).await.unwrap(), "two groups of one owner are not one group");
    assert_eq!(s.add_group_members(100, &[member(4, GroupRole::Member)]).await.unwrap(), vec![4]);
    assert!(s.shares_conversation(4, 5).await.unwrap());
    // Leaving ends it; a dissolved group shares nothing.
    assert!(s.remove_group_member(101, 4).await.unwrap());
    assert!(s.shares_conversation(3, 4).await.unwrap(), "still both in group 100");
    assert!(s.delete_group(100).await.unwrap());
    assert!(!s.shares_conversation(3, 4).await.unwrap());
    assert!(!s.shares_conversation(4, 5).await.unwrap());
    // Ids above 2^63, for both kinds.
    let (big, bigger) = ((1u64 << 63) + 7, u64::MAX - 1);
    assert!(!s.shares_conversation(big, bigger).await.unwrap());
    append_expecting(s, &[msg(12, &format!("s_{big}_{bigger}"), 1, big, "big")]).await;
    assert!(s.shares_conversation(bigger, big).await.unwrap());
    assert!(!s.shares_conversation(big, 1).await.unwrap());
    s.create_group(&group(u64::MAX, "big", big), &[member(big, GroupRole::Owner), member(1, GroupRole::Member)])
        .await
        .unwrap();
    assert!(s.shares_conversation(1, big).await.unwrap());
}

/// Append `n` messages to `cid` from user 1, seqs `first..first + n`;
/// message ids `id_base + seq`.
async fn append_run(s: &dyn Store, cid: &str, first: u64, n: u64, id_base: u64) {
    let rows: Vec<_> = (first..first + n).map(|q| msg(id_base + q, cid, q, 1, &format!("{id_base}-{q}"))).collect();
    append_expecting(s, &rows).await;
}

pub async fn group_read_floor_is_the_join_seq(s: &dyn Store) {
    // The initial members, added to a brand new conversation, join at 0.
    s.create_group(&group(1, "g", 1), &[member(1, GroupRole::Owner), member(2, GroupRole::Member)]).await.unwrap();
    assert!(!s.group_by_id(1).await.unwrap().unwrap().history_visible_to_new_members);
    assert_eq!(s.group_read_floor(1, 1).await.unwrap(), Some(0));
    assert_eq!(s.group_read_floor(1, 2).await.unwrap(), Some(0));
    assert_eq!(s.group_read_floor(1, 3).await.unwrap(), None, "not a member");
    assert_eq!(s.group_read_floor(9, 1).await.unwrap(), None, "no such group");
    // Added after 5 messages: joins at 5. Adding again changes nothing.
    append_run(s, "g_1", 1, 5, 1000).await;
    assert_eq!(s.add_group_members(1, &[member(3, GroupRole::Member)]).await.unwrap(), vec![3]);
    assert_eq!(s.group_read_floor(1, 3).await.unwrap(), Some(5));
    append_run(s, "g_1", 6, 2, 1000).await;
    assert!(s
        .add_group_members(1, &[member(3, GroupRole::Member), member(2, GroupRole::Member)])
        .await
        .unwrap()
        .is_empty());
    assert_eq!(s.group_read_floor(1, 3).await.unwrap(), Some(5));
    assert_eq!(s.group_read_floor(1, 2).await.unwrap(), Some(0), "earlier members keep theirs");
    // Another conversation's seqs do not count.
    append_run(s, "g_10", 1, 9, 2000).await;
    append_run(s, "s_1_3", 1, 20, 3000).await;
    assert_eq!(s.add_group_members(1, &[member(4, GroupRole::Member)]).await.unwrap(), vec![4]);
    assert_eq!(s.group_read_floor(1, 4).await.unwrap(), Some(7));
    // Removed and re-added: a new join seq.
    assert!(s.remove_group_member(1, 3).await.unwrap());
    assert_eq!(s.group_read_floor(1, 3).await.unwrap(), None);
    append_run(s, "g_1", 8, 3, 1000).await;
    assert_eq!(s.add_group_members(1, &[member(3, GroupRole::Member)]).await.unwrap(), vec![3]);
    assert_eq!(s.group_read_floor(1, 3).await.unwrap(), Some(10));
    // A group created in an empty conversation and added to before any message: 0.
    s.create_group(&group(2, "h", 1), &[member(1, GroupRole::Owner)]).await.unwrap();
    assert_eq!(s.add_group_members(2, &[member(5, GroupRole::Member)]).await.unwrap(), vec![5]);
    assert_eq!(s.group_read_floor(2, 5).await.unwrap(), Some(0));
    // Dissolved: nobody reads it.
    assert!(s.delete_group(1).await.unwrap());
    assert_eq!(s.group_read_floor(1, 1).await.unwrap(), None);
}

pub async fn group_read_floor_with_history_visible_and_big_ids(s: &dyn Store) {
    let gid = u64::MAX - 3;
    let (owner, late) = ((1u64 << 63) + 1, u64::MAX);
    let mut open = group(gid, "open", owner);
    open.history_visible_to_new_members = true;
    s.create_group(&open, &[member(owner, GroupRole::Owner)]).await.unwrap();
    assert_eq!(s.group_by_id(gid).await.unwrap(), Some(open.clone()));
    assert_eq!(s.groups_of_user(owner).await.unwrap(), vec![open.clone()]);
    let cid = format!("g_{gid}");
    append_run(s, &cid, 1, 4, 4000).await;
    assert_eq!(s.add_group_members(gid, &[member(late, GroupRole::Member)]).await.unwrap(), vec![late]);
    assert_eq!(s.group_read_floor(gid, late).await.unwrap(), Some(0), "history visible: the whole backlog");
    // The same ids in a closed group: the join seq, read from the right counter.
    let closed_gid = (1u64 << 63) + 5;
    s.create_group(&group(closed_gid, "closed", owner), &[member(owner, GroupRole::Owner)]).await.unwrap();
    append_run(s, &format!("g_{closed_gid}"), 1, 3, 2000).await;
    assert_eq!(s.add_group_members(closed_gid, &[member(late, GroupRole::Member)]).await.unwrap(), vec![late]);
    assert_eq!(s.group_read_floor(closed_gid, late).await.unwrap(), Some(3));
    assert_eq!(s.group_read_floor(closed_gid, owner).await.unwrap(), Some(0));
}

// tokens

fn refresh(hash: &str, user_id: u64, family_id: u64, expires_at: i64) -> crate::RefreshToken {
    crate::RefreshToken { token_hash: hash.repeat(64 / hash.len()), user_id, family_id, created_at: 1_000, expires_at }
}

fn h(s: &str) -> String {
    s.repeat(64 / s.len())
}

pub async fn refresh_rotation_and_reuse_revokes_the_family(s: &dyn Store) {
    use crate::Rotation;
    let big = u64::MAX - 3;
    s.create_refresh_token(&refresh("a", big, big - 1, 10_000)).await.unwrap();
    s.create_refresh_token(&refresh("z", 5, 6, 10_000)).await.unwrap();
    assert_eq!(
        s.rotate_refresh_token(&h("a"), &h("b"), 20_000, 2_000).await.unwrap(),
        Rotation::Rotated { user_id: big, family_id: big - 1 }
    );
    assert_eq!(
        s.rotate_refresh_token(&h("b"), &h("c"), 30_000, 3_000).await.unwrap(),
        Rotation::Rotated { user_id: big, family_id: big - 1 }
    );
    // "a" again: reuse; the family (a, b, c) is revoked, c included.
    assert_eq!(
        s.rotate_refresh_token(&h("a"), &h("d"), 30_000, 4_000).await.unwrap(),
        Rotation::Reused { user_id: big, family_id: big - 1 }
    );
    assert_eq!(
        s.rotate_refresh_token(&h("c"), &h("e"), 30_000, 4_000).await.unwrap(),
        Rotation::Revoked { user_id: big }
    );
    assert_eq!(s.rotate_refresh_token(&h("d"), &h("f"), 30_000, 4_000).await.unwrap(), Rotation::Unknown);
    // Another family is untouched.
    assert_eq!(
        s.rotate_refresh_token(&h("z"), &h("y"), 30_000, 4_000).await.unwrap(),
        Rotation::Rotated { user_id: 5, family_id: 6 }
    );
}

pub async fn refresh_expired_unknown_and_concurrent_rotation(s: &dyn Store) {
    use crate::Rotation;
    s.create_refresh_token(&refresh("a", 1, 1, 5_000)).await.unwrap();
    assert_eq!(s.rotate_refresh_token(&h("a"), &h("b"), 9_000, 5_000).await.unwrap(), Rotation::Expired { user_id: 1 });
    assert_eq!(s.rotate_refresh_token(&h("q"), &h("b"), 9_000, 1_000).await.unwrap(), Rotation::Unknown);
    // A new token of the same user deletes its expired ones.
    let mut t = refresh("c", 1, 2, 90_000);
    t.created_at = 6_000;
    s.create_refresh_token(&t).await.unwrap();
    assert_eq!(s.rotate_refresh_token(&h("a"), &h("b"), 9_000, 6_000).await.unwrap(), Rotation::Unknown);
    // Two rotations of one token at once: exactly one wins.
    let (x, y) = futures_util::future::join(
        s.rotate_refresh_token(&h("c"), &h("d"), 90_000, 7_000),
        s.rotate_refresh_token(&h("c"), &h("e"), 90_000, 7_000),
    )
    .await;
    let outcomes = [x.unwrap(), y.unwrap()];
    let won = outcomes.iter().filter(|o| matches!(o, Rotation::Rotated { .. })).count();
    assert_eq!(won, 1, "{outcomes:?}");
    assert!(outcomes.contains(&Rotation::Reused { user_id: 1, family_id: 2 }), "{outcomes:?}");
}

pub async fn revoke_family_and_all_sessions_bump_the_version(s: &dyn Store) {
    use crate::Rotation;
    assert_eq!(s.token_version(7).await.unwrap(), 0);
    s.create_refresh_token(&refresh("a", 7, 1, 90_000)).await.unwrap();
    s.create_refresh_token(&refresh("b", 7, 2, 90_000)).await.unwrap();
    s.create_refresh_token(&refresh("c", 7, 3, 90_000)).await.unwrap();
    s.create_refresh_token(&refresh("d", 8, 4, 90_000)).await.unwrap();
    assert_eq!(s.revoke_refresh_family(&h("a")).await.unwrap(), Some(7));
    assert_eq!(s.revoke_refresh_family(&h("e")).await.unwrap(), None);
    assert_eq!(
        s.rotate_refresh_token(&h("a"), &h("x"), 90_000, 2_000).await.unwrap(),
        Rotation::Revoked { user_id: 7 }
    );
    assert_eq!(s.token_version(7).await.unwrap(), 0, "a one-session logout keeps the version");
    assert_eq!(s.revoke_all_sessions(7).await.unwrap(), 1);
    assert_eq!(s.revoke_all_sessions(7).await.unwrap(), 2);
    assert_eq!(s.token_version(7).await.unwrap(), 2);
    assert_eq!(s.token_version(8).await.unwrap(), 0);
    for t in ["b", "c"] {
        assert_eq!(
            s.rotate_refresh_token(&h(t), &h("y"), 90_000, 2_000).await.unwrap(),
            Rotation::Revoked { user_id: 7 }
        );
    }
    assert_eq!(
        s.rotate_refresh_token(&h("d"), &h("y"), 90_000, 2_000).await.unwrap(),
        Rotation::Rotated { user_id: 8, family_id: 4 }
    );
}
