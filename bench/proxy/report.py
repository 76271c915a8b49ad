#!/usr/bin/env python3
"""Turns the raw runs of bench/proxy.sh into its JSON and Markdown reports.

  report.py line PREFIX                          one progress line for one run (stderr of proxy.sh)
  report.py summary WORK OUT SECONDS VERSIONS   writes OUT.json and OUT.md; the knobs (RUNS,
                                                DURATION, RATES, PEERS, ...) come from the environment
  report.py rerender OUT.json                   recomputes the summary and OUT.md from OUT.json
  report.py profile-line OHA_JSON TICKS_A TICKS_B CLK_TCK  one summary line for the profile
  report.py profile-crates PERF_REPORT_TXT      self time summed per crate (kernel, hyper, tokio ...)
  report.py costs WORK OUT VERSIONS             per request and proxy: user/system CPU, context
                                                switches, system calls (bench/proxy.sh costs)

A run is PREFIX.meta.json (written by proxy.sh: CPU ticks of proxy A and B over the run, peak
VmRSS/RssAnon sampled during it) plus PREFIX.oha.json (paced) or PREFIX.wrk.txt (closed loop).
"""
import glob
import json
import os
import re
import statistics
import sys


def parse_oha(path):
    d = json.load(open(path))
    p = d["latencyPercentiles"]
    codes = {int(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
    ok = sum(v for k, v in codes.items() if 200 <= k < 300)
    ms = lambda x: None if x is None else x * 1000  # noqa: E731
    return {
        "ok": ok,
        "non2xx": sum(v for k, v in codes.items() if not 200 <= k < 300),
        "errors": sum(d.get("errorDistribution", {}).values()),
        "error_kinds": d.get("errorDistribution", {}),
        "rps": ok / d["summary"]["total"] if d["summary"]["total"] else 0.0,
        "p50_ms": ms(p.get("p50")), "p90_ms": ms(p.get("p90")), "p99_ms": ms(p.get("p99")),
        "p999_ms": ms(p.get("p99.9")), "max_ms": ms(d["summary"].get("slowest")),
    }


def parse_wrk(path):
    text = open(path).read()
    total = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", text).group(1))
    non2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", text)) else 0
    errors = sum(map(int, m.groups())) if (m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)) else 0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    return {"ok": total - non2xx, "non2xx": non2xx, "errors": errors,
            "rps": rps * (total - non2xx) / total if total else 0.0}


def load_run(prefix):
    meta = json.load(open(prefix + ".meta.json"))
    paced = meta["point"] != "max"
    run = {"scenario": meta["scenario"], "point": meta["point"], "run": meta["run"],
           "kind": "paced" if paced else "closed", "seconds": meta["ms"] / 1000}
    run.update(parse_oha(prefix + ".oha.json") if paced else parse_wrk(prefix + ".wrk.txt"))
    reasons = []
    if run["errors"]:
        reasons.append(f"{run['errors']} errors")
    if run["non2xx"]:
        reasons.append(f"{run['non2xx']} non-2xx")
    if not run["ok"]:
        reasons.append("no successful request")
    run["valid"], run["invalid_because"] = not reasons, reasons
    # Paced load that the path could not keep up with: latency is then queueing, still reported.
    run["saturated"] = paced and run["rps"] < 0.95 * int(meta["point"])
    tck = meta["clk_tck"]
    # CPU 1 runs only the proxies: time of other processes there (other users of a shared machine,
    # idle peers' timers) and hypervisor steal during the run tell how noisy the run was.
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        a - b for a, b in zip(meta["cpu1_after"], meta["cpu1_before"]))
    elapsed = meta["ms"] / 1000 * tck
    run["cpu1_pct"] = {
        "other_processes": max(0.0, 100 * (user + nice + system - sum(meta["cpu_ticks"])) / elapsed),
        "irq_softirq": 100 * (irq + softirq) / elapsed, "steal": 100 * steal / elapsed}
    run["loadavg"] = meta["loadavg"]
    if meta["scenario"] != "direct":
        run["cpu_s_per_10k"] = [t / tck / run["ok"] * 10_000 if run["ok"] else None
                                for t in meta["cpu_ticks"]]
        run["cpu_s"] = [t / tck for t in meta["cpu_ticks"]]
        run["peak_kib"] = [{"vmrss": a, "rss_anon": b} for a, b in meta["peak_kib"]]
        run["a_to_b_connections"] = meta["a_to_b_connections"]
    return run


