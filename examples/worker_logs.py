"""Logs from tasks: records logged on the workers come back through ``get_worker_logs``.

Run: python examples/worker_logs.py [SCHEDULER_ADDRESS]
"""

import logging
import sys
import time

from minidist import Client


def work(item):
    logging.getLogger("minidist.worker").warning("processing item %d", item)
    return item * 10


def logged_items(client) -> list:
    items = []
    for records in client.get_worker_logs().values():
        for _level, line in records:
            if "processing item" in line:
                items.append(int(line.rsplit("processing item ", 1)[1].split()[0]))
    return sorted(items)


def main(client):
    print("results:", client.gather(client.map(work, range(5))))
    deadline = time.monotonic() + 10  # workers ship their records a moment after the tasks end
    while set(logged_items(client)) != set(range(5)) and time.monotonic() < deadline:
        time.sleep(0.1)
    # a set: a task may run (and log) twice, e.g. when its worker dies and it is retried
    print("items found in the worker logs:", sorted(set(logged_items(client))))


if __name__ == "__main__":
    address = (
        sys.argv[1] if len(sys.argv) > 1 else None
    )  # a running scheduler, or start a local one
    with Client(address) if address else Client(n_workers=1, threads_per_worker=2) as client:
        main(client)
