"""The client in asyncio: awaiting futures, gathering and as_completed without blocking the loop.

Run: python examples/asyncio_client.py [SCHEDULER_ADDRESS]
"""

import asyncio
import sys

from minidist import Client, as_completed


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


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
        slow = client.submit(fib, 28)  # ~0.1 s: long enough that the loop gets to tick meanwhile
        while not slow.done():  # the loop keeps running while the task does
            ticks += 1
            await asyncio.sleep(0.01)
        print("fib(28) =", await slow, "| the event loop stayed responsive:", ticks > 0)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
