"""Tests of the Python client. The routing tests need no cluster; the live ones run when MERIDIAN_SEEDS names the
client URLs of a running cluster (comma-separated), as ``ClientLibraryLiveTests`` in the Swift suite does, with
MERIDIAN_DEAD naming a region that is down (or empty)."""

import os
import time
import unittest
import uuid

from meridian_client import MeridianClient, NotFound, Unavailable
from meridian_client.client import _Breaker

TOPOLOGY = {
    "cluster": "demo", "region": "us-east", "version": 3, "quorate": True, "links": [],
    "regions": [
        {"name": "us-east", "url": "http://127.0.0.1:1", "health": "up", "suspected_by": []},
        {"name": "eu-west", "url": "http://127.0.0.1:2", "health": "up", "suspected_by": []},
        {"name": "ap-southeast", "url": "http://127.0.0.1:3", "health": "down", "suspected_by": ["us-east", "eu-west"]},
    ],
    "keyspaces": [
        {"name": "accounts", "topology": "single-leader", "replicas": ["ap-southeast", "eu-west", "us-east"], "leader": "us-east",
         "epoch": 2, "residency": {"regions": ["ap-southeast", "eu-west", "us-east"], "access": "proxy", "classification": "global"},
         "consistency": "strong"},
        {"name": "profiles", "topology": "multi-leader", "replicas": ["ap-southeast", "eu-west", "us-east"],
         "residency": {"regions": ["ap-southeast", "eu-west", "us-east"], "access": "proxy", "classification": "global"},
         "consistency": "session"},
        {"name": "users", "topology": "geo-partitioned", "replicas": ["ap-southeast", "eu-west", "us-east"], "home": "us-east",
         "homes": [{"prefix": "eu/", "region": "eu-west"}],
         "residency": {"regions": ["ap-southeast", "eu-west", "us-east"], "access": "proxy", "classification": "global"},
         "consistency": "session"},
        {"name": "eu_health", "topology": "multi-leader", "replicas": ["eu-west"],
         "residency": {"regions": ["eu-west"], "access": "proxy", "classification": "restricted"}, "consistency": "session"},
    ],
}


class RoutingTests(unittest.TestCase):
    def client(self, preferred=()):
        return MeridianClient(["http://127.0.0.1:1"], preferred_regions=preferred, follow_topology=False, topology=TOPOLOGY)

    def test_writes_and_strong_reads_go_to_the_leader_or_home(self):
        client = self.client(preferred=["eu-west"])
        self.assertEqual(client._candidates("accounts", "a", write=True, consistency=None), ["us-east"])
        self.assertEqual(client._candidates("accounts", "a", write=False, consistency=None), ["us-east"], "strong is the default")
        self.assertEqual(client._candidates("accounts", "a", write=False, consistency="eventual")[0], "eu-west")
        self.assertEqual(client._candidates("users", "eu/7", write=True, consistency=None), ["eu-west"])
        self.assertEqual(client._candidates("users", "us/7", write=True, consistency=None), ["us-east"])

    def test_reads_prefer_the_preferred_healthy_regions_and_residency_holds(self):
        client = self.client(preferred=["ap-southeast", "eu-west"])
        # ap-southeast is down: left out.
        self.assertEqual(client._candidates("profiles", "k", write=False, consistency=None), ["eu-west", "us-east"])
        self.assertEqual(self.client(preferred=["us-east"])._candidates("eu_health", "k", write=False, consistency=None), ["eu-west"])

    def test_a_breaker_opens_after_failures_and_closes_after_its_cooldown(self):
        breaker = _Breaker()
        breaker.failed(10.0, threshold=2, cooldown=2.0)
        self.assertTrue(breaker.available(10.0))
        breaker.failed(10.5, threshold=2, cooldown=2.0)
        self.assertFalse(breaker.available(11.0))
        self.assertTrue(breaker.available(12.6))
        breaker.succeeded()
        self.assertEqual(breaker.failures, 0)

    def test_an_unreachable_region_is_left_out_and_reads_fail_over(self):
        client = self.client(preferred=["eu-west"])
        for _ in range(2):
            with self.assertRaises(Unavailable) as raised:
                client.get("profiles", "k")
            self.assertEqual(raised.exception.code, "unreachable")
        # Both regions refused twice in a row: their breakers are open, and with no region left every one is tried
        # (fail open: the view may be what is wrong).
        self.assertEqual(set(client._candidates("profiles", "k", write=False, consistency=None)), {"eu-west", "us-east", "ap-southeast"})


SEEDS = [s for s in os.environ.get("MERIDIAN_SEEDS", "").split(",") if s]
DEAD = os.environ.get("MERIDIAN_DEAD", "")


@unittest.skipUnless(SEEDS, "MERIDIAN_SEEDS names no running cluster")
class LiveTests(unittest.TestCase):
    def setUp(self):
        self.client = MeridianClient(SEEDS, preferred_regions=[DEAD or "eu-west", "ap-southeast"])

    def tearDown(self):
        self.client.close()

    def test_writes_reads_sessions_and_leaders(self):
        key = f"py-{uuid.uuid4().hex[:8]}"
        written = self.client.put("profiles", key, "from python")
        self.assertEqual(written.status, 200)
        self.assertNotEqual(written.region, DEAD)
        # The session token makes the read see the write, wherever it is served.
        self.assertEqual(self.client.get("profiles", key).text, "from python")
        # A single-leader write goes to the leader directly: no forwarding hop.
        leader = self.client.put("accounts", key, "1")
        self.assertEqual(leader.region, self.client.topology()["keyspaces"]["accounts"]["leader"])
        self.assertNotIn("meridian-forwarded-to", leader.headers)
        with self.assertRaises(NotFound):
            self.client.get("profiles", key + "-missing")
        counter = self.client.crdt("likes", key, {"type": "pn-counter", "op": "increment", "by": 2})
        self.assertEqual(counter.json()["value"], 2)

    def test_the_topology_follows_the_cluster(self):
        topology = self.client.topology()
        self.assertEqual(set(topology["regions"]), {"us-east", "eu-west", "ap-southeast"})
        if DEAD:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.client.topology()["regions"][DEAD]["health"] != "down":
                time.sleep(0.05)
            self.assertEqual(self.client.topology()["regions"][DEAD]["health"], "down")
            # Writes and reads that prefer the dead region are served elsewhere, every one.
            for index in range(20):
                self.assertNotEqual(self.client.put("profiles", f"after-{index}", "v").region, DEAD)
                self.assertEqual(self.client.get("profiles", f"after-{index}").text, "v")


if __name__ == "__main__":
    unittest.main()
