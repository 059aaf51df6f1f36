"""Parley command line: ``python run.py [node|bootstrap|demo] ...``.

With no sub-command it starts a bootstrap server on the defaults (the node and demo
commands arrive with the messenger itself).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from bootstrap.api import BootstrapConfig
from bootstrap.server import start_bootstrap

DEFAULT_BOOTSTRAP_PORT = 8470


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="INFO",
                        help="DEBUG, INFO, WARNING or ERROR (secrets are never logged)")
    parser = argparse.ArgumentParser(prog="run.py", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    boot = sub.add_parser("bootstrap", parents=[common],
                          help="run a discovery server for your friends")
    boot.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (0.0.0.0 to serve other machines)")
    boot.add_argument("--port", type=int, default=DEFAULT_BOOTSTRAP_PORT,
                      help="TCP port (0 picks a free one)")
    boot.add_argument("--db", default="bootstrap.db", help="SQLite database file")
    boot.add_argument("--rate", type=float, default=BootstrapConfig.rate,
                      help="requests per second allowed per client address")
    boot.add_argument("--burst", type=int, default=BootstrapConfig.burst,
                      help="burst size of the per-client rate limit")
    return parser


async def _serve_bootstrap(args: argparse.Namespace) -> None:
    config = BootstrapConfig(rate=args.rate, burst=args.burst)
    server = start_bootstrap(args.host, args.port, Path(args.db), config)
    print(f"Parley bootstrap listening on {server.url} (database {args.db})", flush=True)
    await _until_signalled()
    await server.stop()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["bootstrap", *argv]
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve_bootstrap(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
