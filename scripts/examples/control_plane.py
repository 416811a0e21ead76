#!/usr/bin/env python3
"""A NativeRunner control plane in Python, using nothing but Redis (redis-py) and docs/protocol.md.

    python3 scripts/examples/control_plane.py --redis HOST:PORT --jobs N [--namespace NS] [--queue Q]
        [--lost-after SECONDS] [--timeout SECONDS] [--hold FILE] [--name NAME] [--id-prefix PREFIX]

Submits N jobs by XADD (job i runs `sh -c 'echo job-<i>'`), follows the events stream through a consumer group of
its own, prints one line per job outcome, and meanwhile looks for lost runners: a consumer of the `runners` group
with pending entries whose lease key `{nr}:runner:<consumer>` is gone (for at least --lost-after seconds). It
reschedules their pending entries itself with the reaper's own script, docs/scripts/reschedule.lua, so that the
attempt is raised, `job.rescheduled` is emitted and a late result of the lost runner is refused (fencing).
Last it prints `succeeded=N failed=F lost=L rescheduled=R` and exits 0 only if all N jobs succeeded with the
output expected of them. With --hold FILE job 1 waits until FILE exists before it prints (a test can kill its
runner meanwhile). Jobs not terminal by --timeout count as lost.
"""

import argparse
import json
import os
import pathlib
import sys
import time
import uuid

try:
    import redis
except ImportError:
    sys.exit("error: redis-py is not installed (pip install redis; scripts/lib.sh: nr_need_python_deps)")

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
RESCHEDULE_LUA = ROOT / "docs" / "scripts" / "reschedule.lua"
GROUP = "runners"  # the consumer group every runner reads job streams through
TERMINAL = {"job.succeeded", "job.failed", "job.timeout", "job.rejected", "job.dead"}
EVENTS_MAXLEN = 100000
DEAD_MAXLEN = 100000
RETENTION_MS = 7 * 24 * 3600 * 1000
RESCHEDULE_BOUND = 3


def text(value):
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", required=True, help="HOST:PORT, or redis://[USER:PASSWORD@]HOST:PORT[/DB]")
    parser.add_argument("--jobs", required=True, type=int, help="how many jobs to submit")
    parser.add_argument("--namespace", default="nr")
    parser.add_argument("--queue", default="default")
    parser.add_argument("--lost-after", type=float, default=0.0, help="seconds a lease must stay gone (default 0)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for all outcomes")
    parser.add_argument("--hold", help="job 1 waits until this file exists")
    parser.add_argument("--name", default=f"py-control-{os.getpid()}", help="acts as (events' runner field)")
    parser.add_argument("--id-prefix", help="job i gets the id PREFIX-i (default: cp-<random>)")
    options = parser.parse_args()
    if options.jobs < 1:
        parser.error("--jobs must be at least 1")
    if not options.redis.startswith(("redis://", "rediss://")):
        host, _, port = options.redis.rpartition(":")
        if not host or not port.isdigit():
            parser.error(f"--redis '{options.redis}' is neither HOST:PORT nor a redis:// URL")
        options.redis = f"redis://{host}:{port}"
    return options


