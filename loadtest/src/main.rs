//! gochat-loadtest: a load generator speaking GoChat protocol v1 (see loadtest/README.md).

mod plot;
mod report;
mod scenario_connect;
mod scenario_fanout;
mod scenario_mixed;
mod scenario_pingpong;
mod scenario_storm;
mod server;
mod users;
mod ws;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use report::{percentiles, Partial, Report};
use scenario_connect::ConnectArgs;
use scenario_fanout::FanoutArgs;
use scenario_mixed::MixedArgs;
use scenario_pingpong::PingpongArgs;
use scenario_storm::StormArgs;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "gochat-loadtest", about = "Load generator for GoChat (protocol v1)")]
struct Cli {
    /// Server base URL (REST; the WebSocket URL is derived from it).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Cached credentials (JSON); default: a file in the temp dir named after the URL and prefix.
    #[arg(long, global = true)]
    users_file: Option<PathBuf>,
    /// Username prefix of the generated users.
    #[arg(long, global = true, default_value = "lt")]
    user_prefix: String,
    /// Where to write the JSON report (always written when given; a summary goes to stdout).
    #[arg(long, global = true)]
    report: Option<PathBuf>,
    /// The server's pid, to sample its CPU time and RSS from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// The server's Prometheus scrape, for the report's metric deltas
    /// (default `{url}/metrics`; a GoChat gateway serves it on its admin
    /// listener, `gateway.admin_listen`, 127.0.0.1:9464 by default).
    #[arg(long, global = true)]
    metrics_url: Option<String>,
    /// Worker processes (each re-executes this binary with a share of the work).
    #[arg(long, global = true, default_value_t = 1)]
    procs: usize,
    /// Source addresses for outgoing sockets, round-robin, e.g. 127.0.0.2-127.0.0.30.
    #[arg(long, global = true)]
    source_ips: Option<String>,
    /// Fail (exit 1) when failures / operations exceed this.
    #[arg(long, global = true, default_value_t = 0.01)]
    max_error_rate: f64,
    /// Allow a non-loopback server or source address.
    #[arg(long, global = true)]
    allow_remote: bool,
    /// Internal: run as worker i of --procs.
    #[arg(long, global = true, hide = true)]
    worker: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Ramp N connections at a rate, hold them with heartbeats, close them.
    Connect(ConnectArgs),
    /// 1:1 pairs sending at a fixed open-loop rate; end-to-end latency, missing and duplicates.
    Pingpong(PingpongArgs),
    /// M senders into one group of N members: delivered frames/s and delivery latency.
    Fanout(FanoutArgs),
    /// Mass reconnect: hold N connections, drop them all at once, measure how fast everyone is back.
    Storm(StormArgs),
    /// A realistic blend at once: idle connections, 1:1 pairs and a busy group.
    Mixed(MixedArgs),
}

/// What a scenario needs to know about where and as whom it runs.
pub struct Ctx {
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    pub ips: Vec<Ipv4Addr>,
    pub worker: usize,
    pub procs: usize,
}

impl Ctx {
    /// Source address for the j-th connection (global index), round-robin.
    pub fn src(&self, j: usize) -> Option<Ipv4Addr> {
        (!self.ips.is_empty()).then(|| self.ips[j % self.ips.len()])
    }
}

