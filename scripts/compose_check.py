#!/usr/bin/env python3
"""The assertions of scripts/compose-test, against a running docker-compose.yml stack.

scripts/compose-test builds the images, brings the stack up (`docker compose up --build
--wait`), runs this, and tears everything down. This talks to the stack as browsers and ops
teams do: HTTP and WebSockets through nginx on a loopback port, each replica directly on the
loopback port the test override publishes (its metrics, a cookie signed by another),
Prometheus's HTTP API, `docker inspect`, and `docker compose restart/stop/start/up/down`.

Environment: COMPOSE, the compose command as a JSON list (binary, -p, every -f); DOCKER, the
docker client. Exits non-zero at the first failed check, naming it.
"""

import asyncio
import hashlib
import http.client
import json
import os
import random
import re
import subprocess
import sys
import time
import urllib.parse

import websockets

COMPOSE = json.loads(os.environ["COMPOSE"])
DOCKER = os.environ.get("DOCKER", "docker")
REPLICAS = ["confab-1", "confab-2", "confab-3"]
LEAVE_GRACE = 5.0  # CONFAB_LEAVE_GRACE_MS in docker-compose.yml
SEND_INTERVAL = 0.15  # per client, under the rate limit (a burst of 20, then 10 a second)
EVENT_TIMEOUT = 30.0
STARTED = time.monotonic()


class CheckFailed(Exception):
    pass


def log(message):
    print(f"[compose-check {time.monotonic() - STARTED:6.1f}s] {message}", flush=True)


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def passed(message):
    log(f"PASS {message}")


# --- docker and compose ---------------------------------------------------------------------


