"""What a run reports: the peak FLOP/s that MFU divides by (flops.py), the device memory it held, metrics.jsonl."""

import errno
import os

import jax
import pytest

from gpt2_jax import device_memory
from gpt2_jax.flops import peak_flops_of


@pytest.mark.parametrize("device_kind, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA GH200 480GB", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12),
    ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12), ("NVIDIA L40", 181e12),  # an L40S was an L4 ("L4" in it)
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5", 459e12), ("TPU v6 lite", 918e12),
    ("NVIDIA GeForce RTX 4090", None), ("cpu", None),
])
def test_the_peak_is_found_by_whole_names(device_kind, peak):
    assert peak_flops_of(device_kind) == peak


class CountingDevice:
    def __init__(self, stats):
        self.stats = stats

    def memory_stats(self):
        return self.stats


def test_the_peak_memory_is_the_most_any_device_held_and_none_where_none_counts(monkeypatch):
    assert device_memory.peak_gib() is None and jax.devices()[0].memory_stats() is None  # a CPU keeps no count
    held = [CountingDevice({"peak_bytes_in_use": 3 * 2**29, "bytes_in_use": 1}), CountingDevice(None),
            CountingDevice({"peak_bytes_in_use": 5 * 2**29}), CountingDevice({"bytes_in_use": 2**40})]
    monkeypatch.setattr(jax, "local_devices", lambda: held)
    assert device_memory.peak_gib() == 2.5
    monkeypatch.setattr(jax, "local_devices", lambda: held[1:2])
    assert device_memory.peak_gib() is None


def test_tensorboard_events_on_a_full_disk_leave_the_one_line_alone(tmp_path, monkeypatch, capsys):
    """A row's write fails (a full disk), then the run's clean-up closes TensorBoard's file, whose flush fails
    the same way: that OSError replaced the one line with a traceback (exit 1), and tensorboardX's exit handler
    printed another."""
    from tensorboardX import record_writer

    from gpt2_jax.errors import UserError
    from gpt2_jax.metrics import MetricsWriter

    def full_disk(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    for failed_before in (True, False):
        workdir = tmp_path / str(failed_before)
        writer = MetricsWriter(workdir)
        writer.write(1, {"train_loss": 1.0})
        monkeypatch.setattr(record_writer.RecordWriter, "flush", full_disk)
        if failed_before:
            with pytest.raises(UserError, match="cannot write step 2's metrics \\(No space left on device\\)"):
                writer.write(2, {"train_loss": 0.5})
        tensorboard = writer.tensorboard
        writer.close()
        warning = f"warning: cannot write {workdir / 'tensorboard'}'s last events (No space left on device)"
        assert capsys.readouterr().err == ("" if failed_before else warning + "; metrics.jsonl holds them\n")
        for file_writer in tensorboard.all_writers.values():
            file_writer.event_writer.close()  # what tensorboardX's exit handler runs: it failed again
        monkeypatch.undo()


def test_metrics_that_cannot_be_written_are_one_line(tmp_path):
    from gpt2_jax.errors import UserError
    from gpt2_jax.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path)
    (tmp_path / "metrics.jsonl").mkdir()  # as a full disk would, the write fails (it was a traceback)
    with pytest.raises(UserError, match="metrics.jsonl: cannot write step 5's metrics \\(Is a directory\\); make room"):
        writer.write(5, {"train_loss": 1.0})
