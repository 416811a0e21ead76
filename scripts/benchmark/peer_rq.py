"""The RQ peer's task: run a command as a child process, as the runner's job would."""
import subprocess


def run(argv):
    subprocess.run(argv, check=True)
