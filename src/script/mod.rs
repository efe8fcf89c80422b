//! The embedded script bundle: every `scripts/**/*.lua` file, its SHA1 and its contract, plus
//! the machinery to load and invoke them (EVALSHA with transparent NOSCRIPT recovery).
//!
//! The set of scripts is defined in one place: the `scripts/` folder. It is embedded at compile
//! time, byte for byte, so the SHA1s here are the ones a Python, Node or Go service computes from
//! the same files (and lists in `scripts/manifest.json`).
//!
//! Each script has a typed [`Id`], generated at build time from the files: a script that does
//! not exist is a compile error, and [`bundle`] cannot fail at run time.
//!
//! ```
//! use redis_primitives::script::{self, Id};
//!
//! let release = Id::LockRelease.script();
//! assert_eq!(release.file(), "lock/release.lua");
//! assert_eq!(release.sha1().len(), 40);
//! assert_eq!(script::bundle().get("lock.release").unwrap().sha1(), release.sha1());
//! ```

mod batch;
pub(crate) mod contract;
mod invoke;
mod load;
mod manifest;
pub(crate) mod reply;

use std::sync::OnceLock;

use include_dir::{Dir, include_dir};

pub use batch::Batch;
pub use contract::{ArgSpec, Contract, KeySpec, Mode};
pub use invoke::{Invocation, ScriptCall};
pub use load::{NodeLoad, preload, preload_async, preload_cluster};
pub use manifest::Manifest;
pub use reply::Reply;

use crate::{Error, Result};

static SCRIPTS_DIR: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/scripts");

/// One embedded script: its exact bytes, their SHA1 and the parsed contract.
#[derive(Debug)]
pub struct Script {
    contract: Contract,
    file: String,
    source: &'static [u8],
    sha1: String,
}

impl Script {
    /// Builds a script from its source; the contract header must parse.
    ///
    /// ```
    /// use redis_primitives::script::Script;
    /// let s = Script::from_source("x/y.lua", b"--- @name x.y\n--- @summary s\n\
    ///     --- @returns nil\n--- @errors none\n--- @complexity O(1)\n--- @mode read\n--- @min-server 6.2\nreturn nil\n").unwrap();
    /// assert_eq!(s.name(), "x.y");
    /// ```
    pub fn from_source(file: &str, source: &'static [u8]) -> Result<Script> {
        let text = std::str::from_utf8(source).map_err(|_| Error::Bundle(format!("{file} is not UTF-8")))?;
        if text.contains('\r') {
            return Err(Error::Bundle(format!("{file} has CR line endings; the SHA1 is over LF bytes")));
        }
        let contract = Contract::parse(text).map_err(|e| Error::Bundle(format!("{file}: header: {e}")))?;
        Ok(Script {
            contract,
            file: file.to_owned(),
            source,
            sha1: sha1_smol::Sha1::from(source).digest().to_string(),
        })
    }

    /// The `@name`, e.g. `lock.release`.
    pub fn name(&self) -> &str {
        &self.contract.name
    }
    /// The file, relative to `scripts/`, with `/` separators.
    pub fn file(&self) -> &str {
        &self.file
    }
    /// The exact bytes sent with SCRIPT LOAD.
    pub fn source(&self) -> &'static [u8] {
        self.source
    }
    /// The source as text (checked UTF-8 when the script was built).
    pub fn source_text(&self) -> &'static str {
        std::str::from_utf8(self.source).unwrap_or_default()
    }
    /// Lower-case hex SHA1 of [`source`](Self::source), as EVALSHA wants it.
    pub fn sha1(&self) -> &str {
        &self.sha1
    }
    /// The parsed header.
    pub fn contract(&self) -> &Contract {
        &self.contract
    }
    /// Starts an invocation of this script: add keys and arguments, then run it.
    pub fn invoke(&self) -> Invocation<'_> {
        Invocation::new(self)
    }
}

/// All embedded scripts, by name.
#[derive(Debug)]
pub struct Bundle {
    /// Sorted by name. A scan beats a map here: a few dozen short names, looked up on every call.
    scripts: Vec<Script>,
}

impl Bundle {
    /// Looks a script up by `@name`.
    pub fn get(&self, name: &str) -> Option<&Script> {
        self.scripts.iter().find(|s| s.name().len() == name.len() && s.name() == name)
    }

    /// Like [`get`](Self::get), as an error when missing.
    pub fn require(&self, name: &str) -> Result<&Script> {
        self.get(name).ok_or_else(|| Error::Bundle(format!("no script named {name}")))
    }

    /// Scripts sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Script> {
        self.scripts.iter()
    }

    /// Number of scripts.
    pub fn len(&self) -> usize {
        self.scripts.len()
    }

    /// True when no script is embedded.
    pub fn is_empty(&self) -> bool {
        self.scripts.is_empty()
    }

    /// SHA1 over every script's name and SHA1, in name order: one value that changes when any
    /// script changes.
    pub fn digest(&self) -> String {
        let mut h = sha1_smol::Sha1::new();
        for s in self.iter() {
            h.update(s.name().as_bytes());
            h.update(b" ");
            h.update(s.sha1().as_bytes());
            h.update(b"\n");
        }
        h.digest().to_string()
    }

    /// The script of `id`. Ids are generated from the same files, so every id has its script.
    pub fn script(&self, id: Id) -> &Script {
        &self.scripts[id as usize]
    }
}

impl Bundle {
    fn embedded() -> Bundle {
        // `Id::ALL` is sorted by name, and `Id as usize` is its index there: the vector below is
        // in the same order, so `script(id)` is an index, not a search.
        let scripts = Id::ALL
            .iter()
            .map(|id| {
                let file = SCRIPTS_DIR.get_file(id.file()).map(|f| f.contents()).unwrap_or_default();
                // build.rs parsed these exact bytes with the same parser and failed the build on
                // any error, so this cannot fail for an embedded script.
                Script::from_source(id.file(), file)
                    .unwrap_or_else(|e| unreachable!("checked by build.rs: {e}"))
            })
            .collect();
        Bundle { scripts }
    }
}

impl Id {
    /// The embedded script.
    pub fn script(self) -> &'static Script {
        bundle().script(self)
    }

    /// Starts an invocation of the script: add keys and arguments, then run it.
    pub fn invoke(self) -> Invocation<'static> {
        self.script().invoke()
    }
}

include!(concat!(env!("OUT_DIR"), "/script_ids.rs"));

/// The embedded bundle, parsed once (the headers were checked at compile time).
pub fn bundle() -> &'static Bundle {
    static BUNDLE: OnceLock<Bundle> = OnceLock::new();
    BUNDLE.get_or_init(Bundle::embedded)
}

/// The embedded script named `name`, for names that arrive at run time (the CLI); in code, use
/// [`Id`].
///
/// ```
/// let s = redis_primitives::script::get("lock.acquire").unwrap();
/// assert_eq!(s.contract().keys.len(), 2);
/// assert!(redis_primitives::script::get("lock.nope").is_err());
/// ```
pub fn get(name: &str) -> Result<&'static Script> {
    bundle().require(name)
}
