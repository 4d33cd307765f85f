"""The retained heap: freed CPU buffers are reused instead of being faulted in again (rfdetr.util.heap)."""

from __future__ import annotations

import logging
import resource

import pytest
import torch

from rfdetr.util import heap
from rfdetr.util.heap import retained_heap

BUFFER_BYTES = 64 * 2**20  # above glibc's largest mmap threshold (32 MiB): a fresh mapping by default
PAGES = BUFFER_BYTES // resource.getpagesize()


def faults_of_last_buffers(rounds: int = 12, measured: int = 3) -> int:
    """Minor page faults per buffer while the last ``measured`` of ``rounds`` same-sized buffers are filled.

    Each buffer is allocated, filled and freed. glibc's aligned allocation asks for a little more than
    the chunk the previous buffer freed, so a retained heap first grows by a few buffers; after that
    every buffer reuses freed pages.
    """
    faults = 0
    for round_ in range(rounds):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(BUFFER_BYTES // 4)
        if round_ >= rounds - measured:
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    return faults // measured


def test_freed_buffers_are_reused_without_page_faults(monkeypatch):
    assert heap.glibc() is not None  # Linux with glibc, as CI
    monkeypatch.delenv("RFDETR_CPU_HEAP", raising=False)
    assert faults_of_last_buffers(rounds=4) > PAGES // 2  # glibc's default: unmapped on free, faulted in again
    with retained_heap() as active:
        assert active
        assert faults_of_last_buffers() < PAGES // 20
    assert faults_of_last_buffers(rounds=4) > PAGES // 2  # defaults restored after the block


@pytest.mark.parametrize("enabled, setting", [(False, "retain"), (True, "system")])
def test_the_heap_is_left_alone_when_disabled_or_asked_to(monkeypatch, enabled, setting):
    monkeypatch.setenv("RFDETR_CPU_HEAP", setting)
    with retained_heap(enabled) as active:
        assert not active
        assert faults_of_last_buffers() > PAGES // 2


def test_an_unknown_setting_warns_and_retains(monkeypatch, caplog):
    monkeypatch.setenv("RFDETR_CPU_HEAP", "keep")
    with caplog.at_level(logging.WARNING, logger="rfdetr.util.heap"):
        assert heap.heap_setting() == "retain"
    assert "RFDETR_CPU_HEAP=keep" in caplog.text


def test_without_glibc_nothing_changes(monkeypatch):
    monkeypatch.setattr(heap, "glibc", lambda: None)
    with retained_heap() as active:
        assert not active
