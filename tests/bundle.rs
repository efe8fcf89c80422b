//! The bundle's static checks: every header parses, the committed manifest is fresh, every key a
//! script touches is declared and comes from KEYS (never built inside Lua), every error code a
//! script replies with is in its contract. No Redis needed.

use std::collections::HashSet;

use redis_primitives::script::{self, Manifest, Script};
use regex::Regex;

fn scripts() -> Vec<&'static Script> {
    script::bundle().iter().collect()
}

/// Lua source without comments, so commented code cannot satisfy or fail a check.
fn code_of(s: &Script) -> String {
    s.source_text().lines().map(|l| l.split("--").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

#[test]
fn bundle_has_every_area_and_sane_files() {
    let names: Vec<&str> = scripts().iter().map(|s| s.name()).collect();
    assert!(names.contains(&"lock.acquire"), "{names:?}");
    for s in scripts() {
        assert!(
            !s.source_text().starts_with("#!"),
            "{}: a shebang is not Lua and breaks Redis < 7",
            s.name()
        );
        assert!(!s.source_text().contains('\r'), "{}: CR bytes", s.name());
        assert!(s.source_text().ends_with('\n'), "{}: no final newline", s.name());
        let c = s.contract();
        assert!(c.min_server == "6.2" || c.min_server == "7.0", "{}: @min-server {}", s.name(), c.min_server);
    }
}

#[test]
fn committed_manifest_is_fresh() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/manifest.json");
    let committed = std::fs::read_to_string(path).expect("scripts/manifest.json exists");
    let fresh = Manifest::of(script::bundle()).to_json();
    assert!(
        committed == fresh,
        "scripts/manifest.json is stale: run `cargo run -- scripts manifest` and commit it"
    );
    // The manifest's SHA1s are those of the files' bytes on disk (what other languages hash).
    let json: serde_json::Value = serde_json::from_str(&committed).unwrap();
    for entry in json["scripts"].as_array().unwrap() {
        let file = entry["file"].as_str().unwrap();
        let bytes = std::fs::read(format!("{}/scripts/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert_eq!(
            entry["sha1"].as_str().unwrap(),
            sha1_smol::Sha1::from(&bytes).digest().to_string(),
            "{file}"
        );
    }
}

#[test]
fn every_key_used_is_declared() {
    let literal = Regex::new(r"KEYS\[(\d+)\]").unwrap();
    let by_variable = Regex::new(r"KEYS\[[a-z_]|ipairs\(KEYS\)").unwrap();
    for s in scripts() {
        let c = s.contract();
        let code = code_of(s);
        for cap in literal.captures_iter(&code) {
            let i: usize = cap[1].parse().unwrap();
            assert!(i <= c.keys.len(), "{}: uses KEYS[{i}] but declares {} keys", s.name(), c.keys.len());
        }
        assert!(
            !by_variable.is_match(&code) || c.variadic_keys(),
            "{}: indexes KEYS by a variable but declares no `@key N..`",
            s.name()
        );
    }
}

/// Commands whose arguments hold no key.
const KEYLESS: &[&str] = &["TIME", "PING", "ECHO"];
/// Container commands whose key follows a subcommand (`XGROUP DELCONSUMER <key> …`).
const SUBCOMMAND_FIRST: &[&str] = &["XGROUP", "XINFO", "OBJECT"];

#[test]
fn no_key_name_is_built_inside_lua() {
    let call = Regex::new(r"redis\.p?call\(").unwrap();
    let key_alias = Regex::new(r"(?m)local\s+(\w+)\s*=\s*KEYS\[\w+\]\s*$").unwrap();
    let ipairs_alias = Regex::new(r"for\s+\w+\s*,\s*(\w+)\s+in\s+ipairs\(KEYS\)").unwrap();
    let direct = Regex::new(r"^KEYS\[[\w.]+\]$").unwrap();
    for s in scripts() {
        let code = code_of(s);
        let aliases: HashSet<String> = key_alias
            .captures_iter(&code)
            .chain(ipairs_alias.captures_iter(&code))
            .map(|c| c[1].to_owned())
            .collect();
        for m in call.find_iter(&code) {
            let args = split_args(&code[m.end()..]);
            let command = args
                .first()
                .map(|a| a.trim_matches(|c| c == '\'' || c == '"').to_uppercase())
                .unwrap_or_default();
            assert!(
                args.first().is_some_and(|a| a.starts_with('\'') || a.starts_with('"')),
                "{}: redis.call with a computed command name: {args:?}",
                s.name()
            );
            if KEYLESS.contains(&command.as_str()) {
                continue;
            }
            let key_at = if SUBCOMMAND_FIRST.contains(&command.as_str()) { 2 } else { 1 };
            let key = args.get(key_at).map(String::as_str).unwrap_or("");
            assert!(
                direct.is_match(key) || aliases.contains(key),
                "{}: {command} is called with key `{key}`: keys must be KEYS[i] (or a local bound to it)",
                s.name()
            );
        }
    }
}

/// The top-level comma-separated arguments of a call, starting just after its `(`.
fn split_args(rest: &str) -> Vec<String> {
    let (mut depth, mut quote, mut cur, mut out) = (0i32, None::<char>, String::new(), Vec::new());
    for ch in rest.chars() {
        match (quote, ch) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(ch),
            (None, '(' | '{' | '[') => depth += 1,
            (None, ')' | '}' | ']') if depth == 0 => {
                out.push(cur.trim().to_owned());
                return out;
            }
            (None, ')' | '}' | ']') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(cur.trim().to_owned());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    out
}

#[test]
fn every_error_code_replied_is_declared() {
    let reply = Regex::new(r#"redis\.error_reply\(\s*['"]([A-Z_]+)"#).unwrap();
    for s in scripts() {
        let c = s.contract();
        let code = code_of(s);
        for cap in reply.captures_iter(&code) {
            assert!(
                c.gives_error(&cap[1]),
                "{}: replies {} but @errors lists {:?}",
                s.name(),
                &cap[1],
                c.error_codes
            );
        }
        assert!(c.gives_error("BADARG"), "{}: every script validates its input and lists BADARG", s.name());
        assert!(
            !code.contains("error({"),
            "{}: error({{err=...}}) is mangled by Redis 6.2; return redis.error_reply",
            s.name()
        );
    }
}

#[test]
fn time_comes_from_the_server() {
    for s in scripts() {
        let code = code_of(s);
        for banned in ["os.time", "os.clock", "math.random"] {
            assert!(!code.contains(banned), "{}: uses {banned}", s.name());
        }
    }
}

#[test]
fn one_byte_changes_the_sha1() {
    let s = script::get("lock.release").unwrap();
    let mut bytes = s.source().to_vec();
    bytes.push(b'\n');
    let changed = Script::from_source("lock/release.lua", Box::leak(bytes.into_boxed_slice())).unwrap();
    assert_ne!(changed.sha1(), s.sha1());
}
