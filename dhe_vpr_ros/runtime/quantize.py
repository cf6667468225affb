# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""An int8 backbone: onnxruntime's static quantisation of the exported float graph (QDQ, int8
weights per output channel, uint8 activations whose ranges are calibrated on the user's own frames).

Not every convolution is quantised. Measured on the shipped EfficientNet-Lite0 (14 demo queries,
cosine of the int8 features against the float ones, 2-core AVX2 CPU, onnxruntime 1.32): every
convolution in int8 keeps the global descriptor (0.96) but not the local grid (0.82, worst 0.68);
the stem (three input channels, the image's own range) and the first three blocks (the 192x192 and
96x96 stages) cause most of it. With those in float the local grid keeps 0.99 and the backbone runs
44 ms a frame on one thread against 78 ms for the float graph (``doc/speed.md``). Hence
``FLOAT_BLOCKS``: the stem and that many blocks stay float; the rest is int8.
"""
from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = ["CALIBRATION_FRAMES", "FLOAT_BLOCKS", "QUANTISABLE_BACKBONES", "QuantizeError", "check_calibration",
           "check_quantisable",
           "float_convolutions",
           "pick_evenly", "quantize_backbone"]

log = logging.getLogger(__name__)

FLOAT_BLOCKS = 3  # the stem and blocks 0..2 stay float (see the module's docstring)
CALIBRATION_FRAMES = 64  # at most this many frames, evenly spread over what the user gives
MIN_CALIBRATION_FRAMES = 4
QUANTISABLE_BACKBONES = ("efficientnet_lite0",)  # measured; a transformer (cct14) is not


class QuantizeError(ValueError):
    """An int8 export that cannot be made: another backbone, too few frames, a graph onnxruntime refuses."""


class _FrameError(Exception):
    """A calibration frame that could not be loaded (carried through onnxruntime's calibration loop)."""


def check_quantisable(backbone: str) -> None:
    """QuantizeError for a backbone whose int8 form was never measured, or without onnxruntime's quantiser."""
    if backbone not in QUANTISABLE_BACKBONES:
        raise QuantizeError(f"--int8 is measured for {', '.join(QUANTISABLE_BACKBONES)} only, not {backbone!r}: "
                            "export without --int8")
    try:
        import onnx  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:
        raise QuantizeError(f"--int8 needs the onnx and onnxruntime packages ({exc}): pip install onnx onnxruntime") \
            from None


def check_calibration(count: int) -> None:
    """QuantizeError when too few calibration frames were given."""
    if count < MIN_CALIBRATION_FRAMES:
        raise QuantizeError(f"--int8 needs at least {MIN_CALIBRATION_FRAMES} calibration frames of your camera, "
                            f"got {count}")


def float_convolutions(node_names: Sequence[str], float_blocks: int = FLOAT_BLOCKS) -> list[str]:
    """The convolutions that stay float: the stem's and those of blocks ``0 .. float_blocks - 1``."""
    early = re.compile(r"_conv_stem/|_blocks\.(\d+)/")
    kept = []
    for name in node_names:
        match = early.search(name)
        if match and (match.group(1) is None or int(match.group(1)) < float_blocks):
            kept.append(name)
    return kept


def pick_evenly(items: Sequence, count: int = CALIBRATION_FRAMES) -> list:
    """At most ``count`` of ``items``, evenly spread (a run's frames: its whole length, not its start)."""
    if len(items) <= count:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round()]


class _NotRoot(logging.Filter):
    """onnxruntime's quantiser logs a line per rescaled weight to the root logger: not ours to show."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: A003 - logging's name
        return record.name != "root"


@contextlib.contextmanager
def _quietly_in(folder: Path):
    """onnxruntime's calibration writes an augmented graph to a temporary folder: keep it in ours; and
    keep its per-weight notes off the user's log."""
    previous, quiet = tempfile.tempdir, _NotRoot()
    tempfile.tempdir = str(folder)
    handlers = list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        tempfile.tempdir = previous
        for handler in handlers:
            handler.removeFilter(quiet)


def quantize_backbone(float_graph: bytes, backbone: str, inputs: Sequence[Callable[[], np.ndarray]],
                      work: Path) -> bytes:
    """The int8 graph of ``float_graph`` (the exported backbone.onnx) as bytes. ``inputs``: one call per
    calibration frame, each giving the normalised (1, 3, S, S) float32 input; ``work``: a folder of
    ours for onnxruntime's files, emptied before returning."""
    check_quantisable(backbone)
    check_calibration(len(inputs))
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)

    class _Frames(CalibrationDataReader):
        def __init__(self):
            self._next = iter(inputs)

        def get_next(self):
            make = next(self._next, None)
            if make is None:
                return None
            try:
                return {"images": make()}
            except Exception as exc:  # an unreadable or unusable frame: said as such, not as onnxruntime's
                raise _FrameError(str(exc)) from None

    with tempfile.TemporaryDirectory(dir=work, prefix=".int8-") as scratch, _quietly_in(Path(scratch)):
        source, prepared, out = (Path(scratch) / name for name in ("float.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(float_graph)  # inside our own temporary folder, removed with it
        try:
            quant_pre_process(str(source), str(prepared))
            names = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Conv"]
            keep = float_convolutions(names)
            if not any("_conv_stem/" in name for name in keep):  # names changed: refuse rather than quantise all
                raise QuantizeError("the exported backbone's convolutions are not named as measured (no stem "
                                    "found): the int8 export is not made")
            log.info("int8: %d convolutions quantised, %d kept float (stem, blocks 0-%d), %d calibration frames",
                     len(names) - len(keep), len(keep), FLOAT_BLOCKS - 1, len(inputs))
            quantize_static(str(prepared), str(out), _Frames(), quant_format=QuantFormat.QDQ, per_channel=True,
                            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv"], nodes_to_exclude=keep)
        except QuantizeError:
            raise
        except _FrameError as exc:
            raise QuantizeError(f"a calibration frame cannot be used: {exc}") from None
        except Exception as exc:  # onnxruntime's own types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise QuantizeError(f"onnxruntime could not quantise the backbone: {first[:300]}") from None
        return out.read_bytes()
