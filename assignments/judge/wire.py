"""The data channel between the judge and the student's process: values as data, never as code.

One message is two frames on a pipe, each a 4-byte big-endian length and its bytes: a JSON header, then a
safetensors blob (possibly empty) holding every tensor of the message. JSON carries numbers, strings, booleans,
None, lists and string-keyed dicts; a tuple is ``{"$tuple": [...]}``, a tensor ``{"$tensor": "t0"}`` (a key of the
blob), a float that JSON cannot write ``{"$float": "nan"}``. Requests may also carry ``{"$config": …}`` and
``{"$module": …}`` specs, which the sandbox's server builds with its own copy of ``minimoe`` (``server.py``);
:func:`decode` refuses them unless ``specs`` is given, so a reply can never hold one. safetensors stores raw bytes
with a dtype and shape: parsing it cannot run code (unlike pickle). Every frame has a size limit.

This file runs on both sides; the sandbox gets a read-only copy of it and of ``server.py`` only.
"""

from __future__ import annotations

import json
import math
import os
import struct

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

MAX_HEADER_BYTES = 1 << 20  # a JSON header
MAX_BLOB_BYTES = 64 << 20  # the tensors of one message
MAX_ITEMS = 10_000  # JSON values in one message


class ProtocolError(Exception):
    """A message that breaks the format or its limits (the text is the judge's own, never the peer's)."""


def encode(value) -> tuple[dict | list | str | int | float | bool | None, dict[str, torch.Tensor]]:
    """(JSON-ready structure, tensors by key) for `value`."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(v):
        if isinstance(v, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = v.detach().cpu().contiguous().clone()
            return {"$tensor": key}
        if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else {"$float": repr(v)}
        if isinstance(v, tuple):
            return {"$tuple": [enc(x) for x in v]}
        if isinstance(v, list):
            return [enc(x) for x in v]
        if isinstance(v, dict) and all(isinstance(k, str) and not k.startswith("$") for k in v):
            return {k: enc(x) for k, x in v.items()}
        if hasattr(v, "wire_spec"):  # a Config or Module spec (judge side, requests only)
            return v.wire_spec(enc)
        raise TypeError(f"cannot send a {type(v).__name__} over the data channel (tensors, numbers, strings, "
                        "None, lists, tuples and string-keyed dicts only)")

    return enc(value), tensors


def decode(data, tensors: dict[str, torch.Tensor], specs=None):
    """The value `encode` described; `specs(kind, payload, dec)` builds ``$config``/``$module`` (else refused)."""
    count = 0

    def dec(v):
        nonlocal count
        count += 1
        if count > MAX_ITEMS:
            raise ProtocolError(f"more than {MAX_ITEMS} values in one message")
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, list):
            return [dec(x) for x in v]
        if not isinstance(v, dict):
            raise ProtocolError("a value of an unknown kind")
        if len(v) == 1 and next(iter(v)).startswith("$"):
            kind, payload = next(iter(v.items()))
            if kind == "$tensor" and isinstance(payload, str) and payload in tensors:
                return tensors[payload]
            if kind == "$tuple" and isinstance(payload, list):
                return tuple(dec(x) for x in payload)
            if kind == "$float" and payload in ("nan", "inf", "-inf"):
                return float(payload)
            if specs is not None and kind in ("$config", "$module"):
                return specs(kind, payload, dec)
            raise ProtocolError("a tagged value of an unknown kind")
        return {k: dec(x) for k, x in v.items() if not k.startswith("$")}

    return dec(data)


def _write_frame(fd: int, data: bytes) -> None:
    view = memoryview(struct.pack(">I", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def send(fd: int, message: dict) -> None:
    """Write `message` (a dict, encoded with :func:`encode`) as a header and a blob frame."""
    data, tensors = encode(message)
    header = json.dumps(data, allow_nan=False).encode()
    blob = save_tensors(tensors) if tensors else b""
    if len(header) > MAX_HEADER_BYTES or len(blob) > MAX_BLOB_BYTES:
        raise ProtocolError(f"a message over the size limit ({len(header)} header bytes, {len(blob)} tensor bytes)")
    _write_frame(fd, header)
    _write_frame(fd, blob)


class Reader:
    """Reads messages from a file descriptor, in pieces, so that the caller can watch a deadline between reads."""

    def __init__(self, fd: int):
        self.fd, self.buffer, self.frames = fd, bytearray(), []

    def feed(self) -> bool:
        """Read what is available; False at end of file. Raises ProtocolError on an oversized frame."""
        chunk = os.read(self.fd, 1 << 20)
        if not chunk:
            return False
        self.buffer += chunk
        while len(self.buffer) >= 4:
            size = struct.unpack(">I", self.buffer[:4])[0]
            limit = MAX_HEADER_BYTES if len(self.frames) % 2 == 0 else MAX_BLOB_BYTES
            if size > limit:
                raise ProtocolError(f"a frame of {size} bytes, over the limit of {limit}")
            if len(self.buffer) < 4 + size:
                break
            self.frames.append(bytes(self.buffer[4:4 + size]))
            del self.buffer[:4 + size]
        return True

    def message(self, specs=None):
        """The next complete message as a dict, or None when not all of it has arrived."""
        if len(self.frames) < 2:
            return None
        header, blob = self.frames.pop(0), self.frames.pop(0)
        try:
            data = json.loads(header)
            tensors = load_tensors(blob) if blob else {}
        except (ValueError, RecursionError, UnicodeDecodeError, Exception) as err:  # noqa: BLE001 (any bad bytes)
            raise ProtocolError(f"an unreadable message ({type(err).__name__})") from None
        try:
            value = decode(data, tensors, specs)
        except RecursionError:
            raise ProtocolError("a message nested too deeply") from None
        if not isinstance(value, dict):
            raise ProtocolError("a message that is not a dict")
        return value
