//! The command line: run the daemon, check a config, migrate, manage tenants, start a plugin.

mod plugins;
mod scaffold;

use crate::config::Config;
use crate::store::tenants;
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "gatewayd", version, about = "Plugin-driven telephony gateway daemon")]
struct Cli {
    /// Configuration file.
    #[arg(long, short, global = true, env = "GATEWAYD_CONFIG", default_value = "/etc/gatewayd/gatewayd.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default).
    Run,
    /// Validate the configuration (keys, values, plugin files, JWT keys) without serving.
    Check,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Show the running daemon's plugins (version, events, faults, p50/p99, reloads), read from
    /// its admin listener's /metrics.
    Plugins,
    /// Manage businesses, departments, agents and memberships.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Write plugins (needs no config file).
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Write a new plugin crate, with the SDK of this daemon, that builds with
    /// `cargo build --release` (docs/writing-an-ivr-plugin.md).
    New {
        /// `ivr` (the ivr.md protocol: answer, prompts, DTMF menu) or `protocol` (your own).
        kind: scaffold::Kind,
        /// Plugin name: lower-case letters, digits and `-` (the crate, config key and route).
        name: String,
        /// Directory to create the crate in (as `<dir>/<name>`).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Add a business.
    AddBusiness {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Add a department to a business.
    AddDepartment {
        id: String,
        #[arg(long)]
        business: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Add an agent: the telephony identity of the user whose JWT carries `user_id`.
    AddAgent {
        id: String,
        #[arg(long)]
        user_id: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Map a phone number (E.164, e.g. +14155550100) to a business: Twilio calls to it are
    /// that business's.
    AddNumber {
        number: String,
        #[arg(long)]
        business: String,
    },
    /// Make an agent a member of a business, optionally of one of its departments.
    AddMembership(Membership),
    /// Remove a membership.
    RemoveMembership(Membership),
    /// Remove a business, department, agent or number (and what depends on it).
    Remove {
        #[arg(value_parser = ["business", "department", "agent", "number"])]
        kind: String,
        id: String,
    },
    /// Print everything as JSON.
    List,
    /// Add everything in a JSON file shaped like the output of `list`, in one transaction.
    Import { file: PathBuf },
}

/// An agent's membership in a business, optionally in one of its departments.
#[derive(clap::Args)]
struct Membership {
    #[arg(long)]
    agent: String,
    #[arg(long)]
    business: String,
    #[arg(long)]
    department: Option<String>,
}

/// Entry point of the `gatewayd` binary. Exit codes: 0 ok, 1 runtime failure, 2 bad config.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Plugin(PluginCommand::New { kind, name, dir })) = &cli.command {
        return match scaffold::new_plugin(*kind, name, dir) {
            Ok(root) => {
                println!("{}", root.display());
                println!("build: cd {} && cargo build --release", root.display());
                println!("then add {}/gatewayd.toml to the daemon's config and reload it", root.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gatewayd: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gatewayd: config error: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(&config.daemon);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gatewayd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Run) {
            Command::Run => crate::daemon::run(config, &cli.config).await,
            Command::Check => check(&config),
            Command::Migrate => crate::daemon::open_store(&config).await.map(|_| println!("migrations applied")),
            Command::Tenant(cmd) => tenant(&config, cmd).await,
            Command::Plugin(_) => unreachable!("handled before the config is read"),
            Command::Plugins => match &config.admin {
                Some(admin) => plugins::run(admin.address).await,
                None => {
                    Err(anyhow::anyhow!("admin: no [admin] address in the config; gatewayd plugins reads its /metrics"))
                }
            },
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatewayd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(config: &Config) -> anyhow::Result<()> {
    config.check_files()?;
    crate::server::tls::check(config)?;
    crate::auth::JwtVerifier::new(&config.auth)?;
    println!(
        "config ok: {} listener(s), {} route(s), {} plugin(s)",
        config.listeners.len(),
        config.routes.len(),
        config.plugins.len()
    );
    Ok(())
}

async fn tenant(config: &Config, cmd: TenantCommand) -> anyhow::Result<()> {
    let store = crate::daemon::open_store(config).await?;
    match cmd {
        TenantCommand::AddBusiness { id, name } => tenants::add_business(&store, &id, &name).await?,
        TenantCommand::AddDepartment { id, business, name } => {
            tenants::add_department(&store, &id, &business, &name).await?
        }
        TenantCommand::AddAgent { id, user_id, name } => tenants::add_agent(&store, &id, &user_id, &name).await?,
        TenantCommand::AddNumber { number, business } => tenants::add_number(&store, &number, &business).await?,
        TenantCommand::AddMembership(Membership { agent, business, department }) => {
            tenants::add_membership(&store, &agent, &business, department.as_deref()).await?
        }
        TenantCommand::RemoveMembership(Membership { agent, business, department }) => {
            tenants::remove_membership(&store, &agent, &business, department.as_deref()).await?
        }
        TenantCommand::Remove { kind, id } => tenants::remove(&store, &kind, &id).await?,
        TenantCommand::Import { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let doc: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
            println!("imported {} row(s)", tenants::import(&store, &doc).await?);
        }
        TenantCommand::List => println!("{}", serde_json::to_string_pretty(&tenants::list(&store).await?)?),
    }
    store.close().await;
    Ok(())
}
