//! The machine-readable header every script opens with (see `scripts/README.md`).

/// Whether a script writes. `Read` scripts may be sent with EVALSHA_RO (and so to replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Never writes.
    Read,
    /// May write.
    Write,
}

/// One `@key N role pattern [text]` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// 1-based position in KEYS.
    pub index: usize,
    /// `N..`: this key repeats from position `index` on.
    pub repeats: bool,
    /// What the key is for, e.g. `lock`.
    pub role: String,
    /// Its name pattern, showing the hash tag, e.g. `lock:{<resource>}`.
    pub pattern: String,
    /// Free text after the pattern.
    pub description: String,
}

/// One `@arg N name type [text]` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgSpec {
    /// 1-based position in ARGV.
    pub index: usize,
    /// `N..`: part of a group that repeats (once per key, for variadic scripts).
    pub repeats: bool,
    /// The argument's name, as the script's BADARG replies name it.
    pub name: String,
    /// Its type and range, e.g. `integer>=1`.
    pub ty: String,
    /// Free text after the type.
    pub description: String,
}

/// A script's contract, parsed from its `--- @tag value` header.
///
/// ```
/// use redis_primitives::script::{Contract, Mode};
///
/// let src = "--- @name demo.echo\n--- @summary Echo.\n--- @key 1 subject demo:{<id>}\n\
///            --- @arg 1 value string what to echo\n--- @returns bulk string\n\
///            --- @errors BADARG bad input\n--- @complexity O(1)\n--- @mode read\n--- @min-server 6.2\n\
///            return ARGV[1]\n";
/// let c = Contract::parse(src).unwrap();
/// assert_eq!(c.name, "demo.echo");
/// assert_eq!(c.mode, Mode::Read);
/// assert_eq!(c.error_codes, vec!["BADARG"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contract {
    /// `@name`, dotted: `area.name`.
    pub name: String,
    /// `@summary`.
    pub summary: String,
    /// `@key` lines, by position.
    pub keys: Vec<KeySpec>,
    /// `@arg` lines, by position.
    pub args: Vec<ArgSpec>,
    /// `@returns`.
    pub returns: String,
    /// `@errors`, as written.
    pub errors: String,
    /// The error codes named at the start of `@errors` (`CODE[, CODE…]`).
    pub error_codes: Vec<String>,
    /// `@complexity`: the most work one call can do, whatever state it finds.
    pub complexity: String,
    /// `@mode`.
    pub mode: Mode,
    /// `@min-server`, e.g. `6.2`.
    pub min_server: String,
}

impl Contract {
    /// Parses the header at the top of a script. Header lines are the leading lines that start
    /// with `--- @`; plain comments and blank lines may sit between them.
    pub fn parse(source: &str) -> Result<Contract, String> {
        let mut name = None;
        let mut summary = None;
        let mut returns = None;
        let mut errors = None;
        let mut complexity = None;
        let mut mode = None;
        let mut min_server = None;
        let mut keys = Vec::new();
        let mut args = Vec::new();

        for (lineno, line) in source.lines().enumerate() {
            let Some(rest) = line.strip_prefix("--- @") else {
                if line.trim().is_empty() || line.starts_with("--") {
                    continue;
                }
                break; // the header ends at the first line of code
            };
            let at = |msg: &str| format!("line {}: {msg}", lineno + 1);
            let (tag, value) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            let value = value.trim();
            if value.is_empty() {
                return Err(at(&format!("@{tag} has no value")));
            }
            let once = |slot: &mut Option<String>| match slot {
                Some(_) => Err(at(&format!("@{tag} given twice"))),
                None => {
                    *slot = Some(value.to_owned());
                    Ok(())
                }
            };
            match tag {
                "name" => once(&mut name)?,
                "summary" => once(&mut summary)?,
                "returns" => once(&mut returns)?,
                "errors" => once(&mut errors)?,
                "complexity" => once(&mut complexity)?,
                "min-server" => once(&mut min_server)?,
                "mode" => {
                    let m = match value {
                        "read" => Mode::Read,
                        "write" => Mode::Write,
                        other => return Err(at(&format!("@mode must be read or write, not {other}"))),
                    };
                    if mode.replace(m).is_some() {
                        return Err(at("@mode given twice"));
                    }
                }
                "key" => {
                    let mut f = Fields::new(value);
                    let (index, repeats) = position(f.next()).map_err(|e| at(&e))?;
                    let role = f.next().ok_or_else(|| at("@key needs N role pattern"))?;
                    let pattern = f.next().ok_or_else(|| at("@key needs N role pattern"))?;
                    if !(pattern.contains('{') && pattern.contains('}')) {
                        return Err(at(&format!("@key pattern {pattern} shows no {{hash tag}}")));
                    }
                    keys.push(KeySpec {
                        index,
                        repeats,
                        role: role.into(),
                        pattern: pattern.into(),
                        description: f.rest().into(),
                    });
                }
                "arg" => {
                    let mut f = Fields::new(value);
                    let (index, repeats) = position(f.next()).map_err(|e| at(&e))?;
                    let arg_name = f.next().ok_or_else(|| at("@arg needs N name type"))?;
                    let ty = f.next().ok_or_else(|| at("@arg needs N name type"))?;
                    args.push(ArgSpec {
                        index,
                        repeats,
                        name: arg_name.into(),
                        ty: ty.into(),
                        description: f.rest().into(),
                    });
                }
                other => return Err(at(&format!("unknown tag @{other}"))),
            }
        }

        let missing = |tag: &str| format!("missing @{tag}");
        let name = name.ok_or_else(|| missing("name"))?;
        if !valid_name(&name) {
            return Err(format!("@name {name} must be dotted lowercase, e.g. lock.release"));
        }
        check_positions("@key", keys.iter().map(|k| (k.index, k.repeats)))?;
        check_positions("@arg", args.iter().map(|a| (a.index, a.repeats)))?;
        let errors = errors.ok_or_else(|| missing("errors"))?;
        let min_server = min_server.ok_or_else(|| missing("min-server"))?;
        if parse_version(&min_server).is_none() {
            return Err(format!("@min-server {min_server} is not a version like 6.2"));
        }
        Ok(Contract {
            name,
            summary: summary.ok_or_else(|| missing("summary"))?,
            keys,
            args,
            returns: returns.ok_or_else(|| missing("returns"))?,
            error_codes: error_codes(&errors),
            errors,
            complexity: complexity.ok_or_else(|| missing("complexity"))?,
            mode: mode.ok_or_else(|| missing("mode"))?,
            min_server,
        })
    }