def run(argv, timeout=300, check_status=True):
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check_status and result.returncode != 0:
        raise CheckFailed(
            f"`{' '.join(argv)}` exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result.stdout


def compose(*args, timeout=300):
    log("docker compose " + " ".join(args))
    return run(COMPOSE + list(args), timeout=timeout)


async def compose_async(*args, timeout=300):
    return await asyncio.to_thread(compose, *args, timeout=timeout)


def container(service):
    ids = run(COMPOSE + ["ps", "-q", service]).split()
    check(len(ids) == 1, f"one running container for {service}, found {ids}")
    return ids[0]


def inspect(service):
    return json.loads(run([DOCKER, "inspect", container(service)]))[0]


def port(service, target):
    """The loopback port the engine published for `service`'s `target` (it may change when the
    container is recreated or restarted)."""
    out = run(COMPOSE + ["port", service, str(target)]).strip()
    host, _, number = out.rpartition(":")
    check(host == "127.0.0.1", f"{service}:{target} is published on loopback only, not {out}")
    return int(number)


# --- HTTP -------------------------------------------------------------------------------------


def request(port_, method, path, body=None, headers=None, timeout=10):
    connection = http.client.HTTPConnection("127.0.0.1", port_, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def sign_in(port_, name):
    """POST /signin; returns the `name=…` cookie pair and the user's JSON."""
    host = f"127.0.0.1:{port_}"
    status, headers, _ = request(
        port_, "POST", "/signin", urllib.parse.urlencode({"name": name}),
        {"Content-Type": "application/x-www-form-urlencoded", "Host": host,
         "Origin": f"http://{host}"})
    check(status == 302, f"POST /signin as {name}: 302, got {status}")
    cookie = headers.get("set-cookie", "")
    match = re.match(r"(name=[^;]+)", cookie)
    check(match, f"POST /signin sets the `name` cookie: {cookie!r}")
    return match.group(1)


def page_status(port_, cookie):
    status, _, _ = request(port_, "GET", "/", headers={"Cookie": cookie})
    return status


def metric(port_, name):
    status, _, body = request(port_, "GET", "/metrics")
    check(status == 200, f"/metrics answers 200 on port {port_}, got {status}")
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return line, float(line.rsplit(" ", 1)[1])
    raise CheckFailed(f"no {name} in /metrics on port {port_}")


def connections():
    return {replica: metric(port(replica, 3000), "confab_connections")[1]
            for replica in REPLICAS}


def wait_until(what, predicate, timeout=60, interval=0.5):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, CheckFailed, http.client.HTTPException) as error:
            last_error = error
        time.sleep(interval)
    raise CheckFailed(f"timed out after {timeout}s waiting for {what}"
                      + (f" (last error: {last_error})" if last_error else ""))


def ready(replica):
    try:
        return request(port(replica, 3000), "GET", "/readyz", timeout=3)[0] == 200
    except (OSError, CheckFailed, http.client.HTTPException):
        return False


# --- WebSocket clients --------------------------------------------------------------------------


class Client:
    """A page's socket through nginx: the cookie, the page's own Origin, `since` = the last id
    seen on reconnect. Records every frame."""

    def __init__(self, nginx_port, name, room="lobby"):
        self.nginx_port = nginx_port
        self.name = name
        self.room = room
        self.cookie = sign_in(nginx_port, name)
        self.user_id = None
        self.socket = None
        self.frames = []  # chat/join/left, history and live, in arrival order
        self.lists = []
        self.errors = []
        self.closes = []
        self.confirmed = []
        self.unconfirmed = []
        self.failed_upgrades = 0

    def last_id(self):
        return self.frames[-1]["id"] if self.frames else None

    async def connect(self, since=None):
        query = f"room={self.room}" + (f"&since={since}" if since is not None else "")
        url = f"ws://127.0.0.1:{self.nginx_port}/ws/chat?{query}"
        deadline = time.monotonic() + EVENT_TIMEOUT
        while True:
            try:
                self.socket = await websockets.connect(
                    url, origin=f"http://127.0.0.1:{self.nginx_port}",
                    additional_headers={"Cookie": self.cookie}, open_timeout=10,
                    ping_interval=None, max_size=2**20)
                break
            except (OSError, websockets.exceptions.InvalidHandshake,
                    asyncio.TimeoutError) as error:
                self.failed_upgrades += 1
                check(time.monotonic() < deadline,
                      f"{self.name}: cannot open a socket through nginx: {error!r}")
                await asyncio.sleep(0.1)
        await self.read_opening()

    async def next_event(self):
        """The next frame (a dict), or the close code (an int)."""
        try:
            text = await asyncio.wait_for(self.socket.recv(), EVENT_TIMEOUT)
        except websockets.exceptions.ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd else None
            check(code is not None,
                  f"{self.name}: the socket ended without a close frame ({closed!r})")
            return code
        except asyncio.TimeoutError:
            raise CheckFailed(f"{self.name}: no frame for {EVENT_TIMEOUT}s")
        return json.loads(text)

    def take(self, frame):
        kind = frame["type"]
        if kind == "list":
            self.lists.append(frame)
            if self.user_id is None:
                mine = [u for u in frame["data"] if u["name"] == self.name]
                check(mine, f"{self.name} is in its own list: {frame['data']}")
                self.user_id = mine[0]["id"]
        elif kind == "error":
            self.errors.append(frame)
        else:
            self.frames.append(frame)

    async def read_opening(self):
        while True:
            frame = await self.next_event()
            check(isinstance(frame, dict), f"{self.name}: closed ({frame}) during the opening")
            self.take(frame)
            if frame["type"] == "list":
                return

    async def expect_chat(self, text):
        """Reads until the chat `text` arrives; returns it."""
        while True:
            frame = await self.next_event()
            check(isinstance(frame, dict), f"{self.name}: closed ({frame}) waiting for {text!r}")
            self.take(frame)
            if frame["type"] == "chat" and frame["data"] == text:
                return frame

    async def close(self):
        if self.socket is not None:
            await self.socket.close()


def chats(client):
    return [(f["id"], f["user"]["name"], f["data"]) for f in client.frames if f["type"] == "chat"]


def increasing(ids):
    return all(a < b for a, b in zip(ids, ids[1:]))


# --- the checks -------------------------------------------------------------------------------


def check_containers():
    for service in ["redis", *REPLICAS]:
        state = inspect(service)["State"]
        health = state.get("Health", {}).get("Status")
        check(health == "healthy", f"{service}'s healthcheck is healthy, not {health}")
    passed("healthchecks: redis and every replica healthy")
    for replica in REPLICAS:
        info = inspect(replica)
        host = info["HostConfig"]
        check(info["Config"]["User"] == "10001:10001",
              f"{replica}'s image user is 10001:10001, not {info['Config']['User']!r}")
        check(host["ReadonlyRootfs"], f"{replica} has a read-only root")
        check(host["CapDrop"] and [c.upper() for c in host["CapDrop"]] in (["ALL"], ["CAP_ALL"]),
              f"{replica} drops every capability: {host['CapDrop']}")
        check(not host.get("CapAdd"), f"{replica} adds no capability: {host.get('CapAdd')}")
        check(any(o.startswith("no-new-privileges") for o in host.get("SecurityOpt") or []),
              f"{replica} has no-new-privileges: {host.get('SecurityOpt')}")
        # What the process itself has, as the kernel says.
        status = run(COMPOSE + ["exec", "-T", replica, "cat", "/proc/1/status"])
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uids = fields["Uid"].split()
        gids = fields["Gid"].split()
        check(set(uids) == {"10001"} and set(gids) == {"10001"},
              f"{replica}'s process runs as 10001:10001: Uid {uids} Gid {gids}")
        for cap in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
            check(int(fields[cap].strip(), 16) == 0, f"{replica}'s {cap} is empty: {fields[cap]}")
        check(fields["NoNewPrivs"].strip() == "1", f"{replica}'s NoNewPrivs is 1")
        name = fields["Name"].strip()
        check(name == "confab", f"{replica}'s PID 1 is confab, not {name}")
        write = subprocess.run(COMPOSE + ["exec", "-T", replica, "sh", "-c",
                                          "touch /usr/local/bin/x || touch /tmp/x"],
                               capture_output=True, text=True)
        check(write.returncode != 0 and "Read-only file system" in write.stderr,
              f"{replica}'s root refuses writes: {write.returncode} {write.stderr!r}")
    passed("every replica: uid/gid 10001, read-only root, no capabilities, no-new-privileges")


def check_node_ids():
    for replica in REPLICAS:
        line, _ = metric(port(replica, 3000), "confab_node_info")
        check(f'node="{replica}"' in line, f"{replica} names itself: {line}")
    passed("each replica's /metrics names it (confab_node_info)")


def check_cookies(nginx_port):
    """Every replica accepts a cookie signed by another: one from nginx, one from each."""
    cookies = {"nginx": sign_in(nginx_port, "cookie-nginx")}
    for replica in REPLICAS:
        cookies[replica] = sign_in(port(replica, 3000), f"cookie-{replica}")
    for signer, cookie in cookies.items():
        for replica in REPLICAS:
            status = page_status(port(replica, 3000), cookie)
            check(status == 200,
                  f"{replica} accepts a cookie signed by {signer}: GET / answered {status}")
        check(page_status(nginx_port, cookie) == 200, f"nginx + a cookie from {signer}")
    check(page_status(nginx_port, "name=forged") == 302, "a forged cookie is no user")
    passed("every replica accepts the cookies signed by every other one (one shared secret)")
    return cookies


async def check_two_replicas_chat(nginx_port):
    """Two sockets through nginx on two different replicas, chatting both ways, in order."""
    before = connections()
    alice = Client(nginx_port, "alice")
    await alice.connect()
    after = connections()
    on = {alice: [r for r in REPLICAS if after[r] == before[r] + 1]}
    check(len(on[alice]) == 1, f"alice's socket is on one replica: {before} → {after}")
    bob = None
    tried = []
    for _ in range(6):
        candidate = Client(nginx_port, f"bob-{len(tried)}")
        before = connections()
        await candidate.connect()
        after = connections()
        where = [r for r in REPLICAS if after[r] == before[r] + 1]
        check(len(where) == 1, f"a socket is on one replica: {before} → {after}")
        if where != on[alice]:
            bob, on[bob] = candidate, where
            break
        tried.append(candidate)
    check(bob is not None, "nginx spreads sockets over the replicas")
    for extra in tried:
        await extra.close()
    log(f"alice on {on[alice][0]}, {bob.name} on {on[bob][0]}")
    for n in range(5):
        for sender, receiver in ((alice, bob), (bob, alice)):
            text = f"{sender.name} says {n}"
            await sender.socket.send(text)
            mine = await sender.expect_chat(text)
            theirs = await receiver.expect_chat(text)
            check(mine["id"] == theirs["id"] and mine["user"] == theirs["user"],
                  f"both see the same frame: {mine} / {theirs}")
    check(chats(alice)[-10:] == chats(bob)[-10:], "both saw the same chat, in the same order")
    check(increasing([f["id"] for f in alice.frames]) and increasing([f["id"] for f in bob.frames]),
          "ids strictly increase")
    check(not alice.errors and not bob.errors, f"no error frames: {alice.errors} {bob.errors}")
    passed(f"two sockets on {on[alice][0]} and {on[bob][0]} chat both ways, in order")
    return alice, bob


def check_prometheus():
    prometheus = port("prometheus", 9090)

    def api(path):
        status, _, body = request(prometheus, "GET", path)
        check(status == 200, f"Prometheus {path}: {status}")
        return json.loads(body)["data"]

    wanted = {f"{r}:3000" for r in REPLICAS}

    def all_up():
        targets = [t for t in api("/api/v1/targets")["activeTargets"]
                   if t["labels"].get("job") == "confab"]
        return {t["labels"]["instance"] for t in targets if t["health"] == "up"} == wanted

    wait_until("Prometheus to scrape every replica", all_up, timeout=60, interval=1)
    result = api("/api/v1/query?query=" + urllib.parse.quote('up{job="confab"}'))["result"]
    check(sorted(r["metric"]["instance"] for r in result if r["value"][1] == "1") == sorted(wanted),
          f"up{{job=\"confab\"}} == 1 for every replica: {result}")
    rules = [rule["name"] for group in api("/api/v1/rules")["groups"] for rule in group["rules"]]
    shipped = re.findall(r"^\s*- alert:\s*(\S+)", open("deploy/prometheus/alerts.yml").read(), re.M)
    check(shipped and sorted(rules) == sorted(shipped),
          f"Prometheus loaded the shipped alerts {shipped}: {rules}")
    passed(f"Prometheus: up == 1 for {', '.join(sorted(wanted))}; {len(rules)} alert rules loaded")


class Chatroom:
    def __init__(self, clients):
        self.clients = clients
        self.confirmed = 0
        self.stop = False


async def chat(room, index, client):
    """Chats through nginx until told to stop: a message every SEND_INTERVAL, each after the
    previous one came back; on a close, reconnects at once with since = the last id seen."""
    sent = 0
    in_flight = None
    done_sent = False
    dones = set()
    next_send = time.monotonic()
    pending_recv = None
    while len(dones) < len(room.clients):
        if pending_recv is None:
            pending_recv = asyncio.ensure_future(client.next_event())
        may_send = in_flight is None and not done_sent
        timeout = max(0.0, next_send - time.monotonic()) if may_send else None
        finished, _ = await asyncio.wait({pending_recv}, timeout=timeout)
        if not finished:
            if room.stop:
                done_sent = True
                text = f"done {index}"
            else:
                sent += 1
                text = f"{client.name} {sent:04d}"
            try:
                await client.socket.send(text)
            except websockets.exceptions.ConnectionClosed:
                pass  # the close comes next
            in_flight = text
            next_send = time.monotonic() + SEND_INTERVAL
            continue
        event = pending_recv.result()
        pending_recv = None
        if isinstance(event, dict):
            if event["type"] == "chat":
                text = event["data"]
                if text.startswith("done "):
                    dones.add(text)
                if event["user"]["id"] == client.user_id and text == in_flight:
                    in_flight = None
                    client.confirmed.append(text)
                    room.confirmed += 1
            client.take(event)
        else:
            check(not done_sent, f"{client.name}: no close once the restarts are over ({event})")
            client.closes.append(event)
            if in_flight is not None:
                client.unconfirmed.append(in_flight)
                in_flight = None
            await client.connect(since=client.last_id())
    await client.close()


async def wait_for_messages(room, count, what):
    target = room.confirmed + count
    deadline = time.monotonic() + 60
    while room.confirmed < target:
        check(time.monotonic() < deadline,
              f"the clients go on chatting ({what}): {room.confirmed}/{target} messages")
        await asyncio.sleep(0.1)


async def wait_ready(replica):
    await asyncio.to_thread(wait_until, f"{replica} to be ready", lambda: ready(replica), 60)


async def check_restarts_under_traffic(nginx_port):
    """`restart confab-2`, the documented upgrade of one replica (recreated: same address),
    then stop/start of each replica in turn, while six clients chat through nginx."""
    clients = [Client(nginx_port, f"chatter-{n}", room="restarts") for n in range(6)]
    for client in clients:
        await client.connect()
    baseline = clients[-1].last_id()
    names = {client.name for client in clients}
    room = Chatroom(clients)
    tasks = [asyncio.ensure_future(chat(room, i, c)) for i, c in enumerate(clients)]
    step = 30  # messages, all clients together, between two steps

    async def guarded(awaitable):
        # A client that failed fails the test now, not after the steps.
        for task in tasks:
            if task.done() and task.exception():
                raise task.exception()
        return await awaitable

    await guarded(wait_for_messages(room, step, "before the restarts"))
    await guarded(compose_async("restart", "confab-2"))
    await guarded(wait_ready("confab-2"))
    await guarded(wait_for_messages(room, step, "after restart confab-2"))
    # The upgrade of docs/deploy.md: a new container (new id), same fixed address, no nginx
    # reload.
    old = container("confab-2")
    await guarded(compose_async("up", "-d", "--no-deps", "--force-recreate", "--wait", "confab-2"))
    check(container("confab-2") != old, "confab-2 was recreated")
    await guarded(wait_for_messages(room, step, "after recreating confab-2"))
    for replica in REPLICAS:
        await guarded(compose_async("stop", replica))
        await guarded(wait_for_messages(room, step, f"with {replica} stopped"))
        await guarded(compose_async("start", replica))
        await guarded(wait_ready(replica))
        await guarded(wait_for_messages(room, step, f"after {replica} started"))
    # Longer than the leave grace after the last restart, so a wrong `left` would show.
    last = time.monotonic()
    while time.monotonic() - last < 1.5 * LEAVE_GRACE:
        await guarded(asyncio.sleep(0.2))
    room.stop = True
    await asyncio.wait_for(asyncio.gather(*tasks), 60)

    reference = chats(clients[0])
    check(len(reference) > 9 * step, f"enough chat went on: {len(reference)} messages")
    for client in clients:
        ids = [f["id"] for f in client.frames]
        check(increasing(ids), f"{client.name}: ids strictly increase")
        check(chats(client) == reference,
              f"{client.name} saw exactly the messages client 0 saw, in the same order")
        check(not client.errors, f"{client.name}: error frames {client.errors}")
        own = [text for (_, name, text) in reference
               if name == client.name and not text.startswith("done ")]
        check(own == sorted(own), f"{client.name}: its messages in the order sent")
        confirmed = [t for t in client.confirmed if not t.startswith("done ")]
        check([t for t in own if t in confirmed] == confirmed,
              f"{client.name}: every message that came back is in everyone's chat")
        noise = [f for f in client.frames if f["type"] != "chat" and f["id"] > baseline]
        check(not noise, f"{client.name}: join/left noise {noise}")
        for listing in client.lists[1:]:
            listed = {user["name"] for user in listing["data"]}
            check(listed == names, f"{client.name}: a reconnected socket's list {listed}")
        check(client.closes, f"{client.name} was on a restarted replica")
        check(all(code == 1012 for code in client.closes),
              f"{client.name}: every close is 1012 (Service Restart): {client.closes}")
        check(len(client.unconfirmed) <= len(client.closes), f"{client.name}: unconfirmed")
    reconnects = sum(len(c.closes) for c in clients)
    failed = sum(c.failed_upgrades for c in clients)
    unconfirmed = sum(len(c.unconfirmed) for c in clients)
    passed(f"restart, recreate, and stop/start of each replica under traffic: {len(reference)} "
           f"messages, every one once and in order on all 6 clients; {reconnects} reconnects "
           f"with since ({failed} upgrades retried, {unconfirmed} sends cut by a close); no "
           f"join/left")


async def check_redis_restart(nginx_port):
    """`restart redis`: sockets stay, ids keep growing, history survives (AOF), presence is
    repaired."""
    erin, frank = Client(nginx_port, "erin"), Client(nginx_port, "frank")
    await erin.connect()
    await frank.connect()
    text = "before the redis restart"
    await erin.socket.send(text)
    before = await frank.expect_chat(text)
    await erin.expect_chat(text)
    await compose_async("restart", "redis")
    await asyncio.to_thread(wait_until, "every replica to reach Redis again", lambda: all(
        metric(port(r, 3000), "confab_broker_up")[1] == 1 for r in REPLICAS), 60)
    # Sends get `unavailable` until the replica's connection is back: retry as a user would.
    deadline = time.monotonic() + 30
    n = 0
    while True:
        n += 1
        text = f"after the redis restart {n}"
        await erin.socket.send(text)
        frame = await erin.next_event()
        check(isinstance(frame, dict), f"erin's socket stays open across the Redis restart")
        erin.take(frame)
        if frame["type"] == "chat" and frame["data"] == text:
            after = frame
            break
        check(frame["type"] == "error" and frame.get("code") == "unavailable"
              and time.monotonic() < deadline, f"chat resumes after the Redis restart: {frame}")
        erin.errors.pop()
        await asyncio.sleep(0.5)
    theirs = await frank.expect_chat(text)
    check(theirs["id"] == after["id"], "frank got it too, on his same socket")
    check(after["id"] > before["id"], f"ids keep growing: {before['id']} → {after['id']}")
    # A new socket: the history from before the restart is there, and the list names the
    # users whose sockets stayed open.
    carol = Client(nginx_port, "carol")
    await carol.connect()
    history = [f["data"] for f in carol.frames if f["type"] == "chat"]
    check("before the redis restart" in history and "alice says 4" in history,
          f"history from before the Redis restart survives (AOF): {history[-5:]}")
    listed = {user["name"] for user in carol.lists[-1]["data"]}
    check({erin.name, frank.name, "carol"} <= listed, f"presence repaired after Redis: {listed}")
    await carol.close()
    await erin.close()
    await frank.close()
    passed(f"restart redis: sockets kept, ids grow ({before['id']} → {after['id']}), history "
           f"kept, presence repaired ({', '.join(sorted(listed))})")


def check_nginx_without_a_replica():
    """nginx (re)starts while a replica is stopped (its address is in nginx's /etc/hosts, not
    looked up in the engine's DNS, which drops stopped containers), and serves."""
    compose("stop", "confab-3")
    compose("restart", "nginx")
    nginx_port = port("nginx", 80)
    wait_until("nginx to serve with confab-3 stopped",
               lambda: page_status(nginx_port, sign_in(nginx_port, "grace")) == 200, 30)
    compose("start", "confab-3")
    wait_until("confab-3 to be ready", lambda: ready("confab-3"), 60)
    passed("nginx restarts and serves while a replica is stopped")


def secret_digest():
    secret = run(COMPOSE + ["exec", "-T", "confab-1", "cat", "/run/confab-secret/secret"])
    check(len(secret.strip()) >= 32, "the generated secret is at least 32 bytes")
    return hashlib.sha256(secret.encode()).hexdigest()


def check_down_up(cookies):
    digest = secret_digest()
    compose("down", timeout=180)
    compose("up", "-d", "--wait", timeout=300)
    check(secret_digest() == digest, "the generated secret is the same after down && up")
    nginx_port = port("nginx", 80)
    for signer, cookie in cookies.items():
        for replica in REPLICAS:
            status = page_status(port(replica, 3000), cookie)
            check(status == 200, f"after down && up, {replica} accepts the cookie signed by "
                                 f"{signer} before: {status}")
    passed("the generated cookie secret survives down && up (volume): old cookies still valid")
    return nginx_port


async def check_history_after_down_up(nginx_port):
    dave = Client(nginx_port, "dave")
    await dave.connect()
    history = [f["data"] for f in dave.frames if f["type"] == "chat"]
    check(any(text.startswith("after the redis restart") for text in history),
          f"chat history survives down && up: {history[-3:]}")
    await dave.close()
    passed("chat history survives down && up (redis-data volume)")


async def screenshot(nginx_port, path):
    """The chat page through nginx in headless Chromium (over the DevTools protocol), signed in,
    with two other people chatting on sockets of their own: for docs/deploy.md."""
    import tempfile
    people = [Client(nginx_port, name, room="ops") for name in ("Grace", "Linus")]
    for person in people:
        await person.connect()
    lines = [(0, "redis restarted fine, ids kept growing"),
             (1, "nice. confab-2 is back too, nobody noticed"),
             (0, "rolling the new image now: one replica at a time"),
             (1, "watching /api/v1/targets: all three up")]
    for who, text in lines:
        await people[who].socket.send(text)
        for person in people:
            await person.expect_chat(text)
    cookie = sign_in(nginx_port, "Ada")
    profile = tempfile.mkdtemp(prefix="compose-screenshot-")
    browser = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        active = os.path.join(profile, "DevToolsActivePort")
        await asyncio.to_thread(wait_until, "Chromium's DevTools port",
                                lambda: os.path.exists(active) and open(active).read().strip(), 30)
        devtools = int(open(active).read().split()[0])
        _, _, body = request(devtools, "GET", "/json/list")
        page = next(t for t in json.loads(body) if t["type"] == "page")
        async with websockets.connect(page["webSocketDebuggerUrl"], max_size=2**26) as cdp:
            ids = iter(range(1, 1000))

            async def call(method, **params):
                message_id = next(ids)
                await cdp.send(json.dumps({"id": message_id, "method": method, "params": params}))
                while True:
                    answer = json.loads(await cdp.recv())
                    if answer.get("id") == message_id:
                        check("error" not in answer, f"DevTools {method}: {answer}")
                        return answer["result"]

            await call("Emulation.setDeviceMetricsOverride", width=1280, height=760,
                       deviceScaleFactor=1, mobile=False)
            name, value = cookie.split("=", 1)
            await call("Network.setCookie", name=name, value=value,
                       url=f"http://127.0.0.1:{nginx_port}/")
            await call("Page.navigate", url=f"http://127.0.0.1:{nginx_port}/rooms/ops")
            await asyncio.sleep(3)  # the page loads, opens its socket, renders history and list
            shot = await call("Page.captureScreenshot", format="png")
        import base64
        with open(path, "wb") as out:
            out.write(base64.b64decode(shot["data"]))
    finally:
        browser.terminate()
        browser.wait(10)
        for person in people:
            await person.close()
    log(f"screenshot of the chat page through nginx: {path}")


async def main():
    nginx_port = port("nginx", 80)
    log(f"nginx on 127.0.0.1:{nginx_port}, Prometheus on 127.0.0.1:{port('prometheus', 9090)}")
    check_containers()
    check_node_ids()
    status, _, body = request(nginx_port, "GET", "/metrics")
    check(status == 404, f"nginx refuses /metrics: {status}")
    status, headers, _ = request(nginx_port, "GET", "/")
    check(status == 302 and headers.get("location", "").endswith("/signin"),
          f"GET / without a cookie: 302 to /signin, got {status} {headers.get('location')}")
    status, _, body = request(nginx_port, "GET", "/static/app.js")
    check(status == 200 and body, f"nginx serves /static/app.js: {status}")
    cookies = check_cookies(nginx_port)
    alice, bob = await check_two_replicas_chat(nginx_port)
    await alice.close()
    await bob.close()
    check_prometheus()
    await check_restarts_under_traffic(nginx_port)
    await check_redis_restart(nginx_port)
    check_nginx_without_a_replica()
    nginx_port = check_down_up(cookies)
    await check_history_after_down_up(nginx_port)
    log("all checks passed")
    if os.environ.get("COMPOSE_TEST_SCREENSHOT"):
        await screenshot(nginx_port, os.environ["COMPOSE_TEST_SCREENSHOT"])


if __name__ == "__main__":
    random.seed()
    try:
        asyncio.run(main())
    except CheckFailed as failure:
        log(f"FAIL {failure}")
        sys.exit(1)
