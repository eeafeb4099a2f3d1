//! peer-tokio: a comparison peer for GoChat's fan-out benchmarks.
//!
//! The subset of GoChat protocol v1 that `gochat-loadtest connect` and
//! `gochat-loadtest fanout` use, written the way a competent team would with
//! tokio + axum (tokio-tungstenite underneath): a multi-threaded runtime on
//! every core, each outbound frame serialised once and shared by all its
//! recipients, a bounded queue per connection, mimalloc. State lives in
//! memory only (see README.md for how that differs from GoChat).

mod api;
mod frames;
mod state;
mod ws;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::Parser;
use std::net::SocketAddr;
use std::sync::Arc;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(name = "peer-tokio", about = "tokio + axum peer server speaking the fan-out subset of GoChat protocol v1")]
struct Cli {
    /// Address to listen on (port 0 picks a free port; the ready line on stderr tells which).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Runtime worker threads [default: one per core].
    #[arg(long)]
    threads: Option<usize>,
    /// Frames queued towards one connection before it is dropped as a slow reader
    /// (about GoChat's 1 MiB outbound budget at ~250-byte new-message frames).
    #[arg(long, default_value_t = 4096)]
    queue_frames: usize,
    /// Initial WebSocket read buffer per connection, bytes. tungstenite's default is
    /// 131072 and is zero-filled on the first read, i.e. ~128 KiB of RSS per idle
    /// connection; protocol v1 frames are small, so size it like an IM server would.
    /// The buffer still grows for larger messages (up to the 1 MiB message limit).
    #[arg(long, default_value_t = 4096)]
    read_buffer_bytes: usize,
    /// (sender, client_msg_id) acks remembered for deduplication (FIFO eviction).
    #[arg(long, default_value_t = 262_144)]
    dedup_entries: usize,
    /// Access token lifetime, seconds (GoChat's default: 7 days).
    #[arg(long, default_value_t = 7 * 24 * 3600)]
    token_ttl_secs: u64,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let (soft, hard) = raise_nofile();
    eprintln!("{{\"message\":\"open files limit\",\"soft\":{soft},\"hard\":{hard}}}");
    anyhow::ensure!(cli.queue_frames > 0, "--queue-frames must be at least 1");

    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().context("tokio runtime")?;
    rt.block_on(serve(cli))
}

async fn serve(cli: Cli) -> anyhow::Result<()> {
    let st =
        Arc::new(state::State::new(cli.queue_frames, cli.read_buffer_bytes, cli.dedup_entries, cli.token_ttl_secs));
    let app = api::router(st);
    let listener = tokio::net::TcpListener::bind(cli.listen).await.with_context(|| format!("bind {}", cli.listen))?;
    let addr = listener.local_addr()?;
    // One exact JSON line: scripts read the port from it.
    eprintln!("{{\"message\":\"peer ready\",\"addr\":\"{addr}\"}}");
    let listener = listener.tap_io(|tcp| {
        // Small frames must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await.context("serve")?;
    Ok(())
}

/// Raise the soft open-file limit to the hard one; returns (soft, hard) afterwards.
fn raise_nofile() -> (u64, u64) {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit { rlim_cur: rl.rlim_max, rlim_max: rl.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl = want;
            }
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    (rl.rlim_cur as u64, rl.rlim_max as u64)
}
