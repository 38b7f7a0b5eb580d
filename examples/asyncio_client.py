"""The client in asyncio: awaiting futures, gathering and as_completed without blocking the loop.

Run: python examples/asyncio_client.py [SCHEDULER_ADDRESS]
"""

import asyncio
import sys

from minidist import Client, Event, as_completed


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def fib_when_told(n, event_name):
    Event(event_name).wait()  # set by the event loop below, while it keeps running
    return fib(n)


async def main(address):
    options = {"n_workers": 1, "threads_per_worker": 2} if address is None else {}
    async with Client(address, asynchronous=True, **options) as client:
        print("fib(20) =", await client.submit(fib, 20))
        print("gathered:", await client.gather(client.map(fib, range(10))))
        seen = []
        async for future in as_completed(client.map(fib, [15, 16, 17])):
            seen.append(await future)
        print("as completed, sorted:", sorted(seen))
        ticks = 0
        go = Event("go")
        waiting = client.submit(fib_when_told, 25, "go")
        while not waiting.done():  # the loop keeps running while the task waits
            ticks += 1
            if ticks == 3:
                await go.set()  # only a loop that kept ticking gets here: the task may go on
            await asyncio.sleep(0.01)
        print(
            "fib(25) =", await waiting, "| the event loop ticked while the task waited:", ticks >= 3
        )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
