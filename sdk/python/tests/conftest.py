"""pytest fixtures: a client of the Wrenn named by WRENN_URL / WRENN_API_KEY.

The live tests need a running Wrenn; test/sdks (Go) starts `wrenn up` and
runs this suite with both variables set. Without them the live tests fail
(they never skip silently).
"""

import os

import pytest

import wrenn

TEMPLATE = os.environ.get("WRENN_TEMPLATE", "minimal")


def _need_server():
    if not os.environ.get("WRENN_URL") or not os.environ.get("WRENN_API_KEY"):
        pytest.fail("WRENN_URL and WRENN_API_KEY must name a running Wrenn (test/sdks starts one)")


@pytest.fixture(scope="session")
def client():
    _need_server()
    c = wrenn.Client()
    yield c
    c.close()


@pytest.fixture
def capsule(client):
    with client.capsules.create(template=TEMPLATE, timeout=600) as cap:
        yield cap
