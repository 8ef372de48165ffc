"""`isthmus control --config cluster.toml`: run one cluster's control plane in the foreground.

It opens the registry named by the config, serves the local API on `control.api` and the
federation crossing on `control.federation` (see `federation.control`), and runs until
interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import signal

import trio

from federation.commands._common import add_config_option
from federation.config import ClusterConfig


def add_parser(subparsers, noun: str, help_text: str) -> None:
    parser = subparsers.add_parser(noun, help=help_text, description=help_text + " (foreground; Ctrl-C stops it)")
    add_config_option(parser, required=True)
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                        help="log verbosity on stderr (default: %(default)s)")  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from federation.control import serve_control_plane

    config = ClusterConfig.from_toml(args.config)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not one INFO line per peer probe each second

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            plane = await nursery.start(serve_control_plane, config)

            async def stop_on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(stop_on_signal)
            print(f"control plane {plane.name}: api http://{config.control_api}, federation {plane.federation_address}",
                  flush=True)  # fmt: skip

    trio.run(main)  # a nursery's single error reaches the user as one line (federation.cli)
    return 0
