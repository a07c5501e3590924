"""Nothing of a local Ray cluster outlives the process that started it.

Every process of a local cluster inherits a marker in its environment (``SBIR_LOCAL_CLUSTER``, set by
``pipelines.ray_runtime`` before ``ray.init``). Ray stops its own processes on a clean shutdown, but not
always otherwise: Ray's HAProxy runs as a child of a worker and is orphaned, holding its ports, when the
daemons die first (a SIGTERM to the whole process group), and Ray's core worker may end the driver at once
when its raylet is gone. So a small watcher, in a session of its own, waits for the driver to exit and then
kills every process that still carries the driver's marker.

    python -m pipelines.reaper <driver pid> <marker>
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

MARKER_ENV = "SBIR_LOCAL_CLUSTER"
POLL_S = 0.5


def pids_with(needle: bytes) -> list[int]:
    """PIDs of live processes whose environment holds ``needle`` (one ``NAME=value`` entry)."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as env:
                if needle in env.read().split(b"\0"):
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def reap(marker: str, rounds: int = 10) -> list[int]:
    """Kill every process carrying ``marker``, scanning again until a scan finds none (a dying worker can still
    start a process); the PIDs killed."""
    needle = f"{MARKER_ENV}={marker}".encode()
    killed: list[int] = []
    for _ in range(rounds):
        found = [pid for pid in pids_with(needle) if pid != os.getpid()]
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        killed += found
        if not found:
            break
        time.sleep(0.2)
    return killed


def watch_and_reap(driver: int, marker: str) -> None:
    """Start the watcher of ``driver`` (Linux only: it reads /proc); it does not carry the marker itself."""
    if not os.path.isdir("/proc"):
        return
    env = {k: v for k, v in os.environ.items() if k != MARKER_ENV}
    subprocess.Popen(
        [sys.executable, "-m", "pipelines.reaper", str(driver), marker],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the driver's process group does not reach it
        close_fds=True,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat", "rb") as stat:
        return stat.read().split(b") ", 1)[1][:1] != b"Z"  # a zombie has exited
    return True


def main(argv: list[str]) -> None:
    driver, marker = int(argv[0]), argv[1]
    while _alive(driver):
        time.sleep(POLL_S)
    reap(marker)


if __name__ == "__main__":
    main(sys.argv[1:])
