//! Privacy through a real `gochat dev` process (issue #9, items 14-15):
//! presence only for users who share a conversation, and group history
//! only from a member's join. The scenarios are in support/privacy.rs; the
//! cluster runs them too (cluster_e2e.rs).

mod support;

use support::*;

#[tokio::test]
async fn presence_is_shown_only_to_users_who_share_a_conversation() {
    let dir = temp_dir("privacy-presence");
    let srv = Server::start(&dir, 2);
    privacy::presence_scenario(&srv, "p").await;
}

#[tokio::test]
async fn members_added_later_read_group_history_from_their_join() {
    let dir = temp_dir("privacy-history");
    let srv = Server::start(&dir, 2);
    privacy::history_from_join_scenario(&srv, "h").await;
}
