//! `mixed`: a realistic blend at once, on disjoint users — idle connections
//! held with heartbeats (most of a real chat server's sockets), 1:1 pairs
//! chatting, and one busy group. Counters are reported per part
//! (`idle.*`, `pingpong.*`, `group.*`); the latency histogram holds every
//! message delivery (1:1 and group).

use crate::report::Partial;
use crate::scenario_connect::{self, ConnectArgs};
use crate::scenario_fanout::{self, FanoutArgs};
use crate::scenario_pingpong::{self, PingpongArgs};
use crate::users::User;
use crate::Ctx;

#[derive(clap::Args, serde::Serialize, Debug, Clone)]
pub struct MixedArgs {
    /// Idle connections, held with heartbeats for the whole run.
    #[arg(long, default_value_t = 1000)]
    pub idle: usize,
    /// 1:1 pairs chatting.
    #[arg(long, default_value_t = 50)]
    pub pairs: usize,
    /// Messages per second per pair.
    #[arg(long, default_value_t = 1.0)]
    pub pair_rate: f64,
    /// Members of the busy group.
    #[arg(long, default_value_t = 200)]
    pub group_members: usize,
    /// Members of the group that send.
    #[arg(long, default_value_t = 5)]
    pub group_senders: usize,
    /// Messages per second into the group.
    #[arg(long, default_value_t = 5.0)]
    pub group_rate: f64,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds to wait for outstanding deliveries.
    #[arg(long, default_value_t = 5.0)]
    pub grace: f64,
    /// Handshake timeout, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// Internal: the group the parent created.
    #[arg(long, hide = true)]
    pub group_id: Option<String>,
    /// Internal: Unix ms at which sending starts.
    #[arg(long, hide = true)]
    pub start_at_ms: Option<u64>,
}

impl MixedArgs {
    pub fn users(&self) -> usize {
        2 * self.pairs + self.group_members + self.idle
    }

    pub fn connections(&self) -> usize {
        self.users()
    }

    /// The users of each part: (pairs, group, idle), disjoint.
    pub fn split<'a>(&self, users: &'a [User]) -> (&'a [User], &'a [User], &'a [User]) {
        let (pairs, rest) = users.split_at(2 * self.pairs);
        let (group, idle) = rest.split_at(self.group_members);
        (pairs, group, idle)
    }

    pub fn fanout(&self) -> FanoutArgs {
        FanoutArgs {
            members: self.group_members,
            senders: self.group_senders.min(self.group_members),
            rate: self.group_rate,
            duration: self.duration,
            grace: self.grace,
            ramp: self.ramp_secs(),
            gateways: Vec::new(),
            max_missing: 0,
            max_duplicates: 0,
            timeout: self.timeout,
            group_id: self.group_id.clone(),
            start_at_ms: self.start_at_ms,
            inject_duplicate: false,
            inject_missing: false,
        }
    }

    fn pingpong(&self) -> PingpongArgs {
        PingpongArgs {
            pairs: self.pairs,
            rate: self.pair_rate,
            duration: self.duration,
            grace: self.grace,
            max_missing: 0,
            max_duplicates: 0,
            timeout: self.timeout,
            gateways: Vec::new(),
            inject_duplicate: false,
        }
    }

    fn idle_args(&self) -> ConnectArgs {
        // Ramp over the first seconds, then hold through the traffic.
        let rate = (self.idle as f64 / 2.0).max(1.0);
        ConnectArgs {
            connections: self.idle,
            users: Some(self.idle.max(1)),
            rate,
            hold: self.ramp_secs() + self.duration + self.grace,
            ping_interval: 20.0,
            timeout: self.timeout,
        }
    }

    pub fn ramp_secs(&self) -> f64 {
        self.users() as f64 / 2000.0 + 5.0
    }

    pub fn expected_secs(&self) -> f64 {
        self.ramp_secs() + self.duration + self.grace + 2.0
    }
}

fn prefixed(into: &mut Partial, part: &str, p: Partial) {
    for (k, v) in &p.counts {
        into.add(&format!("{part}.{k}"), *v);
    }
    for (k, v) in &p.failures {
        into.fail(&format!("{part}.{k}"), *v);
    }
    for (k, v) in &p.secs {
        into.secs.insert(format!("{part}.{k}"), *v);
    }
}

pub async fn run(ctx: &Ctx, a: &MixedArgs, users: &[User]) -> Partial {
    let (pairs, group, idle) = a.split(users);
    let (fo, pp, ia) = (a.fanout(), a.pingpong(), a.idle_args());
    let idle_run = async {
        if idle.is_empty() {
            Partial::default()
        } else {
            scenario_connect::run(ctx, &ia, idle).await
        }
    };
    let pairs_run = async {
        if a.pairs == 0 {
            Partial::default()
        } else {
            scenario_pingpong::run(ctx, &pp, pairs).await
        }
    };
    let group_run = async {
        if a.group_members < 2 {
            Partial::default()
        } else {
            scenario_fanout::run(ctx, &fo, group).await
        }
    };
    let (i, p, g) = tokio::join!(idle_run, pairs_run, group_run);
    let mut out = Partial::default();
    // Every delivery's latency in one histogram (1:1 and group); the
    // handshake latencies of the idle part are not deliveries.
    let mut lat = Partial { hist: p.hist.clone(), timeline: p.timeline.clone(), ..Partial::default() };
    lat.merge(&Partial { hist: g.hist.clone(), timeline: g.timeline.clone(), ..Partial::default() });
    out.hist = lat.hist;
    out.timeline = lat.timeline;
    prefixed(&mut out, "idle", i);
    prefixed(&mut out, "pingpong", p);
    prefixed(&mut out, "group", g);
    out
}
