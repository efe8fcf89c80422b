//! Server cost of every script, as a multiple of the floor: `EVALSHA` of `return 1`, measured on
//! the same server in the same run. Each job runs, one after the other and in the same order in
//! every round: the floor, our script, the script as it was before issue 12 (`before/`, the files
//! at the branch point), and minimal reference scripts of peers doing the same job
//! (`reference/`). A measurement is `n` sequential calls on one connection between `CONFIG
//! RESETSTAT` and `INFO commandstats`, counting only the commands the client sends (a script's
//! inner commands are part of its EVALSHA time). The fastest round counts for each variant: a
//! shared machine only ever adds time, so the minimum is the steadiest estimate of the cost.

use std::time::{SystemTime, UNIX_EPOCH};

use redis::{Cmd, Connection, Value};
use redis_primitives::script;

/// One operation: the commands it sends, given (round, index).
type Call = Box<dyn Fn(usize, usize) -> Vec<Cmd>>;
/// Run before each round's measurement (not measured): (connection, round, calls per round).
type Setup = Box<dyn Fn(&mut Connection, usize, usize)>;

struct Variant {
    label: &'static str,
    /// The commandstats entries summed (the commands the client sends).
    counted: &'static [&'static str],
    setup: Option<Setup>,
    call: Call,
}

struct Job {
    name: &'static str,
    /// The target from issue 12, as a multiple of the floor, if any.
    target: Option<f64>,
    variants: Vec<Variant>,
}

/// One measured variant: fastest µs per operation over the rounds.
#[derive(Debug, Clone)]
pub struct CostRow {
    pub job: &'static str,
    pub target: Option<f64>,
    pub variant: &'static str,
    pub usec: f64,
    pub floor: f64,
}

fn load(con: &mut Connection, source: &str) -> String {
    redis::cmd("SCRIPT").arg("LOAD").arg(source).query(con).unwrap()
}

fn evalsha(sha: &str, keys: &[String], args: &[String]) -> Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(sha).arg(keys.len()).arg(keys).arg(args);
    c
}

fn s<T: ToString>(v: T) -> String {
    v.to_string()
}

fn ours(name: &str) -> String {
    script::get(name).unwrap().sha1().to_owned()
}

macro_rules! before {
    ($con:expr, $file:literal) => {
        load($con, include_str!(concat!("before/", $file)))
    };
}

macro_rules! reference {
    ($con:expr, $file:literal) => {
        load($con, include_str!(concat!("reference/", $file)))
    };
}

const EVAL: &[&str] = &["evalsha"];

