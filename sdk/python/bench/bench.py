"""Benchmark driver for test/sdks (BenchmarkSDKs): times SDK calls in-process
and prints one JSON object. Usage:
  bench.py create-exec N TEMPLATE      -> {"seconds": [create+first exec, ...]}
  bench.py upload CAPSULE LOCAL REMOTE -> {"seconds": s}
  bench.py download CAPSULE REMOTE LOCAL -> {"seconds": s}
"""

import json
import sys
import time

import wrenn


def main(argv):
    c = wrenn.Client()
    mode = argv[0]
    if mode == "create-exec":
        n, template = int(argv[1]), argv[2]
        with c.capsules.create(template=template) as warm:  # untimed: connection and code paths warm
            warm.exec("true")
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            cap = c.capsules.create(template=template)
            r = cap.exec("true")
            out.append(time.perf_counter() - t0)
            assert r.exit_code == 0
            cap.delete()
        res = {"seconds": out}
    elif mode == "upload":
        cap = c.capsules.get(argv[1])
        t0 = time.perf_counter()
        cap.files.upload(argv[2], argv[3])
        res = {"seconds": time.perf_counter() - t0}
    elif mode == "download":
        cap = c.capsules.get(argv[1])
        t0 = time.perf_counter()
        n = cap.files.download(argv[2], argv[3])
        res = {"seconds": time.perf_counter() - t0, "bytes": n}
    else:
        raise SystemExit(f"unknown mode {mode}")
    c.close()
    print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv[1:])
