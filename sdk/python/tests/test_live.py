"""The SDK against a real Wrenn (WRENN_URL, WRENN_API_KEY)."""

import asyncio
import hashlib
import io
import os

import pytest

import wrenn
from conftest import TEMPLATE, _need_server


def test_quick_start(client):
    cap = client.capsules.create(template=TEMPLATE)
    try:
        assert cap.id.startswith("cl-") and cap.status == "running"
        assert cap.access_token
        r = cap.exec("echo", "hi")
        assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "", 0)
    finally:
        cap.delete()
    with pytest.raises(wrenn.NotFoundError) as ei:
        client.capsules.get(cap.id)
    assert ei.value.code == "not_found" and ei.value.status_code == 404 and ei.value.request_id


def test_create_fields_list_get(client):
    with client.capsules.create(template=TEMPLATE, vcpus=1, memory_mb=256, disk_size_mb=1024, timeout=120,
                                env={"GREETING": "hello"}, public=False) as cap:
        assert (cap.vcpus, cap.memory_mb, cap.disk_size_mb, cap.timeout_sec) == (1, 256, 1024, 120)
        assert cap.exec("sh", "-c", "echo $GREETING").stdout == "hello\n"
        got = client.capsules.get(cap.id)
        assert got.id == cap.id and got.status == "running"
        assert cap.id in [c.id for c in client.capsules.list(status="running")]
        page = client.capsules.list_page(limit=1)
        assert len(page.capsules) == 1
        assert cap.set_timeout(300).timeout_sec == 300
        assert cap.set_public(True).public is True


def test_network_policy(client):
    pol = wrenn.Network(allow_out=["203.0.113.0/24", "*.example.com"], deny_out=["0.0.0.0/0"], egress_mbps=50)
    with client.capsules.create(template=TEMPLATE, network=pol) as cap:
        assert cap.network == pol and cap.allow_internet is True
        assert client.capsules.get(cap.id).network == pol
        with pytest.raises(wrenn.InvalidArgumentError) as ei:
            cap.set_network({"deny_out": ["203.0.113.0/99"]})
        assert 'network.deny_out[0] "203.0.113.0/99"' in ei.value.message
        assert client.capsules.get(cap.id).network == pol  # untouched
        info = cap.set_network(wrenn.Network(deny_out=["198.51.100.7"]), allow_internet=True)
        assert info.network == wrenn.Network(deny_out=["198.51.100.7"])
        info = cap.set_network(allow_internet=False)
        assert info.allow_internet is False and info.network is None


def test_exec_options_and_errors(capsule):
    r = capsule.exec("sh", "-c", "pwd; id -un; echo $A; cat", cwd="/tmp", env={"A": "b"}, stdin="in\n")
    assert r.stdout.splitlines() == ["/tmp", "root", "b", "in"], r
    r = capsule.exec("sh", "-c", "echo oops >&2; exit 3")
    assert r.exit_code == 3 and r.stderr == "oops\n"
    with pytest.raises(wrenn.CommandExitError) as ei:
        capsule.exec("sh", "-c", "exit 4", check=True)
    assert ei.value.exit_code == 4
    r = capsule.exec("sleep", "30", timeout=1)
    assert r.exit_code != 0
    with pytest.raises(wrenn.InvalidArgumentError) as ei:
        capsule.exec("")
    assert ei.value.code == "invalid_argument" and ei.value.message and ei.value.request_id


def test_exec_stream(capsule):
    out, err = [], []
    st = capsule.exec_stream("sh", "-c", "for i in 1 2 3; do echo $i; done; echo e >&2; printf '\\377'; exit 5",
                             on_stdout=out.append, on_stderr=err.append)
    assert st.exit_code == 5 and st.pid > 0
    assert b"".join(out) == b"1\n2\n3\n\xff" and b"".join(err) == b"e\n"
    with pytest.raises(wrenn.CommandExitError):
        capsule.exec_stream("false", check=True)


def test_processes(capsule):
    p = capsule.processes.start("sh", "-c", "cat; echo end", tag="reader", open_stdin=True)
    assert p.pid > 0 and p.tag == "reader"
    assert p.pid in [q.pid for q in capsule.processes.list()]
    out = []
    st = capsule.processes.attach(p.pid, on_stdout=out.append, stdin="abc\n", close_stdin=True)
    assert st.exit_code == 0 and b"".join(out) == b"abc\nend\n"
    p2 = capsule.processes.start("sleep", "300")
    capsule.processes.kill(p2.pid, "SIGTERM")
    with pytest.raises(wrenn.NotFoundError):
        capsule.processes.kill(999999)


