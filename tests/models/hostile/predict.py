"""A hostile model: each action tries something a contained replica must not get away with."""

import json
import os
import signal
import time
import urllib.error
import urllib.request


def _attempt(call):
    try:
        call()
    except OSError as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True}


def _read(path):
    with open(path, "rb") as fh:
        fh.read(1)


def _write(path):
    with open(path, "a") as fh:
        fh.write("# tampered\n")


def _status():
    with open("/proc/self/status") as fh:
        return dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)


def _fork(count):
    children = []
    error = None
    for _ in range(count):
        try:
            pid = os.fork()
        except OSError as exc:
            error = type(exc).__name__
            break
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
    for pid in children:
        os.waitpid(pid, 0)
    return {"forked": len(children), "error": error}


def _post(url, headers):
    body = json.dumps({"input_params": 1}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return {"status": response.status}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code}
    except OSError as exc:
        return {"status": None, "error": type(exc).__name__}


def _nats():
    import asyncio

    import nats

    async def attempt():
        refused = []

        async def on_error(exc):
            refused.append(str(exc))

        nc = await nats.connect(
            os.environ["CORMORANT_NATS_URL"], error_cb=on_error, allow_reconnect=False
        )
        await nc.publish("cormorant.replica.forged", b"{}")
        await nc.subscribe("cormorant.>")
        await nc.flush()
        await asyncio.sleep(0.5)
        await nc.close()
        return refused

    return asyncio.run(attempt())


def predict(action, arg=None):
    """Run ``action`` (with ``arg``) and say how it went."""
    if action == "read":
        return _attempt(lambda: _read(arg))
    if action == "list":
        return _attempt(lambda: os.listdir(arg))
    if action == "write":
        return _attempt(lambda: _write(arg))
    if action == "environ":
        return dict(os.environ)
    if action == "whoami":
        status = _status()
        return {
            "uid": os.getuid(),
            "gid": os.getgid(),
            "groups": os.getgroups(),
            "cap_eff": status["CapEff"].strip(),
            "cap_prm": status["CapPrm"].strip(),
            "no_new_privs": status.get("NoNewPrivs", "").strip(),
            "cwd": os.getcwd(),
        }
    if action == "allocate":
        return len(bytearray(int(arg) * 1024 * 1024))
    if action == "fork":
        return _fork(int(arg))
    if action == "loop":
        while True:
            pass
    if action == "exit":
        os._exit(1)
    if action == "nats":  # a platform event published, events subscribed: what is refused
        return _nats()
    if action == "post":  # arg: [url, headers]
        return _post(arg[0], arg[1])
    return action
