"""The documents' ``MultiRegionDatabase``, on Meridian: write locally or to the leader, with the replication mode
as an ack mode, and read from the nearest healthy region.

    python3 examples/multi_region_database.py http://127.0.0.1:7101 http://127.0.0.1:7102 http://127.0.0.1:7103

against ``meridian up``'s demo cluster (``profiles`` is multi-leader, ``accounts`` single-leader in us-east).
"""

import enum
import sys
import time
from dataclasses import dataclass
from typing import List, Sequence

from meridian_client import MeridianClient


class ReplicationMode(enum.Enum):
    ASYNC = "async"          # answered once the local region has it
    SEMI_SYNC = "majority"   # answered once a majority of regions has it
    SYNC = "all"             # answered once every region has it


@dataclass
class WriteResult:
    success: bool
    acked_by: List[str]
    latency_ms: float
    region: str
    version: str


class MultiRegionDatabase:
    def __init__(self, local_region: str, seeds: Sequence[str], mode: ReplicationMode = ReplicationMode.ASYNC, keyspace: str = "profiles"):
        self.client = MeridianClient(seeds, preferred_regions=[local_region])
        self.mode = mode
        self.keyspace = keyspace

    def write(self, key: str, value: str) -> WriteResult:
        start = time.time()
        answer = self.client.put(self.keyspace, key, value, ack=self.mode.value)
        body = answer.json()
        return WriteResult(True, body["acked_by"], (time.time() - start) * 1000, answer.region, body["version"])

    def read(self, key: str) -> str:
        # The client's session token makes this read see the write above, in whichever region serves it.
        return self.client.get(self.keyspace, key).text


def main(seeds: Sequence[str]) -> int:
    for mode in ReplicationMode:
        db = MultiRegionDatabase("eu-west", seeds, mode)
        result = db.write(f"user:{mode.name.lower()}", f"written with {mode.name}")
        print(f"{mode.name:9} written in {result.region}, acked by {', '.join(result.acked_by)} in {result.latency_ms:.1f} ms; "
              f"read back: {db.read(f'user:{mode.name.lower()}')!r}")
        db.client.close()
    accounts = MultiRegionDatabase("eu-west", seeds, ReplicationMode.SEMI_SYNC, keyspace="accounts")
    result = accounts.write("alice", "100")
    print(f"accounts (single-leader): the client sent the write straight to {result.region}")
    accounts.client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["http://127.0.0.1:7101"]))