class ControlPlane:
    def __init__(self, options):
        self.options = options
        self.redis = redis.Redis.from_url(options.redis, socket_timeout=10)
        tag = "{" + options.namespace + "}:"
        self.prefix = tag
        self.jobs_key = tag + "jobs:" + options.queue
        self.events_key = tag + "events"
        self.dead_key = tag + "dead"
        self.group = options.name  # its own group on the events stream
        self.id_prefix = options.id_prefix or f"cp-{uuid.uuid4().hex[:8]}"
        self.expected = {}  # job id -> the output it must print
        self.entries = {}  # stream id of an entry -> job id (job.lost names the entry, not the job)
        self.outcomes = {}  # job id -> (state, reason)
        self.missing_since = {}  # consumer -> when its lease was first seen gone
        self.rescheduled = 0
        self.reschedule = self.redis.register_script(RESCHEDULE_LUA.read_text())

    # Submission, as docs/protocol.md "Job entries" says: XADD {nr}:jobs:<queue> * id <id> spec <json>.
    def submit(self):
        for i in range(1, self.options.jobs + 1):
            job = f"{self.id_prefix}-{i}"
            script = f"echo job-{i}"
            if i == 1 and self.options.hold:
                script = f"while [ ! -f '{self.options.hold}' ]; do sleep 0.05; done; {script}"
            spec = {"shell": script, "timeout_ms": 120000}
            entry = self.redis.xadd(self.jobs_key, {"id": job, "spec": json.dumps(spec), "attempt": "1", "v": "1"})
            self.entries[text(entry)] = job
            self.expected[job] = f"job-{i}\n"
        print(f"submitted {self.options.jobs} jobs to {self.jobs_key} as {self.group}", flush=True)

    def record(self, job, state, reason=""):
        if job in self.outcomes:
            return
        if state == "succeeded":
            tail = text(self.redis.hget(self.prefix + "job:" + job, "output_tail") or b"")
            if tail != self.expected[job]:
                state, reason = "failed", f"output {tail!r}, expected {self.expected[job]!r}"
        self.outcomes[job] = (state, reason)
        print(f"{job} {state}" + (f": {reason}" if reason else ""), flush=True)

    def on_event(self, fields):
        kind, job = fields.get("type", ""), fields.get("job", "")
        data = json.loads(fields.get("data") or "{}")
        if kind == "job.rescheduled" and job in self.expected:
            self.entries[data.get("stream_id", "")] = job
        elif kind == "job.handed_back" and job in self.expected:
            self.entries[data.get("stream_id", "")] = job
        elif kind == "job.lost":
            lost = self.entries.get(data.get("stream_id", ""))
            if lost:
                self.record(lost, "lost", data.get("reason", ""))
        elif kind in TERMINAL and job in self.expected:
            # The result hash is written before its event (one script), so it is there to read.
            record = {text(k): text(v) for k, v in self.redis.hgetall(self.prefix + "job:" + job).items()}
            self.record(job, record.get("state", kind), record.get("reason", ""))

    def follow(self, deadline):
        while len(self.outcomes) < len(self.expected) and time.monotonic() < deadline:
            reply = self.redis.xreadgroup(self.group, self.group, {self.events_key: ">"}, count=200, block=500)
            for _, entries in reply or []:
                for entry_id, raw in entries:
                    self.on_event({text(k): text(v) for k, v in raw.items()})
                    self.redis.xack(self.events_key, self.group, entry_id)
            self.reap()

    # Lost runners: docs/protocol.md "Rescheduling (the reaper)". The lease decides, never idle time: XAUTOCLAIM
    # (and XCLAIM by idle time) would take entries of live runners whose jobs simply run long.
    def reap(self):
        try:
            consumers = self.redis.xinfo_consumers(self.jobs_key, GROUP)
        except redis.ResponseError:
            return  # no runner has created the group yet
        now = time.monotonic()
        for consumer in consumers:
            name, pending = text(consumer["name"]), int(consumer["pending"])
            if pending == 0 or self.redis.exists(self.prefix + "runner:" + name):
                self.missing_since.pop(name, None)
                continue
            since = self.missing_since.setdefault(name, now)
            if now - since < self.options.lost_after:
                continue
            print(f"runner {name} is lost (its lease is gone) with {pending} pending entries", flush=True)
            for entry in self.redis.xpending_range(self.jobs_key, GROUP, "-", "+", 1000, consumername=name):
                self.reschedule_entry(text(entry["message_id"]), name)
            if not self.redis.xpending_range(self.jobs_key, GROUP, "-", "+", 1, consumername=name):
                self.redis.xgroup_delconsumer(self.jobs_key, GROUP, name)
                self.missing_since.pop(name, None)

    def reschedule_entry(self, entry_id, consumer):
        reply = self.reschedule(
            keys=[self.jobs_key, self.events_key, self.dead_key],
            args=[entry_id, GROUP, consumer, "lease_expired", self.group, EVENTS_MAXLEN, RESCHEDULE_BOUND,
                  DEAD_MAXLEN, RETENTION_MS, self.prefix, self.options.queue, "1"])
        code = int(reply[0])
        if code == 6:
            self.rescheduled += 1
            self.entries[text(reply[1])] = self.entries.get(entry_id, "")
            print(f"rescheduled entry {entry_id} of {consumer} as {text(reply[1])}", flush=True)
        elif code == 5:
            print(f"entry {entry_id} of {consumer}: rescheduled past the bound, the job is dead", flush=True)
        elif code == 7:
            print(f"entry {entry_id} of {consumer}: cancelled while it ran, not rescheduled", flush=True)

    def main(self):
        # The group first, from the stream's end: every event about the jobs submitted after it is seen.
        self.redis.xgroup_create(self.events_key, self.group, id="$", mkstream=True)
        try:
            self.submit()
            self.follow(time.monotonic() + self.options.timeout)
        finally:
            self.redis.xgroup_destroy(self.events_key, self.group)
        for job in self.expected:
            if job not in self.outcomes:
                self.record(job, "lost", f"no outcome within {self.options.timeout:g} s")
        states = [state for state, _ in self.outcomes.values()]
        succeeded, lost = states.count("succeeded"), states.count("lost")
        failed = len(states) - succeeded - lost
        print(f"succeeded={succeeded} failed={failed} lost={lost} rescheduled={self.rescheduled}", flush=True)
        return 0 if succeeded == len(self.expected) else 1


if __name__ == "__main__":
    options = parse_arguments()
    try:
        sys.exit(ControlPlane(options).main())
    except redis.RedisError as error:
        sys.exit(f"error: Redis at {options.redis.rpartition('@')[2]}: {error}")
