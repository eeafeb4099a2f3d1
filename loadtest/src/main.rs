//! gochat-loadtest: a load generator speaking GoChat protocol v1 (see loadtest/README.md).

mod report;
mod scenario_connect;
mod scenario_pingpong;
mod server;
mod users;
mod ws;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use report::{percentiles, Partial, Report};
use scenario_connect::ConnectArgs;
use scenario_pingpong::PingpongArgs;
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

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl Cmd {
    fn name(&self) -> &'static str {
        match self {
            Cmd::Connect(_) => "connect",
            Cmd::Pingpong(_) => "pingpong",
        }
    }

    fn users(&self) -> usize {
        match self {
            Cmd::Connect(a) => a.distinct_users(),
            Cmd::Pingpong(a) => 2 * a.pairs,
        }
    }

    /// Connections this scenario opens in all.
    fn connections(&self) -> usize {
        match self {
            Cmd::Connect(a) => a.connections,
            Cmd::Pingpong(a) => 2 * a.pairs,
        }
    }

    /// An upper bound on the run time; past it the run is stopped and fails.
    fn watchdog(&self) -> Duration {
        let secs = match self {
            Cmd::Connect(a) => a.connections as f64 / a.rate + a.hold + a.timeout + 60.0,
            Cmd::Pingpong(a) => a.duration + a.grace + a.timeout * 2.0 + 60.0 + a.pairs as f64 * 0.05,
        };
        Duration::from_secs_f64(secs)
    }

    fn validate(&self) -> Result<()> {
        let (n, secs, rate) = match self {
            Cmd::Connect(a) => (a.connections, a.hold, a.rate),
            Cmd::Pingpong(a) => (2 * a.pairs, a.duration + a.grace, a.rate),
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

async fn run(cli: Cli) -> Result<bool> {
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
    let users = users::ensure(&http, &base, &users_file, &cli.user_prefix, n_users).await?;
    let metrics_before = server::metrics(&http, &base).await;
    let proc_before = cli.server_pid.and_then(server::sample);
    let sampler = cli.server_pid.map(server::Sampler::start);
    let started_at_ms = now_ms();
    let t = std::time::Instant::now();
    let mut reasons = Vec::new();
    let partial = if cli.procs == 1 {
        let ctx = Ctx { addr, base: base.clone(), http: http.clone(), ips, worker: 0, procs: 1 };
        cli.cmd.run(&ctx, &users).await
    } else {
        run_workers(&cli, &users_file, &mut reasons).await?
    };
    let elapsed_secs = t.elapsed().as_secs_f64();
    let ended_at_ms = now_ms();
    let rss_peak = sampler.map(|s| s.stop());
    let proc_after = cli.server_pid.and_then(server::sample);
    let metrics_after = server::metrics(&http, &base).await;

    let counts = partial.counts.clone();
    let c = |k: &str| partial.count(k);
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
            throughput.insert("sent_per_sec".into(), round3(c("sent") as f64 / a.duration.max(1e-9)));
            throughput.insert("delivered_per_sec".into(), round3(c("delivered") as f64 / a.duration.max(1e-9)));
            if c("sent") == 0 {
                reasons.push("no message was sent".into());
            }
            if c("missing") > a.max_missing {
                reasons.push(format!("{} missing deliveries > --max-missing {}", c("missing"), a.max_missing));
            }
            if c("duplicates") > a.max_duplicates {
                reasons.push(format!(
                    "{} duplicate deliveries > --max-duplicates {}",
                    c("duplicates"),
                    a.max_duplicates
                ));
            }
            if c("seq_gaps") > 0 {
                reasons.push(format!("{} gaps in acked seqs", c("seq_gaps")));
            }
            (
                c("sent") + c("connections_attempted"),
                "end to end: scheduled send time -> new-message at the receiver",
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
        counts,
        failures: partial.failures.clone(),
        throughput,
        latency_ms: percentiles(&partial.histogram()),
        latency_measures: latency_measures.into(),
        error_rate: round3(error_rate * 1000.0) / 1000.0,
        server: if srv.is_empty() { Value::Null } else { Value::Object(srv) },
        pass: reasons.is_empty(),
        reasons,
    };
    print!("{}", rep.summary());
    if let Some(path) = &cli.report {
        std::fs::write(path, serde_json::to_vec_pretty(&rep)?).with_context(|| format!("write {path:?}"))?;
    }
    Ok(rep.pass)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Re-execute this binary `--procs` times as `--worker i`; merge their partial reports.
async fn run_workers(cli: &Cli, users_file: &std::path::Path, reasons: &mut Vec<String>) -> Result<Partial> {
    let exe = std::env::current_exe()?;
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
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
