"""Writes docs/benchmarks.md from the JSON of a scripts/bench run: the machine, the versions, the date, how each
figure is measured, and the figures (median of the runs, with min and max) against the issue's targets."""

import argparse
import datetime
import json
import os
import platform
import subprocess


def first_line(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        memory_kib = int(f.readline().split()[1])
    return {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
            "memory": f"{memory_kib / 1024 / 1024:.1f} GiB"}


def versions(args):
    def python_package(name):
        if not args.venv_python:
            return "not installed (--no-peers)"
        return first_line([args.venv_python, "-c", f"import {name}; print({name}.__version__)"])
    return {
        "swift": first_line(["swift", "--version"]),
        "redis": first_line(["redis-server", "--version"]),
        "hiredis": first_line(["pkg-config", "--modversion", "hiredis"]),
        "python": platform.python_version(),
        "rq": python_package("rq"),
        "celery": python_package("celery"),
        "runner": first_line([args.runner, "--version"]),
    }


def span(summary, digits=0, unit=""):
    if not summary:
        return "n/a"
    f = f"{{:.{digits}f}}"
    return f"{f.format(summary['median'])}{unit} ({f.format(summary['min'])}–{f.format(summary['max'])})"


def runs_of(values):
    return {"median": sorted(values)[len(values) // 2], "min": min(values), "max": max(values)}


def verdict(ok):
    return "met" if ok else "**missed**"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--runner", required=True)
    parser.add_argument("--redis-port")
    parser.add_argument("--venv-python")
    args = parser.parse_args()
    with open(args.json) as f:
        data = json.load(f)
    detail = data["detail"]
    # When the figures were taken: the driver's stamp, else when its JSON was written.
    run_date = datetime.datetime.fromtimestamp(data.get("finished_at", os.path.getmtime(args.json)),
                                               datetime.timezone.utc)
    m, v = machine(), versions(args)
    throughput = detail["throughput_runs"]
    systems = list(throughput)
    lines = []
    add = lines.append
    add("# Benchmarks")
    add("")
    add("Written by `scripts/bench` (do not edit by hand; run it again instead). "
        f"Run of {run_date:%Y-%m-%d %H:%M} UTC, size `{data['size']}`.")
    add("")
    add("## Machine and versions")
    add("")
    add(f"- CPU: {m['cpu']}, {m['cores']} cores; kernel {m['kernel']}; memory {m['memory']}")
    for name, version in v.items():
        add(f"- {name}: {version}")
    add("")
    add("The machine may be shared: absolute figures move with its load, the ratios (taken within one run, the "
        "systems one after the other at each concurrency) much less. Each figure is the median of the runs, with "
        "the minimum and maximum in parentheses.")
    add("")
    add("## How each figure is measured")
    add("")
    add("- **Throughput**: N jobs are queued up front on an idle private redis-server (pipelined `XADD`, before any "
        "worker starts), then the system's workers start. The first job runs `scripts/benchmark/stamp.c` (a static "
        "program that appends `CLOCK_REALTIME` in ns to a file first thing in `main`), the other N−1 run "
        "`/bin/true`. jobs/s = N ÷ (the moment the driver sees the last result recorded − the first job's stamp). "
        "\"Result recorded\" is polled every millisecond: runner — the jobs stream is empty (each entry is deleted "
        "by the script that records its result); limit — nothing pending and no lag in the group; RQ — N jobs in "
        "its finished registry; Celery — N keys in its result backend's database. Start-up is not counted.")
    add("- **runner**: `runner worker --concurrency C --no-reaper`, default isolation (`process_group`: own "
        "session, work folder, environment, lease-fenced Lua scripts for claim, started and result).")
    add("- **limit** (`scripts/benchmark/limit.c`): C processes, one connection each: `XREADGROUP COUNT 1 BLOCK`, "
        "`posix_spawn` + `waitpid`, then `HSET` of the result and `XACK` in one pipelined round trip: the floor of "
        "what any Redis-streams process runner must do per job.")
    add("- **RQ**: C processes of `rq worker` (its default forking worker); **Celery**: `celery worker --pool "
        "prefork -c C` with the Redis broker and result backend. Their task runs `subprocess.run([cmd])`.")
    add("- **Dispatch latency**: a runner with nothing to do (concurrency 2); jobs submitted one at a time, 10 ms "
        "apart after the previous result; each job is the stamp program. \"To running\" = its stamp − the driver's "
        "`CLOCK_REALTIME` right before sending the `XADD`; \"to result\" = when the driver's blocking `XREAD` on "
        "the events stream returns the job's terminal event (written in the same script as the result) − the same "
        "start. The limit program is measured the same way (its result seen by polling `EXISTS` every 0.2 ms).")
    add("- **Idle**: a runner with its reaper, registered and settled for 2 s, then left alone: CPU seconds of the "
        "runner and its watchdog process from `/proc/<pid>/stat` (utime + stime), `VmRSS` at the end, and Redis "
        "commands per second from the delta of `INFO commandstats` (the driver's own `INFO` excluded).")
    add("- **Output**: one job `head -c N /dev/zero` (default log limit 16 MiB: the rest is counted, not stored). "
        "MB/s = N ÷ the job's recorded `duration_ms` (MB = 10^6 bytes); peak RSS = the larger of the runner's "
        "`VmRSS` sampled every 10 ms and its `VmHWM` after.")
    add("- **Backlog**: 4 runners (`--concurrency 2 --result-retention 5s --events-maxlen 1000 --no-reaper`) drain "
        "a first batch, then the rest; after each (the runners idle again) each runner's `VmRSS`, open fds, "
        "threads and zombie children. Redis `used_memory` before queueing and after every result has expired.")
    add("- **Pool size**: P runners `--concurrency 1 --no-reaper`, registered and settled: Redis commands per "
        "second (all of them: lease renewals, heartbeats, registry updates, blocking reads) and Redis CPU "
        "(`used_cpu_user` + `used_cpu_sys` delta ÷ wall time).")
    add("")
    add("## Throughput (jobs/s)")
    add("")
    add("| system | c1 | c2 | c8 |")
    add("|---|---|---|---|")
    for system in systems:
        add(f"| {system} | " + " | ".join(span(throughput[system][f"c{c}"]) for c in (1, 2, 8)) + " |")
    add("")
    ratio_limit = detail["ratio_to_limit_c2_runs"]
    ratio_peer = detail["ratio_to_best_peer_c2_runs"]
    add(f"- runner ÷ limit at c2 (per run, then the median): {span(ratio_limit, 2)} — target ≥ 0.8: "
        f"{verdict(ratio_limit['median'] >= 0.8)}")
    if ratio_peer:
        add(f"- runner ÷ best peer at c2: {span(ratio_peer, 2)} — target ≥ 3: {verdict(ratio_peer['median'] >= 3)}")
        for peer, ratio in data["ratio_to_peer_c2"].items():
            add(f"- runner ÷ {peer} at c2 (medians): {ratio:.2f}")
    add("")
    add("## Dispatch latency on an idle pool (ms)")
    add("")
    add("| system | to running p50 | to running p99 | to result p50 | to result p99 |")
    add("|---|---|---|---|---|")
    for system, runs in (("runner", detail["dispatch_runner"]), ("limit", detail["dispatch_limit"])):
        add(f"| {system} | " + " | ".join(span(runs_of([r[k] for r in runs]), 3) for k in (
            "p50", "p99", "result_p50", "result_p99")) + " |")
    add("")
    d = data["dispatch_ms"]
    add(f"- target p50 < 1 ms: {verdict(d['p50'] < 1)}; p99 < 5 ms: {verdict(d['p99'] < 5)}")
    add("")
    idle = data["idle"]
    add(f"## Idle ({detail['idle']['seconds']} s)")
    add("")
    pss = detail["idle"].get("pss_mb")
    add(f"- CPU: {idle['cpu_seconds']:.3f} s; RSS {idle['rss_mb']:.1f} MB (target < 20: "
        f"{verdict(idle['rss_mb'] < 20)})" + (f", PSS {pss:.1f} MB" if pss else "") +
        f"; Redis {idle['redis_cmds_per_s']:.2f} commands/s (target ≤ 2: {verdict(idle['redis_cmds_per_s'] <= 2)})")
    add(f"- commands in the window (INFO commandstats: also those run inside scripts): "
        f"{json.dumps(detail['idle']['commands'], sort_keys=True)}")
    if "sent_cmds_per_s" in detail["idle"]:
        add(f"- commands the runner sent (MONITOR, without those inside scripts): "
            f"{detail['idle']['sent_cmds_per_s']:.2f}/s: {json.dumps(detail['idle']['sent_commands'], sort_keys=True)}")
    add("")
    add("## Output")
    add("")
    outputs = detail["output"]
    add(f"- {outputs[0]['bytes'] / 1e6:.0f} MB: {span(runs_of([o['mb_per_s'] for o in outputs]))} MB/s "
        f"(target ≥ 200: {verdict(data['output_mb_per_s'] >= 200)}); XADD to result: "
        f"{span(runs_of([o['mb_per_s_submit_to_result'] for o in outputs]))} MB/s; peak runner RSS "
        f"{data['output_peak_rss_mb']:.1f} MB (target < 64: {verdict(data['output_peak_rss_mb'] < 64)})")
    add("")
    backlog = data["backlog"]
    add(f"## Backlog: {backlog['jobs']} jobs, 4 runners ({backlog['seconds']:.1f} s)")
    add("")
    add(f"| runner | RSS MB after {backlog['checkpoint']} | after {backlog['jobs']} | fds after "
        f"{backlog['checkpoint']} | after {backlog['jobs']} | threads | zombies |")
    add("|---|---|---|---|---|---|---|")
    for i, (a, b) in enumerate(zip(backlog["after_checkpoint"], backlog["after_all"])):
        add(f"| k{i} | {a['rss_mb']:.1f} | {b['rss_mb']:.1f} | {a['fds']} | {b['fds']} | {a['threads']} → "
            f"{b['threads']} | {a['zombies']} → {b['zombies']} |")
    add("")
    add(f"- Redis used_memory: {backlog['redis_used_memory_start']} bytes before, "
        f"{backlog['redis_used_memory_drained']} when drained, {backlog['redis_used_memory_after_expiry']} once "
        "the results expired.")
    add("")
    pool = data["pool"]
    add(f"## Pool size: {pool['runners']} idle runners on one Redis ({pool['seconds']} s)")
    add("")
    add(f"- {pool['redis_cmds_per_s']:.1f} commands/s in all, {pool['per_runner_cmds_per_s']:.2f} per runner; "
        f"Redis CPU {pool['redis_cpu_percent']:.1f} % of a core; runner RSS median {pool['runner_rss_mb_median']:.1f} MB")
    add(f"- per command (/s): " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(pool["commands_per_s"].items())))
    add("")
    # The performance work (what was changed, with its before/after) is written by hand beside this script.
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "performance-work.md")
    if os.path.exists(notes):
        with open(notes) as f:
            lines.append(f.read().rstrip())
    print("\n".join(lines))


if __name__ == "__main__":
    main()
