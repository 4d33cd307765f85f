"""The retained heap: freed CPU buffers are reused instead of being faulted in again (rfdetr.util.heap)."""

from __future__ import annotations

import logging
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from rfdetr.util import heap
from rfdetr.util.heap import retained_heap

ROOT = Path(__file__).resolve().parents[1]

BUFFER_BYTES = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB): a fresh mapping by default
PAGES = BUFFER_BYTES // resource.getpagesize()

# Run in a fresh interpreter: a heap that earlier code grew (a test that trained) serves the buffer from
# its free chunks, whatever malloc's settings are now. Prints the faults of one buffer once the heap is
# steady: each buffer is allocated, filled and freed; torch's aligned request is a little larger than the
# chunk the previous buffer freed, so a retained heap first grows by a few buffers, then reuses them.
PROBE = """
import resource, sys, torch
from rfdetr.util.heap import retained_heap

def faults(rounds=12, measured=3, elements={elements}):
    total = 0
    for round_ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(elements)
        if round_ >= rounds - measured:
            total += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return total // measured

mode = sys.argv[1]
if mode == "default":
    print(faults())
elif mode == "after":
    # The block's buffers are an eighth of the size measured after it: the free chunks the block leaves in
    # the heap (it may keep some that a small live allocation above them pins) cannot serve the measured
    # buffer, which therefore shows how malloc now treats a large buffer.
    with retained_heap():
        faults(elements={elements} // 8)
    print(faults())
else:
    with retained_heap(mode != "disabled") as active:
        print(faults(), active)
""".format(elements=BUFFER_BYTES // 4)


def probe(mode: str, setting: str = "retain", **environment: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", *heap.ENVIRONMENT_VARIABLES)}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=300,
                          env={**clean, "RFDETR_CPU_HEAP": setting, **environment}, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.slow  # three child processes page through large buffers
def test_freed_buffers_are_reused_without_page_faults():
    assert heap.glibc() is not None  # Linux with glibc, as CI
    assert int(probe("default")[0]) > PAGES // 2  # glibc's default: unmapped on free, faulted in again
    faults, active = probe("retained")
    assert active == "True" and int(faults) < PAGES // 20
    assert int(probe("after")[0]) > PAGES // 2  # glibc's settings are back after the block


RETAINING_ENVIRONMENTS = {
    "variables": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "2147483647"},
    "tunables": {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=0x7fffffff"},
}


@pytest.mark.parametrize("how", RETAINING_ENVIRONMENTS)
def test_the_settings_the_process_started_with_are_restored(how):
    # A process started with malloc already told to retain: after the block it still retains (restoring
    # glibc's defaults instead would fault the buffer in again).
    assert int(probe("after", **RETAINING_ENVIRONMENTS[how])[0]) < PAGES // 20


@pytest.mark.parametrize(("environment", "mmap_max", "trim_threshold"), [
    ({}, heap.DEFAULT_MMAP_MAX, heap.DEFAULT_TRIM_THRESHOLD),  # glibc's defaults
    ({"MALLOC_MMAP_MAX_": "7", "MALLOC_TRIM_THRESHOLD_": "4096"}, 7, 4096),
    ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0x1000:glibc.malloc.mmap_max=010"}, 8, 4096),  # hex, octal
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=3", "MALLOC_MMAP_MAX_": "9"}, 3, heap.DEFAULT_TRIM_THRESHOLD),
    ({"GLIBC_TUNABLES": "glibc.malloc.check=1", "MALLOC_TRIM_THRESHOLD_": "99"}, heap.DEFAULT_MMAP_MAX, 99),
    ({"MALLOC_MMAP_MAX_": "many", "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=-1"},
     heap.DEFAULT_MMAP_MAX, heap.DEFAULT_TRIM_THRESHOLD),  # values glibc would not read
    ({"MALLOC_TRIM_THRESHOLD_": str(2**40)}, heap.DEFAULT_MMAP_MAX, 2**31 - 1),  # mallopt takes an int
])
def test_the_settings_in_effect_are_read_from_the_environment(environment, mmap_max, trim_threshold):
    assert heap.settings_in_effect(environment) == {heap.M_MMAP_MAX: mmap_max, heap.M_TRIM_THRESHOLD: trim_threshold}


class RecordingLibrary:
    def __init__(self):
        self.calls = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("trim", pad))
        return 1


def test_the_block_sets_then_restores_what_the_process_started_with(monkeypatch):
    library = RecordingLibrary()
    monkeypatch.setattr(heap, "glibc", lambda: library)
    for variable in ("GLIBC_TUNABLES", *heap.ENVIRONMENT_VARIABLES, "RFDETR_CPU_HEAP"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    with retained_heap() as active:
        assert active and library.calls == [(heap.M_MMAP_MAX, 0), (heap.M_TRIM_THRESHOLD, 2**31 - 1)]
    assert library.calls[2:] == [(heap.M_MMAP_MAX, heap.DEFAULT_MMAP_MAX), (heap.M_TRIM_THRESHOLD, 1048576),
                                 ("trim", 0)]


@pytest.mark.parametrize("mode, setting", [("disabled", "retain"), ("retained", "system")])
def test_the_heap_is_left_alone_when_disabled_or_asked_to(mode, setting):
    faults, active = probe(mode, setting)
    assert active == "False" and int(faults) > PAGES // 2


def test_an_unknown_setting_warns_and_retains(monkeypatch, caplog):
    monkeypatch.setenv("RFDETR_CPU_HEAP", "keep")
    with caplog.at_level(logging.WARNING, logger="rfdetr.util.heap"):
        assert heap.heap_setting() == "retain"
    assert "RFDETR_CPU_HEAP=keep" in caplog.text


def test_without_glibc_nothing_changes(monkeypatch):
    monkeypatch.setattr(heap, "glibc", lambda: None)
    with retained_heap() as active:
        assert not active
