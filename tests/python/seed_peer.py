"""The seed's Python side (redis-py, json.dumps/json.loads, the seed's key layout), driven
by tests/tests/python_interop.rs: one JSON list of operations in argv[2], one JSON list of
results on stdout. Values come from SAMPLES, built here from Python objects, so what this
writes is exactly what the seed's FastAPI service writes.

Usage: seed_peer.py REDIS_URL '[["op", args...], ...]'
"""

import json
import sys

import redis

SAMPLES = {
    "quote": {"price": 150.25, "volume": 1000000},
    "profile": {"name": "Ada Lovelace", "age": 36, "tags": ["math", "poetry"], "admin": False},
    "unicode": {"text": "caf\u00e9 \u2713 \U0001F600 \"quoted\" back\\slash \n\t\x01", "empty": ""},
    "numbers": [0, -1, 2**53, -(2**63), 2**64 - 1, 0.1, -0.0, 1e21, 1e-7, 1.5e300, 3.0, 123456789.125],
    "nested": {"a": {"b": {"c": [1, [2, [3, None]]]}}, "z": True},
    "text": "just a string",
    "null": None,
    "list_of_dicts": [{"k": 1}, {"k": 2, "extra": [None, False]}],
}


def main():
    client = redis.Redis.from_url(sys.argv[1])
    out = []
    for op, *args in json.loads(sys.argv[2]):
        if op == "samples":
            # name -> the exact text json.dumps writes
            out.append({name: json.dumps(v) for name, v in SAMPLES.items()})
        elif op == "setex":  # key, ttl, sample name: the seed's redis_service.set
            key, ttl, name = args
            out.append(bool(client.setex(key, ttl, json.dumps(SAMPLES[name]))))
        elif op == "get":  # key -> {"raw": text or None, "loads": json.loads(text)}
            raw = client.get(args[0])
            if raw is None:
                out.append({"raw": None, "loads": None})
            else:
                text = raw.decode("utf-8")
                out.append({"raw": text, "loads": json.loads(text)})
        elif op == "equals_sample":  # key, sample name -> json.loads(GET) == sample
            raw = client.get(args[0])
            out.append(raw is not None and json.loads(raw) == SAMPLES[args[1]])
        elif op == "incrby":
            out.append(client.incrby(args[0], args[1]))
        elif op == "ttl":
            out.append(client.ttl(args[0]))
        elif op == "exists":
            out.append(client.exists(args[0]))
        elif op == "keys":  # pattern -> sorted keys (SCAN)
            out.append(sorted(k.decode() for k in client.scan_iter(match=args[0], count=1000)))
        else:
            raise SystemExit(f"unknown op {op!r}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
