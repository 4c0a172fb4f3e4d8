"""The four-client scenario (docs/SDK.md) with the Python SDK:
create -> exec -> stream -> files round trip -> pause -> resume -> delete.
Needs WRENN_URL and WRENN_API_KEY; prints "scenario ok"."""

import os

import wrenn

c = wrenn.Client()  # WRENN_URL, WRENN_API_KEY

cap = c.capsules.create(template="minimal")
assert cap.exec("echo", "hello").stdout == "hello\n"

lines = []
st = cap.exec_stream("sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.1; done", on_stdout=lines.append)
assert st.exit_code == 0 and b"".join(lines) == b"line 1\nline 2\nline 3\n"

data = os.urandom(1 << 20)
cap.files.write("/root/data.bin", data)
assert cap.files.read("/root/data.bin") == data

assert cap.pause().status == "paused"
assert cap.resume().status == "running"
assert cap.files.read("/root/data.bin") == data

cap.delete()
try:
    c.capsules.get(cap.id)
    raise AssertionError("capsule still there")
except wrenn.NotFoundError:
    pass
print("scenario ok")