def line(prefix):
    r = load_run(prefix)
    what = f"run {r['run']} {r['point']:>5} {r['scenario']:<8}"
    if r["kind"] == "paced":
        what += f" p50 {r['p50_ms']:.3f} p99 {r['p99_ms']:.3f} p99.9 {r['p999_ms']:.3f} ms"
    else:
        what += f" {r['rps']:8.0f} req/s"
    if "cpu_s_per_10k" in r and None not in r["cpu_s_per_10k"]:
        what += " cpu/10k A {:.2f} B {:.2f} s".format(*r["cpu_s_per_10k"])
    what += f" (CPU 1 other {r['cpu1_pct']['other_processes']:.0f}%, steal {r['cpu1_pct']['steal']:.0f}%)"
    if r["saturated"]:
        what += f" SATURATED ({r['rps']:.0f} req/s)"
    if not r["valid"]:
        what += " INVALID: " + ", ".join(r["invalid_because"])
    print("bench:   " + what)


def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(runs, idle, scenarios, points):
    out = {}
    for point in points:
        for s in scenarios:
            rs = [r for r in runs if r["point"] == point and r["scenario"] == s]
            ok = [r for r in rs if r["valid"]]
            entry = {"runs": len(rs), "valid": len(ok),
                     "saturated_runs": sum(r["saturated"] for r in ok)}
            keys = ["rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"] if point != "max" else ["rps"]
            for k in keys:
                entry[k] = stats([r[k] for r in ok])
            entry["cpu1_other_pct"] = stats([r["cpu1_pct"]["other_processes"] for r in rs])
            if s != "direct":
                entry["pair_cpu_pct"] = stats([100 * sum(r["cpu_s"]) / r["seconds"] for r in ok])
                conns = [r["a_to_b_connections"] for r in rs if "a_to_b_connections" in r]
                entry["a_to_b_connections_max"] = max(conns, default=None)
                for i, side in enumerate("ab"):
                    entry[f"cpu_s_per_10k_{side}"] = stats([r["cpu_s_per_10k"][i] for r in ok])
                    entry[f"peak_vmrss_kib_{side}"] = max((r["peak_kib"][i]["vmrss"] for r in rs), default=None)
                    entry[f"peak_rss_anon_kib_{side}"] = max((r["peak_kib"][i]["rss_anon"] for r in rs), default=None)
            out.setdefault(point, {})[s] = entry
    return out


# ─── Markdown ─────────────────────────────────────────────────────────────────────────────────
def med(e, k):
    return e[k]["median"] if e and e.get(k) else None


def f_ms(st, digits=3):
    if not st:
        return "—"
    return f"{st['median']:.{digits}f} ({st['min']:.{digits}f}–{st['max']:.{digits}f})"


def f_add(e, d, k):
    a, b = med(e, k), med(d, k)
    return "—" if a is None or b is None else f"+{a - b:.3f}" if a >= b else f"{a - b:.3f}"


def f_cpu(e):
    a, b = med(e, "cpu_s_per_10k_a"), med(e, "cpu_s_per_10k_b")
    return "—" if a is None or b is None else f"{a:.2f} / {b:.2f}"


def f_pct(e, key="cpu1_other_pct"):
    st = e.get(key)
    return "—" if not st else f"{st['median']:.0f} % ({st['min']:.0f}–{st['max']:.0f})"


def mib(kib):
    return "—" if kib is None else f"{kib / 1024:.1f}"


def ratio(a, b):
    return "—" if a is None or b is None or b <= 0 else f"{a / b:.2f}×"