def test_files(capsule, tmp_path):
    e = capsule.files.write("/tmp/d/a.txt", "hello")
    assert e.name == "a.txt" and e.path == "/tmp/d/a.txt"
    assert capsule.files.read_text("/tmp/d/a.txt") == "hello"
    data = os.urandom(5 << 20)
    capsule.files.write("/tmp/d/big.bin", io.BytesIO(data))
    assert capsule.files.read("/tmp/d/big.bin") == data
    local = tmp_path / "up.bin"
    local.write_bytes(data)
    capsule.files.upload(local, "/tmp/d/up.bin")
    assert capsule.exec("sha256sum", "/tmp/d/up.bin").stdout.split()[0] == hashlib.sha256(data).hexdigest()
    n = capsule.files.download("/tmp/d/up.bin", tmp_path / "down.bin")
    assert n == len(data) and (tmp_path / "down.bin").read_bytes() == data
    assert b"".join(capsule.files.stream("/tmp/d/a.txt")) == b"hello"
    assert capsule.files.mkdir("/tmp/d/sub/x").created
    assert not capsule.files.mkdir("/tmp/d/sub/x").created
    entries = {f.name: f for f in capsule.files.list("/tmp/d")}
    assert sorted(entries) == ["a.txt", "big.bin", "sub", "up.bin"]
    assert entries["a.txt"].size == 5 and entries["big.bin"].size == len(data) and entries["sub"].type == "dir"
    assert capsule.files.exists("/tmp/d/a.txt")
    capsule.files.remove("/tmp/d")
    assert not capsule.files.exists("/tmp/d/a.txt")
    with pytest.raises(wrenn.NotFoundError):
        capsule.files.read("/tmp/d/a.txt")


def test_pty(capsule):
    with capsule.pty(cols=100, rows=30, cmd="/bin/sh") as t:
        t.send("echo $((6*7)); exit\n")
        seen = b""
        while True:
            chunk = t.recv()
            if chunk is None:
                break
            seen += chunk
        assert b"42" in seen
        assert t.exit_code == 0 and t.pid


def test_pause_resume(capsule):
    capsule.exec("sh", "-c", "echo kept > /root/m")
    info = capsule.pause()
    assert info.status == "paused" and info.memory_kept is True
    with pytest.raises(wrenn.ConflictError) as ei:
        capsule.exec("true")
    assert ei.value.status_code == 409
    assert capsule.resume(timeout=300).status == "running"
    assert capsule.exec("cat", "/root/m").stdout == "kept\n"


def test_templates_and_me(client):
    by_name = {t.name: t for t in client.templates.list()}
    assert TEMPLATE in by_name
    t = client.templates.get(by_name[TEMPLATE].id)
    assert t.name == TEMPLATE
    me = client.me()
    assert me.auth == "api_key" and me.is_admin
    builds = client.builds.list()
    assert isinstance(builds, list)
    with pytest.raises(wrenn.InvalidArgumentError):
        client.builds.create("Bad Name!", wrenn.BuildSpec(run=["true"]))


def test_bad_credentials_and_network():
    _need_server()
    bad = wrenn.Client(api_key="wrn_nope")
    with pytest.raises(wrenn.UnauthenticatedError) as ei:
        bad.capsules.list()
    assert ei.value.code == "unauthenticated" and ei.value.request_id
    bad.close()
    down = wrenn.Client(url="http://127.0.0.1:9", api_key="x")
    with pytest.raises(wrenn.ConnectionError):
        down.me()
    down.close()


def test_timeout_is_its_own_error(capsule):
    slow = wrenn.Client(timeout=1.0)
    cap = slow.capsules.get(capsule.id)
    with pytest.raises(wrenn.TimeoutError):
        cap.exec("sleep", "5")  # the answer takes longer than the client's 1 s
    slow.close()


def test_async_client():
    _need_server()

    async def main():
        async with wrenn.AsyncClient() as c:
            async with await c.capsules.create(template=TEMPLATE) as cap:
                r = await cap.exec("echo", "hi")
                assert (r.stdout, r.exit_code) == ("hi\n", 0)
                out = []
                st = await cap.exec_stream("echo", "streamed", on_stdout=out.append)
                assert st.exit_code == 0 and b"".join(out) == b"streamed\n"
                await cap.files.write("/tmp/x", b"abc")
                assert await cap.files.read("/tmp/x") == b"abc"
                got = await c.capsules.get(cap.id)
                assert got.status == "running"
            with pytest.raises(wrenn.NotFoundError):
                await c.capsules.get(cap.id)

    asyncio.run(main())


