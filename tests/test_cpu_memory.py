"""Freed memory kept for reuse (r1lab.cpu_memory): a training step stops paying page faults for the activations it
allocates again; the switch leaves malloc alone. Each case runs in its own process (mallopt is process-wide)."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc only")

STEP = """
import resource, torch
from r1lab.cpu_memory import keep_freed_memory
print(keep_freed_memory())
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.SiLU(),
                                                  torch.nn.Linear(1024, 256)) for _ in range(4)])
x = torch.randn(1024, 256)
def step():
    model.zero_grad(set_to_none=True)
    model(x).square().mean().backward()
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 10)
"""


def faults_per_step(keep: bool) -> tuple[bool, int]:
    env = {**os.environ, "R1LAB_KEEP_FREED_MEMORY": "1" if keep else "0", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", STEP], env=env, capture_output=True, text=True, timeout=180,
                         check=True).stdout.split()
    return out[0] == "True", int(out[1])


def test_a_training_step_stops_faulting_in_its_activations():
    kept, with_keep = faults_per_step(True)
    left, without = faults_per_step(False)
    assert kept and not left  # the switch: R1LAB_KEEP_FREED_MEMORY=0 leaves malloc as it is
    assert with_keep * 2 < without, (with_keep, without)
