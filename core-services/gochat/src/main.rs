//! `gochat`: one binary, one subcommand per role. Thin: it parses flags,
//! loads configuration and wires the crates together; behaviour lives in the
//! library crates.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod bridge;
mod cluster;
mod dev;
mod tasks;
mod tls;

use clap::{Args, Parser, Subcommand};
use gochat_common::config::Config;
use gochat_common::telemetry::LogFormat;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "gochat", version, about = "GoChat: instant messaging with a thread-per-core WebSocket gateway", long_about = None)]
struct Cli {
    /// TOML configuration file (see docs/configuration.md). GOCHAT_* environment
    /// variables override it; flags override both.
    #[arg(long, global = true, env = "GOCHAT_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: auto (text on a terminal, JSON otherwise), text or json.
    #[arg(long, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run everything in one process with no external services: gateway
    /// shards, logic, repo on SQLite, in-process bus and session store.
    Dev(DevArgs),
    /// Cluster mode: a gateway process (glommio shards; Kafka and the JWT key only).
    Gateway(RoleArgs),
    /// Cluster mode: a logic process (Kafka consumer group, Redis, the store, REST API).
    Logic,
    /// Cluster mode: a task-tier process (large-group fan-out, offline push;
    /// retries and dead letters through im.task.retry / im.task.dlq).
    Task,
    /// Cluster mode: the repo service (gRPC in front of MySQL, with grpc.health.v1).
    Repo,
    /// Create the database if needed and apply its migrations (SQLite or MySQL).
    Migrate(MigrateArgs),
    /// Print the effective configuration (defaults + file + environment) as
    /// TOML, secrets redacted.
    PrintConfig,
}

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Address for WebSocket, REST, health and metrics [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for the SQLite database and the dev JWT secret [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Gateway shards, one pinned executor per core [default: one per core].
    #[arg(long)]
    shards: Option<usize>,
}

#[derive(Args, Debug)]
struct RoleArgs {
    /// Public address for WebSocket, REST, health and metrics [default: listen from config].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Gateway shards [default: one per core].
    #[arg(long)]
    shards: Option<usize>,
}

#[derive(Args, Debug)]
struct MigrateArgs {
    /// Database URL [default: sqlite://{data_dir}/gochat.db].
    #[arg(long)]
    database_url: Option<String>,
    /// Directory holding the SQLite database when no URL is given [default: ./data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(f) = cli.log_format {
        cfg.log.format = f;
    }
    Ok(cfg)
}

fn apply_role_args(cfg: &mut Config, args: RoleArgs) -> anyhow::Result<()> {
    if let Some(l) = args.listen {
        cfg.listen = l;
    }
    if let Some(s) = args.shards {
        cfg.shards = s;
    }
    cfg.validate()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut cfg = load_config(&cli)?;
    match cli.command {
        Command::Dev(args) => {
            if let Some(l) = args.listen {
                cfg.listen = l;
            }
            if let Some(d) = args.data_dir {
                cfg.data_dir = d;
            }
            if let Some(s) = args.shards {
                cfg.shards = s;
            }
            cfg.validate()?;
            gochat_common::telemetry::init(cfg.log.format, &cfg.log.filter);
            dev::run(cfg)
        }
        Command::Gateway(args) => {
            apply_role_args(&mut cfg, args)?;
            gochat_common::telemetry::init(cfg.log.format, &cfg.log.filter);
            cluster::run_gateway(cfg)
        }
        Command::Logic => {
            cfg.validate()?;
            gochat_common::telemetry::init(cfg.log.format, &cfg.log.filter);
            cluster::run_logic(cfg)
        }
        Command::Task => {
            cfg.validate()?;
            gochat_common::telemetry::init(cfg.log.format, &cfg.log.filter);
            cluster::run_task(cfg)
        }
        Command::Repo => {
            cfg.validate()?;
            gochat_common::telemetry::init(cfg.log.format, &cfg.log.filter);
            cluster::run_repo(cfg)
        }
        Command::Migrate(args) => {
            if let Some(d) = args.data_dir {
                cfg.data_dir = d;
            }
            if let Some(u) = args.database_url {
                cfg.storage.database_url = u;
            }
            gochat_common::telemetry::init(cfg.log.format, &cfg.log.filter);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let url = cluster::migrate(&cfg).await?;
                tracing::info!(database = %gochat_common::config::redact_url(&url), "migrations applied");
                anyhow::Ok(())
            })
        }
        Command::PrintConfig => {
            // Secrets masked: this output ends up in tickets and chat logs.
            print!("{}", toml::to_string_pretty(&cfg.redacted())?);
            Ok(())
        }
    }
}
