"""The library changes nothing of its host process: importing rnnkit and running its layers
tunes no malloc setting, thread count or floating-point mode; `rnnkit.tune_process` (which the
command line calls) is the opt-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = """
import json, sys, torch
import torch.utils.cpp_extension as cpp

calls = []
real_load = cpp.load


class Spy:  # the extension, with its process-wide call counted
    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)

    def tune_malloc(self):
        calls.append("tune_malloc")
        return self._module.tune_malloc()


cpp.load = lambda *args, **kwargs: Spy(real_load(*args, **kwargs))
threads = torch.get_num_threads()
import rnnkit

x = torch.randn(20, 4, 8, requires_grad=True)
rnnkit.GRU(8, 16)(x)[0].sum().backward()
rnnkit.LSTM(8, 16, layer_norm=True)(x)[0].sum().backward()
rnnkit.Dropout(0.3)(x).sum().backward()
rnnkit.MinGRU(8, 16)(x)[0].sum().backward()
before = list(calls)
same = torch.get_num_threads() == threads
rnnkit.tune_process()
print(json.dumps({"before": before, "after": calls, "same_threads": same}))
"""


def test_running_layers_changes_nothing_of_the_process_until_asked():
    env = {k: v for k, v in os.environ.items() if k != "RNNKIT_MALLOC"}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                          timeout=600, check=True)  # fmt: skip
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["before"] == [] and report["same_threads"]
    assert report["after"] == ["tune_malloc"]  # the opt-in reaches the extension