/// The jobs. `limit` is the rate limit and the fill of the refused case (1000 in a full run).
fn jobs(con: &mut Connection, limit: u64) -> Vec<Job> {
    let floor = reference!(con, "floor.lua");
    let floor_variant = || {
        let sha = floor.clone();
        Variant {
            label: "floor: return 1",
            counted: EVAL,
            setup: None,
            call: Box::new(move |_, _| vec![evalsha(&sha, &[], &[])]),
        }
    };
    let sw = ours("ratelimit.sliding_window");
    let sw_before = before!(con, "ratelimit/sliding_window.lua");
    let list_peer = reference!(con, "moving_window_list.lua");
    let zset_peer = reference!(con, "plain_zset_window.lua");
    let gcra = ours("ratelimit.gcra");
    let gcra_before = before!(con, "ratelimit/gcra.lua");
    let gcra_peer = reference!(con, "gcra_peer.lua");
    let cad = reference!(con, "compare_and_delete.lua");
    let now_s = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
    let l = limit.to_string();

    // Sliding-window variants by (label, sha, style): 0 ours/before (weighted, flags), 1 list peer,
    // 2 plain sorted-set peer.
    let window = |label: &'static str, sha: String, style: u8, tag: &'static str, fresh: bool| {
        let l = l.clone();
        Variant {
            label,
            counted: EVAL,
            setup: None,
            call: Box::new(move |round, i| {
                let key = if fresh {
                    vec![format!("rl:{{s{}-{round}}}:{tag}", i % 100)]
                } else {
                    vec![format!("rl:{{s{}}}:{tag}-full", i % 100)]
                };
                let args = match style {
                    0 => vec![s(1), s(0), l.clone(), s(60_000)],
                    1 => vec![now_s(), l.clone(), s(60), s(1)],
                    _ => vec![l.clone(), s(60_000)],
                };
                vec![evalsha(&sha, &key, &args)]
            }),
        }
    };
    // The refused case: every subject's log filled to the limit once, before the first round.
    let filled = |mut v: Variant, sha: String, style: u8, tag: &'static str| {
        let l = l.clone();
        v.setup = Some(Box::new(move |con, round, _| {
            if round > 0 {
                return;
            }
            for subject in 0..100 {
                let mut p = redis::pipe();
                for _ in 0..l.parse::<u64>().unwrap() {
                    let key = vec![format!("rl:{{s{subject}}}:{tag}-full")];
                    let args = match style {
                        0 => vec![s(1), s(0), l.clone(), s(60_000)],
                        1 => vec![now_s(), l.clone(), s(60), s(1)],
                        _ => vec![l.clone(), s(60_000)],
                    };
                    p.add_command(evalsha(&sha, &key, &args)).ignore();
                }
                let _: () = p.query(con).unwrap();
            }
        }));
        v
    };
    let three = |label: &'static str, sha: String, tag: &'static str| {
        let l = l.clone();
        Variant {
            label,
            counted: EVAL,
            setup: None,
            call: Box::new(move |round, i| {
                let keys: Vec<String> =
                    ["a", "b", "c"].iter().map(|n| format!("rl:{{m{}-{round}}}:{tag}{n}", i % 100)).collect();
                let mut args = vec![s(1), s(0)];
                for _ in 0..3 {
                    args.extend([l.clone(), s(60_000)]);
                }
                vec![evalsha(&sha, &keys, &args)]
            }),
        }
    };
    let gcra_v = |label: &'static str, sha: String, peer: bool, tag: &'static str| {
        let l = l.clone();
        Variant {
            label,
            counted: EVAL,
            setup: None,
            call: Box::new(move |round, i| {
                let key = vec![format!("rl:{{g{}-{round}}}:{tag}", i % 100)];
                let args = if peer {
                    vec![l.clone(), l.clone(), s(60), s(1)]
                } else {
                    vec![s(1), s(0), l.clone(), s(60_000), l.clone()]
                };
                vec![evalsha(&sha, &key, &args)]
            }),
        }
    };

    let mut jobs = vec![
        Job {
            name: "sliding window, admit",
            target: Some(8.0),
            variants: vec![
                floor_variant(),
                window("ours", sw.clone(), 0, "ours", true),
                window("before", sw_before.clone(), 0, "before", true),
                window(
                    "peer: list moving window (client time, no remaining)",
                    list_peer.clone(),
                    1,
                    "list",
                    true,
                ),
                window("peer: plain sorted set", zset_peer.clone(), 2, "zset", true),
            ],
        },
        Job {
            name: "sliding window, refused at the limit",
            target: Some(8.0),
            variants: vec![
                floor_variant(),
                filled(window("ours", sw.clone(), 0, "ours", false), sw.clone(), 0, "ours"),
                filled(
                    window("before", sw_before.clone(), 0, "before", false),
                    sw_before.clone(),
                    0,
                    "before",
                ),
                filled(
                    window(
                        "peer: list moving window (client time, no remaining)",
                        list_peer.clone(),
                        1,
                        "list",
                        false,
                    ),
                    list_peer,
                    1,
                    "list",
                ),
                filled(
                    window("peer: plain sorted set", zset_peer.clone(), 2, "zset", false),
                    zset_peer,
                    2,
                    "zset",
                ),
            ],
        },
        Job {
            name: "sliding window, 3 limits in one call, admit",
            target: None,
            variants: vec![floor_variant(), three("ours", sw, "o"), three("before", sw_before, "b")],
        },
        Job {
            name: "GCRA, admit",
            target: Some(8.0),
            variants: vec![
                floor_variant(),
                gcra_v("ours", gcra, false, "ours"),
                gcra_v("before", gcra_before, false, "before"),
                gcra_v("peer: Go limiter's GCRA", gcra_peer, true, "peer"),
            ],
        },
    ];

    // Locks.
    let (acq, rel) = (ours("lock.acquire"), ours("lock.release"));
    let (acq_b, rel_b) = (before!(con, "lock/acquire.lua"), before!(con, "lock/release.lua"));
    // Each variant on its own keys: layouts differ (a released lock key of ours stays, with its
    // last token, and would read as held to the old scripts).
    let pair = |label: &'static str, acq: String, rel: String| Variant {
        label,
        counted: EVAL,
        setup: None,
        call: Box::new(move |_, i| {
            let lock = format!("lock:{{l{}-{label}}}", i % 100);
            let (fence, token) = (format!("{lock}:fence"), format!("t{i}"));
            vec![
                evalsha(&acq, &[lock.clone(), fence], &[token.clone(), s(10_000)]),
                evalsha(&rel, &[lock], &[token]),
            ]
        }),
    };
    jobs.push(Job {
        name: "lock acquire + release",
        target: Some(8.0),
        variants: vec![
            floor_variant(),
            pair("ours", acq.clone(), rel.clone()),
            pair("before", acq_b.clone(), rel_b),
            Variant {
                label: "peer: SET NX PX + compare-and-delete",
                counted: &["evalsha", "set"],
                setup: None,
                call: Box::new(move |_, i| {
                    let (lock, token) = (format!("plain:{{l{}}}", i % 100), format!("t{i}"));
                    let mut set = redis::cmd("SET");
                    set.arg(&lock).arg(&token).arg("NX").arg("PX").arg(10_000);
                    vec![set, evalsha(&cad, &[lock], &[token])]
                }),
            },
        ],
    });

    // Semaphore acquire: fresh semaphores each round, never full.
    let sem = |label: &'static str, sha: String, tag: &'static str| Variant {
        label,
        counted: EVAL,
        setup: None,
        call: Box::new(move |round, i| {
            vec![evalsha(
                &sha,
                &[format!("sem:{{s{}-{round}}}:{tag}", i % 100)],
                &[format!("t{i}"), s(1_000_000), s(60_000)],
            )]
        }),
    };
    jobs.push(Job {
        name: "semaphore acquire",
        target: Some(8.0),
        variants: vec![
            floor_variant(),
            sem("ours", ours("lock.semaphore_acquire"), "ours"),
            sem("before", before!(con, "lock/semaphore_acquire.lua"), "before"),
        ],
    });

    // cache.get on a hit (entries written once, read many times).
    let cache_keys = |i: usize, tag: &str| {
        vec![
            format!("cache:{{c-{tag}}}:version"),
            format!("cache:{{c-{tag}}}:e:k{}", i % 100),
            format!("cache:{{c-{tag}}}:lease:k{}", i % 100),
        ]
    };
    let set_sha = ours("cache.set");
    let get_v = |label: &'static str, sha: String, tag: &'static str| {
        let set_sha = set_sha.clone();
        Variant {
            label,
            counted: EVAL,
            setup: Some(Box::new(move |con, _, _| {
                for i in 0..100 {
                    let args =
                        [s(0), s(0), s("a cached value of some size"), s(3_600_000), s(5), s(""), s(0)];
                    let _: Value = evalsha(&set_sha, &cache_keys(i, tag), &args).query(con).unwrap();
                }
            })),
            call: Box::new(move |_, i| vec![evalsha(&sha, &cache_keys(i, tag), &[s(""), s(0), s(0)])]),
        }
    };
    jobs.push(Job {
        name: "cache.get, hit",
        target: Some(5.0),
        variants: vec![
            floor_variant(),
            get_v("ours", ours("cache.get"), "ours"),
            get_v("before", before!(con, "cache/get.lua"), "before"),
            Variant {
                label: "peer: GET version + GET value (2 round trips)",
                counted: &["get"],
                setup: Some(Box::new(|con, _, _| {
                    for i in 0..100 {
                        let _: () = redis::cmd("SET")
                            .arg(format!("base:{{c}}:7:k{i}"))
                            .arg("a cached value")
                            .query(con)
                            .unwrap();
                    }
                    let _: () = redis::cmd("SET").arg("base:{c}:version").arg(7).query(con).unwrap();
                })),
                call: Box::new(|_, i| {
                    let mut v = redis::cmd("GET");
                    v.arg("base:{c}:version");
                    let mut e = redis::cmd("GET");
                    e.arg(format!("base:{{c}}:7:k{}", i % 100));
                    vec![v, e]
                }),
            },
        ],
    });

    // stream.dead_letter: each round dead-letters `n` pending entries of a fresh stream.
    let dl = |label: &'static str, sha: String, tag: &'static str| Variant {
        label,
        counted: EVAL,
        setup: Some(Box::new(move |con, round, n| {
            let key = format!("stream:{{d-{tag}-{round}}}");
            let mut p = redis::pipe();
            for i in 0..n {
                p.cmd("XADD")
                    .arg(&key)
                    .arg(format!("{}-1", i + 1))
                    .arg("order")
                    .arg(i)
                    .arg("amount")
                    .arg("12.50")
                    .ignore();
            }
            p.cmd("XGROUP").arg("CREATE").arg(&key).arg("g").arg("0").ignore();
            p.cmd("XREADGROUP").arg("GROUP").arg("g").arg("c").arg("STREAMS").arg(&key).arg(">").ignore();
            let _: () = p.query(con).unwrap();
        })),
        call: Box::new(move |round, i| {
            let keys = [format!("stream:{{d-{tag}-{round}}}"), format!("stream:{{d-{tag}-{round}}}:dead")];
            vec![evalsha(&sha, &keys, &[s("g"), s("c"), format!("{}-1", i + 1), s("failed"), s(1000)])]
        }),
    };
    jobs.push(Job {
        name: "stream.dead_letter",
        target: Some(10.0),
        variants: vec![
            floor_variant(),
            dl("ours", ours("stream.dead_letter"), "ours"),
            dl("before", before!(con, "stream/dead_letter.lua"), "before"),
        ],
    });

    // The other scripts, ours and before, on a steady state: (keys, args) of call i.
    type KeysArgs = fn(&str, usize) -> (Vec<String>, Vec<String>);
    let simple = |name: &'static str,
                  before_sha: Option<String>,
                  setup: fn(&mut Connection, &str, &str),
                  call: KeysArgs| {
        let mut variants = vec![floor_variant()];
        for (label, sha) in [("ours", Some(ours(name))), ("before", before_sha)] {
            let Some(sha) = sha else { continue };
            let setup_sha = match (name.starts_with("lock.semaphore"), label) {
                (true, _) => ours("lock.semaphore_acquire"),
                (false, "ours") => acq.clone(),
                _ => acq_b.clone(),
            };
            variants.push(Variant {
                label,
                counted: EVAL,
                setup: Some(Box::new(move |con, _, _| setup(con, &setup_sha, label))),
                call: Box::new(move |_, i| {
                    let (keys, args) = call(label, i);
                    vec![evalsha(&sha, &keys, &args)]
                }),
            });
        }
        Job { name, target: None, variants }
    };
    fn no_setup(_: &mut Connection, _: &str, _: &str) {}
    fn locks_held(con: &mut Connection, acquire: &str, tag: &str) {
        for i in 0..100 {
            let keys = [format!("lock:{{x{i}-{tag}}}"), format!("lock:{{x{i}-{tag}}}:fence")];
            let _: Value = evalsha(acquire, &keys, &[s("held"), s(600_000)]).query(con).unwrap();
        }
    }
    fn leases_held(con: &mut Connection, acquire: &str, tag: &str) {
        for i in 0..100 {
            let _: Value = evalsha(acquire, &[format!("sem:{{x{i}-{tag}}}")], &[s("held"), s(8), s(600_000)])
                .query(con)
                .unwrap();
        }
    }
    fn group(con: &mut Connection, _: &str, tag: &str) {
        let key = format!("stream:{{rc-{tag}}}");
        let _: Value = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&key)
            .arg("g")
            .arg("$")
            .arg("MKSTREAM")
            .query(con)
            .unwrap_or(Value::Nil);
    }
    let extend_b = before!(con, "lock/extend.lua");
    let fenced_b = before!(con, "lock/fenced_write.lua");
    let sem_ext_b = before!(con, "lock/semaphore_extend.lua");
    let sem_rel_b = before!(con, "lock/semaphore_release.lua");
    let set_b = before!(con, "cache/set.lua");
    let bump_b = before!(con, "cache/bump.lua");
    let del_b = before!(con, "cache/delete.lua");
    let retire_b = before!(con, "stream/retire_consumer.lua");
    jobs.extend([
        simple("lock.extend", Some(extend_b), locks_held, |tag, i| {
            (vec![format!("lock:{{x{}-{tag}}}", i % 100)], vec![s("held"), s(600_000)])
        }),
        simple("lock.fenced_write", Some(fenced_b), no_setup, |tag, i| {
            let r = format!("x{}-{tag}", i % 100);
            (vec![format!("lock:{{{r}}}:data"), format!("lock:{{{r}}}:seen")], vec![s(5), s("v"), s(0)])
        }),
        simple("lock.semaphore_extend", Some(sem_ext_b), leases_held, |tag, i| {
            (vec![format!("sem:{{x{}-{tag}}}", i % 100)], vec![s("held"), s(600_000)])
        }),
        simple("lock.semaphore_release", Some(sem_rel_b), leases_held, |tag, i| {
            (vec![format!("sem:{{x{}-{tag}}}", i % 100)], vec![format!("not-held-{i}")])
        }),
        simple("cache.set", Some(set_b), no_setup, |tag, i| {
            let seg = format!("cache:{{w-{tag}}}");
            (
                vec![
                    format!("{seg}:version"),
                    format!("{seg}:e:k{}", i % 100),
                    format!("{seg}:lease:k{}", i % 100),
                ],
                vec![s(0), s(0), s("a value"), s(60_000), s(5), s(""), s(0)],
            )
        }),
        simple("cache.bump", Some(bump_b), no_setup, |tag, i| {
            (vec![format!("cache:{{b{}-{tag}}}:version", i % 100)], vec![])
        }),
        simple("cache.delete", Some(del_b), no_setup, |tag, i| {
            (vec![format!("cache:{{d-{tag}}}:e:k{}", i % 100)], vec![s(60_000)])
        }),
        simple("cache.release_lease", None, no_setup, |tag, i| {
            (vec![format!("cache:{{r-{tag}}}:lease:k{}", i % 100)], vec![s("token")])
        }),
        simple("stream.retire_consumer", Some(retire_b), group, |tag, i| {
            (vec![format!("stream:{{rc-{tag}}}")], vec![s("g"), format!("c{i}")])
        }),
    ]);
    jobs
}