const MAX_CONNECTIONS: usize = 1_000_000;
const MAX_SECS: f64 = 3600.0;
/// The server's default `logic.max_connections_per_user`.
const SERVER_CONNECTIONS_PER_USER: usize = 16;

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_nofile();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gochat-loadtest: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("gochat-loadtest: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Raise the soft open-file limit to the hard one.
fn raise_nofile() {
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

fn nofile() -> u64 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the local struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    rl.rlim_cur
}

pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_micros() as u64
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl Cmd {
    fn name(&self) -> &'static str {
        match self {
            Cmd::Connect(_) => "connect",
            Cmd::Pingpong(_) => "pingpong",
            Cmd::Fanout(_) => "fanout",
            Cmd::Storm(_) => "storm",
            Cmd::Mixed(_) => "mixed",
        }
    }

    fn users(&self) -> usize {
        match self {
            Cmd::Connect(a) => a.distinct_users(),
            Cmd::Pingpong(a) => 2 * a.pairs,
            Cmd::Fanout(a) => a.members,
            Cmd::Storm(a) => a.distinct_users(),
            Cmd::Mixed(a) => a.users(),
        }
    }

    /// Connections this scenario opens in all.
    fn connections(&self) -> usize {
        match self {
            Cmd::Connect(a) => a.connections,
            Cmd::Pingpong(a) => 2 * a.pairs,
            Cmd::Fanout(a) => a.members,
            Cmd::Storm(a) => a.connections,
            Cmd::Mixed(a) => a.connections(),
        }
    }

    /// How long a run should take (the progress bar's length).
    fn expected_secs(&self) -> f64 {
        match self {
            Cmd::Connect(a) => a.connections as f64 / a.rate + a.hold,
            Cmd::Pingpong(a) => a.duration + a.grace,
            Cmd::Fanout(a) => a.ramp_secs() + a.duration + a.grace,
            Cmd::Storm(a) => a.expected_secs(),
            Cmd::Mixed(a) => a.expected_secs(),
        }
    }

    /// An upper bound on the run time; past it the run is stopped and fails.
    fn watchdog(&self) -> Duration {
        let secs = match self {
            Cmd::Connect(a) => a.connections as f64 / a.rate + a.hold + a.timeout + 60.0,
            Cmd::Pingpong(a) => a.duration + a.grace + a.timeout * 2.0 + 60.0 + a.pairs as f64 * 0.05,
            Cmd::Fanout(a) => a.ramp_secs() + a.duration + a.grace + a.timeout + 60.0,
            Cmd::Storm(a) => a.expected_secs() + 2.0 * a.timeout + 60.0,
            Cmd::Mixed(a) => a.expected_secs() + 2.0 * a.timeout + 60.0 + a.pairs as f64 * 0.05,
        };
        Duration::from_secs_f64(secs)
    }

    fn validate(&self) -> Result<()> {
        let (n, secs, rate) = match self {
            Cmd::Connect(a) => (a.connections, a.hold, a.rate),
            Cmd::Pingpong(a) => (2 * a.pairs, a.duration + a.grace, a.rate),
            Cmd::Fanout(a) => {
                if a.members < 2 || a.senders == 0 || a.senders > a.members {
                    bail!("fanout needs --members >= 2 and --senders 1..=members");
                }
                (a.members, a.ramp_secs() + a.duration + a.grace, a.rate)
            }
            Cmd::Storm(a) => {
                if a.reconnect_rate < 0.0 {
                    bail!("--reconnect-rate must be >= 0");
                }
                (a.connections, a.expected_secs(), a.rate)
            }
            Cmd::Mixed(a) => {
                if a.group_members == 1 || a.group_senders > a.group_members {
                    bail!("mixed needs --group-members 0 or >= 2, and --group-senders <= --group-members");
                }
                (a.connections(), a.expected_secs(), a.pair_rate.max(a.group_rate).max(1.0))
            }
        };
        if n == 0 || n > MAX_CONNECTIONS {
            bail!("connections must be 1..={MAX_CONNECTIONS}");
        }
        if !(0.0..=MAX_SECS).contains(&secs) {
            bail!("durations must be 0..={MAX_SECS} s");
        }
        if !(rate > 0.0 && rate <= 1_000_000.0) {
            bail!("rate must be > 0 and <= 1e6");
        }
        if let Cmd::Connect(a) = self {
            if a.connections as f64 / a.rate > MAX_SECS {
                bail!("the ramp (connections / rate) must be at most {MAX_SECS} s");
            }
        }
        Ok(())
    }

    async fn run(&self, ctx: &Ctx, users: &[users::User]) -> Partial {
        let fut = async {
            match self {
                Cmd::Connect(a) => scenario_connect::run(ctx, a, users).await,
                Cmd::Pingpong(a) => scenario_pingpong::run(ctx, a, users).await,
                Cmd::Fanout(a) => scenario_fanout::run(ctx, a, users).await,
                Cmd::Storm(a) => scenario_storm::run(ctx, a, users).await,
                Cmd::Mixed(a) => scenario_mixed::run(ctx, a, users).await,
            }
        };
        match tokio::time::timeout(self.watchdog(), fut).await {
            Ok(p) => p,
            Err(_) => {
                let mut p = Partial::default();
                p.fail("watchdog_timeout", 1);
                p
            }
        }
    }
}

