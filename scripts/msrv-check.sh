#!/usr/bin/env bash
# The minimum supported Rust version (`rust-version` in Cargo.toml) must hold for the whole
# locked dependency tree: no package in Cargo.lock may ask for a newer compiler. (Clippy's
# MSRV lints check our own code against the same `rust-version`.) CI has only the machine's
# one toolchain, so this is a check of declarations, not a build on the old compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --locked | python3 -c '
import json, re, sys
meta = json.load(sys.stdin)
toml = open("Cargo.toml").read()
ours = re.search(r"^rust-version\s*=\s*\"([0-9.]+)\"", toml, re.M).group(1)
def key(v): return tuple(int(x) for x in (v.split(".") + ["0", "0"])[:3])
newer = [(p["name"], p["version"], p["rust_version"]) for p in meta["packages"]
         if p.get("rust_version") and key(p["rust_version"]) > key(ours)]
if newer:
    for name, version, needs in newer:
        print(f"{name} {version} needs Rust {needs}, above rust-version {ours}", file=sys.stderr)
    sys.exit(1)
print(f"every locked package builds with Rust {ours} (rust-version)")
'