def markdown(report):
    sm, peers, rates = report["summary"], report["peers"], report["rates"]
    scenarios = ["direct"] + peers
    s = report["settings"]
    lines = [
        f"# Sidecar pair benchmark, {report['timestamp']}", "",
        "client ──HTTP/1.1──▶ proxy A ──(HTTP/2; nginx: HTTP/1.1 keep-alive)──▶ proxy B "
        "──HTTP/1.1──▶ origin (nginx, 1 KiB body); `direct` = client ──▶ origin. Between A and B: "
        "plaintext, or mutual TLS 1.3 for the `-mtls` scenarios. Load generator and "
        "origin on CPU 0, every proxy on CPU 1 with one worker. "
        f"{s['runs']} interleaved runs per point; each cell: median (min–max) of the valid runs.", "",
        f"Settings: `{s['knobs']}`. Versions: {report['versions']}. Machine: {report['machine']}. "
        f"Took {report['took_seconds'] / 60:.1f} min.", "",
        noise(report["runs"]), "",
        "Added = median of the scenario minus median of `direct` at the same rate. CPU-s / 10k req: "
        "utime+stime of each proxy process over the run ÷ successful requests × 10,000. Pair's CPU: A+B's "
        "CPU time over the run as a share of one core; near 100 % minus what others take, the pair is "
        "saturated and its latency is queueing (oha's correction keeps the rate, so latency shows it). CPU 1 other: "
        "share of CPU 1 used by processes other than the measured pair during the run (other work on "
        "this shared machine, the idle peers), median (min–max): high values mean a noisy run.", "",
    ]
    for rate in rates:
        p = str(rate)
        d = sm[p]["direct"]
        lines += [f"## Paced {int(rate):,} req/s (oha -c 16 -q {rate} --latency-correction, {s['duration']})", "",
                  "| scenario | p50 ms | p99 ms | p99.9 ms | added p50 | added p99 | CPU-s / 10k req, A / B | pair's CPU | valid runs | CPU 1 other |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for sc in scenarios:
            e = sm[p][sc]
            name = sc + (f" (saturated in {e['saturated_runs']}: {med(e, 'rps'):.0f} req/s)" if e["saturated_runs"] else "")
            add = ("—", "—") if sc == "direct" else (f_add(e, d, "p50_ms"), f_add(e, d, "p99_ms"))
            lines.append(f"| {name} | {f_ms(e.get('p50_ms'))} | {f_ms(e.get('p99_ms'))} | {f_ms(e.get('p999_ms'))} | "
                         f"{add[0]} | {add[1]} | {'—' if sc == 'direct' else f_cpu(e)} | {f_pct(e, 'pair_cpu_pct')} | "
                         f"{e['valid']}/{e['runs']} | {f_pct(e)} |")
        lines.append("")
    d = sm["max"]["direct"]
    lines += [f"## Closed loop, maximum throughput (wrk -t1 -c16, {s['wrk_duration']})", "",
              "| scenario | req/s | × direct | CPU-s / 10k req, A / B | valid runs | CPU 1 other |", "|---|---|---|---|---|---|"]
    for sc in scenarios:
        e = sm["max"][sc]
        lines.append(f"| {sc} | {f_ms(e.get('rps'), 0)} | {ratio(med(e, 'rps'), med(d, 'rps'))} | "
                     f"{'—' if sc == 'direct' else f_cpu(e)} | {e['valid']}/{e['runs']} | {f_pct(e)} |")
    lines += ["", "## Memory per proxy (MiB), A / B", "",
              "Idle: after one request, before any load. Under load: highest sample (every 0.5 s) over all "
              "runs. nginx counts master + worker. A→B connections: the most connections from A to B "
              "seen under load (sampled with the memory; 1 = everything multiplexed over one HTTP/2 "
              "connection).", "",
              "| peer | VmRSS idle | VmRSS under load | RssAnon idle | RssAnon under load | A→B connections |",
              "|---|---|---|---|---|---|"]
    for peer in peers:
        (ra, aa), (rb, ab) = report["idle_kib"][peer]
        pk = lambda k, side: max((sm[p][peer][f"{k}_{side}"] or 0) for p in sm)  # noqa: E731
        lines.append(f"| {peer} | {mib(ra)} / {mib(rb)} | {mib(pk('peak_vmrss_kib', 'a'))} / {mib(pk('peak_vmrss_kib', 'b'))} | "
                     f"{mib(aa)} / {mib(ab)} | {mib(pk('peak_rss_anon_kib', 'a'))} / {mib(pk('peak_rss_anon_kib', 'b'))} | "
                     f"{a_to_b(sm, peer)} |")
    if len(peers) > 1:
        cols = []
        for rate in rates:
            cols += [(f"added p50 @{rate}", lambda e, r=str(rate): add_over(sm, r, e, "p50_ms")),
                     (f"added p99 @{rate}", lambda e, r=str(rate): add_over(sm, r, e, "p99_ms")),
                     (f"CPU A+B @{rate}", lambda e, r=str(rate): cpu_pair(sm[r][e]))]
        cols += [("max req/s", lambda e: med(sm["max"][e], "rps")),
                 ("VmRSS idle A+B", lambda e: sum(x[0] for x in report["idle_kib"][e])),
                 ("RssAnon idle A+B", lambda e: sum(x[1] for x in report["idle_kib"][e]))]
        lines += ["", "## Ratios between peers (row ÷ column; below 1× the row is cheaper, except max req/s)", "",
                  "| | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for a, b in ratio_rows(peers):
            lines.append(f"| {a} ÷ {b} | " + " | ".join(ratio(c[1](a), c[1](b)) for c in cols) + " |")
    invalid = [r for r in report["runs"] if not r["valid"]]
    if invalid:
        lines += ["", "## Invalid runs (left out of the medians)", ""]
        lines += [f"- run {r['run']}, {r['point']}, {r['scenario']}: {', '.join(r['invalid_because'])} "
                  f"{r.get('error_kinds') or ''}" for r in invalid]
    return "\n".join(lines) + "\n"


def ratio_rows(peers):
    """braid against each other peer over the same kind of link (plaintext or mTLS), then what
    mTLS costs each peer; every pair when no braid scenario ran."""
    link = lambda p: p.endswith("-mtls")  # noqa: E731
    ours = [p for p in peers if p.removesuffix("-mtls") == "braid"]
    if not ours:
        return [(a, b) for i, a in enumerate(peers) for b in peers[i + 1:]]
    rows = [(a, b) for a in ours for b in peers if b not in ours and link(a) == link(b)]
    rows += [(p, p.removesuffix("-mtls")) for p in peers if link(p) and p.removesuffix("-mtls") in peers]
    return rows


def noise(runs):
    other = [r["cpu1_pct"]["other_processes"] for r in runs]
    steal = [r["cpu1_pct"]["steal"] for r in runs]
    return (f"Noise: processes other than the measured pair used CPU 1 for a median "
            f"{statistics.median(other):.1f} % (max {max(other):.1f} %) of each run; hypervisor steal "
            f"on CPU 1 median {statistics.median(steal):.1f} % (max {max(steal):.1f} %); load average "
            f"{runs[0]['loadavg']} at the first run, {runs[-1]['loadavg']} at the last.")


def a_to_b(sm, peer):
    seen = [sm[p][peer].get("a_to_b_connections_max") for p in sm]
    seen = [c for c in seen if c is not None]
    return max(seen) if seen else "—"


def add_over(sm, point, peer, k):
    a, b = med(sm[point][peer], k), med(sm[point]["direct"], k)
    return None if a is None or b is None else a - b


def cpu_pair(e):
    a, b = med(e, "cpu_s_per_10k_a"), med(e, "cpu_s_per_10k_b")
    return None if a is None or b is None else a + b


def machine():
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    return f"{model}, {os.cpu_count()} CPUs"


KNOBS = ["RUNS", "DURATION", "RATES", "PEERS", "WARMUP", "WRK_DURATION", "NICE"]


def rerender(out_json):
    """Recomputes the summary and the .md of a stored report (e.g. after changing this file)."""
    report = json.load(open(out_json))
    points = report["rates"] + ["max"]
    report["summary"] = summarize(report["runs"], report["idle_kib"], ["direct"] + report["peers"], points)
    json.dump(report, open(out_json, "w"), indent=1)
    open(out_json.removesuffix(".json") + ".md", "w").write(markdown(report))


def summary(work, out, took, versions):
    # In the order they ran.
    metas = sorted(glob.glob(f"{work}/runs/*.meta.json"), key=os.path.getmtime)
    runs = [load_run(p[:-len(".meta.json")]) for p in metas]
    idle = json.load(open(f"{work}/idle.json"))
    kv = {k: os.environ[k] for k in KNOBS}
    knobs = " ".join(f"{k}={v!r}" if " " in v else f"{k}={v}" for k, v in kv.items())
    peers, rates = kv["PEERS"].split(), kv["RATES"].split()
    points = rates + ["max"]
    report = {
        "timestamp": os.path.basename(out).removeprefix("proxy-"),
        "machine": machine(), "versions": versions, "took_seconds": int(took),
        "settings": {"knobs": knobs, "runs": int(kv["RUNS"]), "duration": kv["DURATION"],
                     "wrk_duration": kv["WRK_DURATION"], "connections": 16},
        "peers": peers, "rates": rates, "idle_kib": idle,
        "summary": summarize(runs, idle, ["direct"] + peers, points),
        "runs": runs,
    }
    json.dump(report, open(out + ".json", "w"), indent=1)
    open(out + ".md", "w").write(markdown(report))


def profile_line(oha_json, ticks_a, ticks_b, clk_tck):
    r = parse_oha(oha_json)
    per = lambda t: int(t) / int(clk_tck) / r["ok"] * 10_000 if r["ok"] else float("nan")  # noqa: E731
    print(f"# {r['ok']} ok at {r['rps']:.0f} req/s, {r['non2xx']} non-2xx, {r['errors']} errors; "
          f"p50 {r['p50_ms']:.3f} ms, p99 {r['p99_ms']:.3f} ms (while profiled); "
          f"CPU-s per 10k requests A {per(ticks_a):.2f}, B {per(ticks_b):.2f} (perf's own overhead included)")


def crate_of(sym):
    """Who a perf symbol belongs to: the kernel, a Rust crate (first path segment), or libc."""
    if sym.startswith("[k]"):
        return "kernel (syscalls, loopback TCP, scheduling)"
    name = sym.removeprefix("[.]").strip()
    name = re.sub(r"^(<|&mut |&|dyn )+", "", name)
    if "::" in name:
        return name.split("::", 1)[0]
    if re.match(r"^(0x[0-9a-f]+|\[unknown\])", name):
        return "unresolved addresses"
    if re.search(r"malloc|free|realloc|calloc|_int_|tcache|arena", name):
        return "libc malloc/free"
    if re.search(r"mem(move|cpy|set|cmp|chr)|str(len|cmp|chr)", name):
        return "libc mem*/str*"
    if re.search(r"epoll|writev|readv|recv|send|read$|write$|clock_gettime|vdso|syscall|accept|futex", name):
        return "libc syscall wrappers, vDSO clock"
    return "other C symbols"


def profile_crates(perf_txt):
    """Self time summed per crate / area, from `perf report --no-children --sort sym` rows."""
    share = {}
    for row in open(perf_txt):
        m = re.match(r"^\s+([\d.]+)%\s+(\[[k.]\].*)$", row.rstrip())
        if m:
            share[crate_of(m.group(2))] = share.get(crate_of(m.group(2)), 0.0) + float(m.group(1))
    for name, pct in sorted(share.items(), key=lambda kv: -kv[1]):
        if pct >= 0.5:
            print(f"  {pct:6.2f}%  {name}")


COST_GROUPS = {
    "reads": ("recvfrom", "read", "readv", "recvmsg"),
    "writes": ("writev", "write", "sendto", "sendmsg"),
    "epoll": ("epoll_wait", "epoll_pwait"),
}


def parse_perf_stat(path):
    """`perf stat -x,` counts by event name: syscall tracepoints by syscall, plus the rest."""
    counts = {}
    for row in open(path):
        fields = row.strip().split(",")
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        event = fields[2].removeprefix("syscalls:sys_enter_")
        counts[event] = counts.get(event, 0) + int(fields[0])
    return counts


def costs(work, out, versions):
    """Per request and per proxy: user and system CPU, context switches, system calls."""
    rows = {}
    for meta_path in sorted(glob.glob(os.path.join(work, "runs", "costs-*.meta.json"))):
        prefix = meta_path.removesuffix(".meta.json")
        meta = json.load(open(meta_path))
        paced = meta["point"] != "max"
        load = parse_oha(prefix + ".oha.json") if paced else parse_wrk(prefix + ".wrk.txt")
        if not load["ok"] or load["non2xx"] or load["errors"]:
            print(f"costs: {prefix}: {load['non2xx']} non-2xx, {load['errors']} errors: left out", file=sys.stderr)
            continue
        n, tck = load["ok"], meta["clk_tck"]
        for side in ("a", "b"):
            ticks = meta["ticks_" + side]
            counts = parse_perf_stat(f"{prefix}.perf-{side}.csv")
            sample = {
                "rps": load["rps"],
                "user_us": ticks[0] / tck / n * 1e6,
                "system_us": ticks[1] / tck / n * 1e6,
                "context_switches": counts.get("context-switches", 0) / n,
                "syscalls": counts.get("raw_syscalls:sys_enter", 0) / n,
            }
            for group, names in COST_GROUPS.items():
                sample[group] = sum(counts.get(name, 0) for name in names) / n
            rows.setdefault((meta["point"], meta["peer"], side), []).append(sample)
    keys = ["rps", "user_us", "system_us", "context_switches", "syscalls", "reads", "writes", "epoll"]
    lines = [
        "# Where each request's CPU goes, per proxy (bench/proxy.sh costs)",
        "",
        f"Versions: {versions}. Machine: {machine()}.",
        "",
        "Medians over the runs; per request that went through the pair, for each proxy of the pair.",
        "CPU from /proc/PID/stat (utime, stime); context switches and system calls from `perf stat`",
        "(reads: recvfrom/read/readv/recvmsg, writes: writev/write/sendto/sendmsg, epoll: epoll_wait/pwait).",
        "",
        "| load | proxy | side | req/s | user µs | system µs | CPU-s per 10k | context switches | syscalls | reads | writes | epoll waits | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for (point, peer, side), samples in sorted(rows.items(), key=lambda kv: (kv[0][0] == "max", kv[0])):
        m = {k: statistics.median(s[k] for s in samples) for k in keys}
        summary[f"{point}/{peer}/{side}"] = m
        load = "closed loop (wrk)" if point == "max" else f"{point} req/s"
        lines.append(
            f"| {load} | {peer} | {side} | {m['rps']:.0f} | {m['user_us']:.1f} | {m['system_us']:.1f} | "
            f"{(m['user_us'] + m['system_us']) / 100:.2f} | {m['context_switches']:.2f} | {m['syscalls']:.2f} | "
            f"{m['reads']:.2f} | {m['writes']:.2f} | {m['epoll']:.2f} | {len(samples)} |")
    json.dump({"versions": versions, "summary": summary, "rows": {"/".join(k): v for k, v in rows.items()}},
              open(out + ".json", "w"), indent=1)
    open(out + ".md", "w").write("\n".join(lines) + "\n")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"line": line, "summary": summary, "rerender": rerender, "profile-line": profile_line,
     "profile-crates": profile_crates, "costs": costs}[cmd](*args)