async fn run(mut cli: Cli) -> Result<bool> {
    cli.cmd.validate()?;
    if cli.procs == 0 || cli.procs > 256 {
        bail!("--procs must be 1..=256");
    }
    let base = cli.url.trim_end_matches('/').to_owned();
    let hostport = base.strip_prefix("http://").context("--url must be http://HOST:PORT")?;
    let hostport = hostport.split('/').next().unwrap_or(hostport);
    let addr = tokio::net::lookup_host(hostport)
        .await
        .with_context(|| format!("resolve {hostport}"))?
        .next()
        .with_context(|| format!("{hostport} resolves to nothing"))?;
    if !addr.ip().is_loopback() && !cli.allow_remote {
        bail!("{addr} is not a loopback address; pass --allow-remote to load a remote server");
    }
    let ips = match &cli.source_ips {
        Some(r) => ws::parse_ip_range(r).map_err(anyhow::Error::msg)?,
        None => Vec::new(),
    };
    if ips.iter().any(|ip| !ip.is_loopback()) && !cli.allow_remote {
        bail!("--source-ips must be in 127.0.0.0/8 unless --allow-remote");
    }
    let users_file = cli.users_file.clone().unwrap_or_else(|| {
        let tag: String = hostport.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        std::env::temp_dir().join(format!("gochat-loadtest-users-{tag}-{}.json", cli.user_prefix))
    });
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let n_users = cli.cmd.users();

    if let Some(w) = cli.worker {
        if w >= cli.procs {
            bail!("--worker {w} out of range for --procs {}", cli.procs);
        }
        let users = users::load(&users_file, &cli.user_prefix, n_users)?;
        let ctx = Ctx { addr, base, http, ips, worker: w, procs: cli.procs };
        let p = cli.cmd.run(&ctx, &users).await;
        println!("{}", serde_json::to_string(&p)?);
        return Ok(true);
    }

    let per_proc = cli.cmd.connections().div_ceil(cli.procs) as u64;
    if per_proc + 64 > nofile() {
        eprintln!(
            "gochat-loadtest: warning: {per_proc} connections per process exceed the open-file limit {}: use --procs",
            nofile()
        );
    }
    let per_user = cli.cmd.connections().div_ceil(n_users.max(1));
    if per_user > SERVER_CONNECTIONS_PER_USER {
        eprintln!(
            "gochat-loadtest: warning: {per_user} connections per user exceed the server's default \
             logic.max_connections_per_user ({SERVER_CONNECTIONS_PER_USER}), which closes the oldest: pass --users >= \
             {} or start the server with GOCHAT_LOGIC__MAX_CONNECTIONS_PER_USER=0",
            cli.cmd.connections().div_ceil(SERVER_CONNECTIONS_PER_USER)
        );
    }
    let need_secs = cli.cmd.watchdog().as_secs_f64();
    let users = users::ensure(&http, &base, &users_file, &cli.user_prefix, n_users, need_secs).await?;
    // fanout: one fresh group per run; every worker starts sending at the same instant.
    let mut extra_args: Vec<String> = Vec::new();
    if let Cmd::Fanout(a) = &mut cli.cmd {
        let (gid, cid) = scenario_fanout::create_group(&http, &base, &users).await?;
        let start = now_ms() + (a.ramp_secs() * 1000.0) as u64;
        eprintln!("gochat-loadtest: group {cid} with {} members; sending starts in {:.1} s", a.members, a.ramp_secs());
        extra_args = vec!["--group-id".into(), gid.clone(), "--start-at-ms".into(), start.to_string()];
        a.group_id = Some(gid);
        a.start_at_ms = Some(start);
    }
    if let Cmd::Mixed(a) = &mut cli.cmd {
        if a.group_members >= 2 {
            let (_, group, _) = a.split(&users);
            let (gid, _) = scenario_fanout::create_group(&http, &base, group).await?;
            let start = now_ms() + (a.ramp_secs() * 1000.0) as u64;
            extra_args = vec!["--group-id".into(), gid.clone(), "--start-at-ms".into(), start.to_string()];
            a.group_id = Some(gid);
            a.start_at_ms = Some(start);
        }
    }
    let metrics_url = cli.metrics_url.clone().unwrap_or_else(|| format!("{base}/metrics"));
    let metrics_before = server::metrics(&http, &metrics_url).await;
    let proc_before = cli.server_pid.and_then(server::sample);
    let sampler = cli.server_pid.map(server::Sampler::start);
    // fanout: the server's CPU during the sending window alone (from the
    // common start to the end of the grace period), without the handshakes.
    let window = match (&cli.cmd, cli.server_pid) {
        (Cmd::Fanout(a), Some(pid)) => {
            let from = a.start_at_ms.unwrap_or(0);
            let to = from + ((a.duration + a.grace) * 1000.0) as u64;
            Some(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(from.saturating_sub(now_ms()))).await;
                let before = server::sample(pid)?;
                tokio::time::sleep(Duration::from_millis(to.saturating_sub(now_ms()))).await;
                let after = server::sample(pid)?;
                Some(after.cpu_secs - before.cpu_secs)
            }))
        }
        _ => None,
    };
    let started_at_ms = now_ms();
    let t = std::time::Instant::now();
    let progress = progress_bar(cli.cmd.expected_secs(), cli.cmd.name());
    let mut reasons = Vec::new();
    let partial = if cli.procs == 1 {
        let ctx = Ctx { addr, base: base.clone(), http: http.clone(), ips, worker: 0, procs: 1 };
        cli.cmd.run(&ctx, &users).await
    } else {
        run_workers(&cli, &users_file, &extra_args, &mut reasons).await?
    };
    let elapsed_secs = t.elapsed().as_secs_f64();
    progress.abort();
    let ended_at_ms = now_ms();
    let rss_peak = sampler.map(|s| s.stop());
    let proc_after = cli.server_pid.and_then(server::sample);
    let metrics_after = server::metrics(&http, &metrics_url).await;

    let mut partial = partial;
    let snapshot = partial.clone();
    let c = |k: &str| snapshot.count(k);
    let failed: u64 = partial.failures.values().sum();
    let mut throughput = BTreeMap::new();
    let (ops, latency_measures, params) = match &cli.cmd {
        Cmd::Connect(a) => {
            let ramp = partial.secs.get("ramp_secs").copied().unwrap_or(0.0);
            if ramp > 0.0 {
                throughput.insert("handshakes_per_sec".into(), round3(c("established") as f64 / ramp));
            }
            if c("attempted") != a.connections as u64 {
                reasons.push(format!("{} of {} connections attempted", c("attempted"), a.connections));
            }
            (c("attempted"), "handshake: scheduled start -> 101 (TCP connect included)", serde_json::to_value(a)?)
        }
        Cmd::Pingpong(a) => {
            let d = Deliveries { missing: c("missing"), max_missing: a.max_missing, max_duplicates: a.max_duplicates };
            d.check(&snapshot, a.duration, &mut throughput, &mut reasons);
            if c("seq_gaps") > 0 {
                reasons.push(format!("{} gaps in acked seqs", c("seq_gaps")));
            }
            (
                c("sent") + c("connections_attempted"),
                "end to end: scheduled send time -> new-message at the receiver",
                serde_json::to_value(a)?,
            )
        }
        Cmd::Mixed(a) => {
            // pingpong counts its own missing deliveries; the group's are derived.
            let g_expected = c("group.acked") * c("group.receivers").saturating_sub(1);
            let missing = c("pingpong.missing") + g_expected.saturating_sub(c("group.delivered"));
            let dups = c("pingpong.duplicates") + c("group.duplicates");
            partial.counts.insert("missing".into(), missing);
            partial.counts.insert("duplicates".into(), dups);
            let delivered = c("pingpong.delivered") + c("group.delivered");
            throughput.insert("delivered_per_sec".into(), round3(delivered as f64 / a.duration.max(1e-9)));
            throughput.insert(
                "sent_per_sec".into(),
                round3((c("pingpong.sent") + c("group.sent")) as f64 / a.duration.max(1e-9)),
            );
            if missing > 0 {
                reasons.push(format!("{missing} missing deliveries"));
            }
            if dups > 0 {
                reasons.push(format!("{dups} duplicate deliveries"));
            }
            if c("group.out_of_order") > 0 {
                reasons.push(format!("{} group deliveries out of seq order", c("group.out_of_order")));
            }
            if a.idle > 0 && c("idle.held_ok") < a.idle as u64 {
                reasons.push(format!("{} of {} idle connections held", c("idle.held_ok"), a.idle));
            }
            (
                c("pingpong.sent") + c("group.sent") + c("idle.attempted"),
                "delivery: scheduled send time -> new-message (1:1 and group)",
                serde_json::to_value(a)?,
            )
        }
        Cmd::Storm(a) => {
            let secs = snapshot.secs.get("reconnect_secs").copied().unwrap_or(0.0);
            if secs > 0.0 {
                throughput.insert("reconnects_per_sec".into(), round3(c("reconnected") as f64 / secs));
            }
            if c("initial_established") == 0 {
                reasons.push("no connection was established".into());
            }
            (
                c("initial_attempted") + c("reconnect_attempted"),
                "reconnect: scheduled reconnect -> pong on the new connection",
                serde_json::to_value(a)?,
            )
        }
        Cmd::Fanout(a) => {
            let receivers = c("receivers");
            let expected = c("acked") * receivers.saturating_sub(1);
            let missing = expected.saturating_sub(c("delivered"));
            partial.counts.insert("expected_deliveries".into(), expected);
            partial.counts.insert("missing".into(), missing);
            let d = Deliveries { missing, max_missing: a.max_missing, max_duplicates: a.max_duplicates };
            d.check(&snapshot, a.duration, &mut throughput, &mut reasons);
            if c("out_of_order") > 0 {
                reasons.push(format!("{} deliveries out of seq order", c("out_of_order")));
            }
            (
                c("sent") + c("connections_attempted"),
                "delivery: scheduled send time -> new-message at each member",
                serde_json::to_value(a)?,
            )
        }
    };
    let error_rate = if ops == 0 {
        if failed > 0 {
            1.0
        } else {
            0.0
        }
    } else {
        failed as f64 / ops as f64
    };
    if error_rate > cli.max_error_rate {
        reasons.push(format!("error rate {error_rate:.4} > --max-error-rate {}", cli.max_error_rate));
    }
    if partial.failures.contains_key("watchdog_timeout") {
        reasons.push("the run exceeded its time bound and was stopped".into());
    }
    let mut srv = serde_json::Map::new();
    if let (Some(pid), Some(b), Some(a)) = (cli.server_pid, proc_before, proc_after) {
        let peak = rss_peak.unwrap_or(0).max(a.rss_bytes).max(b.rss_bytes);
        srv.insert("pid".into(), json!(pid));
        srv.insert("cpu_seconds".into(), json!(round3(a.cpu_secs - b.cpu_secs)));
        if let Some(w) = window {
            if let Ok(Some(cpu)) = w.await {
                srv.insert("cpu_seconds_sending".into(), json!(round3(cpu)));
                if cpu > 0.0 {
                    let per = c("delivered") as f64 / cpu;
                    srv.insert("delivered_frames_per_cpu_second".into(), json!(per.round()));
                }
            }
        }
        srv.insert("rss_before_bytes".into(), json!(b.rss_bytes));
        srv.insert("rss_peak_bytes".into(), json!(peak));
        srv.insert("rss_after_bytes".into(), json!(a.rss_bytes));
        let conns = c("established");
        if let Some(per) = peak.saturating_sub(b.rss_bytes).checked_div(conns) {
            srv.insert("rss_per_connection_bytes".into(), json!(per));
        }
    } else if let Some(pid) = cli.server_pid {
        srv.insert("pid".into(), json!(pid));
        srv.insert("error".into(), json!(format!("/proc/{pid} not readable")));
    }
    if let (Some(b), Some(a)) = (&metrics_before, &metrics_after) {
        srv.insert("metrics_delta".into(), json!(server::delta(b, a)));
    }
    let mut all_params = json!({
        "url": cli.url, "procs": cli.procs, "source_ips": cli.source_ips, "max_error_rate": cli.max_error_rate,
        "users_file": users_file,
    });
    if let (Value::Object(m), Value::Object(p)) = (&mut all_params, params) {
        m.extend(p);
    }
    let rep = Report {
        scenario: cli.cmd.name().into(),
        params: all_params,
        started_at_ms,
        ended_at_ms,
        elapsed_secs: round3(elapsed_secs),
        procs: cli.procs,
        counts: partial.counts.clone(),
        failures: partial.failures.clone(),
        throughput,
        latency_ms: percentiles(&partial.histogram()),
        latency_measures: latency_measures.into(),
        latency_timeline_ms: report::timeline(&partial, started_at_ms),
        error_rate: round3(error_rate * 1000.0) / 1000.0,
        server: if srv.is_empty() { Value::Null } else { Value::Object(srv) },
        pass: reasons.is_empty(),
        reasons,
    };
    print!("{}", rep.summary());
    if let Some(path) = &cli.report {
        std::fs::write(path, serde_json::to_vec_pretty(&rep)?).with_context(|| format!("write {path:?}"))?;
        let svg = path.with_extension("svg");
        match plot::write(&svg, cli.cmd.name(), &partial, started_at_ms) {
            Ok(()) => eprintln!("gochat-loadtest: plot written to {svg:?}"),
            Err(e) => eprintln!("gochat-loadtest: no plot: {e}"),
        }
    }
    Ok(rep.pass)
}

