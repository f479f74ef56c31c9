"""A client's view of a game day: writes, increments and reads through the Python client until told to stop.

Run it against a cluster while `meridian gameday` (or anything else) kills regions; it writes a summary as JSON:

    python3 examples/gameday_load.py --seeds http://127.0.0.1:7101 http://127.0.0.1:7102 --stop-file /tmp/stop --out /tmp/summary.json

Each round puts a fresh key in the single-leader keyspace (``accounts`` by default), increments one counter in the
CRDT keyspace (``likes``), and reads back an earlier key at session consistency. Every write carries an
idempotency key, so the client retries writes whose fate is open; the summary lists every acknowledged put with its
version and the number of acknowledged increments, for the caller to check against the cluster (nothing lost,
nothing applied twice), and every failed read or write with its error.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from meridian_client import MeridianClient, MeridianError  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", required=True)
    parser.add_argument("--preferred", nargs="*", default=[])
    parser.add_argument("--stop-file", required=True, help="the load stops once this file exists")
    parser.add_argument("--out", required=True, help="where the JSON summary is written")
    parser.add_argument("--tag", default="python")
    parser.add_argument("--keyspace", default="accounts")
    parser.add_argument("--counters", default="likes")
    parser.add_argument("--max-seconds", type=float, default=120.0)
    arguments = parser.parse_args()

    client = MeridianClient(arguments.seeds, preferred_regions=arguments.preferred, timeout=5.0)
    puts, failed_writes, failed_reads, reads = [], [], [], 0
    increments = 0
    counter = f"{arguments.tag}-counter"
    started = time.monotonic()
    index = 0
    try:
        while not os.path.exists(arguments.stop_file) and time.monotonic() - started < arguments.max_seconds:
            index += 1
            key, value = f"{arguments.tag}-{index}", f"{index}-{random.getrandbits(32):08x}"
            try:
                answer = client.put(arguments.keyspace, key, value, content_type="text/plain")
                puts.append({"key": key, "value": value, "version": answer.version, "region": answer.region})
            except MeridianError as error:
                failed_writes.append({"key": key, "code": error.code, "applied": error.applied, "message": str(error)[:300]})
            try:
                client.crdt(arguments.counters, counter, {"type": "pn-counter", "op": "increment", "by": 1})
                increments += 1
            except MeridianError as error:
                failed_writes.append({"key": counter, "code": error.code, "applied": error.applied, "message": str(error)[:300]})
            if puts:
                earlier = random.choice(puts)
                try:
                    read = client.get(arguments.keyspace, earlier["key"], consistency="session")
                    reads += 1
                    if read.text != earlier["value"]:
                        failed_reads.append({"key": earlier["key"], "code": "stale", "message": f"read {read.text!r}, wrote {earlier['value']!r}"})
                except MeridianError as error:
                    failed_reads.append({"key": earlier["key"], "code": error.code, "message": str(error)[:300]})
            time.sleep(0.01)
    finally:
        client.close()
    summary = {"puts": puts, "increments": increments, "counter": counter, "reads": reads,
               "failed_writes": failed_writes, "failed_reads": failed_reads}
    with open(arguments.out, "w") as out:
        json.dump(summary, out)
    print(f"{arguments.tag}: {len(puts)} puts and {increments} increments acknowledged, {reads} reads; "
          f"{len(failed_writes)} failed writes, {len(failed_reads)} failed reads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
