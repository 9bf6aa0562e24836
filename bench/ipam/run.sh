#!/usr/bin/env bash
# IPAM allocation benchmark (issue 4): allocs/s, p50/p99 per allocation, 1 and 50 allocators, SQLite and a local etcd (started on loopback by the store's harness). Args go to ipam_bench (--help).
cd "$(dirname "$0")/../.." && exec cargo run --release -p tabby-ipam --example ipam_bench -- "$@"
