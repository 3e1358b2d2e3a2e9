import struct

import pytest

from fourm_jax.train import metrics


def read_event_scalars(directory):
    """Parses TFRecord-framed event files (length, crc, payload, crc) with tensorboardX's protos."""
    from tensorboardX.proto import event_pb2

    scalars = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            payload = data[offset + 12:offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                scalars.append((event.step, value.tag, value.simple_value))
    return scalars


def test_writes_tensorboard_and_jsonl(tmp_path):
    writer = metrics.MetricWriter(tmp_path, enabled=True)
    writer.write(1, {"loss": 2.5, "loss/caption": 3.0, "loss/tok_rgb@224": 4.0})
    writer.write(2, {"loss": 2.0})
    writer.close()
    assert metrics.read_jsonl(tmp_path / "metrics.jsonl") == [
        {"step": 1, "loss": 2.5, "loss/caption": 3.0, "loss/tok_rgb@224": 4.0}, {"step": 2, "loss": 2.0}]
    scalars = read_event_scalars(tmp_path / "tensorboard")
    assert (1, "loss/caption", 3.0) in scalars and (2, "loss", 2.0) in scalars
    assert (1, "loss/tok_rgb_224", 4.0) in scalars


def test_resume_drops_lines_after_checkpoint(tmp_path):
    writer = metrics.MetricWriter(tmp_path, enabled=True)
    for step in range(1, 6):
        writer.write(step, {"loss": float(step)})
    writer.close()
    writer = metrics.MetricWriter(tmp_path, resume_step=3, enabled=True)
    writer.write(4, {"loss": 40.0})
    writer.close()
    rows = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]


def test_disabled_writer_writes_nothing(tmp_path):
    writer = metrics.MetricWriter(tmp_path, enabled=False)
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("seconds, text", [(5, "0m05s"), (3725, "1h02m"), (float("inf"), "?")])
def test_format_duration(seconds, text):
    assert metrics.format_duration(seconds) == text


def test_progress_line_mentions_rate_and_eta():
    progress = metrics.Progress(total_steps=100)
    line = progress.line(10, 1.23456, tokens_per_step=1000)
    assert line.startswith("step 10/100  loss 1.2346") and "tokens/s" in line and "ETA" in line
