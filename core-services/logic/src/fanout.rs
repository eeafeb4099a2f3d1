//! Fan-out planning, shared by logic (small groups and 1:1, inline after
//! persistence) and the task tier (large groups): the sessions of every
//! recipient become ONE push per (gateway, shard) carrying the recipient list
//! and the frame; the shard encodes the WebSocket frame once and writes the
//! same bytes to each local recipient.

use crate::session::Session;
use bytes::Bytes;
use gochat_proto::bus;
use std::sync::Arc;

/// One outbound push: a frame for some recipients on one (gateway, shard).
#[derive(Debug, Clone)]
pub struct Outbound {
    pub gateway_id: Arc<str>,
    pub shard: u32,
    pub recipients: Vec<bus::Recipient>,
    pub frame: Bytes,
    /// Close these connections after the frame (revoked sessions, the
    /// per-user cap); None for ordinary deliveries.
    pub close: Option<bus::CloseConn>,
}

impl Outbound {
    /// A frame for one connection (acks, errors, sync results).
    pub fn to_conn(origin: &bus::ConnRef, user_id: u64, frame: Bytes) -> Self {
        Self {
            gateway_id: origin.gateway_id.as_str().into(),
            shard: origin.shard,
            recipients: vec![bus::Recipient { conn_id: origin.conn_id, user_id }],
            frame,
            close: None,
        }
    }
}

/// Append the pushes that deliver `frame` to `sessions` (skipping `exclude`,
/// the sending device): one per (gateway, shard), split when a push would
/// carry more than `max_recipients`. Returns how many connections it reaches.
pub fn plan<'a>(
    frame: &Bytes,
    sessions: impl IntoIterator<Item = (u64, &'a Session)>,
    exclude: Option<&Session>,
    max_recipients: usize,
    out: &mut Vec<Outbound>,
) -> usize {
    let first = out.len();
    let mut reached = 0;
    // (gateway, shard) -> index in `out` of its push being filled. The number
    // of (gateway, shard) pairs is small, so a linear scan beats hashing.
    let mut open: Vec<(Arc<str>, u32, usize)> = Vec::new();
    for (user_id, s) in sessions {
        if exclude == Some(s) {
            continue;
        }
        reached += 1;
        let r = bus::Recipient { conn_id: s.conn_id, user_id };
        match open.iter_mut().find(|(g, sh, _)| *sh == s.shard && *g == s.gateway_id) {
            Some((_, _, i)) if out[*i].recipients.len() < max_recipients => out[*i].recipients.push(r),
            Some((_, _, i)) => {
                *i = out.len();
                out.push(Outbound {
                    gateway_id: s.gateway_id.clone(),
                    shard: s.shard,
                    recipients: vec![r],
                    frame: frame.clone(),
                    close: None,
                });
            }
            None => {
                open.push((s.gateway_id.clone(), s.shard, out.len()));
                out.push(Outbound {
                    gateway_id: s.gateway_id.clone(),
                    shard: s.shard,
                    recipients: vec![r],
                    frame: frame.clone(),
                    close: None,
                });
            }
        }
    }
    debug_assert!(out[first..].iter().all(|o| !o.recipients.is_empty()));
    reached
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(gw: &str, shard: u32, conn: u64) -> Session {
        Session { gateway_id: gw.into(), shard, conn_id: conn }
    }

    #[test]
    fn one_push_per_gateway_shard_sharing_the_frame() {
        let frame = Bytes::from_static(b"{}");
        let sessions = [(1, s("a", 0, 1)), (2, s("a", 1, 2)), (3, s("a", 0, 3)), (4, s("b", 0, 4)), (5, s("a", 0, 5))];
        let mut out = Vec::new();
        let reached = plan(&frame, sessions.iter().map(|(u, s)| (*u, s)), Some(&s("a", 0, 5)), 100, &mut out);
        assert_eq!(reached, 4);
        assert_eq!(out.len(), 3);
        assert_eq!((&*out[0].gateway_id, out[0].shard, out[0].recipients.len()), ("a", 0, 2));
        assert_eq!((&*out[1].gateway_id, out[1].shard), ("a", 1));
        assert_eq!((&*out[2].gateway_id, out[2].shard), ("b", 0));
        // the frame is shared, not copied
        assert!(out.iter().all(|o| o.frame.as_ptr() == frame.as_ptr()));
    }

    #[test]
    fn big_shards_split_into_bounded_pushes() {
        let frame = Bytes::from_static(b"{}");
        let sessions: Vec<(u64, Session)> = (0..10).map(|i| (i, s("a", 0, i))).collect();
        let mut out = Vec::new();
        plan(&frame, sessions.iter().map(|(u, s)| (*u, s)), None, 4, &mut out);
        assert_eq!(out.iter().map(|o| o.recipients.len()).collect::<Vec<_>>(), vec![4, 4, 2]);
    }
}
