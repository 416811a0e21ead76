"""The Celery peer: an app on the benchmark's private Redis (broker and result backend from the environment) with
one task that runs a command as a child process, as the runner's job would."""
import os
import subprocess

from celery import Celery

app = Celery("peer_celery", broker=os.environ["NR_BENCH_CELERY_BROKER"], backend=os.environ["NR_BENCH_CELERY_BACKEND"])
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True, task_ignore_result=False)


@app.task(name="run")
def run(argv):
    subprocess.run(argv, check=True)
