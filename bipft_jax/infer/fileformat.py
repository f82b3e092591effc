"""Versioned on-disk container for a packed model: `manifest.json` + `tensors.safetensors`.

The manifest (JSON) records ``format`` and ``format_version``, the caller's fields (e.g.
``preset``, ``config``), one entry per tensor (``shape``, ``dtype``, and any caller metadata such as
``role`` = ``packed_signs`` / ``packed_mask`` / ``packed_zeros`` / ``scale`` / ``fp`` and the
logical ``k``), and for every data file its byte size and SHA-256. Loading checks, in order: the
manifest exists and parses, the version is known, each data file exists, has the recorded size
(else "truncated"), and has the recorded checksum (else "corrupt"); then that the tensors match
the manifest.

Version 2 adds an optional lossless codec for the float tensors (``compress=True``): their bytes
are byte-shuffled (all first bytes of the elements, then all second bytes, ...: the sign and
exponent bytes of similar floats are alike) and stored in one LZMA stream, ``floats.xz``; each
such tensor's manifest entry gets ``codec`` = ``"shuffle-xz"`` and its ``offset`` and ``nbytes``
in the decompressed stream. Sign words are random bits and stay uncompressed in the
safetensors file. Version 1 directories still load.

Version 3 adds sparse zero lists (:func:`masks_to_zeros`): a packed tensor whose exact zeros are
few stores them as ``<name>.zeros`` (role ``packed_zeros``, with ``k``): a sorted 1-D int32 array
(int64 past 2**31 entries) of the flat C-order positions of its sign-0 entries in the logical
shape ``signs.shape[:-1] + (k,)`` (``[rows, k]``, or ``[layers, rows, k]`` for a stacked
tensor), instead of the nonzero-mask plane ``<name>.mask`` (role ``packed_mask``). It is chosen
exactly when that list has fewer bytes than the plane (fewer zeros than the plane has words).
Loading rebuilds the identical plane (:func:`zeros_to_masks`). Version 1 and 2 files (mask
planes only) load unchanged; a version-2 reader refuses a version-3 file instead of misreading
it.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from bipft_jax.infer.packing import WORD_BITS, PackedSigns, num_words, pack_bits, unpack_bits

FORMAT_NAME = "bipft-packed"
FORMAT_VERSION = 4  # 4: the manifest carries its own hash (``manifest_sha256``)
READABLE_VERSIONS = (1, 2, 3, 4)
HASHED_FROM = 4
MANIFEST = "manifest.json"
TENSOR_FILE = "tensors.safetensors"
FLOAT_FILE = "floats.xz"
CODEC = "shuffle-xz"
_RESERVED = ("format", "format_version", "files", "tensors", "manifest_sha256")


class PackedFormatError(ValueError):
    """A packed-model directory is missing, corrupt, truncated or of an unknown version."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _shuffle(a: np.ndarray) -> bytes:
    """Byte planes of ``a``: byte 0 of every element, then byte 1, ..."""
    return np.ascontiguousarray(a).view(np.uint8).reshape(-1, a.dtype.itemsize).T.tobytes()


def _unshuffle(data: bytes, dtype: np.dtype, shape: list[int]) -> np.ndarray:
    planes = np.frombuffer(data, np.uint8).reshape(dtype.itemsize, -1)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(shape)


def manifest_digest(body: Mapping[str, Any]) -> str:
    """SHA-256 of the manifest without its ``manifest_sha256`` (canonical JSON, sorted keys)."""
    rest = {k: v for k, v in body.items() if k != "manifest_sha256"}
    canon = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def seal(body: Mapping[str, Any]) -> dict[str, Any]:
    """``body`` with its ``manifest_sha256`` set (what ``save_packed`` writes)."""
    return {**body, "manifest_sha256": manifest_digest(body)}