    /// The number of fixed keys (the keys before any repeating one).
    pub fn fixed_keys(&self) -> usize {
        self.keys.iter().take_while(|k| !k.repeats).count()
    }

    /// True when the last key repeats (`@key N..`): the script takes a variable number of keys.
    pub fn variadic_keys(&self) -> bool {
        self.keys.iter().any(|k| k.repeats)
    }

    /// Whether `code` (the first word of an error reply) is one this script gives itself.
    pub fn gives_error(&self, code: &str) -> bool {
        self.error_codes.iter().any(|c| c == code)
    }
}

/// Splits on whitespace, keeping the remainder for free text.
struct Fields<'a>(&'a str);

impl<'a> Fields<'a> {
    fn new(s: &'a str) -> Self {
        Fields(s.trim_start())
    }
    fn next(&mut self) -> Option<&'a str> {
        if self.0.is_empty() {
            return None;
        }
        let (word, rest) = self.0.split_once(char::is_whitespace).unwrap_or((self.0, ""));
        self.0 = rest.trim_start();
        Some(word)
    }
    fn rest(self) -> &'a str {
        self.0.trim_end()
    }
}

fn position(word: Option<&str>) -> Result<(usize, bool), String> {
    let word = word.ok_or("missing position")?;
    let (digits, repeats) = match word.strip_suffix("..") {
        Some(d) => (d, true),
        None => (word, false),
    };
    match digits.parse::<usize>() {
        Ok(n) if n >= 1 => Ok((n, repeats)),
        _ => Err(format!("position {word} must be N or N.. with N >= 1")),
    }
}

/// Positions run 1, 2, 3… with no gap; once a repeating group starts, everything after repeats.
fn check_positions(tag: &str, items: impl Iterator<Item = (usize, bool)>) -> Result<(), String> {
    let mut in_group = false;
    for (expected, (index, repeats)) in (1..).zip(items) {
        if index != expected {
            return Err(format!("{tag} {index} out of order (expected {expected})"));
        }
        if in_group && !repeats {
            return Err(format!("{tag} {index} follows a repeating group but does not repeat"));
        }
        in_group |= repeats;
    }
    Ok(())
}

fn valid_name(name: &str) -> bool {
    let mut parts = name.split('.');
    let ok = |p: &str| {
        !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    };
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if ok(a) && ok(b))
}

/// `BADARG, CORRUPT some text` -> [BADARG, CORRUPT]: the leading upper-case words.
fn error_codes(errors: &str) -> Vec<String> {
    errors
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .take_while(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(str::to_owned)
        .collect()
}

/// `6.2` or `7.0.15` -> (6, 2, 0).
pub(crate) fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.trim().split('.').map(|p| p.parse::<u32>());
    let major = it.next()?.ok()?;
    let minor = it.next().unwrap_or(Ok(0)).ok()?;
    let patch = it.next().unwrap_or(Ok(0)).ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "--- @name a.b\n--- @summary s\n--- @key 1 lock lock:{<r>}\n\
        --- @key 2.. more x:{<r>}:<n> text here\n--- @arg 1 token string the token\n\
        --- @arg 2.. limit integer>=1\n--- @returns r\n--- @errors BADARG, CORRUPT when bad\n\
        --- @complexity O(1)\n--- @mode write\n--- @min-server 6.2\nlocal x = 1\n--- @name ignored.after_code\n";

    #[test]
    fn parses_a_full_header() {
        let c = Contract::parse(GOOD).unwrap();
        assert_eq!(c.keys.len(), 2);
        assert!(c.keys[1].repeats);
        assert_eq!(c.keys[1].description, "text here");
        assert_eq!(c.fixed_keys(), 1);
        assert!(c.variadic_keys());
        assert_eq!(c.error_codes, ["BADARG", "CORRUPT"]);
        assert!(c.gives_error("CORRUPT"));
        assert_eq!(c.args[0].ty, "string");
    }

    #[test]
    fn refuses_broken_headers() {
        let cases = [
            (GOOD.replace("--- @mode write\n", ""), "missing @mode"),
            (GOOD.replace("lock:{<r>}", "lock:<r>"), "hash tag"),
            (GOOD.replace("@key 2..", "@key 3.."), "out of order"),
            (GOOD.replace("@name a.b", "@name AB"), "dotted"),
            (GOOD.replace("@mode write", "@mode rw"), "read or write"),
            (GOOD.replace("@min-server 6.2", "@min-server six"), "version"),
            (format!("--- @colour red\n{GOOD}"), "unknown tag"),
            (format!("--- @name x.y\n{GOOD}"), "twice"),
        ];
        for (src, want) in cases {
            let err = Contract::parse(&src).unwrap_err();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("6.2"), Some((6, 2, 0)));
        assert_eq!(parse_version("7.0.15"), Some((7, 0, 15)));
        assert_eq!(parse_version("7.x"), None);
    }
}
