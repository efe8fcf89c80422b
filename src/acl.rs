//! The least-privilege ACL a service needs to run the bundle: the commands (those the Rust side
//! sends, and those the scripts call, since Redis checks a script's calls against the caller's
//! ACL) and the key patterns (from the scripts' `@key` patterns).
//!
//! ```
//! let rule = redis_primitives::acl::rule().unwrap();
//! assert!(rule.commands.contains("evalsha"));
//! assert!(rule.key_patterns.contains("lock:*"));
//! println!("ACL SETUSER svc on >secret {}", rule.to_acl());
//! ```

use std::collections::BTreeSet;

use crate::Result;
use crate::script;

/// Commands the Rust side sends itself (scripts' own calls are read from the bundle).
const CLIENT_COMMANDS: &[&str] = &[
    // Connection set-up and health checks by redis-rs. (CLIENT SETINFO, which redis-rs tries on
    // servers that have it, may fail without harm.)
    "ping",
    "hello",
    // Invocation and NOSCRIPT recovery.
    "evalsha",
    "evalsha_ro",
    "script|load",
    // Rate-limit resets.
    "del",
    // Cluster clients read the topology.
    "cluster|slots",
    "readonly",
];

/// Commands the stream producer and worker send (native commands, not scripts). `CLIENT ID`
/// lets a worker interrupt its own blocked read at shutdown with `CLIENT UNBLOCK`; that one is
/// left out (it can unblock any client): without it, shutdown waits out the block time.
const STREAM_COMMANDS: &[&str] = &[
    "xadd",
    "xreadgroup",
    "xack",
    "xautoclaim",
    "xpending",
    "xtrim",
    "xgroup|create",
    "xrange",
    "xrevrange",
    "xlen",
    "client|id",
];

/// A set of permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Lower-case command names; subcommands as `command|sub`.
    pub commands: BTreeSet<String>,
    /// Key patterns, e.g. `rl:*`.
    pub key_patterns: BTreeSet<String>,
}

impl Rule {
    /// The rule in `ACL SETUSER` syntax (after the user name and password): no keys, channels
    /// or commands but the ones listed. For Redis 6.2, drop `+evalsha_ro` (added in 7.0).
    pub fn to_acl(&self) -> String {
        let mut parts = vec!["resetkeys".to_owned(), "resetchannels".to_owned(), "-@all".to_owned()];
        parts.extend(self.key_patterns.iter().map(|p| format!("~{p}")));
        parts.extend(self.commands.iter().map(|c| format!("+{c}")));
        parts.join(" ")
    }
}

/// The rule for the whole bundle and the Rust API.
pub fn rule() -> Result<Rule> {
    let bundle = script::bundle();
    let mut commands: BTreeSet<String> =
        CLIENT_COMMANDS.iter().chain(STREAM_COMMANDS).map(|c| (*c).to_owned()).collect();
    let mut key_patterns = BTreeSet::new();
    for s in bundle.iter() {
        commands.extend(script_commands(s.source_text()));
        for k in &s.contract().keys {
            if let Some((prefix, _)) = k.pattern.split_once('{') {
                key_patterns.insert(format!("{prefix}*"));
            }
        }
    }
    Ok(Rule { commands, key_patterns })
}

/// The commands a script calls: the string literal after each `redis.call(` / `redis.pcall(`.
fn script_commands(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in source.lines() {
        let code = line.split("--").next().unwrap_or("");
        for part in code.split("redis.").skip(1) {
            let Some(rest) = part.strip_prefix("call(").or_else(|| part.strip_prefix("pcall(")) else {
                continue;
            };
            let rest = rest.trim_start();
            let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') else { continue };
            let Some(end) = rest[1..].find(quote) else { continue };
            let command = rest[1..1 + end].to_lowercase();
            // Container commands are granted per subcommand: `xgroup|delconsumer`.
            let sub = if ["xgroup", "xinfo", "object"].contains(&command.as_str()) {
                let after = rest[end + 2..].trim_start().trim_start_matches(',').trim_start();
                after
                    .chars()
                    .next()
                    .filter(|c| *c == '\'' || *c == '"')
                    .and_then(|q| after[1..].find(q).map(|e| after[1..1 + e].to_lowercase()))
            } else {
                None
            };
            out.push(match sub {
                Some(sub) => format!("{command}|{sub}"),
                None => command,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_commands_a_script_calls() {
        let src = "local x = redis.call('GET', KEYS[1]) -- redis.call('FLUSHALL')\n\
                   local y = redis.pcall(\"ZADD\", KEYS[1], 1, 'a')\n\
                   redis.call('XGROUP', 'DELCONSUMER', KEYS[1], g, c)\n";
        assert_eq!(script_commands(src), ["get", "zadd", "xgroup|delconsumer"]);
    }

    #[test]
    fn the_rule_names_no_dangerous_command() {
        let rule = rule().unwrap();
        for banned in ["flushall", "flushdb", "keys", "config", "eval", "script|flush", "debug"] {
            assert!(!rule.commands.contains(banned), "{banned}");
        }
        assert!(rule.to_acl().starts_with("resetkeys resetchannels -@all ~"));
    }
}
