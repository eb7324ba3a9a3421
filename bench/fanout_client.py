"""Many ADS streams that ACK, in a process of their own: `python -m bench.fanout_client`.

Prints `READY` once every stream has received (and ACKed) clusters, listeners and routes,
then keeps ACKing until its standard input closes or `--max-seconds` pass. With `--stuck`
it also opens one stream (state of the world) that never reads a response.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time

from xds_server.local.ads_client import AdsClient, client_class


async def run(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def wait_stdin() -> None:
        with contextlib.suppress(Exception):
            sys.stdin.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=wait_stdin, daemon=True).start()
    cls = client_class(args.delta)
    clients: list[AdsClient] = []
    stuck: AdsClient | None = None
    try:
        for n in range(args.streams):
            clients.append(await cls(args.port, f"{args.prefix}-{n}").start())
        if args.stuck:
            # state of the world: its responses (the full set each time) soon fill the stream's
            # flow-control window, after which the server cannot write to it any more
            stuck = await AdsClient(args.port, "stuck", read=False).start()
        deadline = time.monotonic() + args.ready_timeout
        while not all(c.has_all_types() for c in clients):
            failed = [c for c in clients if c.error is not None]
            if failed:
                print(f"ERROR {len(failed)} streams failed: {failed[0].error!r}", flush=True)
                return 1
            if time.monotonic() > deadline or stop.is_set():
                ready = sum(c.has_all_types() for c in clients)
                print(f"ERROR only {ready} of {len(clients)} streams got their first responses", flush=True)
                return 1
            await asyncio.sleep(0.01)
        print("READY", flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.max_seconds)
        return 0
    finally:
        for client in [*clients, *([stuck] if stuck else [])]:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 5)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout_client")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--streams", type=int, default=1)
    parser.add_argument("--prefix", default="fanout")
    parser.add_argument("--delta", action="store_true")
    parser.add_argument("--stuck", action="store_true", help="also open one stream that never reads")
    parser.add_argument("--ready-timeout", type=float, default=120)
    parser.add_argument("--max-seconds", type=float, default=900)
    args = parser.parse_args()
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
