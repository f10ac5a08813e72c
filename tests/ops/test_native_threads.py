"""The thread count of the native CPU kernels: torch's, unless torch's OpenMP threads spin
between ops (ponder imported after torch with no wait policy, or a policy other than PASSIVE),
when a native call keeps to its calling thread."""

import os
import subprocess
import sys

import pytest
import torch

import ponder
from ponder.ops import _threads

PROBE = "import ponder, torch; print(ponder._OMP_SPINS, os.environ['OMP_WAIT_POLICY'])"


def _probe(order, policy):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    code = "import os\n" + ("import torch\n" if order == "torch first" else "") + PROBE
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    spins, effective = out.stdout.split()
    return spins == "True", effective


@pytest.mark.parametrize("order,policy,spins", [
    ("ponder first", None, False),      # ponder sets PASSIVE before OpenMP loads
    ("torch first", None, True),        # OpenMP loaded with its default: spin, then sleep
    ("torch first", "PASSIVE", False),  # the user's passive policy was in effect
    ("torch first", "active", True),
    ("ponder first", "ACTIVE", True),   # a policy the user set is kept
    ("ponder first", " passive ", False),
])
def test_spinning_is_detected_from_the_policy_openmp_loaded_with(order, policy, spins):
    got, effective = _probe(order, policy)
    assert got is spins
    assert effective == ("PASSIVE" if policy is None else policy.strip())


def test_native_threads_follow_torch_unless_openmp_spins(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(ponder, "_OMP_SPINS", False)
        assert _threads.native_threads() == 2
        monkeypatch.setattr(ponder, "_OMP_SPINS", True)
        assert _threads.native_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("policy,line", [
    (None, "native kernels 2; idle OpenMP threads sleep"),
    ("ACTIVE", "native kernels 1; idle OpenMP threads spin"),
])
def test_ponder_info_reports_the_thread_counts_and_wait_policy(policy, line):
    import json

    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["OMP_NUM_THREADS"] = "2"
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, "-m", "ponder", "info", "--json"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["cpu threads"] == f"torch 2, {line}"
