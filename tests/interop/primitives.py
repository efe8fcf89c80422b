"""A Python service using redis-primitives' scripts with nothing but redis-py and scripts/.

It loads every script from scripts/manifest.json (reading the files as bytes and checking each
SHA1), then calls them by SHA1 exactly as the Rust crate does. tests/interop.rs drives it against
the same Redis as the Rust side; each command prints one JSON line.

    python3 primitives.py URL manifest
    python3 primitives.py URL ratelimit KEY LIMIT WINDOW_MS ATTEMPTS
    python3 primitives.py URL lock-acquire RESOURCE TOKEN TTL_MS
    python3 primitives.py URL lock-release RESOURCE TOKEN
    python3 primitives.py URL cache-get SEGMENT KEY
    python3 primitives.py URL cache-put SEGMENT KEY DATA
    python3 primitives.py URL cache-bump SEGMENT
"""

import hashlib
import json
import pathlib
import sys
import time

import redis

SCRIPTS = pathlib.Path(__file__).resolve().parents[2] / "scripts"


class Primitives:
    def __init__(self, client):
        self.r = client
        manifest = json.loads((SCRIPTS / "manifest.json").read_bytes())
        self.scripts = {}
        for entry in manifest["scripts"]:
            source = (SCRIPTS / entry["file"]).read_bytes()  # bytes: the SHA1 is over exact bytes
            sha = hashlib.sha1(source).hexdigest()
            if sha != entry["sha1"]:
                raise RuntimeError(f"{entry['file']}: sha1 {sha} does not match the manifest")
            self.scripts[entry["name"]] = (sha, source, entry)

    def load_all(self):
        return {name: self.r.script_load(source) for name, (_, source, _) in self.scripts.items()}

    def call(self, name, keys, args):
        sha, source, _ = self.scripts[name]
        try:
            return self.r.evalsha(sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # NOSCRIPT means the script did not run: loading and re-sending is safe.
            self.r.script_load(source)
            return self.r.evalsha(sha, len(keys), *keys, *args)


def main():
    url, command, *args = sys.argv[1:]
    p = Primitives(redis.Redis.from_url(url))
    if command == "manifest":
        loaded = p.load_all()
        print(json.dumps({"loaded": len(loaded), "sha_match": all(loaded[n] == p.scripts[n][0] for n in loaded)}))
    elif command == "ratelimit":
        key, limit, window_ms, attempts = args[0], args[1], args[2], int(args[3])
        admitted = 0
        # Start together with the Rust side: connect, say ready, wait for its go.
        p.r.ping()
        print("ready", flush=True)
        sys.stdin.readline()
        for _ in range(attempts):
            time.sleep(0.001)
            # cost 1, flags 0; the reply starts with allowed.
            reply = p.call("ratelimit.sliding_window", [key], [1, 0, limit, window_ms])
            admitted += reply[0]
        print(json.dumps({"admitted": admitted}))
    elif command == "lock-acquire":
        resource, token, ttl = args
        acquired, value, _ = p.call("lock.acquire", [f"lock:{{{resource}}}", f"lock:{{{resource}}}:fence"], [token, ttl])
        print(json.dumps({"acquired": acquired == 1, "fence_or_pttl": value}))
    elif command == "lock-release":
        resource, token = args
        print(json.dumps({"released": p.call("lock.release", [f"lock:{{{resource}}}"], [token]) == 1}))
    elif command == "cache-get":
        segment, key = args
        keys = [f"cache:{{{segment}}}:version", f"cache:{{{segment}}}:e:{key}", f"cache:{{{segment}}}:lease:{key}"]
        status, data, version, generation, _ = p.call("cache.get", keys, ["", 0, 0])
        print(json.dumps({"status": status, "data": data.decode() if data else None, "version": version}))
    elif command == "cache-put":
        # Read, then write only if the version and generation read are still current.
        segment, key, data = args
        keys = [f"cache:{{{segment}}}:version", f"cache:{{{segment}}}:e:{key}", f"cache:{{{segment}}}:lease:{key}"]
        _, _, version, generation, _ = p.call("cache.get", keys, ["", 0, 0])
        stored, _, _ = p.call("cache.set", keys, [version, generation, data, 60000, 0, "", 0])
        print(json.dumps({"stored": stored == 1}))
    elif command == "cache-bump":
        (segment,) = args
        print(json.dumps({"version": p.call("cache.bump", [f"cache:{{{segment}}}:version"], [])}))
    elif command == "bad-arg":
        try:
            p.call("ratelimit.gcra", ["rl:{py}:x"], [1, 0, 0, 1000, 5])
            print(json.dumps({"error": None}))
        except redis.exceptions.ResponseError as e:
            print(json.dumps({"error": str(e)}))
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main()
