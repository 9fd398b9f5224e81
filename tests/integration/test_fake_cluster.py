"""Placement on a fake GPU cluster (tests/integration/fake_cluster.py, in a process of its own):
cells land on nodes of their accelerator type with their GPU count and host memory, a 16-GPU engine
spans two nodes, infeasible cells are rejected within a bounded time, and losing a node costs only
the work that ran on it, which is retried elsewhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report() -> dict:
    cmd = [sys.executable, "-m", "tests.integration.fake_cluster"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.terminate()  # the script shuts its cluster down on SIGTERM: no Ray process outlives the test
        out, err = proc.communicate(timeout=60)
    line = next((x for x in out.splitlines() if x.startswith("FAKE-CLUSTER ")), None)
    assert proc.returncode == 0 and line, err[-3000:]
    return json.loads(line.removeprefix("FAKE-CLUSTER "))


def test_cells_land_on_their_kind_with_their_gpus(report):
    p = report["placement"]
    assert p["admitted"] == [True, True]
    assert p["quantize"] == {"kind": "H100", "gpus": 1}  # the A100 node's memory is too small for it
    assert p["engines"] == [{"kind": "A100", "gpus": 4}] * 2
    assert p["spanning"] == {"driver_kind": "H100", "gpu_bundles": {"H100": 16}, "nodes": 2}


def test_infeasible_cells_are_rejected_in_bounded_time(report):
    r = report["infeasible"]
    assert "one engine needs 16 GPUs on a node; H100 nodes have 8" in r["declared"]
    assert "no node able to host it joined within 2s: no B200 nodes" in r["live"] and r["live_s"] < 10


def test_a_lost_node_costs_only_its_own_work_which_is_retried(report):
    r = report["node_loss"]
    assert r["short"] and r["long_retried_on_other_node"]
    assert r["grants_on_gone"] == 0
    assert r["classified"][0] == "lost ActorDiedError"  # the engine host: the session's hosts are replaced
    assert r["classified"][1] == "lost OwnerDiedError"  # an object lost with the node, inside a cell
    assert r["classified"][2] == "failed ValueError"  # a real failure is still a failure
    # ~60 s on an idle 2-core machine (Ray starts three raylets); more when other work shares the cores
    assert report["total_s"] < 300