def save_safetensors(tensors: Mapping[str, np.ndarray], path: Path, **kw: Any) -> None:
    """`safetensors.numpy.save_file`, with the mode the umask gives (it writes 0600 otherwise)."""

    save_file(dict(tensors), str(path), **kw)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def save_packed(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    manifest: Mapping[str, Any],
    tensor_meta: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    compress: bool = False,
) -> Path:
    """Write ``arrays`` and a manifest into directory ``path`` (created; existing files replaced).

    ``manifest`` holds JSON-serializable caller fields (``preset``, ``config``, ...); it must not
    use the reserved keys ``format``, ``format_version``, ``files``, ``tensors``. ``tensor_meta``
    adds per-tensor JSON fields (``role``, ``k``, ...). ``compress`` stores the float tensors
    losslessly compressed (module docstring). Returns the directory path.
    """
    out = Path(path)
    clash = [k for k in _RESERVED if k in manifest]
    if clash:
        raise ValueError(f"manifest uses reserved keys {clash}")
    tensor_meta = dict(tensor_meta or {})
    unknown = sorted(set(tensor_meta) - set(arrays))
    if unknown:
        raise ValueError(f"tensor_meta names tensors that are not in arrays: {unknown}")
    out.mkdir(parents=True, exist_ok=True)
    host = {name: np.asarray(a).copy(order="C") for name, a in arrays.items()}
    tensors = {
        name: {"shape": list(a.shape), "dtype": a.dtype.name, **dict(tensor_meta.get(name, {}))}
        for name, a in sorted(host.items())
    }
    packed = [n for n in sorted(host) if compress and host[n].dtype.kind == "f"]
    offset, chunks = 0, []
    for name in packed:
        chunks.append(_shuffle(host.pop(name)))
        tensors[name].update(codec=CODEC, offset=offset, nbytes=len(chunks[-1]))
        offset += len(chunks[-1])
    for stale in (TENSOR_FILE, FLOAT_FILE):
        (out / stale).unlink(missing_ok=True)
    save_safetensors(host, out / TENSOR_FILE)
    files = {TENSOR_FILE: _file_record(out / TENSOR_FILE)}
    if packed:
        (out / FLOAT_FILE).write_bytes(lzma.compress(b"".join(chunks), preset=9))
        files[FLOAT_FILE] = _file_record(out / FLOAT_FILE)
    body = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **dict(manifest),
        "tensors": tensors,
        "files": files,
    }
    tmp = out / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(seal(body), indent=2, sort_keys=True) + "\n")
    tmp.replace(out / MANIFEST)
    return out


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and version-check ``<path>/manifest.json`` (no data files are read)."""
    mpath = Path(path) / MANIFEST
    if not Path(path).is_dir():
        raise PackedFormatError(f"packed model directory not found: {path}")
    if not mpath.is_file():
        raise PackedFormatError(f"missing manifest: {mpath}")
    try:
        body = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PackedFormatError(f"unreadable manifest {mpath}: {e}") from e
    if not isinstance(body, dict) or body.get("format") != FORMAT_NAME:
        raise PackedFormatError(f"{mpath} is not a {FORMAT_NAME} manifest")
    version = body.get("format_version")
    if version not in READABLE_VERSIONS:
        raise PackedFormatError(
            f"{mpath}: unknown format_version {version!r} (this code reads {READABLE_VERSIONS})"
        )
    if version >= HASHED_FROM and body.get("manifest_sha256") != manifest_digest(body):
        raise PackedFormatError(
            f"{mpath} was edited or is corrupt: its contents do not match its manifest_sha256 "
            "(re-export the model instead of editing the manifest)"
        )
    for key in ("files", "tensors"):
        if not isinstance(body.get(key), dict):
            raise PackedFormatError(f"{mpath}: missing or malformed '{key}'")
    return body


def verify_files(path: str | os.PathLike, body: Mapping[str, Any]) -> None:
    """Check every data file listed in the manifest for presence, size and SHA-256."""
    for name, rec in body["files"].items():
        f = Path(path) / name
        if not f.is_file():
            raise PackedFormatError(f"missing data file {f} (listed in the manifest)")
        size = f.stat().st_size
        if size != rec["bytes"]:
            kind = "truncated" if size < rec["bytes"] else "oversized"
            raise PackedFormatError(f"{kind} data file {f}: {size} bytes, expected {rec['bytes']}")
        digest = _sha256(f)
        if digest != rec["sha256"]:
            raise PackedFormatError(
                f"corrupt data file {f}: sha256 {digest} != manifest {rec['sha256']}"
            )


def load_packed(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a directory written by :func:`save_packed`: ``(arrays, manifest)``, fully verified."""
    body = read_manifest(path)
    verify_files(path, body)
    f = Path(path) / TENSOR_FILE
    try:
        arrays = load_file(str(f))
    except Exception as e:  # safetensors raises its own error types
        raise PackedFormatError(f"cannot parse {f}: {e}") from e
    arrays.update(_decompress_floats(Path(path), body))
    if set(arrays) != set(body["tensors"]):
        raise PackedFormatError(
            f"{f}: tensors {sorted(arrays)} do not match the manifest {sorted(body['tensors'])}"
        )
    for name, rec in body["tensors"].items():
        a = arrays[name]
        if list(a.shape) != rec["shape"] or a.dtype.name != rec["dtype"]:
            raise PackedFormatError(
                f"{f}: tensor {name!r} is {a.dtype.name}{list(a.shape)}, manifest says "
                f"{rec['dtype']}{rec['shape']}"
            )
    return arrays, body


