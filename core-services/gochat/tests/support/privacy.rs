//! Privacy scenarios (presence only through a shared conversation; group
//! history from the join), run against embedded mode (dev_privacy.rs) and
//! against a cluster (cluster_e2e.rs). `srv` is whatever serves REST and
//! WebSockets: the `gochat dev` process or a gateway.

use super::*;
use reqwest::Method;

/// GET presence: (status, error code or "", connections).
async fn presence(srv: &Server, token: &str, uid: &str) -> (u16, String, u64) {
    let (s, v) = srv.get(&format!("/api/v1/users/{uid}/presence"), token).await;
    (s, v["error"]["code"].as_str().unwrap_or("").to_owned(), v["connections"].as_u64().unwrap_or(0))
}

const REFUSED: (u16, &str, u64) = (403, "no_shared_conversation", 0);

fn refused(p: (u16, String, u64)) -> bool {
    (p.0, p.1.as_str(), p.2) == REFUSED
}

/// Send a text message and read until its ack (skipping pushes); its seq.
pub async fn send_acked(ws: &mut Ws, target: Value, cmid: &str) -> u64 {
    let mut m = json!({"type":"send-message","client_msg_id":cmid,"content_type":"text","content":{"text":cmid}});
    for (k, v) in target.as_object().unwrap() {
        m[k] = v.clone();
    }
    send(ws, m).await;
    loop {
        let f = recv(ws).await;
        match f["type"].as_str() {
            Some("message-ack") if f["client_msg_id"] == cmid => return f["seq"].as_u64().unwrap(),
            Some("new-message") => continue,
            _ => panic!("expected the ack of {cmid}, got {f}"),
        }
    }
}