/// Measures every job: `rounds` rounds of `n` calls per variant.
/// `only`: keep the jobs whose name contains it.
pub fn run(client: &redis::Client, rounds: usize, n: usize, limit: u64, only: Option<&str>) -> Vec<CostRow> {
    let mut con = client.get_connection().unwrap();
    script::preload(&mut con).unwrap();
    let mut jobs = jobs(&mut con, limit);
    jobs.retain(|j| only.is_none_or(|o| j.name.contains(o)));
    let mut best: Vec<Vec<f64>> = jobs.iter().map(|j| vec![f64::MAX; j.variants.len()]).collect();
    for round in 0..rounds {
        for (j, job) in jobs.iter().enumerate() {
            for (v, variant) in job.variants.iter().enumerate() {
                if let Some(setup) = &variant.setup {
                    setup(&mut con, round, n);
                }
                let _: () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut con).unwrap();
                for i in 0..n {
                    for c in (variant.call)(round, i) {
                        let r: Value = c
                            .query(&mut con)
                            .unwrap_or_else(|e| panic!("{} / {}: {e}", job.name, variant.label));
                        drop(r);
                    }
                }
                let info: String = redis::cmd("INFO").arg("commandstats").query(&mut con).unwrap();
                let usec: f64 = info
                    .lines()
                    .filter(|l| variant.counted.iter().any(|c| l.starts_with(&format!("cmdstat_{c}:"))))
                    .filter_map(|l| l.split("usec=").nth(1)?.split(',').next()?.parse::<f64>().ok())
                    .sum();
                best[j][v] = best[j][v].min(usec / n as f64);
            }
        }
    }
    let mut rows = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        let floor = best[j][0];
        for (v, variant) in job.variants.iter().enumerate().skip(1) {
            rows.push(CostRow {
                job: job.name,
                target: job.target,
                variant: variant.label,
                usec: best[j][v],
                floor,
            });
        }
    }
    rows
}