/// A time-based progress bar on stderr, drawn only when it is a terminal
/// (workers run in separate processes; the parent shows the run's clock).
fn progress_bar(expected_secs: f64, scenario: &'static str) -> tokio::task::JoinHandle<()> {
    let total_ms = (expected_secs * 1000.0).max(1.0) as u64;
    let bar = indicatif::ProgressBar::with_draw_target(Some(total_ms), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {percent}%")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(scenario);
    tokio::spawn(async move {
        let t = std::time::Instant::now();
        loop {
            bar.set_position((t.elapsed().as_millis() as u64).min(total_ms));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// The throughput figures and pass/fail checks of the message scenarios.
struct Deliveries {
    missing: u64,
    max_missing: u64,
    max_duplicates: u64,
}

impl Deliveries {
    fn check(&self, p: &Partial, duration: f64, throughput: &mut BTreeMap<String, f64>, reasons: &mut Vec<String>) {
        let (sent, delivered, dups) = (p.count("sent"), p.count("delivered"), p.count("duplicates"));
        throughput.insert("sent_per_sec".into(), round3(sent as f64 / duration.max(1e-9)));
        throughput.insert("delivered_per_sec".into(), round3(delivered as f64 / duration.max(1e-9)));
        if sent == 0 {
            reasons.push("no message was sent".into());
        }
        if self.missing > self.max_missing {
            reasons.push(format!("{} missing deliveries > --max-missing {}", self.missing, self.max_missing));
        }
        if dups > self.max_duplicates {
            reasons.push(format!("{dups} duplicate deliveries > --max-duplicates {}", self.max_duplicates));
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Re-execute this binary `--procs` times as `--worker i`; merge their partial reports.
async fn run_workers(
    cli: &Cli,
    users_file: &std::path::Path,
    extra: &[String],
    reasons: &mut Vec<String>,
) -> Result<Partial> {
    let exe = std::env::current_exe()?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    args.extend(extra.iter().map(Into::into));
    if cli.users_file.is_none() {
        args.push("--users-file".into());
        args.push(users_file.into());
    }
    let mut set = tokio::task::JoinSet::new();
    for i in 0..cli.procs {
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.args(&args)
            .arg("--worker")
            .arg(i.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let child = cmd.spawn().context("spawn worker")?;
        set.spawn(async move { (i, child.wait_with_output().await) });
    }
    let deadline = cli.cmd.watchdog() + Duration::from_secs(30);
    let mut merged = Partial::default();
    let collect = async {
        while let Some(r) = set.join_next().await {
            let (i, out) = r?;
            let out = out?;
            let text = String::from_utf8_lossy(&out.stdout);
            match text.lines().last().map(serde_json::from_str::<Partial>) {
                Some(Ok(p)) if out.status.success() => merged.merge(&p),
                _ => {
                    reasons.push(format!("worker {i} failed ({})", out.status));
                    merged.fail("worker_failed", 1);
                }
            }
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(deadline, collect).await {
        Ok(r) => r?,
        Err(_) => {
            set.abort_all();
            merged.fail("watchdog_timeout", 1);
        }
    }
    Ok(merged)
}
