//! `redis-primitives`: inspect, export and load the script bundle.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod tour;
use redis_primitives::script::{self, Manifest};

#[derive(Parser)]
#[command(
    name = "redis-primitives",
    version,
    about = "Coordination primitives on Redis, as audited Lua scripts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run each primitive visibly: a rate limit, a fenced lock, a versioned cache, a stream.
    /// Uses REDIS_URL; starts a throwaway redis-server when nothing answers there.
    Tour {
        /// Server URL.
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        url: String,
    },
    /// The embedded Lua scripts.
    #[command(subcommand)]
    Scripts(ScriptsCmd),
    /// Print the least-privilege ACL a service needs to run every primitive.
    Acl {
        /// The user name in the printed ACL SETUSER line.
        #[arg(long, default_value = "redis-primitives")]
        user: String,
        /// Print only the rule (keys and commands), for scripting.
        #[arg(long)]
        rule_only: bool,
    },
    /// Check a Redis deployment before trusting it with coordination data (exit 1 on a failure).
    Doctor {
        /// Server URL (a cluster is detected, and every node checked).
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        url: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ScriptsCmd {
    /// List every script with its SHA1, mode and summary.
    List,
    /// Print one script: its contract, then its Lua source.
    Show {
        /// The script's name, e.g. lock.acquire.
        name: String,
    },
    /// Regenerate scripts/manifest.json from the embedded scripts.
    Manifest {
        /// Where the manifest lives.
        #[arg(long, default_value = "scripts/manifest.json")]
        path: PathBuf,
        /// Do not write: exit non-zero when the file differs from what would be written.
        #[arg(long)]
        check: bool,
    },
    /// SCRIPT LOAD every script (on a cluster, on every primary) and print name and SHA1 per node.
    Load {
        /// Server URL (a cluster is detected by itself).
        #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
        url: String,
    },
    /// Write the .lua files and the manifest into DIR, for vendoring in another service.
    Export {
        /// Target folder (created if missing).
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tour { url } => tour::run(&url).map(|()| ExitCode::SUCCESS),
        Command::Scripts(cmd) => scripts(cmd),
        Command::Doctor { url, json } => doctor(&url, json),
        Command::Acl { user, rule_only } => acl(&user, rule_only),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

fn scripts(cmd: ScriptsCmd) -> CliResult {
    let bundle = script::bundle();
    match cmd {
        ScriptsCmd::List => {
            let width = bundle.iter().map(|s| s.name().len()).max().unwrap_or(0);
            for s in bundle.iter() {
                let c = s.contract();
                println!(
                    "{:width$}  {}  {:5}  {}",
                    s.name(),
                    s.sha1(),
                    format!("{:?}", c.mode).to_lowercase(),
                    c.summary
                );
            }
            println!("{} scripts, bundle {}", bundle.len(), bundle.digest());
        }
        ScriptsCmd::Show { name } => {
            let s = bundle.require(&name)?;
            let c = s.contract();
            println!("# {}  ({}, sha1 {})", s.name(), s.file(), s.sha1());
            println!("# mode {:?}, min server {}", c.mode, c.min_server);
            for k in &c.keys {
                println!("# KEYS[{}{}] {} {}", k.index, if k.repeats { ".." } else { "" }, k.role, k.pattern);
            }
            for a in &c.args {
                println!("# ARGV[{}{}] {} {}", a.index, if a.repeats { ".." } else { "" }, a.name, a.ty);
            }
            println!("# returns {}", c.returns);
            println!("# errors {}\n", c.errors);
            print!("{}", s.source_text());
        }
        ScriptsCmd::Manifest { path, check } => {
            let json = Manifest::of(bundle).to_json();
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if check {
                if current == json {
                    println!("{} is up to date ({} scripts)", path.display(), bundle.len());
                } else {
                    eprintln!(
                        "{} is stale: run `cargo run -- scripts manifest` and commit the result",
                        path.display()
                    );
                    return Ok(ExitCode::FAILURE);
                }
            } else if current == json {
                println!("{} unchanged", path.display());
            } else {
                std::fs::write(&path, json)?;
                println!("wrote {}", path.display());
            }
        }
        ScriptsCmd::Load { url } => return load(&url),
        ScriptsCmd::Export { dir } => {
            for s in bundle.iter() {
                let target = dir.join(s.file());
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&target, s.source())?;
            }
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("manifest.json"), Manifest::of(bundle).to_json())?;
            println!("exported {} scripts and manifest.json to {}", bundle.len(), dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn acl(user: &str, rule_only: bool) -> CliResult {
    let rule = redis_primitives::acl::rule()?;
    if rule_only {
        println!("{}", rule.to_acl());
    } else {
        println!("# Least privilege for redis-primitives: the commands the Rust side sends and the scripts");
        println!(
            "# call (Redis checks a script's calls against the caller's ACL), on the scripts' key patterns."
        );
        println!("ACL SETUSER {user} on ><password> {}", rule.to_acl());
    }
    Ok(ExitCode::SUCCESS)
}

fn doctor(url: &str, json: bool) -> CliResult {
    let report = redis_primitives::doctor::diagnose(url)?;
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(if report.failed() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn load(url: &str) -> CliResult {
    let bundle = script::bundle();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let client = redis::Client::open(url)?;
        let mut con = client.get_multiplexed_async_connection().await?;
        let info: String = redis::cmd("INFO").arg("cluster").query_async(&mut con).await?;
        let mut failed = false;
        if redis_primitives::cluster::is_cluster(&info) {
            let cluster = redis::cluster::ClusterClient::new(vec![url])?;
            let mut ccon = cluster.get_async_connection().await?;
            for node in script::preload_cluster(&mut ccon).await? {
                match node.outcome {
                    Ok(_) => print_loaded(&node.node, bundle),
                    Err(e) => {
                        failed = true;
                        println!("{}  FAILED: {e}", node.node);
                    }
                }
            }
        } else {
            script::preload_async(&mut con).await?;
            print_loaded(url, bundle);
        }
        Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
    })
}

fn print_loaded(node: &str, bundle: &script::Bundle) {
    for s in bundle.iter() {
        println!("{node}  {}  {}", s.sha1(), s.name());
    }
}
