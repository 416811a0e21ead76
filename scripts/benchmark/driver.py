"""The benchmark driver behind scripts/bench: runs every figure against a private redis-server and prints one JSON
object (or writes docs/benchmarks.md). Standard library only; the peers (RQ, Celery) run from the venv that
scripts/bench prepares. Progress goes to stderr, the JSON alone to stdout."""

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

# Figure sizes: the full run is what the issue asks for; --quick and --smoke are shortened.
SIZES = {
    "full": dict(runs=3, jobs=2000, dispatch=500, idle_s=60, output_bytes=200_000_000, backlog=20000,
                 backlog_check=1000, pool=100, pool_s=30),
    "quick": dict(runs=3, jobs=300, dispatch=100, idle_s=10, output_bytes=200_000_000, backlog=2000,
                  backlog_check=200, pool=10, pool_s=10),
    "smoke": dict(runs=1, jobs=40, dispatch=20, idle_s=6, output_bytes=20_000_000, backlog=200,
                  backlog_check=50, pool=3, pool_s=3),
}
CONCURRENCIES = (1, 2, 8)
GROUP = "runners"


def say(text):
    print(f"bench: {text}", file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# --- a minimal RESP client (the driver needs no package) -------------------------------------------------------


class Redis:
    def __init__(self, port, db=0):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")
        if db:
            self.call("SELECT", db)

    @staticmethod
    def encode(args):
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(out)

    def read(self):
        line = self.file.readline()
        if not line:
            raise BenchError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise BenchError("redis: " + rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            if rest == b"-1":
                return None
            data = self.file.read(int(rest) + 2)[:-2]
            return data.decode(errors="replace")
        if kind == b"*":
            if rest == b"-1":
                return None
            return [self.read() for _ in range(int(rest))]
        raise BenchError(f"redis: unexpected reply {line!r}")

    def call(self, *args):
        self.sock.sendall(self.encode(args))
        return self.read()

    def pipeline(self, commands, chunk=1000):
        replies = []
        for start in range(0, len(commands), chunk):
            part = commands[start:start + chunk]
            self.sock.sendall(b"".join(self.encode(c) for c in part))
            replies.extend(self.read() for _ in part)
        return replies

    def info(self, section):
        fields = {}
        for line in self.call("INFO", section).splitlines():
            if ":" in line and not line.startswith("#"):
                key, value = line.split(":", 1)
                fields[key] = value
        return fields

    def close(self):
        self.sock.close()


class Monitor:
    """Counts the commands clients send (MONITOR), apart from those run inside scripts and the driver's INFO:
    commandstats counts both kinds, so this tells the round trips apart from the work of a script."""

    def __init__(self, port):
        import threading
        self.redis = Redis(port)
        self.redis.sock.sendall(Redis.encode(["MONITOR"]))
        self.redis.read()  # +OK
        self.counts = {}
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        try:
            while True:
                line = self.redis.read()
                if " lua] " in line or "[" not in line:
                    continue
                name = line.split("] ", 1)[1].split(" ", 1)[0].strip('"').lower()
                if name != "info":
                    self.counts[name] = self.counts.get(name, 0) + 1
        except (BenchError, OSError, ValueError, IndexError):
            return

    def stop(self):
        counts = dict(self.counts)
        self.redis.sock.shutdown(socket.SHUT_RDWR)
        self.redis.close()
        return counts


def command_calls(redis):
    """Calls per command from INFO commandstats, without the driver's own INFO."""
    calls = {}
    for key, value in redis.info("commandstats").items():
        name = key[len("cmdstat_"):]
        if name in ("info",):
            continue
        calls[name] = int(value.split(",")[0].split("=")[1])
    return calls


def calls_delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0) > 0}


def redis_cpu(redis):
    cpu = redis.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


# --- processes ---------------------------------------------------------------------------------------------------


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid, field):
    """A kB field of /proc/PID/status (VmRSS, VmHWM) in MB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def proc_pss_mb(pid):
    """Proportional set size: the shared libraries' pages split among the processes that map them."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    return 0.0


def proc_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_children(pid):
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return children


def zombies(pid):
    count = 0
    for child in proc_children(pid):
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    count += 1
        except OSError:
            pass
    return count


def stop(process, timeout=20):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until(what, condition, timeout, interval=0.001):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values)}


