"""Checks that need no server: the models match openapi.yaml, every public
name has a docstring, and the package builds a wheel."""

import io
import dataclasses
import inspect
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest
import yaml

import wrenn
from wrenn import _models

ROOT = pathlib.Path(__file__).resolve().parents[3]
OPENAPI = ROOT / "internal" / "api" / "openapi.yaml"
PKG = pathlib.Path(__file__).resolve().parents[1]


def _schemas():
    return yaml.safe_load(OPENAPI.read_text())["components"]["schemas"]


def _models_with_schema():
    return [c for c in vars(_models).values()
            if inspect.isclass(c) and dataclasses.is_dataclass(c) and getattr(c, "__schema__", "")]


def test_models_match_openapi():
    schemas = _schemas()
    models = _models_with_schema()
    assert len(models) >= 14
    for cls in models:
        assert cls.__schema__ in schemas, f"{cls.__name__}: no schema {cls.__schema__} in openapi.yaml"
        schema = schemas[cls.__schema__]
        props = set(schema.get("properties", {}))
        fields = {f.name.rstrip("_") for f in dataclasses.fields(cls)}
        assert fields == props, (
            f"{cls.__name__} vs schema {cls.__schema__}: only in the SDK {sorted(fields - props)}, "
            f"only in openapi.yaml {sorted(props - fields)}")
        # Required properties are fields without a default (or with a plain one), never Optional[...] = None.
        for f in dataclasses.fields(cls):
            prop = schema.get("properties", {}).get(f.name.rstrip("_"), {})
            if f.name.rstrip("_") in schema.get("required", []) and not prop.get("nullable"):
                assert "Optional" not in str(f.type), f"{cls.__name__}.{f.name} is required in openapi.yaml"


def test_exec_body_fields_exist_in_openapi():
    from wrenn._async import _exec_body
    body = _exec_body("c", ["a"], {"k": "v"}, "/", "root", 1, "in")
    assert set(body) <= set(_schemas()["Exec"]["properties"])


def test_every_public_name_has_a_docstring():
    missing = []
    for name in wrenn.__all__:
        obj = getattr(wrenn, name)
        if inspect.isclass(obj):
            if not (obj.__doc__ or "").strip():
                missing.append(name)
            for k, v in vars(obj).items():
                if k.startswith("_") or not (callable(v) or isinstance(v, property)):
                    continue
                if not (getattr(v, "__doc__", None) or "").strip():
                    missing.append(f"{name}.{k}")
        elif inspect.isfunction(obj) and not (obj.__doc__ or "").strip():
            missing.append(name)
    assert not missing, f"public names without a docstring: {missing}"


def test_errors_carry_code_message_request_id():
    from wrenn._errors import api_error
    e = api_error(404, "not_found", "no capsule", "req-1")
    assert isinstance(e, wrenn.NotFoundError) and isinstance(e, wrenn.APIError)
    assert (e.status_code, e.code, e.message, e.request_id) == (404, "not_found", "no capsule", "req-1")
    assert not issubclass(wrenn.ConnectionError, wrenn.APIError)
    assert not issubclass(wrenn.TimeoutError, wrenn.APIError)


def test_wheel_builds(tmp_path):
    out = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--skip-dependency-check", "--wheel", "--outdir", str(tmp_path),
                          str(PKG)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    wheels = list(tmp_path.glob("wrenn-*.whl"))
    assert len(wheels) == 1, os.listdir(tmp_path)
    with zipfile.ZipFile(wheels[0]) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "wrenn/__init__.py" in names and "wrenn/_sync.py" in names
    assert "Requires-Dist: httpx" in meta and "Requires-Dist: websockets" in meta


def test_template_build_streams_multipart_and_reads_ndjson_logs():
    import asyncio
    import httpx
    seen = {}

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            body = b"".join([c async for c in request.stream])
            seen["ctype"] = request.headers["Content-Type"]
            seen["body"] = body
            return httpx.Response(201, json={"id": "bld-1", "team_id": "t", "template_name": "app", "status": "pending", "kind": "recipe"})
        seen["url"] = str(request.url)
        lines = b'{"seq":1,"time":"2026-01-01T00:00:00Z","step":0,"stream":"system","data":"step 0/1\\n"}\n' \
                b'{"seq":2,"time":"2026-01-01T00:00:00Z","step":1,"stream":"stdout","data":"hi\\n"}\n'
        return httpx.Response(200, content=lines, headers={"Content-Type": "application/x-ndjson"})

    async def run():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as hc:
            c = wrenn.AsyncClient(url="http://wrenn.test", api_key="k", http_client=hc)
            b = await c.templates.build("app", recipe="FROM base\n", context=io.BytesIO(b"TARDATA"),
                                        registry_auth={"username": "u", "password": "p"})
            recs = [r async for r in c.templates.build_logs(b.id, follow=True)]
            return b, recs

    b, recs = asyncio.run(run())
    assert b.id == "bld-1" and b.kind == "recipe"
    body = seen["body"]
    assert seen["ctype"].startswith("multipart/form-data; boundary=")
    assert body.index(b'name="name"') < body.index(b'name="recipe"') < body.index(b'name="registry_auth"') < body.index(b'name="context"')
    assert b"TARDATA" in body
    assert [(r.seq, r.stream, r.data) for r in recs] == [(1, "system", "step 0/1\n"), (2, "stdout", "hi\n")]
    assert seen["url"].endswith("/v1/templates/builds/bld-1/logs?follow=1")


def test_verify_webhook():
    """The recipe matches the server's signer (a vector computed by the Go
    implementation's formula) and refuses tampering."""
    import hashlib
    import hmac
    body = b'{"id":"7","type":"capsule.created"}'
    t = 1_700_000_000
    sig = hmac.new(b"whsec_x", f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    header = f"t={t},v1={sig}"
    wrenn.verify_webhook("whsec_x", header, body, now=t + 10)
    wrenn.verify_webhook("whsec_x", f"t={t},v1={'0' * 64},v1={sig}", body, now=t)
    for secret, hdr, b, now in [
        ("whsec_y", header, body, t),             # wrong secret
        ("whsec_x", header, body + b" ", t),      # changed body
        ("whsec_x", header, body, t + 301),       # too old
        ("whsec_x", "garbage", body, t),          # malformed
        ("whsec_x", f"t={t}", body, t),           # no v1
        ("whsec_x", None, body, t),
    ]:
        with pytest.raises(wrenn.WebhookVerificationError):
            wrenn.verify_webhook(secret, hdr, b, now=now)
