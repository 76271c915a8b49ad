#!/usr/bin/env python3
"""instructions.py OUT REQUESTS VERSIONS WORK PEER...: instructions each proxy executed per
request (callgrind, user space), by crate (braid-proxy) or part (HAProxy) and by function, from
bench/proxy.sh instructions' WORK/PEER-a/callgrind.out.1, WORK/PEER-b/callgrind.out.1 and
WORK/PEER.oha.json (every one of REQUESTS must have succeeded), and braid ÷ HAProxy over the same
kind of link; writes OUT.md and OUT.json and prints the .md."""
import json
import re
import sys

import callgrind
from report import parse_oha

TOP_FUNCTIONS = 15
TOP_AREAS = 10


def is_library(obj):
    return ".so" in obj


# HAProxy's own functions by the prefix of their name: its HTTP/2 multiplexer and HPACK, its
# HTTP/1 multiplexer, its internal message format (HTX) and HTTP analysers, streams, memory pools.
HAPROXY_PARTS = [
    (r"(h2|hpack)_", "HTTP/2 + HPACK"),
    (r"h1_", "HTTP/1"),
    (r"htx_", "HTX"),
    (r"http_", "HTTP analysers"),
    (r"(process_stream|stream_|sc_|cs_)", "streams"),
    (r"(__)?pool_", "pools"),
    (r"0x[0-9a-f]+$", "unnamed (static functions; Debian strips their symbols)"),
]


def area(obj, name):
    """The crate, or part of HAProxy or of a C library, a function belongs to."""
    if is_library(obj):
        if re.match(r"__(mem|str)", name):
            return "libc mem*/str*"
        if re.match(r"(_int_|malloc|free|realloc|calloc|cfree|unlink_chunk|tcache)", name):
            return "libc malloc/free"
        return obj
    if obj == "haproxy":
        return next((part for prefix, part in HAPROXY_PARTS if re.match(prefix, name)), "HAProxy other")
    if "::" not in name:  # a C or assembly symbol: in this binary, ring's crypto
        return "ring (C/asm)" if re.match(r"_?(aes|gcm|chacha|x25519|ecp_|p256|sha|ring_|GFp)", name, re.I) \
            else "other C/asm"
    name = re.sub(r"^(core::ptr::drop_in_place<|<)+", "", name)
    match = re.match(r"([a-z_][a-z_0-9]*)::", name)
    return match.group(1) if match else "other"


def summarize(peer, side, path, requests):
    costs = callgrind.read(path)
    total = sum(costs.values())
    areas = {}
    for (obj, name), ir in costs.items():
        key = area(obj, name)
        areas[key] = areas.get(key, 0) + ir
    top = sorted(costs.items(), key=lambda item: -item[1])[:TOP_FUNCTIONS]
    return {
        "peer": peer,
        "side": side,
        "per_request": total / requests,
        "areas": sorted(((k, v / requests) for k, v in areas.items()), key=lambda kv: -kv[1]),
        "top": [(f"{name} ({obj})" if is_library(obj) else name, ir / requests)
                for (obj, name), ir in top],
    }


def markdown(report):
    lines = [
        "# Instructions per request, per proxy (bench/proxy.sh instructions)",
        "",
        f"Versions: {report['versions']}.",
        "",
        f"Each pair ran under callgrind; counters zeroed after a warm-up, then {report['requests']:,} "
        "requests (oha, closed loop, 16 connections, 1 KiB responses), then dumped. User-space "
        "instructions executed per request by each proxy: exact and repeatable, unlike time, but "
        "blind to the kernel (about half of each proxy's CPU time here) and to cache misses.",
        "",
        "| pair | proxy | instructions per request | largest shares |",
        "|---|---|---|---|",
    ]
    for r in report["results"]:
        shares = ", ".join(f"{k} {100 * v / r['per_request']:.0f} %" for k, v in r["areas"][:TOP_AREAS])
        lines.append(f"| {r['peer']} | {r['side']} | {r['per_request']:,.0f} | {shares} |")
    if report["ratios"]:
        lines += ["", "braid ÷ HAProxy, instructions per request over the same kind of link:", "",
                  "| pair | A | B |", "|---|---|---|"]
        lines += [f"| {row['pair']} | {row['A']:.2f}× | {row['B']:.2f}× |" for row in report["ratios"]]
    for r in report["results"]:
        lines += ["", f"## {r['peer']} {r['side']}: own instructions per request, top {TOP_FUNCTIONS} functions", ""]
        lines += [f"    {ir:8,.0f}  {100 * ir / r['per_request']:4.1f} %  {name[:150]}" for name, ir in r["top"]]
    return "\n".join(lines) + "\n"


def ratios(results):
    """braid ÷ HAProxy per side, for each link both were measured over."""
    per_request = {(r["peer"], r["side"]): r["per_request"] for r in results}
    rows = []
    for braid, haproxy in (("braid", "haproxy"), ("braid-mtls", "haproxy-mtls")):
        if all((peer, side) in per_request for peer in (braid, haproxy) for side in "AB"):
            rows.append({"pair": f"{braid} ÷ {haproxy}",
                         **{side: per_request[(braid, side)] / per_request[(haproxy, side)] for side in "AB"}})
    return rows


def main():
    out, requests, versions, work, peers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
    results = []
    for peer in peers:
        load = parse_oha(f"{work}/{peer}.oha.json")
        if (load["ok"], load["non2xx"], load["errors"]) != (requests, 0, 0):
            sys.exit(f"instructions.py: {peer}: {load['ok']} of {requests} requests answered 2xx "
                     f"({load['non2xx']} other answers, {load['errors']} errors: {load['error_kinds']})")
        for side in ("a", "b"):
            results.append(summarize(peer, side.upper(), f"{work}/{peer}-{side}/callgrind.out.1", requests))
    report = {"requests": requests, "versions": versions, "results": results, "ratios": ratios(results)}
    with open(out + ".json", "w") as file:
        json.dump(report, file, indent=1)
    text = markdown(report)
    with open(out + ".md", "w") as file:
        file.write(text)
    print(text)


if __name__ == "__main__":
    main()