def percentile(values, p):
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[index]


# --- the systems under test --------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.port = args.redis_port
        self.size = SIZES[args.size]
        self.redis = Redis(self.port)
        self.work = tempfile.mkdtemp(prefix="nr-bench.")
        self.processes = []
        self.namespace_counter = 0
        self.peers = [] if args.no_peers else ["rq", "celery"]

    def close(self):
        for process in self.processes:
            stop(process, 5)

    def fresh_namespace(self):
        self.redis.call("FLUSHALL")
        self.namespace_counter += 1
        return f"b{self.namespace_counter}"

    def spawn(self, argv, env=None, log=None):
        out = open(log or os.devnull, "ab")
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
        out.close()
        self.processes.append(process)
        return process

    def runner(self, namespace, name, options=()):
        argv = [self.args.runner, "worker", "--redis", f"127.0.0.1:{self.port}", "--namespace", namespace,
                "--name", name, "--log-level", "warning", *options]
        process = self.spawn(argv, log=os.path.join(self.work, f"{namespace}-{name}.log"))
        process.bench_name = name
        return process

    def registered_runner(self, name, options):
        """A runner in a fresh namespace, registered: (namespace, process)."""
        namespace = self.fresh_namespace()
        worker = self.runner(namespace, name, options)
        self.wait_registered(namespace, [worker])
        return namespace, worker

    def retire(self, worker):
        stop(worker)
        self.processes.remove(worker)

    def wait_registered(self, namespace, runners, timeout=60):
        def registered():
            for runner in runners:
                if runner.poll() is not None:
                    raise BenchError(f"runner {runner.bench_name} exited with {runner.returncode} at start (log: "
                                     f"{self.work}/{namespace}-{runner.bench_name}.log)")
            records = self.redis.call("HGETALL", f"{{{namespace}}}:runners") or []
            states = {records[i]: json.loads(records[i + 1]).get("state") for i in range(0, len(records), 2)}
            return all(states.get(r.bench_name) == "running" for r in runners)
        wait_until("the runners to register", registered, timeout, 0.01)

    @staticmethod
    def job_spec(argv):
        return json.dumps({"argv": argv, "timeout_ms": 60000})

    @classmethod
    def entry(cls, stream, job, argv):
        """XADD of a job entry: the runner reads `spec`; the limit program the plain `exe` and `arg` fields."""
        fields = ["id", job, "spec", cls.job_spec(argv), "exe", argv[0]]
        if len(argv) > 1:
            fields += ["arg", argv[1]]
        return ["XADD", stream, "*", *fields]

    def queue_jobs(self, stream, count, first_argv, argv):
        self.redis.pipeline([self.entry(stream, f"j{i}", first_argv if i == 0 else argv) for i in range(count)])

    def first_start_ns(self, stamp_file):
        with open(stamp_file) as f:
            return int(f.read().split()[0])

    # One throughput run of one system at one concurrency: N jobs queued up front, the first one the stamp
    # program (so the window opens when its process runs), the rest /bin/true; the window closes when the driver
    # sees the last result recorded. Returns jobs/s.
    def throughput(self, system, concurrency, count):
        stamp_file = os.path.join(self.work, f"start-{system}-{concurrency}-{time.monotonic_ns()}")
        first = [self.args.stamp, stamp_file]
        true = ["/bin/true"]
        namespace = self.fresh_namespace()
        stream = f"{{{namespace}}}:jobs:default"
        workers = []
        if system == "runner":
            self.queue_jobs(stream, count, first, true)
            workers.append(self.runner(namespace, "t1", ["--concurrency", str(concurrency), "--no-reaper"]))
            done = lambda: self.redis.call("XLEN", stream) == 0
        elif system == "limit":
            self.queue_jobs(stream, count, first, true)
            self.redis.call("XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM")
            workers.append(self.spawn([self.args.limit, "127.0.0.1", str(self.port), stream, GROUP,
                                       str(concurrency)]))
            done = lambda: self.redis.call("XPENDING", stream, GROUP)[0] == 0 and self.group_lag(stream) == 0
        elif system == "rq":
            self.queue_rq(count, first, true)
            env = dict(os.environ, PYTHONPATH=self.args.bench_dir)
            for i in range(concurrency):
                workers.append(self.spawn([self.args.venv_python, "-m", "rq.cli", "worker", "-u",
                                           f"redis://127.0.0.1:{self.port}/2", "-n", f"w{i}-{namespace}", "-q",
                                           "default"], env=env, log=os.path.join(self.work, f"rq-{i}.log")))
            rq = Redis(self.port, 2)
            done = lambda: rq.call("ZCARD", "rq:finished:default") >= count
        elif system == "celery":
            env = self.celery_env()
            self.queue_celery(count, first, true, env)
            workers.append(self.spawn([self.args.venv_python, "-m", "celery", "-A", "peer_celery", "worker",
                                       "--pool", "prefork", "-c", str(concurrency), "--without-gossip",
                                       "--without-mingle", "--without-heartbeat", "-l", "WARNING"], env=env,
                                      log=os.path.join(self.work, "celery.log")))
            backend = Redis(self.port, 4)
            done = lambda: backend.call("DBSIZE") >= count
        else:
            raise BenchError(f"unknown system {system}")
        started = time.monotonic()
        wait_until(f"{system} c{concurrency} to finish {count} jobs", lambda: all_alive(workers, system) and done(),
                   600)
        end_ns = time.time_ns()
        elapsed = time.monotonic() - started
        for worker in workers:
            self.retire(worker)
        start_ns = self.first_start_ns(stamp_file)
        rate = count / ((end_ns - start_ns) / 1e9)
        say(f"throughput {system} c{concurrency}: {rate:.0f} jobs/s ({count} jobs, {elapsed:.1f} s with start-up)")
        return rate

    def group_lag(self, stream):
        for group in self.redis.call("XINFO", "GROUPS", stream):
            fields = dict(zip(group[::2], group[1::2]))
            return fields.get("lag")
        return None

    def queue_rq(self, count, first, true):
        script = (
            "import sys, json, redis, rq\n"
            "from rq import Queue\n"
            "from peer_rq import run\n"
            f"q = Queue('default', connection=redis.Redis(port={self.port}, db=2))\n"
            "first, true, count = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])\n"
            "jobs = [Queue.prepare_data(run, args=(first if i == 0 else true,)) for i in range(count)]\n"
            "q.enqueue_many(jobs)\n")
        subprocess.run([self.args.venv_python, "-c", script, json.dumps(first), json.dumps(true), str(count)],
                       check=True, env=dict(os.environ, PYTHONPATH=self.args.bench_dir))

    def celery_env(self):
        return dict(os.environ, PYTHONPATH=self.args.bench_dir,
                    NR_BENCH_CELERY_BROKER=f"redis://127.0.0.1:{self.port}/3",
                    NR_BENCH_CELERY_BACKEND=f"redis://127.0.0.1:{self.port}/4")

    def queue_celery(self, count, first, true, env):
        script = (
            "import sys, json\n"
            "from peer_celery import run\n"
            "first, true, count = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])\n"
            "for i in range(count): run.apply_async(args=(first if i == 0 else true,))\n")
        subprocess.run([self.args.venv_python, "-c", script, json.dumps(first), json.dumps(true), str(count)],
                       check=True, env=env)

    # Dispatch latency on an idle pool: one job at a time, 10 ms apart; each job is the stamp program, so
    # "running" is when its main() read the clock. XADD time is taken right before the XADD is sent.
    def dispatch(self, system, count):
        stamp_file = os.path.join(self.work, f"dispatch-{system}")
        namespace = self.fresh_namespace()
        stream = f"{{{namespace}}}:jobs:default"
        events = f"{{{namespace}}}:events"
        waiter = Redis(self.port)
        if system == "runner":
            worker = self.runner(namespace, "d1", ["--concurrency", "2"])
            self.wait_registered(namespace, [worker])
        else:
            self.redis.call("XGROUP", "CREATE", stream, GROUP, "0", "MKSTREAM")
            worker = self.spawn([self.args.limit, "127.0.0.1", str(self.port), stream, GROUP, "2"])
        time.sleep(1)  # let start-up work (registration, first reads) settle: the pool is idle from here
        last_event = (waiter.call("XREVRANGE", events, "+", "-", "COUNT", "1") or [["0-0"]])[0][0]
        to_running, to_result = [], []
        argv = [self.args.stamp, stamp_file]
        for i in range(count):
            job = f"d{i}"
            submitted = time.time_ns()
            self.redis.call(*self.entry(stream, job, argv))
            if system == "runner":
                finished = None
                while finished is None:
                    reply = waiter.call("XREAD", "BLOCK", "10000", "STREAMS", events, last_event)
                    if reply is None:
                        raise BenchError(f"no result for dispatch job {job} within 10 s")
                    for entry_id, fields in reply[0][1]:
                        last_event = entry_id
                        fields = dict(zip(fields[::2], fields[1::2]))
                        if fields.get("job") == job and fields.get("type") in (
                                "job.succeeded", "job.failed", "job.timeout", "job.rejected"):
                            if fields["type"] != "job.succeeded":
                                raise BenchError(f"dispatch job {job} ended {fields['type']}: {fields.get('data')}")
                            finished = time.time_ns()
            else:
                key = f"{{{namespace}}}:job:{job}"
                wait_until(f"limit result of {job}", lambda: self.redis.call("EXISTS", key), 10, 0.0002)
                finished = time.time_ns()
            with open(stamp_file) as f:
                running = int(f.read().split()[-1])
            to_running.append((running - submitted) / 1e6)
            to_result.append((finished - submitted) / 1e6)
            time.sleep(0.01)
        self.retire(worker)
        waiter.close()
        os.unlink(stamp_file)
        result = {"p50": percentile(to_running, 50), "p99": percentile(to_running, 99),
                  "result_p50": percentile(to_result, 50), "result_p99": percentile(to_result, 99)}
        say(f"dispatch {system}: running p50 {result['p50']:.3f} ms p99 {result['p99']:.3f} ms; result p50 "
            f"{result['result_p50']:.3f} ms p99 {result['result_p99']:.3f} ms ({count} jobs)")
        return result

    # Idle cost: a runner (with its reaper) that has nothing to do.
    def idle(self, seconds):
        namespace, worker = self.registered_runner("i1", ["--concurrency", "2"])
        time.sleep(2)
        pids = [worker.pid] + proc_children(worker.pid)
        monitor = Monitor(self.port)
        cpu_before = sum(proc_cpu_seconds(p) for p in pids)
        calls_before = command_calls(self.redis)
        time.sleep(seconds)
        calls_after = command_calls(self.redis)
        sent = monitor.stop()
        cpu_after = sum(proc_cpu_seconds(p) for p in pids)
        rss = proc_status(worker.pid, "VmRSS")
        pss = proc_pss_mb(worker.pid)
        delta = calls_delta(calls_before, calls_after)
        self.retire(worker)
        result = {"cpu_seconds": cpu_after - cpu_before, "rss_mb": rss, "pss_mb": pss,
                  "redis_cmds_per_s": sum(delta.values()) / seconds, "seconds": seconds, "commands": delta,
                  "sent_cmds_per_s": sum(sent.values()) / seconds, "sent_commands": sent}
        say(f"idle {seconds} s: {result['cpu_seconds']:.3f} CPU s, RSS {rss:.1f} MB, "
            f"{result['redis_cmds_per_s']:.2f} Redis commands/s {delta}; sent by the runner "
            f"{result['sent_cmds_per_s']:.2f}/s {sent}")
        return result

    # Output: one job writing N bytes to stdout; MB/s over the job's recorded duration; the runner's peak RSS.
    def output(self, size):
        namespace, worker = self.registered_runner("o1", ["--concurrency", "2"])
        rss_before = proc_status(worker.pid, "VmRSS")
        job_key = f"{{{namespace}}}:job:out"
        spec = json.dumps({"argv": ["head", "-c", str(size), "/dev/zero"], "timeout_ms": 300000})
        submitted = time.monotonic()
        self.redis.call("XADD", f"{{{namespace}}}:jobs:default", "*", "id", "out", "spec", spec)
        peak = rss_before

        def finished():
            nonlocal peak
            peak = max(peak, proc_status(worker.pid, "VmRSS"))
            return self.redis.call("HGET", job_key, "state") in ("succeeded", "failed", "timed_out", "rejected")
        wait_until("the output job", finished, 300, 0.01)
        wall = time.monotonic() - submitted
        record = self.redis.call("HGETALL", job_key)
        record = dict(zip(record[::2], record[1::2]))
        if record["state"] != "succeeded":
            raise BenchError(f"output job ended {record['state']}: {record.get('reason')}")
        peak = max(peak, proc_status(worker.pid, "VmHWM"))
        self.retire(worker)
        duration = int(record["duration_ms"]) / 1000
        result = {"mb_per_s": size / 1e6 / duration, "mb_per_s_submit_to_result": size / 1e6 / wall,
                  "peak_rss_mb": peak, "rss_before_mb": rss_before, "bytes": size}
        say(f"output {size / 1e6:.0f} MB: {result['mb_per_s']:.0f} MB/s (job duration), "
            f"{result['mb_per_s_submit_to_result']:.0f} MB/s (XADD to result), peak RSS {peak:.1f} MB")
        return result

    # Backlog: 4 runners drain a backlog; RSS and fds after the first checkpoint and after all (both idle),
    # Redis memory at start and once the results expired.
    def backlog(self, total, checkpoint):
        namespace = self.fresh_namespace()
        stream = f"{{{namespace}}}:jobs:default"
        options = ["--concurrency", "2", "--result-retention", "5s", "--events-maxlen", "1000", "--no-reaper"]
        workers = [self.runner(namespace, f"k{i}", options) for i in range(4)]
        self.wait_registered(namespace, workers)
        time.sleep(1)
        memory_start = int(self.redis.info("memory")["used_memory"])
        keys_start = self.redis.call("DBSIZE")

        def drain(count, offset):
            commands = [self.entry(stream, f"k{offset + i}", ["/bin/true"]) for i in range(count)]
            self.redis.pipeline(commands)
            wait_until(f"{count} backlog jobs", lambda: self.redis.call("XLEN", stream) == 0, 900, 0.05)
            time.sleep(0.5)  # the last results' bookkeeping (events, capacity) done: the runners are idle again
            return [{"rss_mb": proc_status(w.pid, "VmRSS"), "fds": proc_fds(w.pid), "zombies": zombies(w.pid),
                     "threads": len(os.listdir(f"/proc/{w.pid}/task"))} for w in workers]
        started = time.monotonic()
        after_first = drain(checkpoint, 0)
        after_all = drain(total - checkpoint, checkpoint)
        elapsed = time.monotonic() - started
        memory_done = int(self.redis.info("memory")["used_memory"])
        wait_until("the results to expire", lambda: self.redis.call("DBSIZE") <= keys_start, 120, 0.2)
        time.sleep(1)
        memory_end = int(self.redis.info("memory")["used_memory"])
        for worker in workers:
            self.retire(worker)
        result = {"jobs": total, "checkpoint": checkpoint, "seconds": elapsed, "after_checkpoint": after_first,
                  "after_all": after_all, "redis_used_memory_start": memory_start,
                  "redis_used_memory_drained": memory_done, "redis_used_memory_after_expiry": memory_end}
        say(f"backlog {total}: after {checkpoint}: {after_first}; after {total}: {after_all}; Redis memory "
            f"{memory_start} -> {memory_done} -> {memory_end} bytes")
        return result

    # Pool size: many idle runners on one Redis: the commands per second they cause and Redis's CPU.
    def pool(self, count, seconds):
        namespace = self.fresh_namespace()
        workers = []
        for i in range(count):
            workers.append(self.runner(namespace, f"p{i}", ["--concurrency", "1", "--no-reaper"]))
        self.wait_registered(namespace, workers, timeout=120)
        time.sleep(2)
        calls_before, cpu_before = command_calls(self.redis), redis_cpu(self.redis)
        time.sleep(seconds)
        calls_after, cpu_after = command_calls(self.redis), redis_cpu(self.redis)
        rss = [proc_status(w.pid, "VmRSS") for w in workers]
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            self.retire(worker)
        delta = calls_delta(calls_before, calls_after)
        result = {"runners": count, "seconds": seconds, "redis_cmds_per_s": sum(delta.values()) / seconds,
                  "per_runner_cmds_per_s": sum(delta.values()) / seconds / count,
                  "redis_cpu_percent": (cpu_after - cpu_before) / seconds * 100,
                  "commands_per_s": {k: v / seconds for k, v in delta.items()},
                  "runner_rss_mb_median": statistics.median(rss)}
        say(f"pool of {count}: {result['redis_cmds_per_s']:.1f} commands/s, Redis CPU "
            f"{result['redis_cpu_percent']:.1f} %: {result['commands_per_s']}")
        return result


