"""A lock and a queue between tasks: producers feed a queue, a consumer drains it, a lock guards a file.

Run: python examples/lock_and_queue.py [SCHEDULER_ADDRESS]
"""

import os
import sys
import tempfile

from minidist import Client, Lock, Queue


def produce(n):
    queue = Queue("work")
    for i in range(n):
        queue.put(i)
    return n


def consume(total):
    queue = Queue("work")
    return sum(queue.get(timeout=30) for _ in range(total))


def append_line(path, i):
    # read-modify-write of a shared file: without the lock, two tasks could interleave and lose a line
    with Lock("ledger"):
        with open(path) as f:
            lines = f.read().splitlines()
        lines.append(f"entry {len(lines)} from task {i}")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
    return i


def main(client):
    producers = client.map(produce, [5, 5, 5], pure=False)
    consumer = client.submit(consume, 15)
    print("items produced:", sum(client.gather(producers)))
    print("sum consumed:", consumer.result())

    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "ledger.txt")
        open(path, "w").close()
        client.gather(client.map(append_line, [path] * 12, range(12)))
        with Lock("ledger"):  # read under the lock, as any other reader of the file
            with open(path) as f:
                lines = f.read().splitlines()
        # a set: a task may run (and append) twice, e.g. when its worker dies and it is retried
        tasks = {int(line.rsplit(" ", 1)[1]) for line in lines}
        in_order = all(line.startswith(f"entry {n} ") for n, line in enumerate(lines))
        print("tasks in the ledger:", len(tasks), "| no line lost or interleaved:", in_order)


if __name__ == "__main__":
    address = (
        sys.argv[1] if len(sys.argv) > 1 else None
    )  # a running scheduler, or start a local one
    with Client(address) if address else Client(n_workers=1, threads_per_worker=2) as client:
        main(client)
