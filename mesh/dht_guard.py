"""Who may get how many bytes from our DHT node (sans-IO: every call takes ``now``).

UDP source addresses are not authenticated, so a DHT node is a reflector: a spoofed
78-byte ``find_value`` used to draw a 2.3 KB record at the victim (~30x). Two rules:

- **Prove you can receive.** A source address is *proven* once it answered a request
  of ours: rpcudp puts 20 random bytes (the message id) in every request, and only
  whoever receives at that address can echo them (the role of a BitTorrent DHT token
  or a DNS cookie, with no change to the wire). To an unproven address a reply is
  at most ``AMPLIFICATION`` times the request (QUIC's factor, RFC 9000 §8); anything
  larger is cut down, and the address is sent a ``ping`` (smaller than the request
  that caused it, at most one per address per ``challenge_interval``) whose answer
  proves it for ``proof_ttl``.
- **Budget per source IP.** Every reply spends bytes from a token bucket per source
  IP (not per port: a spoofer could rotate ports); a reply the budget cannot pay is
  not sent.

Both tables are bounded, dropping the least recently used entry. Loopback sources are
exempt by default: the kernel drops packets arriving from outside with a loopback
source, so they cannot be spoofed from afar, and tests and benchmarks run many nodes
on 127.0.0.1 (one IP, one budget).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from mesh.ratelimit import TokenBuckets

__all__ = ["AMPLIFICATION", "GuardConfig", "ReplyGuard"]

AMPLIFICATION = 3


@dataclass(frozen=True)
class GuardConfig:
    reply_rate: float = 32 * 1024      # reply bytes per second per source IP
    reply_burst: float = 128 * 1024
    proof_ttl: float = 1800.0          # how long an answered request proves an address
    challenge_interval: float = 10.0   # at most one proving ping per address this often
    max_addresses: int = 8192
    exempt_loopback: bool = True


class ReplyGuard:
    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config = config or GuardConfig()
        self._budget = TokenBuckets(self.config.reply_rate, self.config.reply_burst,
                                    self.config.max_addresses)
        self._proven: OrderedDict[tuple[str, int], float] = OrderedDict()
        self._challenged: OrderedDict[tuple[str, int], float] = OrderedDict()
        self.withheld = 0  # replies not sent for want of budget (for tests and logs)

    def answered(self, addr: tuple[str, int], now: float) -> None:
        """``addr`` answered one of our requests: it receives there."""
        self._remember(self._proven, addr, now + self.config.proof_ttl)

    def proven(self, addr: tuple[str, int], now: float) -> bool:
        return self._exempt(addr) or self._proven.get(addr, -1.0) > now

    def reply_limit(self, addr: tuple[str, int], request_len: int, now: float) -> int | None:
        """The largest reply ``addr`` may get (None: no limit but the budget)."""
        return None if self.proven(addr, now) else AMPLIFICATION * request_len

    def challenge(self, addr: tuple[str, int], now: float) -> bool:
        """Whether to ping ``addr`` now so that it can prove itself."""
        if self.proven(addr, now) or self._challenged.get(addr, -1.0) > now:
            return False
        self._remember(self._challenged, addr, now + self.config.challenge_interval)
        return True

    def spend(self, addr: tuple[str, int], size: int, now: float) -> bool:
        """Charge a reply of ``size`` bytes to the source IP; False: do not send it."""
        if self._exempt(addr) or self._budget.take(addr[0], size, now):
            return True
        self.withheld += 1
        return False

    def _exempt(self, addr: tuple[str, int]) -> bool:
        if not self.config.exempt_loopback:
            return False
        try:
            return ipaddress.ip_address(addr[0]).is_loopback
        except ValueError:
            return False

    def _remember(self, table: OrderedDict[tuple[str, int], float], addr: tuple[str, int],
                  until: float) -> None:
        table.pop(addr, None)
        table[addr] = until
        if len(table) > self.config.max_addresses:
            table.popitem(last=False)