/// The markdown section.
pub fn markdown(rows: &[CostRow], rounds: usize, n: usize, limit: u64) -> String {
    let mut md = format!(
        "\n## Server cost per script (× floor)\n\nINFO commandstats µs per operation of the commands the client sends, \
         divided by the floor (`EVALSHA` of `return 1`) measured on the same server in the same run, just before \
         each job; the fastest of {rounds} rounds of {n} sequential calls, 100 subjects, limit {limit} per 60 s, \
         cost 1. *before* is the script as it was before issue 12 (`benches/suite/before/`); *peer* rows are \
         minimal reference scripts (`benches/suite/reference/`).\n\n\
         | job | variant | µs per op | × floor | target (× floor) |\n|---|---|---|---|---|\n"
    );
    for r in rows {
        let target = match r.target {
            Some(t) if r.variant == "ours" => {
                format!("≤ {t} {}", if r.usec / r.floor <= t { "met" } else { "**missed**" })
            }
            _ => String::new(),
        };
        md.push_str(&format!(
            "| {} | {} | {:.2} | {:.1} | {target} |\n",
            r.job,
            r.variant,
            r.usec,
            r.usec / r.floor
        ));
    }
    let ratio =
        |job: &str| rows.iter().find(|r| r.job == job && r.variant == "ours").map(|r| r.usec / r.floor);
    if let (Some(one), Some(three)) =
        (ratio("sliding window, admit"), ratio("sliding window, 3 limits in one call, admit"))
    {
        md.push_str(&format!(
            "\nEach extra limit in one sliding-window call: +{:.1} × floor (target ≤ +6).\n",
            (three - one) / 2.0
        ));
    }
    md
}
