"""Parley command line: ``python run.py [node|bootstrap|demo] ...``.

With no sub-command it starts a node together with an embedded bootstrap server, on
the default ports, and prints the URL of the node's UI.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import signal
import socket
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from bootstrap.api import BootstrapConfig
from bootstrap.server import DEFAULT_RELAY, BootstrapServer, start_bootstrap
from groups.errors import NotFound
from groups.meetups import parse_attachment_limit
from groups.node import NodeConfig
from mesh import malloc
from mesh.errors import KeyFileError, PortInUse
from mesh.identity import KeyPair, display_user_id, identity_is_protected, load_or_create_identity
from webapp.app import App

DEFAULT_BOOTSTRAP_PORT = 8470
DEFAULT_UI_PORT = 8471
DEFAULT_MESH_PORT = 8472
DEFAULT_DATA_DIR = "parley-data"
DEMO_USERS = ("alice", "bob", "carol")
DEMO_PORTS = "demo-ports.json"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="WARNING",
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
    boot.add_argument("--dht-port", type=int, default=None,
                      help="UDP port of the bootstrap's DHT node (default: the --port "
                           "number; 0 picks a free one)")
    boot.add_argument("--trusted-proxy", action="append", default=[], metavar="IP[/BITS]",
                      help="a reverse proxy whose X-Real-IP / X-Forwarded-For name the "
                           "client (repeatable); nobody else's are believed")
    boot.add_argument("--pow-bits", type=int, default=BootstrapConfig.pow_bits,
                      help="proof of work a new identity pays (bits; 20 is ~1 s, each "
                           "more doubles it; 0: none)")
    boot.add_argument("--registration-quota", type=float,
                      default=BootstrapConfig.registrations_per_subscriber,
                      help="new identities per address (4x per /24) an hour at that "
                           "price; beyond, each doubling doubles the price, past 16x "
                           "they are refused")
    boot.add_argument("--no-dht", action="store_true", help="run no DHT node")
    boot.add_argument("--no-relay", action="store_true",
                      help="do not serve as a circuit relay for nodes behind routers")
    boot.add_argument("--relay-max-reservations", type=int,
                      default=DEFAULT_RELAY.max_reservations,
                      help="how many nodes may hold a reservation on this relay at once")

    node = sub.add_parser("node", parents=[common], help="run your node")
    _node_options(node, bootstrap_default=f"http://127.0.0.1:{DEFAULT_BOOTSTRAP_PORT}")

    everything = sub.add_parser("all", parents=[common],
                                help="a node plus an embedded bootstrap (the default)")
    _node_options(everything, bootstrap_default="")
    everything.add_argument("--bootstrap-port", type=int, default=DEFAULT_BOOTSTRAP_PORT)

    demo = sub.add_parser("demo", parents=[common],
                          help="three local users (alice, bob, carol) in one group")
    demo.add_argument("--data-dir", default=None,
                      help="where the three users keep their data and ports (default: a "
                           "temp dir); run the same command again to restart the demo")
    return parser


def _node_options(parser: argparse.ArgumentParser, *, bootstrap_default: str) -> None:
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="your keys and history (created with mode 0700)")
    parser.add_argument("--passphrase-file", default=None, metavar="FILE",
                        help="protect your identity key with the passphrase in FILE "
                             "(Argon2id); a protected key needs it at every start "
                             "(on a terminal you are asked instead)")
    parser.add_argument("--ui-port", type=int, default=DEFAULT_UI_PORT,
                        help="port of the local UI on 127.0.0.1 (0 picks a free one)")
    parser.add_argument("--no-mesh", action="store_true",
                        help="no WebSocket mesh at all (for Bluetooth-only nodes)")
    parser.add_argument("--mesh-port", type=int, default=DEFAULT_MESH_PORT,
                        help="public port for links from other nodes (0 picks a free one)")
    parser.add_argument("--mesh-host", default="0.0.0.0",  # noqa: S104 - friends must reach it
                        help="address the mesh port listens on (default: every interface; "
                             "127.0.0.1 for this machine only)")
    parser.add_argument("--advertise", action="append", default=[],
                        help="endpoint to publish, e.g. ws://203.0.113.5:8472/mesh "
                             "(repeatable; default: ws://MESH_HOST:MESH_PORT/mesh)")
    parser.add_argument("--bootstrap", default=bootstrap_default,
                        help="URL of the bootstrap server (also a relay, unless it runs "
                             "with --no-relay)")
    parser.add_argument("--relay-via", action="append", default=[], metavar="URL",
                        help="another relay to hold a reservation on when behind a router, "
                             "e.g. ws://198.51.100.7:8470 (repeatable)")
    parser.add_argument("--relay", action="store_true",
                        help="serve as a circuit relay for others on the mesh port (for "
                             "nodes that others can reach directly)")
    parser.add_argument("--dht-port", type=int, default=0,
                        help="UDP port of your DHT node (default: a free one)")
    parser.add_argument("--no-dht", action="store_true",
                        help="do not join the DHT (find people through the bootstrap only)")
    parser.add_argument("--discovery", choices=("auto", "dht"), default="auto",
                        help="auto: bootstrap first, DHT when it fails; dht: DHT only")
    parser.add_argument("--dht-contact", action="append", default=[],
                        help="ip:port of a DHT node to join through (repeatable)")
    parser.add_argument("--retention-days", type=float, default=None,
                        help="keep group history for other members this many days "
                             "(default: always); your own chat history is kept either way")
    parser.add_argument("--refresh-interval", type=float, default=30.0,
                        help="seconds between looks for peers that moved (their records "
                             "are re-read at most every 5 intervals)")
    parser.add_argument("--no-lan-discovery", action="store_true",
                        help="do not announce this node or look for friends on the LAN "
                             "(mDNS; on only when the mesh listens beyond 127.0.0.1)")
    parser.add_argument("--no-port-mapping", action="store_true",
                        help="do not ask the home router to forward the mesh port "
                             "(NAT-PMP / UPnP)")
    parser.add_argument("--bluetooth", action="store_true",
                        help="meet nearby nodes over Bluetooth (needs `make bluetooth` "
                             "and an adapter; without them the node says so and runs on)")
    parser.add_argument("--bluetooth-attachments", type=_bluetooth_limit, default=None,
                        metavar="all|none|MiB",
                        help="largest attachment moved over Bluetooth (default: the saved "
                             "setting, else all)")


def _bluetooth_limit(text: str) -> int | None:
    try:
        return parse_attachment_limit(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _node_config(args: argparse.Namespace, bootstrap: str,
                 identity: KeyPair | None = None) -> NodeConfig:
    return NodeConfig(data_dir=Path(args.data_dir), bootstrap=bootstrap,
                      mesh_port=None if args.no_mesh else args.mesh_port,
                      mesh_host=args.mesh_host, advertise=tuple(args.advertise),
                      relays=tuple(args.relay_via), serve_relay=args.relay,
                      dht_port=None if args.no_dht else args.dht_port,
                      discovery=args.discovery, dht_contacts=tuple(args.dht_contact),
                      refresh_interval=args.refresh_interval,
                      retention_days=args.retention_days, bluetooth=args.bluetooth,
                      lan_discovery=not args.no_lan_discovery,
                      port_mapping=not args.no_port_mapping,
                      bluetooth_attachments=args.bluetooth_attachments,
                      passphrase=None if identity else _passphrase(args), identity=identity)


def _passphrase(args: argparse.Namespace) -> bytes | None:
    """--passphrase-file's contents (without the final newline); else, on a terminal,
    a prompt when the identity key file is protected."""
    if args.passphrase_file:
        try:
            return Path(args.passphrase_file).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise KeyFileError(f"cannot read --passphrase-file: {exc.strerror}") from None
    if sys.stdin.isatty() and identity_is_protected(Path(args.data_dir)):
        return getpass.getpass("Passphrase of your Parley identity key: ").encode()
    return None


def _announce(app: App, label: str = "") -> None:
    who = f"{label} " if label else ""
    print(f"Parley node {who}{display_user_id(app.node.user_id)}: open {app.ui_url}",
          flush=True)


async def _serve_bootstrap(args: argparse.Namespace) -> None:
    try:
        config = BootstrapConfig(
            rate=args.rate, burst=args.burst, trusted_proxies=tuple(args.trusted_proxy),
            pow_bits=args.pow_bits, registrations_per_subscriber=args.registration_quota,
            registrations_per_network=4 * args.registration_quota)
    except ValueError as exc:
        print(f"run.py bootstrap: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    relay = None if args.no_relay else replace(
        DEFAULT_RELAY, max_reservations=args.relay_max_reservations)
    server = start_bootstrap(args.host, args.port, Path(args.db), config,
                             dht_port=None if args.no_dht else _dht_port(args), relay=relay)
    dht = f", DHT on udp {server.dht.address[1]}" if server.dht is not None else ""
    relayed = ", relay at /relay" if server.relay is not None else ""
    stop = _stop_on_signal()
    print(f"Parley bootstrap listening on {server.url} (database {args.db}{dht}{relayed})",
          flush=True)
    await stop.wait()
    await server.stop()


def _dht_port(args: argparse.Namespace) -> int:
    return args.port if args.dht_port is None else args.dht_port


def _port_flags(args: argparse.Namespace) -> dict[tuple[str, int], str]:
    """Which option sets each port the command listens on (for the port-in-use line)."""
    if args.command == "bootstrap":
        return {("tcp", args.port): "--port", ("udp", _dht_port(args)): "--dht-port"}
    if args.command not in ("node", "all"):
        return {}
    flags = {("tcp", args.ui_port): "--ui-port", ("tcp", args.mesh_port): "--mesh-port",
             ("udp", args.dht_port): "--dht-port"}
    if args.command == "all":  # the embedded bootstrap: HTTP and DHT on one port number
        flags |= {("tcp", args.bootstrap_port): "--bootstrap-port",
                  ("udp", args.bootstrap_port): "--bootstrap-port"}
    return flags


async def _serve_node(args: argparse.Namespace) -> None:
    app = await App.start(_node_config(args, args.bootstrap), ui_port=args.ui_port)
    stop = _stop_on_signal()
    _announce(app)
    await stop.wait()
    await app.stop()


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


async def _serve_all(args: argparse.Namespace) -> None:
    data_dir = _private_dir(Path(args.data_dir))
    # The passphrase first: a wrong one must not leave a started bootstrap's database.
    identity = await asyncio.to_thread(load_or_create_identity, data_dir, _passphrase(args))
    server = start_bootstrap("127.0.0.1", args.bootstrap_port, data_dir / "bootstrap.db",
                             dht_port=None if args.no_dht else args.bootstrap_port)
    print(f"Parley bootstrap listening on {server.url}", flush=True)
    try:
        app = await App.start(_node_config(args, args.bootstrap or server.url, identity),
                              ui_port=args.ui_port)
        stop = _stop_on_signal()
        _announce(app)
        await stop.wait()
        await app.stop()
    finally:
        await server.stop()


def _demo_ports(base: Path) -> dict[str, int]:
    """The demo's TCP ports, chosen once and kept in ``<base>/demo-ports.json``: a
    restarted demo must be where its open tabs expect it (a tab's origin and its session
    cookie's name hold the UI port). A missing or damaged file gets free ports anew."""
    names = ["bootstrap", *(f"{user}-{kind}" for user in DEMO_USERS for kind in ("ui", "mesh"))]
    path = base / DEMO_PORTS
    with contextlib.suppress(OSError, ValueError):
        kept = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(kept, dict) and sorted(kept) == sorted(names) and all(
                type(port) is int and 0 < port < 65536 for port in kept.values()):
            return kept
    with contextlib.ExitStack() as stack:  # all bound at once: no port picked twice
        probes = [stack.enter_context(socket.socket()) for _ in names]
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        ports = {name: probe.getsockname()[1] for name, probe in zip(names, probes, strict=True)}
    path.write_text(json.dumps(ports, indent=1) + "\n", encoding="utf-8")
    return ports


async def _serve_demo(args: argparse.Namespace) -> None:
    """Three users on one machine, already in a group called "Demo"."""
    base = _private_dir(Path(args.data_dir or tempfile.mkdtemp(prefix="parley-demo-")))
    ports = _demo_ports(base)
    server: BootstrapServer = start_bootstrap("127.0.0.1", ports["bootstrap"],
                                              base / "bootstrap.db", dht_port=0)
    apps: dict[str, App] = {}
    for name in DEMO_USERS:
        config = NodeConfig(data_dir=base / name, bootstrap=server.url,
                            mesh_port=ports[f"{name}-mesh"])
        apps[name] = await App.start(config, ui_port=ports[f"{name}-ui"])
    for name, app in apps.items():
        await app.node.registered.wait()
        if app.api.profiles()["me"]["name"] is None:  # first start: names, not numbers
            app.api.set_profile(name.title(), None)
    alice = apps["alice"].api
    groups = [c for c in alice.conversations() if c["name"] == "Demo"]
    group_id = bytes.fromhex(groups[0]["id"]) if groups else alice.create_group("Demo")
    for name in ("bob", "carol"):
        try:
            apps[name].api.group_info(group_id)
        except NotFound:
            await apps[name].api.join(alice.invite(group_id))
    print(f"Parley demo in {base} (bootstrap {server.url}); group \"Demo\"; restart it "
          f"with: python run.py demo --data-dir {base}", flush=True)
    stop = _stop_on_signal()
    for name, app in apps.items():
        _announce(app, name)
    await stop.wait()
    for app in apps.values():
        await app.stop()
    await server.stop()


def _stop_on_signal() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM; made before the line that tells a caller we
    are up, so a signal sent right after it stops us cleanly instead of killing us."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["all", *argv]
    args = _parser().parse_args(argv)
    malloc.tune()
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The kademlia package logs every routing-table change at INFO.
    logging.getLogger("kademlia").setLevel(max(logging.WARNING, logging.root.level))
    logging.getLogger("rpcudp").setLevel(max(logging.WARNING, logging.root.level))
    serve = {"bootstrap": _serve_bootstrap, "node": _serve_node, "all": _serve_all,
             "demo": _serve_demo}[args.command]
    try:
        asyncio.run(serve(args))
    except KeyFileError as exc:  # a wrong passphrase among them: nothing was changed
        print(f"run.py {args.command}: {exc}", file=sys.stderr, flush=True)
        return 2
    except PortInUse as exc:
        flag = _port_flags(args).get((exc.protocol, exc.port))
        hint = f"; choose another with {flag} (0 picks a free one)" if flag else ""
        print(f"run.py {args.command}: {exc}{hint}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