def all_alive(workers, system):
    for worker in workers:
        if worker.poll() is not None:
            raise BenchError(f"{system} worker exited with {worker.returncode} before the jobs were done")
    return True


def run(args):
    bench = Bench(args)
    size = bench.size
    figures = {}
    try:
        systems = ["runner", "limit", *bench.peers]
        rates = {system: {c: [] for c in CONCURRENCIES} for system in systems}
        ratio_limit, ratio_peer = [], []
        for repetition in range(size["runs"]):
            say(f"throughput, run {repetition + 1} of {size['runs']}")
            for c in CONCURRENCIES:
                for system in systems:
                    rates[system][c].append(bench.throughput(system, c, size["jobs"]))
            ratio_limit.append(rates["runner"][2][-1] / rates["limit"][2][-1])
            if bench.peers:
                ratio_peer.append(rates["runner"][2][-1] / max(rates[p][2][-1] for p in bench.peers))
        figures["throughput_runs"] = {s: {f"c{c}": summary(v) for c, v in by_c.items()} for s, by_c in rates.items()}
        figures["ratio_to_limit_c2_runs"] = summary(ratio_limit)
        figures["ratio_to_best_peer_c2_runs"] = summary(ratio_peer)
        figures["dispatch_runner"] = [bench.dispatch("runner", size["dispatch"]) for _ in range(size["runs"])]
        figures["dispatch_limit"] = [bench.dispatch("limit", size["dispatch"]) for _ in range(size["runs"])]
        figures["idle"] = bench.idle(size["idle_s"])
        figures["output"] = [bench.output(size["output_bytes"]) for _ in range(size["runs"])]
        figures["backlog"] = bench.backlog(size["backlog"], size["backlog_check"])
        figures["pool"] = bench.pool(size["pool"], size["pool_s"])
    finally:
        bench.close()
    return figures