/// Seqs of the whole readable history of `cid` for `token` (REST, paged).
pub async fn history_seqs(srv: &Server, cid: &str, token: &str, after_seq: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut after = after_seq;
    loop {
        let (s, h) = srv.get(&format!("/api/v1/conversations/{cid}/messages?after_seq={after}&limit=3"), token).await;
        assert_eq!(s, 200, "{h}");
        let page: Vec<u64> = h["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        after = page.last().copied().unwrap_or(after);
        out.extend(page);
        if !h["has_more"].as_bool().unwrap() {
            return out;
        }
    }
}

/// Wait until `cid`'s last stored seq (read by a member who sees it all) is `seq`.
async fn wait_last_seq(srv: &Server, cid: &str, token: &str, seq: u64) {
    for _ in 0..300 {
        if history_seqs(srv, cid, token, 0).await.last() == Some(&seq) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{cid} never reached seq {seq}");
}

/// Seqs of `cid` through WebSocket `sync` from `after_seq`, paged by `limit`.
pub async fn sync_seqs(ws: &mut Ws, cid: &str, after_seq: u64, limit: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut after = after_seq;
    loop {
        send(ws, json!({"type":"sync","conversation_id":cid,"after_seq":after,"limit":limit})).await;
        let r = loop {
            let f = recv(ws).await;
            if f["type"] != "new-message" {
                break f;
            }
        };
        assert_eq!(r["type"], "sync-result", "{r}");
        let page: Vec<u64> = r["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        after = page.last().copied().unwrap_or(after);
        out.extend(page);
        if !r["has_more"].as_bool().unwrap() {
            return out;
        }
    }
}

/// Presence is shown to the user, a 1:1 peer (once their conversation holds
/// a message) and a group co-member; a stranger gets 403, also for an id of
/// no user.
pub async fn presence_scenario(srv: &Server, tag: &str) {
    let (bob, bob_tok) = srv.user(&format!("{tag}bob")).await;
    let (alice, alice_tok) = srv.user(&format!("{tag}alice")).await;
    let (_carol, carol_tok) = srv.user(&format!("{tag}carol")).await;
    let (dave, dave_tok) = srv.user(&format!("{tag}dave")).await;
    let _b1 = srv.connect(&bob_tok).await;
    srv.wait_online(&bob_tok, &bob, 1).await;
    assert_eq!(presence(srv, &bob_tok, &bob).await, (200, String::new(), 1), "one's own presence");

    // Strangers: refused, and an id of no user looks the same.
    for tok in [&carol_tok, &alice_tok, &dave_tok] {
        assert!(refused(presence(srv, tok, &bob).await), "a stranger reads bob's presence");
    }
    assert!(refused(presence(srv, &carol_tok, "12345").await), "no user: the same answer");
    let (s, v) = srv.get(&format!("/api/v1/users/{bob}x/presence"), &carol_tok).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("invalid_user_id")));
    let r = srv.http.get(srv.url(&format!("/api/v1/users/{bob}/presence"))).send().await.unwrap();
    assert_eq!(r.status(), 401);

    // A 1:1 peer, from the first message on, both ways.
    let mut a1 = srv.connect(&alice_tok).await;
    assert_eq!(send_acked(&mut a1, json!({"to_user_id": bob}), &format!("{tag}hi")).await, 1);
    assert_eq!(presence(srv, &alice_tok, &bob).await, (200, String::new(), 1));
    srv.wait_online(&alice_tok, &alice, 1).await;
    assert_eq!(presence(srv, &bob_tok, &alice).await, (200, String::new(), 1));

    // A group co-member, while both are in the group.
    let (s, g) = call(
        srv,
        Method::POST,
        "/api/v1/groups",
        &dave_tok,
        Some(json!({"name": format!("{tag} team"), "member_ids": [bob]})),
    )
    .await;
    assert_eq!(s, 201, "{g}");
    let gid = g["group_id"].as_str().unwrap().to_owned();
    assert_eq!(presence(srv, &dave_tok, &bob).await, (200, String::new(), 1));
    assert_eq!(presence(srv, &bob_tok, &dave).await, (200, String::new(), 0));
    assert!(refused(presence(srv, &carol_tok, &bob).await), "still a stranger");
    let (s, _) = call(srv, Method::DELETE, &format!("/api/v1/groups/{gid}/members/{bob}"), &dave_tok, None).await;
    assert_eq!(s, 204);
    assert!(refused(presence(srv, &dave_tok, &bob).await), "no longer a co-member");
}

/// A member added after 5 messages reads only what follows their join, over
/// REST and WebSocket sync; re-added after leaving, from the new join; in a
/// group created with history_visible_to_new_members, the whole backlog.
pub async fn history_from_join_scenario(srv: &Server, tag: &str) {
    let (_owner, owner_tok) = srv.user(&format!("{tag}owner")).await;
    let (early, early_tok) = srv.user(&format!("{tag}early")).await;
    let (late, late_tok) = srv.user(&format!("{tag}late")).await;

    let (s, g) = call(
        srv,
        Method::POST,
        "/api/v1/groups",
        &owner_tok,
        Some(json!({"name": format!("{tag} closed"), "member_ids": [early]})),
    )
    .await;
    assert_eq!(s, 201, "{g}");
    assert_eq!(g["history_visible_to_new_members"], false, "the default");
    let gid = g["group_id"].as_str().unwrap().to_owned();
    let cid = g["conversation_id"].as_str().unwrap().to_owned();
    wait_last_seq(srv, &cid, &owner_tok, 1).await; // seq 1: the group's creation
    let mut o = srv.connect(&owner_tok).await;
    for k in 0..5 {
        assert_eq!(send_acked(&mut o, json!({"conversation_id": cid}), &format!("{tag}before{k}")).await, 2 + k);
    }
    let add = |uid: String| {
        let (tok, gid) = (owner_tok.clone(), gid.clone());
        async move {
            let path = format!("/api/v1/groups/{gid}/members");
            let (s, g) = call(srv, Method::POST, &path, &tok, Some(json!({"user_ids": [uid]}))).await;
            assert_eq!(s, 200, "{g}");
        }
    };
    add(late.clone()).await;
    wait_last_seq(srv, &cid, &owner_tok, 7).await; // seq 7: member_joined [late]
    for k in 0..2 {
        assert_eq!(send_acked(&mut o, json!({"conversation_id": cid}), &format!("{tag}after{k}")).await, 8 + k);
    }

    // REST: from the join on, whatever after_seq asks for.
    assert_eq!(history_seqs(srv, &cid, &late_tok, 0).await, vec![7, 8, 9]);
    assert_eq!(history_seqs(srv, &cid, &late_tok, 3).await, vec![7, 8, 9]);
    assert_eq!(history_seqs(srv, &cid, &late_tok, 8).await, vec![9]);
    let (_, h) = srv.get(&format!("/api/v1/conversations/{cid}/messages"), &late_tok).await;
    assert_eq!(h["messages"][0]["content"], json!({"event": "member_joined", "user_ids": [late]}));
    assert_eq!(history_seqs(srv, &cid, &early_tok, 0).await, (1..=9).collect::<Vec<_>>(), "initial members: all");
    // WebSocket sync: the same, page by page.
    let mut l = srv.connect(&late_tok).await;
    assert_eq!(sync_seqs(&mut l, &cid, 0, 1).await, vec![7, 8, 9]);
    assert_eq!(sync_seqs(&mut l, &cid, 2, 100).await, vec![7, 8, 9]);
    let mut e = srv.connect(&early_tok).await;
    assert_eq!(sync_seqs(&mut e, &cid, 0, 100).await, (1..=9).collect::<Vec<_>>());
    let (s, g) = call(srv, Method::GET, &format!("/api/v1/groups/{gid}"), &late_tok, None).await;
    assert_eq!((s, &g["history_visible_to_new_members"]), (200, &json!(false)));

    // Left and re-added: a new join seq.
    let (s, _) = call(srv, Method::DELETE, &format!("/api/v1/groups/{gid}/members/{late}"), &late_tok, None).await;
    assert_eq!(s, 204);
    wait_last_seq(srv, &cid, &owner_tok, 10).await; // member_left
    assert_eq!(send_acked(&mut o, json!({"conversation_id": cid}), &format!("{tag}gone")).await, 11);
    add(late.clone()).await;
    wait_last_seq(srv, &cid, &owner_tok, 12).await; // member_joined again
    assert_eq!(history_seqs(srv, &cid, &late_tok, 0).await, vec![12]);
    assert_eq!(sync_seqs(&mut l, &cid, 0, 100).await, vec![12]);

    // A group that shows its history to new members.
    let (s, g) = call(
        srv,
        Method::POST,
        "/api/v1/groups",
        &owner_tok,
        Some(json!({"name": format!("{tag} open"), "member_ids": [], "history_visible_to_new_members": true})),
    )
    .await;
    assert_eq!((s, &g["history_visible_to_new_members"]), (201, &json!(true)), "{g}");
    let (ogid, ocid) = (g["group_id"].as_str().unwrap().to_owned(), g["conversation_id"].as_str().unwrap().to_owned());
    wait_last_seq(srv, &ocid, &owner_tok, 1).await;
    for k in 0..5 {
        assert_eq!(send_acked(&mut o, json!({"conversation_id": ocid}), &format!("{tag}open{k}")).await, 2 + k);
    }
    let path = format!("/api/v1/groups/{ogid}/members");
    let (s, g) = call(srv, Method::POST, &path, &owner_tok, Some(json!({"user_ids": [late]}))).await;
    assert_eq!((s, &g["history_visible_to_new_members"]), (200, &json!(true)), "{g}");
    wait_last_seq(srv, &ocid, &owner_tok, 7).await;
    assert_eq!(history_seqs(srv, &ocid, &late_tok, 0).await, (1..=7).collect::<Vec<_>>());
    assert_eq!(sync_seqs(&mut l, &ocid, 0, 100).await, (1..=7).collect::<Vec<_>>());
    let (s, list) = call(srv, Method::GET, "/api/v1/groups", &late_tok, None).await;
    assert_eq!(s, 200);
    let flags: Vec<(String, bool)> = list["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["group_id"].as_str().unwrap().to_owned(), g["history_visible_to_new_members"].as_bool().unwrap()))
        .collect();
    assert!(flags.contains(&(gid, false)) && flags.contains(&(ogid, true)), "{flags:?}");
}
