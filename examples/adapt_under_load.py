"""Adaptive scaling: a cluster that starts empty grows when work arrives.

Run: python examples/adapt_under_load.py
"""

import time

from minidist import Client, LocalCluster, wait

LOCAL_ONLY = "adapt() belongs to the cluster manager that starts workers; a client reached by address has none"


def slow_square(x):
    time.sleep(0.2)
    return x * x


def main():
    with LocalCluster(n_workers=0, threads_per_worker=1, dashboard_address=None) as cluster:
        cluster.adapt(minimum=0, maximum=2, interval="100ms")
        with Client(cluster) as client:
            print("workers at rest:", len(client.scheduler_info()["workers"]))
            futures = client.map(slow_square, range(8))
            wait(futures, return_when="FIRST_COMPLETED")
            # counted while the rest still run: once all is done, adapt may retire the workers again
            grew = len(client.scheduler_info()["workers"]) > 0
            print("results:", sum(client.gather(futures)))
            print("the cluster grew under load:", grew)


if __name__ == "__main__":
    main()