def _decompress_floats(path: Path, body: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The tensors stored with the ``shuffle-xz`` codec (files already verified)."""
    coded = {n: r for n, r in body["tensors"].items() if r.get("codec") is not None}
    if not coded:
        return {}
    f = path / FLOAT_FILE
    if FLOAT_FILE not in body["files"]:
        raise PackedFormatError(f"{path / MANIFEST}: compressed tensors but no '{FLOAT_FILE}'")
    try:
        data = lzma.decompress(f.read_bytes())
    except lzma.LZMAError as e:
        raise PackedFormatError(f"cannot decompress {f}: {e}") from e
    out = {}
    for name, rec in coded.items():
        if rec["codec"] != CODEC:
            raise PackedFormatError(f"{f}: tensor {name!r} has unknown codec {rec['codec']!r}")
        dtype, start, size = np.dtype(rec["dtype"]), int(rec["offset"]), int(rec["nbytes"])
        if size != dtype.itemsize * math.prod(rec["shape"]) or start + size > len(data):
            raise PackedFormatError(f"{f}: tensor {name!r} does not fit the decompressed bytes")
        out[name] = _unshuffle(data[start : start + size], dtype, rec["shape"])
    return out


def packed_size_bytes(source: str | os.PathLike | Mapping[str, np.ndarray]) -> int:
    """Exact bytes: of all files in a packed directory (manifest included), or of the raw array
    buffers in a mapping (no container overhead)."""
    if isinstance(source, Mapping):
        return int(sum(np.asarray(a).nbytes for a in source.values()))
    body = read_manifest(source)
    files = [MANIFEST, *body["files"]]
    return int(sum((Path(source) / name).stat().st_size for name in files))


def packed_entries(
    name: str, packed: PackedSigns
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Arrays and ``tensor_meta`` for one packed tensor: ``<name>.signs`` (+ ``<name>.mask``; pass
    the result through :func:`masks_to_zeros` to store few zeros as a list)."""
    arrays = {f"{name}.signs": np.asarray(packed.signs, np.uint32)}
    meta: dict[str, dict[str, Any]] = {f"{name}.signs": {"role": "packed_signs", "k": packed.k}}
    if packed.mask is not None:
        arrays[f"{name}.mask"] = np.asarray(packed.mask, np.uint32)
        meta[f"{name}.mask"] = {"role": "packed_mask", "k": packed.k}
    return arrays, meta


def packed_from_entries(
    arrays: Mapping[str, np.ndarray], manifest: Mapping[str, Any], name: str
) -> PackedSigns:
    """Rebuild the :class:`PackedSigns` saved by :func:`packed_entries` under ``name`` (a
    ``<name>.zeros`` list is rebuilt into its mask plane)."""
    key = f"{name}.signs"
    rec = manifest["tensors"].get(key)
    if rec is None or rec.get("role") != "packed_signs" or "k" not in rec:
        raise PackedFormatError(f"no packed tensor {name!r} (expected '{key}' with role and k)")
    k = int(rec["k"])
    signs = arrays[key]
    if signs.dtype != np.uint32 or signs.shape[-1] != num_words(k):
        raise PackedFormatError(f"{key}: {signs.dtype}{list(signs.shape)} cannot hold k={k}")
    if f"{name}.zeros" in manifest["tensors"]:
        own = {n: r for n, r in manifest["tensors"].items() if n.startswith(f"{name}.")}
        arrays, _ = zeros_to_masks({n: arrays[n] for n in own if n in arrays}, own, "packed")
    mask = arrays.get(f"{name}.mask")
    if mask is not None and mask.shape != signs.shape:
        raise PackedFormatError(f"{name}.mask shape {mask.shape} != {key} shape {signs.shape}")
    return PackedSigns(signs=signs, mask=mask, k=k)


def zero_positions(mask: np.ndarray, k: int) -> np.ndarray:
    """Sorted flat positions, in the logical shape ``mask.shape[:-1] + (k,)``, of the 0 bits of a
    nonzero-mask plane (its sign-0 entries): int32, or int64 past 2**31 positions."""
    mask = np.asarray(mask, np.uint32)
    words = np.ascontiguousarray(mask).reshape(math.prod(mask.shape[:-1]), num_words(k))
    size = words.shape[0] * k
    rows = np.flatnonzero(np.bitwise_count(words).sum(axis=-1, dtype=np.int64) != k)
    r, c = np.nonzero(~unpack_bits(words[rows], k))
    dtype = np.int32 if size <= np.iinfo(np.int32).max + 1 else np.int64
    return (rows[r].astype(np.int64) * k + c).astype(dtype)


def mask_from_zeros(zeros: np.ndarray, lead_shape: tuple[int, ...], k: int) -> np.ndarray:
    """The nonzero-mask plane ``[*lead_shape, ceil(k/32)]`` with 0 bits at the flat positions
    ``zeros`` (checked by the caller) and padding bits past ``k`` 0: inverse of
    :func:`zero_positions`."""
    rows = math.prod(lead_shape)
    mask = np.tile(pack_bits(np.ones(k, bool)), (rows, 1))
    if zeros.size:
        r, c = np.divmod(zeros.astype(np.int64), k)
        bit = np.left_shift(np.uint32(1), (c % WORD_BITS).astype(np.uint32))
        np.bitwise_and.at(mask, (r, c // WORD_BITS), ~bit)
    return mask.reshape(*lead_shape, num_words(k))


def masks_to_zeros(
    arrays: Mapping[str, np.ndarray], records: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Replace each ``packed_mask`` entry ``<name>.mask`` by the zero list ``<name>.zeros`` (role
    ``packed_zeros``, same ``k`` and other fields) when the list has fewer bytes than the plane.

    ``records`` maps names to per-tensor metadata (``role``, ``k``, ...); shape and dtype fields,
    if present, are updated. Returns new ``(arrays, records)``; other entries are unchanged."""
    out, out_rec = dict(arrays), {n: dict(r) for n, r in records.items()}
    for name, rec in records.items():
        if rec.get("role") != "packed_mask" or not name.endswith(".mask"):
            continue
        zeros = zero_positions(arrays[name], int(rec["k"]))
        if zeros.nbytes >= np.asarray(arrays[name]).nbytes:
            continue
        base = name.removesuffix(".mask")
        del out[name], out_rec[name]
        out[f"{base}.zeros"] = zeros
        new = {**rec, "role": "packed_zeros"}
        if "shape" in rec or "dtype" in rec:
            new.update(shape=list(zeros.shape), dtype=zeros.dtype.name)
        out_rec[f"{base}.zeros"] = new
    return out, out_rec


def zeros_to_masks(
    arrays: Mapping[str, np.ndarray], records: Mapping[str, Mapping[str, Any]], where: str
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Inverse of :func:`masks_to_zeros`: each ``packed_zeros`` entry becomes the ``packed_mask``
    plane it stands for, identical to the one :func:`~bipft_jax.infer.packing.pack_matrix` makes.

    Raises :class:`PackedFormatError` naming the tensor (``where`` prefixes the message) for a
    list that is not a sorted 1-D int32/int64 array of distinct in-range positions, one with no
    ``<name>.signs`` of the same ``k`` (and ``layers``), or a tensor with both a mask plane and
    a zero list."""
    out, out_rec = dict(arrays), {n: dict(r) for n, r in records.items()}
    for name, rec in records.items():
        if rec.get("role") != "packed_zeros":
            continue
        base = name.removesuffix(".zeros")
        signs_rec = records.get(f"{base}.signs") or {}
        if not name.endswith(".zeros") or signs_rec.get("role") != "packed_signs":
            raise PackedFormatError(
                f"{where}: zero list {name!r} has no packed tensor '{base}.signs'"
            )
        if f"{base}.mask" in records:
            raise PackedFormatError(
                f"{where}: {base!r} has both a '.mask' plane and a '.zeros' list"
            )
        if name not in arrays or f"{base}.signs" not in arrays:
            raise PackedFormatError(f"{where}: {name!r} or its '.signs' is not stored")
        for field in ("k", "layers"):
            if rec.get(field) != signs_rec.get(field):
                raise PackedFormatError(
                    f"{where}: {name!r} has {field}={rec.get(field)!r}, its '.signs' "
                    f"{signs_rec.get(field)!r}"
                )
        k = rec.get("k")
        signs, zeros = np.asarray(arrays[f"{base}.signs"]), np.asarray(arrays[name])
        if not isinstance(k, int) or k < 0 or signs.ndim < 1 or signs.shape[-1] != num_words(k):
            raise PackedFormatError(
                f"{where}: '{base}.signs' {list(signs.shape)} cannot hold k={k}"
            )
        if zeros.dtype not in (np.int32, np.int64) or zeros.ndim != 1:
            raise PackedFormatError(
                f"{where}: {name!r} is {zeros.dtype.name}{list(zeros.shape)}, expected a 1-D "
                "int32/int64 list of positions"
            )
        size = math.prod(signs.shape[:-1]) * k
        if zeros.size and (zeros[0] < 0 or zeros[-1] >= size or np.any(np.diff(zeros) <= 0)):
            bad = zeros[(zeros < 0) | (zeros >= size)]
            what = f"position {int(bad[0])} out of range" if bad.size else "positions not sorted"
            raise PackedFormatError(
                f"{where}: {name!r}: {what} (distinct ascending positions in [0, {size}) "
                f"of the logical shape {[*signs.shape[:-1], k]})"
            )
        del out[name], out_rec[name]
        out[f"{base}.mask"] = mask_from_zeros(zeros, signs.shape[:-1], k)
        new = {**rec, "role": "packed_mask"}
        if "shape" in rec or "dtype" in rec:
            new.update(shape=list(signs.shape), dtype="uint32")
        out_rec[f"{base}.mask"] = new
    return out, out_rec
