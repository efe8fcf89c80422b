// A Node service using redis-primitives' scripts with nothing but ioredis and scripts/.
//
// The loader is not written here: it is the Node snippet of scripts/README.md, extracted and run
// as is, so the documented snippet is the tested one. tests/interop.rs drives this file against
// the same Redis as the Rust and Python sides; each command prints one JSON line.
//
//     node primitives.js URL manifest
//     node primitives.js URL ratelimit KEY LIMIT WINDOW_MS ATTEMPTS
//     node primitives.js URL lock-acquire RESOURCE TOKEN TTL_MS
//     node primitives.js URL lock-release RESOURCE TOKEN
//     node primitives.js URL cache-get SEGMENT KEY
//     node primitives.js URL cache-put SEGMENT KEY DATA
//     node primitives.js URL cache-bump SEGMENT
//     node primitives.js URL bad-arg
"use strict";

const fs = require("fs");
const path = require("path");
const readline = require("readline");

// The snippet reads "scripts/..." relative to the service's folder: the repository root here.
process.chdir(path.resolve(__dirname, "..", ".."));
const readme = fs.readFileSync("scripts/README.md", "utf8");
const found = readme.match(/^Node \(ioredis[^\n]*\n(?:[^\n]+\n)*\n```js\n([\s\S]*?)^```/m);
if (!found) throw new Error("scripts/README.md has no Node (ioredis) snippet");
// eslint-disable-next-line no-new-func
const { Redis, scripts, call } = new Function("require", `${found[1]}\nreturn { Redis, scripts, call };`)(require);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const cacheKeys = (segment, key) => [
  `cache:{${segment}}:version`,
  `cache:{${segment}}:e:${key}`,
  `cache:{${segment}}:lease:${key}`,
];

async function main() {
  const [url, command, ...args] = process.argv.slice(2);
  const redis = new Redis(url, { maxRetriesPerRequest: 1 });
  try {
    let out;
    switch (command) {
      case "manifest": {
        let match = true;
        for (const [, { sha, source }] of scripts) {
          match = match && (await redis.script("LOAD", source)) === sha;
        }
        out = { loaded: scripts.size, sha_match: match };
        break;
      }
      case "ratelimit": {
        const [key, limit, windowMs, attempts] = args;
        // Start together with the Rust side: connect, say ready, wait for its go.
        await redis.ping();
        process.stdout.write("ready\n");
        const lines = readline.createInterface({ input: process.stdin });
        await new Promise((resolve) => lines.once("line", resolve));
        lines.close();
        let admitted = 0;
        for (let i = 0; i < Number(attempts); i++) {
          await sleep(1);
          // cost 1, flags 0; the reply starts with allowed.
          const reply = await call(redis, "ratelimit.sliding_window", [key], [1, 0, limit, windowMs]);
          admitted += reply[0];
        }
        out = { admitted };
        break;
      }
      case "lock-acquire": {
        const [resource, token, ttl] = args;
        const keys = [`lock:{${resource}}`, `lock:{${resource}}:fence`];
        const [acquired, value] = await call(redis, "lock.acquire", keys, [token, ttl]);
        out = { acquired: acquired === 1, fence_or_pttl: value };
        break;
      }
      case "lock-release": {
        const [resource, token] = args;
        out = { released: (await call(redis, "lock.release", [`lock:{${resource}}`], [token])) === 1 };
        break;
      }
      case "cache-get": {
        const [segment, key] = args;
        const [status, data, version] = await call(redis, "cache.get", cacheKeys(segment, key), ["", 0, 0]);
        out = { status, data, version };
        break;
      }
      case "cache-put": {
        // Read, then write only if the version and generation read are still current.
        const [segment, key, data] = args;
        const keys = cacheKeys(segment, key);
        const [, , version, generation] = await call(redis, "cache.get", keys, ["", 0, 0]);
        const [stored] = await call(redis, "cache.set", keys, [version, generation, data, 60000, 0, "", 0]);
        out = { stored: stored === 1 };
        break;
      }
      case "cache-bump": {
        const [segment] = args;
        out = { version: await call(redis, "cache.bump", [`cache:{${segment}}:version`], []) };
        break;
      }
      case "bad-arg": {
        try {
          await call(redis, "ratelimit.gcra", ["rl:{node}:x"], [1, 0, 0, 1000, 5]);
          out = { error: null };
        } catch (e) {
          out = { error: String(e.message) };
        }
        break;
      }
      default:
        throw new Error(`unknown command ${command}`);
    }
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } finally {
    redis.disconnect();
  }
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