def median_of(runs, key):
    return statistics.median(r[key] for r in runs)


def compact(figures, peers):
    """The one JSON object of --json: the figures' medians, with the detail under "detail"."""
    throughput = {s: {c: v["median"] for c, v in by_c.items()} for s, by_c in figures["throughput_runs"].items()}
    out = {
        "throughput": throughput,
        "ratio_to_limit_c2": figures["ratio_to_limit_c2_runs"]["median"],
        "ratio_to_best_peer_c2": figures["ratio_to_best_peer_c2_runs"]["median"] if peers else None,
        "ratio_to_peer_c2": {p: throughput["runner"]["c2"] / throughput[p]["c2"] for p in peers},
        "dispatch_ms": {k: median_of(figures["dispatch_runner"], k) for k in ("p50", "p99", "result_p50",
                                                                              "result_p99")},
        "dispatch_ms_limit": {k: median_of(figures["dispatch_limit"], k) for k in ("p50", "p99", "result_p50",
                                                                                   "result_p99")},
        "idle": {k: figures["idle"][k] for k in ("cpu_seconds", "rss_mb", "redis_cmds_per_s")},
        "output_mb_per_s": median_of(figures["output"], "mb_per_s"),
        "output_peak_rss_mb": max(r["peak_rss_mb"] for r in figures["output"]),
        "backlog": figures["backlog"],
        "pool": figures["pool"],
        "detail": figures,
    }
    return out


def stopped(*_):
    raise BenchError("stopped by SIGTERM")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--runner", required=True)
    parser.add_argument("--limit", required=True)
    parser.add_argument("--stamp", required=True)
    parser.add_argument("--bench-dir", required=True)
    parser.add_argument("--venv-python")
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--out", help="write the JSON of every figure here")
    args = parser.parse_args()
    if not args.no_peers and not args.venv_python:
        parser.error("--venv-python is needed for the peers (or --no-peers)")
    # SIGTERM (scripts/bench stopping) unwinds like an error, so every process started is stopped on the way out.
    signal.signal(signal.SIGTERM, stopped)
    try:
        figures = run(args)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"error: {error.cmd[:3]} exited with {error.returncode}", file=sys.stderr)
        return 1
    peers = [] if args.no_peers else ["rq", "celery"]
    result = compact(figures, peers)
    result["size"] = args.size
    result["finished_at"] = time.time()
    text = json.dumps(result, indent=None, sort_keys=False)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
