"""`python run.py demo --data-dir D`, stopped and started again as the README says: the
same users on the same ports, still in their group, and a signed-in browser session of
the first run still valid."""

from __future__ import annotations

import json
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path

import run
from tests.integration.messenger.conftest import eventually

USERS = re.compile(r"Parley node (alice|bob|carol) ([0-9 ]{19}): "
                   r"open (http://127\.0\.0\.1:\d+)/#token=(\S+)")


def start_demo(run_py, data_dir: Path):
    """Start the demo; returns the process and user -> (id, UI address, token)."""
    proc = run_py("demo", "--data-dir", str(data_dir))
    proc.wait_for(r"Parley demo in .*restart it with: python run\.py demo --data-dir", timeout=90)
    proc.wait_for(r"Parley node carol ")  # printed last
    users = {m.group(1): (m.group(2).replace(" ", ""), m.group(3), m.group(4))
             for line in proc.lines if (m := USERS.search(line))}
    return proc, users


def call(url: str, path: str, *, method: str = "GET", token: str | None = None,
         cookie: str | None = None, body: object = None) -> tuple[int, object, str]:
    headers = {"Content-Type": "application/json"} if method != "GET" else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = cookie
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            payload = response.read()
            return response.status, json.loads(payload) if payload else None, \
                response.headers.get("Set-Cookie", "")
    except urllib.error.HTTPError as exc:
        return exc.code, None, ""


def test_a_restarted_demo_keeps_its_ports_and_sessions(run_py, tmp_path: Path) -> None:
    data = tmp_path / "demo"
    proc, first = start_demo(run_py, data)
    assert sorted(first) == sorted(run.DEMO_USERS)
    ids, url, token = first["alice"]
    status, _, set_cookie = call(url, "/api/v1/session", method="POST", body={"token": token})
    assert status == 204
    cookie = set_cookie.split(";", 1)[0]
    assert proc.stop(signal.SIGINT) == 0

    proc, second = start_demo(run_py, data)
    for user in run.DEMO_USERS:
        assert second[user][:2] == first[user][:2]  # same ID, same UI address
        assert second[user][2] != first[user][2]    # a new token per run
    status, me, _ = call(url, "/api/v1/me", cookie=cookie)
    assert status == 200 and me["id"] == ids
    status, reply, _ = call(url, "/api/v1/groups", token=second["alice"][2])
    demo = [g for g in reply["groups"] if g["name"] == "Demo"]
    assert len(demo) == 1
    status, info, _ = call(url, f"/api/v1/groups/{demo[0]['id']}", token=second["alice"][2])
    assert {m["id"] for m in info["members"]} == {second[u][0] for u in run.DEMO_USERS}
    # The users are called by their names (set at the first start, kept).
    def names() -> set[str | None]:
        profiles = call(url, "/api/v1/profiles", token=second["alice"][2])[1]
        people = profiles["people"]
        return {profiles["me"]["name"],
                *((people.get(second[u][0]) or {}).get("name") for u in ("bob", "carol"))}
    eventually(lambda: names() == {"Alice", "Bob", "Carol"}, message="Alice knows the names")
    proc.stop(signal.SIGINT)


def test_damaged_demo_ports_are_chosen_anew(tmp_path: Path) -> None:
    ports = run._demo_ports(tmp_path)
    assert len(set(ports.values())) == 7 and run._demo_ports(tmp_path) == ports
    for damage in ("", "{", "[]", json.dumps({**ports, "alice-ui": 0}),
                   json.dumps({**ports, "alice-ui": "8471"}), json.dumps({"bootstrap": 1})):
        (tmp_path / run.DEMO_PORTS).write_text(damage)
        fresh = run._demo_ports(tmp_path)
        assert sorted(fresh) == sorted(ports) and all(0 < p < 65536 for p in fresh.values())
        assert json.loads((tmp_path / run.DEMO_PORTS).read_text()) == fresh