def test_events_and_webhooks(client):
    """A local receiver (the test's wrenn up runs with --webhook-allow-private) gets signed deliveries;
    the log and the live stream carry a capsule's life cycle."""
    import http.server
    import json
    import threading
    import time

    got = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            got.append((self.headers.get("Wrenn-Signature"), self.headers.get("Wrenn-Event-Id"), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    hook = None
    try:
        hook = client.webhooks.create(f"http://127.0.0.1:{srv.server_address[1]}/hook",
                                      event_types=["capsule.created", "capsule.destroyed"])
        assert hook.secret and hook.enabled and hook.event_types == ["capsule.created", "capsule.destroyed"]
        assert client.webhooks.get(hook.id).secret is None  # shown once
        assert hook.id in [w.id for w in client.webhooks.list()]
        with pytest.raises(wrenn.InvalidArgumentError):
            client.webhooks.create("ftp://example.com/x")

        cap = client.capsules.create(template=TEMPLATE)
        cap.delete()

        def wait_for(pred, what):
            deadline = time.time() + 30
            while time.time() < deadline:
                if pred():
                    return
                time.sleep(0.05)
            pytest.fail(f"timed out waiting for {what}; got {[json.loads(b)['type'] for _, _, b in got]}")

        def types_for(subject):
            return [json.loads(b)["type"] for _, _, b in got if json.loads(b).get("subject") == subject]

        wait_for(lambda: types_for(cap.id) == ["capsule.created", "capsule.destroyed"], "the capsule's deliveries")
        for sig, event_id, body in got:
            wrenn.verify_webhook(hook.secret, sig, body)
            assert event_id == json.loads(body)["id"]
            with pytest.raises(wrenn.WebhookVerificationError):
                wrenn.verify_webhook("wrong-secret", sig, body)

        new_secret = client.webhooks.rotate_secret(hook.id)
        assert new_secret and new_secret != hook.secret
        n = len(got)
        test_delivery = client.webhooks.test(hook.id)
        assert test_delivery.event_type == "webhook.test"
        wait_for(lambda: len(got) > n, "the test delivery")
        sig, _, body = got[n]
        wrenn.verify_webhook(new_secret, sig, body)
        with pytest.raises(wrenn.WebhookVerificationError):
            wrenn.verify_webhook(hook.secret, sig, body)
        wait_for(lambda: any(d.status == "delivered" and d.event_type == "webhook.test"
                             for d in client.webhooks.deliveries(hook.id)), "the delivery record")
        assert client.webhooks.update(hook.id, enabled=False).enabled is False

        events = client.events.list(subject=cap.id)
        types = [e.type for e in events]
        assert types[0] == "capsule.created" and types[-1] == "capsule.destroyed", types
        page = client.events.list_page(subject=cap.id, limit=1)
        assert len(page.events) == 1 and page.next_cursor
        # The stream replays what follows Last-Event-ID, then goes live.
        for e in client.events.stream(subject=cap.id, last_event_id=events[0].id):
            assert e.id == events[1].id and e.type == events[1].type
            break
    finally:
        if hook is not None:
            client.webhooks.delete(hook.id)
        srv.shutdown()
    with pytest.raises(wrenn.NotFoundError):
        client.webhooks.get(hook.id)


def test_volumes(client):
    v = client.volumes.create("py-vol", size_mb=32)
    assert v.id.startswith("vol-") and v.size_mb == 32 and v.location == "store"
    try:
        with pytest.raises(wrenn.InvalidArgumentError):
            client.volumes.create("py/vol")
        with client.capsules.create(template=TEMPLATE, volume_mounts=[wrenn.VolumeMount("py-vol", "/vol")]) as cap:
            assert cap.exec("sh", "-c", "echo kept > /vol/note").exit_code == 0
            with pytest.raises(wrenn.ConflictError):
                client.capsules.create(template=TEMPLATE, volume_mounts=[{"name": "py-vol", "path": "/vol"}])
            got = client.volumes.get("py-vol")
            assert got.location == "host" and got.mounts[0].capsule_id == cap.id
            with pytest.raises(wrenn.ConflictError):
                client.volumes.delete("py-vol")
        with client.capsules.create(template=TEMPLATE, volume_mounts=[wrenn.VolumeMount("py-vol", "/v", read_only=True)]) as cap:
            assert cap.exec("cat", "/v/note").stdout == "kept\n"
        client.volumes.write("py-vol", "/a/b.txt", "hi")
        assert client.volumes.read("py-vol", "/a/b.txt") == b"hi"
        assert sorted(e.name for e in client.volumes.list_files("py-vol")) == ["a", "note"]
        with pytest.raises(wrenn.APIError) as ei:
            client.volumes.write("py-vol", "/big", b"\0" * (33 << 20))
        assert ei.value.code == "volume_full" and ei.value.status_code == 507
        client.volumes.remove("py-vol", "/a")
        assert "py-vol" in [x.name for x in client.volumes.list()]
    finally:
        client.volumes.delete("py-vol")
    with pytest.raises(wrenn.NotFoundError):
        client.volumes.get("py-vol")
