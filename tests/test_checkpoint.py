"""Tests for gpunn.checkpoint: round trips, exact resumption, tamper refusal and atomic saves."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pathlib
import pickle
import stat
import subprocess
import sys
import textwrap
import warnings
from typing import Any

import numpy as np
import pytest
import safetensors
import safetensors.numpy

import gpunn
from gpunn import checkpoint as ck

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def make_layers() -> list[gpunn.Layer]:
    """One of every allow-listed layer kind, with non-default settings where there are any."""
    return [
        gpunn.Dense(6, 16, init="he"),
        gpunn.LeakyReLU(0.2),
        gpunn.Dense(16, 12),
        gpunn.Dropout(0.25),
        gpunn.Tanh(),
        gpunn.Dense(12, 8, init="glorot"),
        gpunn.Sigmoid(),
        gpunn.Dense(8, 10),
        gpunn.ReLU(),
        gpunn.Dense(10, 3),
    ]


def make_model(dtype: str = "float32", seed: int = 3, backend: Any = "numpy") -> gpunn.Sequential:
    return gpunn.Sequential(make_layers(), backend=backend, dtype=dtype, seed=seed)


def data(n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch: inputs x (n, 6), integer labels y (n,) in [0, 3)."""
    rng = np.random.default_rng(123)
    return rng.standard_normal((n, 6)), rng.integers(0, 3, size=n)


def train(model: gpunn.Sequential, opt: gpunn.Optimizer, steps: range) -> None:
    """Plain training loop over fixed mini-batches; the learning rate drops after step 4."""
    x, y = data()
    loss = gpunn.SoftmaxCrossEntropy()
    for t in steps:
        if t == 4:
            opt.lr *= 0.5  # a schedule: the checkpoint must keep the current lr
        rows = slice(8 * (t % 4), 8 * (t % 4) + 8)
        loss.forward(model.forward(x[rows]), y[rows])
        model.backward(loss.backward())
        opt.step(model)


def host(a: Any) -> np.ndarray:
    return a.get() if hasattr(a, "get") else np.asarray(a)


def same_bits(a: Any, b: Any) -> bool:
    a, b = host(a), host(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def read_checkpoint(path: pathlib.Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The raw tensors and metadata of a safetensors file."""
    with safetensors.safe_open(str(path), framework="np") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    return tensors, metadata


def rewrite(
    path: pathlib.Path,
    *,
    meta: dict[str, str | None] | None = None,
    tensors: dict[str, np.ndarray | None] | None = None,
    resign: bool = True,
) -> None:
    """Edit a checkpoint (None deletes an entry); ``resign`` recomputes both checksums, so the
    check under test, not the checksum, is what must catch the edit."""
    old_tensors, old_meta = read_checkpoint(path)
    for store, changes in ((old_meta, meta), (old_tensors, tensors)):
        for key, value in (changes or {}).items():
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value
    deleted = {k for k, v in (meta or {}).items() if v is None}
    if resign and "sha256" not in deleted:
        old_meta["sha256"] = ck.tensor_digest(old_tensors)
    if resign and "metadata_sha256" not in deleted:
        old_meta["metadata_sha256"] = ck.metadata_digest(old_meta)
    path.write_bytes(safetensors.numpy.save(old_tensors, metadata=old_meta))


def refuse(path: pathlib.Path, match: str) -> None:
    """Loading must raise a ValueError that names the file and matches ``match``."""
    with pytest.raises(ValueError, match=match) as info:
        ck.load_with_optimizer(path, backend="numpy")
    assert str(path) in str(info.value)


@pytest.fixture
def saved(tmp_path: pathlib.Path) -> pathlib.Path:
    """A valid checkpoint with a trained model and Adam state."""
    model, opt = make_model(), gpunn.Adam(lr=1e-2)
    train(model, opt, range(2))
    return ck.save(model, tmp_path / "model.safetensors", opt, epoch=1, step=2)


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_model_round_trip_is_exact(tmp_path: pathlib.Path, dtype: str) -> None:
    model = make_model(dtype)
    train(model, gpunn.SGD(lr=0.1), range(3))
    path = ck.save(model, str(tmp_path / "m.safetensors"))
    assert isinstance(path, pathlib.Path) and path.is_file()

    loaded = ck.load(path, backend="numpy")

    assert loaded.dtype == model.dtype and loaded.seed == model.seed
    assert [(type(a), a.config()) for a in loaded.layers] == [
        (type(b), b.config()) for b in model.layers
    ]
    assert loaded.layers[1].slope == 0.2 and loaded.layers[3].p == 0.25
    assert loaded.layers[0].init == "he" and loaded.layers[5].init == "glorot"
    assert same_bits(loaded.flat_params, model.flat_params)
    for key, value in model.params.items():
        assert same_bits(loaded.params[key], value), key
    x, _ = data()
    assert same_bits(loaded.predict(x), model.predict(x))


def test_info_round_trip_and_metadata_fields(tmp_path: pathlib.Path) -> None:
    model = make_model()
    extra = {"val_acc": 0.875, "note": "ünïcode", "history": [1, 2, 3]}
    path = ck.save(model, tmp_path / "m.safetensors", epoch=7, step=700, extra=extra)

    loaded, opt, info = ck.load_with_optimizer(path, backend="numpy")

    assert opt is None
    assert (info["epoch"], info["step"], info["extra"]) == (7, 700, extra)
    assert info["gpunn_version"] == gpunn.__version__
    tensors, meta = read_checkpoint(path)
    assert meta["format"] == "gpunn-checkpoint" and meta["format_version"] == "1"
    assert json.loads(meta["dtype"]) == "float32" and json.loads(meta["seed"]) == 3
    arch = json.loads(meta["architecture"])
    assert arch[1] == {"kind": "LeakyReLU", "config": {"slope": 0.2}}
    assert arch[3] == {"kind": "Dropout", "config": {"p": 0.25}}
    assert set(tensors) == {"model/" + k for k in model.params}


def test_checksums_follow_the_documented_definition(saved: pathlib.Path) -> None:
    """Recompute both digests from the docstring's definition, independently of the module."""
    tensors, meta = read_checkpoint(saved)
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = tensors[name]
        raw = a.astype(a.dtype.newbyteorder("<")).tobytes()
        dims = ",".join(map(str, a.shape))
        h.update(f"{name}\n{a.dtype.name}\n{dims}\n{len(raw)}\n".encode() + raw)
    assert meta["sha256"] == h.hexdigest()
    body = {k: v for k, v in meta.items() if k not in ("sha256", "metadata_sha256")}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert meta["metadata_sha256"] == hashlib.sha256(canon).hexdigest()


OPTIMIZERS = {
    "sgd": lambda: gpunn.SGD(lr=0.1),
    "sgd-nesterov": lambda: gpunn.SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: gpunn.Adam(lr=1e-2, beta1=0.8, beta2=0.99, eps=1e-7, weight_decay=1e-3),
    "adamw": lambda: gpunn.AdamW(lr=1e-2, weight_decay=0.05),
}


def test_tensor_digest_is_defined_on_little_endian_bytes() -> None:
    """The checksum is over little-endian bytes, whatever the byte order in memory: the same
    numbers held big-endian give the same digest (and other numbers another one)."""
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    big = a.astype(a.dtype.newbyteorder(">"))
    assert big.tobytes() != a.tobytes()
    assert ck.tensor_digest({"x": big}) == ck.tensor_digest({"x": a})
    assert ck.tensor_digest({"x": a[::-1]}) != ck.tensor_digest({"x": a})


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_round_trip(tmp_path: pathlib.Path, name: str) -> None:
    model, opt = make_model(), OPTIMIZERS[name]()
    train(model, opt, range(6))
    path = ck.save(model, tmp_path / "m.safetensors", opt)

    _, loaded, _ = ck.load_with_optimizer(path, backend="numpy")

    assert type(loaded) is type(opt)
    assert loaded.hyperparams() == opt.hyperparams()
    assert loaded.lr == opt.lr  # the scheduled value, not the constructor's
    assert loaded.step_count == opt.step_count == 6
    assert set(loaded.state) == set(opt.state) == set(opt.state_names)
    for key, value in opt.state.items():
        assert same_bits(loaded.state[key], value), key


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_resume_is_bitwise_identical_to_an_uninterrupted_run(
    tmp_path: pathlib.Path, name: str, dtype: str
) -> None:
    """Train 8 steps straight vs. 3 steps, save, load, 5 more: the weights match bit for bit.

    The model has Dropout, so the masks drawn after resuming must match too.
    """
    straight, opt = make_model(dtype), OPTIMIZERS[name]()
    train(straight, opt, range(8))

    first, opt1 = make_model(dtype), OPTIMIZERS[name]()
    train(first, opt1, range(3))
    path = ck.save(first, tmp_path / "m.safetensors", opt1, step=3)
    del first, opt1
    resumed, opt2, info = ck.load_with_optimizer(path, backend="numpy")
    train(resumed, opt2, range(info["step"], 8))

    assert same_bits(resumed.flat_params, straight.flat_params)
    assert opt2.step_count == opt.step_count
    for key, value in opt.state.items():
        assert same_bits(opt2.state[key], value), key


def test_optimizer_saved_before_its_first_step(tmp_path: pathlib.Path) -> None:
    model = make_model()
    path = ck.save(model, tmp_path / "m.safetensors", gpunn.Adam(lr=3e-3))
    _, opt, _ = ck.load_with_optimizer(path, backend="numpy")
    assert isinstance(opt, gpunn.Adam) and opt.step_count == 0 and opt.state == {}
    assert opt.lr == 3e-3


def test_cross_backend_load(tmp_path: pathlib.Path, backend: gpunn.Backend) -> None:
    model, opt = make_model(backend="numpy"), gpunn.Adam(lr=1e-2)
    train(model, opt, range(3))
    path = ck.save(model, tmp_path / "m.safetensors", opt)

    loaded, opt2, _ = ck.load_with_optimizer(path, backend=backend)

    assert loaded.backend == backend
    assert same_bits(loaded.flat_params, model.flat_params)
    x, _ = data()
    np.testing.assert_allclose(host(loaded.predict(x)), model.predict(x), rtol=1e-5, atol=1e-6)
    train(loaded, opt2, range(3, 4))  # the host state moves to the device and training goes on
    assert np.isfinite(host(loaded.flat_params)).all()
    # and back: a model on this backend saves and loads on NumPy
    again = ck.load(ck.save(loaded, tmp_path / "back.safetensors"), backend="numpy")
    assert same_bits(again.flat_params, loaded.flat_params)


def test_default_backend_follows_gpunn_auto_choice(
    saved: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPUNN_BACKEND", "numpy")
    assert ck.load(saved).backend == gpunn.get_backend("numpy")
    monkeypatch.delenv("GPUNN_BACKEND")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "auto" may warn that it fell back to NumPy
        assert ck.load(saved).backend == gpunn.get_backend(None)


# --------------------------------------------------------------------------------------------
# Refusing damaged, foreign or malicious files
# --------------------------------------------------------------------------------------------


def test_missing_file_is_an_oserror_naming_it(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope.safetensors"
    with pytest.raises(OSError, match="nope.safetensors"):
        ck.load(path, backend="numpy")


def test_truncated_files_are_refused(saved: pathlib.Path) -> None:
    data_bytes = saved.read_bytes()
    header_end = 8 + int.from_bytes(data_bytes[:8], "little")
    cuts = [0, 1, 7, 8, 9, header_end // 2, header_end - 1, header_end, header_end + 5]
    cuts += [(header_end + len(data_bytes)) // 2, len(data_bytes) - 4, len(data_bytes) - 1]
    for cut in cuts:
        saved.write_bytes(data_bytes[:cut])
        refuse(saved, "empty|truncated|not a safetensors|not a gpunn")


def test_each_kind_of_truncation_gets_its_own_message(saved: pathlib.Path) -> None:
    """Cut at each place, the file is refused by the first check that can see the damage."""
    data_bytes = saved.read_bytes()
    n = int.from_bytes(data_bytes[:8], "little")
    expected = {
        0: "the file is empty",
        1: "truncated: 1 bytes, too short for a safetensors header",
        7: "truncated: 7 bytes, too short",
        8: f"not a safetensors file or truncated: header length {n}, file size 8$",
        9: f"header length {n}, file size 9$",
        8 + n - 1: f"header length {n}, file size {8 + n - 1}$",
        8 + n: "not a valid safetensors file",  # the header is whole, the tensors are cut
        len(data_bytes) - 1: "not a valid safetensors file",
    }
    for cut, message in expected.items():
        saved.write_bytes(data_bytes[:cut])
        refuse(saved, message)


def test_a_header_that_is_not_json_or_has_non_string_metadata_is_refused(
    saved: pathlib.Path,
) -> None:
    data_bytes = saved.read_bytes()
    n = int.from_bytes(data_bytes[:8], "little")
    header, body = json.loads(data_bytes[8 : 8 + n]), data_bytes[8 + n :]

    def write(text: bytes) -> None:
        saved.write_bytes(len(text).to_bytes(8, "little") + text + body)

    write(b"{" + b" " * (n - 1))
    refuse(saved, "not a safetensors file: unreadable header")
    write(b"\xff" * n)
    refuse(saved, "not a safetensors file: unreadable header")
    for value in (1, None, ["1"]):
        header["__metadata__"]["format_version"] = value
        write(json.dumps(header).encode())
        refuse(saved, "metadata values must be strings")


def test_trailing_bytes_are_refused(saved: pathlib.Path) -> None:
    saved.write_bytes(saved.read_bytes() + b"\0\0\0\0")
    refuse(saved, "not a valid safetensors file")


@pytest.mark.parametrize(
    "content",
    [
        b"hello, this is not a checkpoint\n" * 10,
        np.random.default_rng(0).bytes(4096),
        b'\x08\x00\x00\x00\x00\x00\x00\x00{"a": 1}',
        b"\x02\x00\x00\x00\x00\x00\x00\x00[]",
    ],
    ids=["text", "random", "foreign-header", "header-not-object"],
)
def test_garbage_is_refused(tmp_path: pathlib.Path, content: bytes) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(content)
    refuse(path, "not a safetensors|truncated|not a gpunn")


def test_flipped_byte_in_tensor_data_fails_the_checksum(saved: pathlib.Path) -> None:
    original = saved.read_bytes()
    header_end = 8 + int.from_bytes(original[:8], "little")
    for pos in (header_end, (header_end + len(original)) // 2, len(original) - 1):
        damaged = bytearray(original)
        damaged[pos] ^= 0x10
        saved.write_bytes(bytes(damaged))
        refuse(saved, "tensor checksum mismatch")


def test_replaced_tensor_without_resigning_fails_the_checksum(saved: pathlib.Path) -> None:
    tensors, _ = read_checkpoint(saved)
    rewrite(saved, tensors={"model/0.W": tensors["model/0.W"] * 2}, resign=False)
    refuse(saved, "tensor checksum mismatch")


def test_edited_metadata_without_resigning_fails_the_checksum(saved: pathlib.Path) -> None:
    arch = json.loads(read_checkpoint(saved)[1]["architecture"])
    arch[1]["config"]["slope"] = 0.3  # still a valid architecture, silently different model
    rewrite(saved, meta={"architecture": json.dumps(arch)}, resign=False)
    refuse(saved, "metadata checksum mismatch")


def test_read_info_refuses_an_unknown_layer_or_optimizer_kind(
    saved: pathlib.Path,
) -> None:
    """read_info checks what it reports as load does: a layer kind or an optimizer kind that
    load would refuse is refused here too, even with valid checksums; and so is an edit that
    the checksum does not cover."""
    arch = json.loads(read_checkpoint(saved)[1]["architecture"])
    good_arch = json.dumps(arch)
    arch[1] = {"kind": "os.system", "config": {}}
    rewrite(saved, meta={"architecture": json.dumps(arch)})
    with pytest.raises(ValueError, match="unknown layer kind"):
        ck.read_info(saved)
    rewrite(saved, meta={"architecture": good_arch})
    opt = json.loads(read_checkpoint(saved)[1]["optimizer"])
    opt["kind"] = "os.system"
    rewrite(saved, meta={"optimizer": json.dumps(opt)})
    with pytest.raises(ValueError, match="unknown optimizer kind"):
        ck.read_info(saved)
    opt["kind"] = "Adam"
    opt["step"] += 1  # a valid entry, edited without re-signing: the checksum catches it
    rewrite(saved, meta={"optimizer": json.dumps(opt)}, resign=False)
    with pytest.raises(ValueError, match="metadata checksum mismatch"):
        ck.read_info(saved)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[]", "'input_shape' must be null or positive sizes"),
        ("[0]", "'input_shape' must be null or positive sizes"),
        ("[6, -1]", "'input_shape' must be null or positive sizes"),
        ("[2.5]", "'input_shape' must be null or positive sizes"),
        ('"6"', "'input_shape' must be null or positive sizes"),
        ("[6", "metadata 'input_shape' is not valid JSON"),
    ],
)
def test_a_bad_input_shape_entry_is_refused(saved: pathlib.Path, text: str, match: str) -> None:
    rewrite(saved, meta={"input_shape": text})
    refuse(saved, match)


@pytest.mark.parametrize(
    ("text", "shape"), [("[1]", [1]), ("[3, 1, 2]", [3, 1, 2]), ("null", None)]
)
def test_input_shape_entries_of_positive_sizes_or_null_are_read(
    saved: pathlib.Path, text: str, shape: list[int] | None
) -> None:
    rewrite(saved, meta={"input_shape": text})
    assert ck.read_info(saved)["input_shape"] == shape


@pytest.mark.parametrize("kind", ["os.system", "Layer", "Sequential", "__import__", "dense"])
def test_unknown_layer_kind_is_refused(saved: pathlib.Path, kind: str) -> None:
    arch = json.loads(read_checkpoint(saved)[1]["architecture"])
    arch[1] = {"kind": kind, "config": {"slope": 0.2}}
    rewrite(saved, meta={"architecture": json.dumps(arch)})
    refuse(saved, "unknown layer kind")


def test_invalid_layer_config_is_refused(saved: pathlib.Path) -> None:
    arch = json.loads(read_checkpoint(saved)[1]["architecture"])
    arch[0]["config"]["evil"] = 1
    rewrite(saved, meta={"architecture": json.dumps(arch)})
    refuse(saved, r"layer 0 \(Dense\) has an invalid config")
    for config in ([6, 16], "6,16", None):
        arch[0]["config"] = config
        rewrite(saved, meta={"architecture": json.dumps(arch)})
        refuse(saved, r"layer 0 \(Dense\) config must be a JSON object")


@pytest.mark.parametrize("where", [0, 1, 2])
def test_rng_states_are_keyed_by_the_index_of_their_dropout_layer(
    tmp_path: pathlib.Path, where: int
) -> None:
    """A Dropout layer at any index (0 included) gets its generator back; a key that is not
    the index of a Dropout layer of this model (past the end, negative, not a number) is
    refused, whatever layer happens to sit at the index a bad key might be read as."""
    layers: list[gpunn.Layer] = [gpunn.Dense(4, 4), gpunn.Dense(4, 4)]
    layers.insert(where, gpunn.Dropout(0.5))
    model = gpunn.Sequential(layers, backend="numpy", seed=1)
    x = np.ones((3, 4))
    model.forward(x)  # the generator moves on from its seeded start
    path = ck.save(model, tmp_path / "m.safetensors")
    loaded = ck.load(path, backend="numpy")
    assert same_bits(loaded.forward(x), model.forward(x))  # the next mask is the same one
    state = json.loads(read_checkpoint(path)[1]["rng"])[str(where)]
    for key in ("3", "-1", "x", "1.0", f" {where}"):
        rewrite(path, meta={"rng": json.dumps({key: state})})
        refuse(path, f"rng state for layer {key!r}, which is not a Dropout layer")


@pytest.mark.parametrize(
    ("version", "match"), [("999", "newer"), ("2", "newer"), ("abc", "invalid"), ("0", "invalid")]
)
def test_unknown_format_version_is_refused(saved: pathlib.Path, version: str, match: str) -> None:
    rewrite(saved, meta={"format_version": version})
    refuse(saved, match)


@pytest.mark.parametrize(
    "key",
    ["architecture", "dtype", "optimizer", "rng", "sha256", "metadata_sha256", "format_version"],
)
def test_missing_metadata_key_is_refused(saved: pathlib.Path, key: str) -> None:
    rewrite(saved, meta={key: None})
    refuse(saved, "missing|format_version")


@pytest.mark.parametrize("key", ["architecture", "optimizer", "seed", "extra"])
def test_bad_json_in_metadata_is_refused(saved: pathlib.Path, key: str) -> None:
    rewrite(saved, meta={key: '[{"kind": "Dense",'})
    refuse(saved, f"'{key}' is not valid JSON")


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("dtype", '"float16"', "dtype"),
        ("seed", '"0"', "seed"),
        ("epoch", "1.5", "epoch"),
        ("architecture", "[]", "non-empty"),
        ("architecture", '[{"kind": "ReLU"}]', "entry 0"),
        ("rng", "[]", "'rng' must be a JSON object"),
        ("rng", '{"0": {}}', "not a Dropout layer"),
        ("rng", '{"3": {"bit_generator": "MT19937", "state": {}}}', "invalid rng state"),
        ("rng", '{"3": {"bit_generator": "PCG64", "state": {"state": -1}}}', "invalid rng"),
        ("optimizer", '{"kind": "Adam", "hyperparams": {}, "step": -1}', "step"),
    ],
)
def test_wrong_metadata_values_are_refused(
    saved: pathlib.Path, key: str, value: str, match: str
) -> None:
    rewrite(saved, meta={key: value})
    refuse(saved, match)


def test_unknown_optimizer_kind_is_refused(saved: pathlib.Path) -> None:
    opt = json.loads(read_checkpoint(saved)[1]["optimizer"])
    opt["kind"] = "torch.optim.Adam"
    rewrite(saved, meta={"optimizer": json.dumps(opt)})
    refuse(saved, "unknown optimizer kind")


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ([], r"'optimizer' must be null or \{kind, hyperparams, step\}"),
        ({"kind": "Adam", "step": 2}, r"'optimizer' must be null or \{kind, hyperparams, step\}"),
        ({"kind": "Adam", "hyperparams": [], "step": 2}, "hyperparams must be a JSON object"),
        ({"kind": "Adam", "hyperparams": "lr=1", "step": 2}, "hyperparams must be a JSON object"),
    ],
    ids=["a-list", "no-hyperparams", "hyperparams-list", "hyperparams-string"],
)
def test_malformed_optimizer_metadata_is_refused(
    saved: pathlib.Path, entry: Any, match: str
) -> None:
    rewrite(saved, meta={"optimizer": json.dumps(entry)})
    refuse(saved, match)


def test_an_optimizer_that_has_stepped_once_needs_all_its_state(tmp_path: pathlib.Path) -> None:
    """After one step the moments exist: a file without them is incomplete, not "fresh"."""
    model, opt = make_model(), gpunn.Adam(lr=1e-2)
    train(model, opt, range(1))
    path = ck.save(model, tmp_path / "one-step.safetensors", opt)
    assert ck.load_with_optimizer(path, backend="numpy")[1].step_count == 1
    rewrite(path, tensors={"optim/exp_avg_sq": None})
    refuse(path, r"Adam state tensors \['exp_avg'\] do not match .* after 1 steps")


def test_rng_state_entries_must_be_objects_and_fit_the_generator(saved: pathlib.Path) -> None:
    _, meta = read_checkpoint(saved)
    state = json.loads(meta["rng"])["3"]
    rewrite(saved, meta={"rng": json.dumps({"3": [state]})})
    refuse(saved, "rng state for layer 3 must be a JSON object")
    rewrite(saved, meta={"rng": json.dumps({"3": state | {"bit_generator": "MT19937"}})})
    refuse(saved, "invalid rng state for layer 3")


def test_rng_states_are_skipped_for_generators_that_are_not_numpy_s() -> None:
    """Masks drawn on CuPy are not portable: a NumPy state saved for a Dropout layer is not
    forced onto another kind of generator (the CuPy one, here a stand-in)."""

    class OtherGenerator:
        """Has no NumPy bit generator to set."""

    model = gpunn.Sequential([gpunn.Dropout(0.5), gpunn.Dense(3, 2)], backend="numpy")
    state = model.layers[0].rng.bit_generator.state
    other = model.layers[0].rng = OtherGenerator()
    ck._Reader(pathlib.Path("m.safetensors")).restore_rng(model, {"0": state})
    assert model.layers[0].rng is other and not vars(other)


def test_only_dropout_layers_numpy_generators_are_saved() -> None:
    """A Dropout layer drawing from another kind of generator has no state saved (no error);
    another layer that happens to carry a NumPy generator is not a Dropout: not saved either."""

    class OtherGenerator:
        """Has no NumPy bit generator to read."""

    model = gpunn.Sequential(
        [gpunn.Dropout(0.5), gpunn.Dense(3, 2), gpunn.Dropout(0.5)], backend="numpy"
    )
    model.layers[0].rng = OtherGenerator()
    model.layers[1].rng = np.random.default_rng(0)
    states = ck._rng_states(model)
    assert list(states) == ["2"]
    assert states["2"] == model.layers[2].rng.bit_generator.state


def test_bad_optimizer_hyperparams_are_refused(saved: pathlib.Path) -> None:
    opt = json.loads(read_checkpoint(saved)[1]["optimizer"])
    opt["hyperparams"]["lr"] = -1.0
    rewrite(saved, meta={"optimizer": json.dumps(opt)})
    refuse(saved, "invalid Adam hyperparameters")


def test_tensor_shape_mismatch_is_refused(saved: pathlib.Path) -> None:
    tensors, _ = read_checkpoint(saved)
    rewrite(saved, tensors={"model/0.W": np.ascontiguousarray(tensors["model/0.W"].T)})
    refuse(saved, r"model/0.W has shape \(16, 6\), the architecture needs \(6, 16\)")


def test_tensor_dtype_mismatch_is_refused(saved: pathlib.Path) -> None:
    tensors, _ = read_checkpoint(saved)
    rewrite(saved, tensors={"model/0.b": tensors["model/0.b"].astype(np.float64)})
    refuse(saved, "model/0.b is float64, expected float32")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model/10.W": np.zeros((3, 3), np.float32)}, "unexpected"),
        ({"model/0.W2": np.zeros((6, 16), np.float32)}, "unexpected"),
        ({"payload": np.zeros(4, np.uint8)}, "unexpected tensors"),
        ({"optim/evil": np.zeros(4, np.float32)}, "state tensors"),
        ({"model/0.b": None}, "missing"),
        ({"optim/exp_avg": None}, "state tensors"),
        ({"optim/exp_avg": np.zeros(5, np.float32)}, "optim/exp_avg is float32 \\(5,\\)"),
    ],
    ids=["extra-param", "extra-name", "foreign", "extra-state", "missing", "missing-state", "len"],
)
def test_missing_or_extra_tensors_are_refused(
    saved: pathlib.Path, changes: dict[str, Any], match: str
) -> None:
    rewrite(saved, tensors=changes)
    refuse(saved, match)


@pytest.mark.parametrize("name", ["exp_avg", "exp_avg_sq"])
def test_optimizer_state_of_another_dtype_is_refused(saved: pathlib.Path, name: str) -> None:
    """float64 Adam state for a float32 model would silently change the update's precision
    (and break a bitwise resume): refused like a parameter of the wrong dtype."""
    tensors, _ = read_checkpoint(saved)
    rewrite(saved, tensors={f"optim/{name}": tensors[f"optim/{name}"].astype(np.float64)})
    refuse(saved, rf"optim/{name} is float64 \(\d+,\), the model needs float32")


def test_a_header_longer_than_the_limit_is_refused_before_it_is_parsed(
    saved: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The declared header length is bounded (MAX_HEADER, safetensors' own limit) before any
    of it is read, so a file cannot make the loader parse an arbitrarily large header."""
    length = int.from_bytes(saved.read_bytes()[:8], "little")
    monkeypatch.setattr(ck, "MAX_HEADER", length - 1)
    refuse(saved, f"header length {length}")
    monkeypatch.setattr(ck, "MAX_HEADER", length)
    ck.load_with_optimizer(saved, backend="numpy")  # at the limit: read as usual


def test_a_header_over_safetensors_limit_is_refused_by_its_length_alone(
    tmp_path: pathlib.Path,
) -> None:
    """MAX_HEADER is safetensors' own bound (100,000,000 bytes): a header one byte longer is
    refused from the 8-byte length field, before anything of it is parsed."""
    path = tmp_path / "huge.safetensors"

    def huge(n: int) -> None:  # a header of n zero bytes (not JSON), and 8 bytes of data
        with open(path, "wb") as f:
            f.write(n.to_bytes(8, "little"))
            f.truncate(8 + n + 8)  # sparse: no disk space used

    huge(ck.MAX_HEADER)  # at the bound safetensors reads the header (and finds no JSON)
    with pytest.raises(safetensors.SafetensorError, match="invalid JSON in header"):
        safetensors.numpy.load(path.read_bytes())
    n = ck.MAX_HEADER + 1
    huge(n)
    with pytest.raises(safetensors.SafetensorError, match="header too large"):
        safetensors.numpy.load(path.read_bytes())
    refuse(path, f"header length {n}, file size {8 + n + 8}")


def test_an_architecture_whose_widths_do_not_chain_is_refused(saved: pathlib.Path) -> None:
    """Each Dense layer's tensors match its own config, but the second expects 12 inputs where
    the first gives 16: the model cannot be built, and loading says so."""
    arch = [
        {"kind": "Dense", "config": {"in_features": 6, "out_features": 16, "init": None}},
        {"kind": "Dense", "config": {"in_features": 12, "out_features": 3, "init": None}},
    ]
    tensors, _ = read_checkpoint(saved)
    changes: dict[str, np.ndarray | None] = {name: None for name in tensors}
    changes |= {
        "model/0.W": np.zeros((6, 16), np.float32),
        "model/0.b": np.zeros(16, np.float32),
        "model/1.W": np.zeros((12, 3), np.float32),
        "model/1.b": np.zeros(3, np.float32),
    }
    rewrite(saved, meta={"architecture": json.dumps(arch), "optimizer": "null"}, tensors=changes)
    refuse(saved, "cannot build the model: layer 1 .* expects 12 inputs but gets 16")


def test_optimizer_tensors_without_optimizer_metadata_are_refused(saved: pathlib.Path) -> None:
    rewrite(saved, meta={"optimizer": "null"})
    refuse(saved, "no optimizer metadata")


@pytest.mark.parametrize("metadata", [None, {"format": "something-else"}, {"format_version": "1"}])
def test_plain_safetensors_file_is_not_a_checkpoint(
    tmp_path: pathlib.Path, metadata: dict[str, str] | None
) -> None:
    path = tmp_path / "plain.safetensors"
    path.write_bytes(safetensors.numpy.save({"weight": np.ones((2, 2))}, metadata=metadata))
    refuse(path, "not a gpunn checkpoint")


class _CreatesMarker:
    """Unpickling this opens (creates) a file: proof that something was unpickled."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_pickle_renamed_to_safetensors_is_never_unpickled(
    tmp_path: pathlib.Path, protocol: int
) -> None:
    marker = tmp_path / "UNPICKLED"
    payload = pickle.dumps({"model": _CreatesMarker(marker)}, protocol=protocol)
    path = tmp_path / "evil.safetensors"
    path.write_bytes(payload)

    refuse(path, "not a safetensors|truncated")
    with pytest.raises(ValueError):
        ck.load(path, backend="numpy")
    assert not marker.exists()

    pickle.loads(payload)  # the payload is live: unpickling it does create the marker
    assert marker.exists()


# --------------------------------------------------------------------------------------------
# Saving safely
# --------------------------------------------------------------------------------------------


def temp_files(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


@pytest.mark.parametrize("where", ["param", "optim"])
def test_non_finite_weights_are_refused_and_the_old_file_kept(
    saved: pathlib.Path, where: str
) -> None:
    before = saved.read_bytes()
    model, opt = make_model(), gpunn.Adam(lr=1e-2)
    train(model, opt, range(2))
    if where == "param":
        model.params["2.W"][1, 1] = np.nan
        model.params["2.W"][0, 3] = -np.inf
        what = r"parameter 2.W has 2 non-finite value"
    else:
        opt.state["exp_avg_sq"][0] = np.inf
        what = r"optimizer state exp_avg_sq has 1 non-finite value"

    with pytest.raises(ValueError, match=what):
        ck.save(model, saved, opt)

    assert saved.read_bytes() == before
    assert temp_files(saved.parent) == []


@pytest.mark.parametrize("value", [1.5, True, "3", 2.0])
@pytest.mark.parametrize("name", ["epoch", "step"])
def test_epoch_and_step_must_be_ints(saved: pathlib.Path, name: str, value: Any) -> None:
    before = saved.read_bytes()
    with pytest.raises(ValueError, match=f"{name} must be an int or None, got {value!r}"):
        ck.save(make_model(), saved, **{name: value})
    assert saved.read_bytes() == before


def test_an_optimizer_outside_the_allow_list_is_not_saved(saved: pathlib.Path) -> None:
    """A subclass of an allowed optimizer is another optimizer: loading it as its base class
    would silently change the update rule."""

    class MyAdam(gpunn.Adam):
        pass

    before = saved.read_bytes()
    model, opt = make_model(), MyAdam(lr=1e-2)
    train(model, opt, range(1))
    with pytest.raises(ValueError, match="cannot save optimizer MyAdam"):
        ck.save(model, saved, opt)
    assert saved.read_bytes() == before


@pytest.mark.parametrize("extra", [{"x": float("nan")}, {"x": object()}])
def test_non_json_extra_is_refused(saved: pathlib.Path, extra: Any) -> None:
    before = saved.read_bytes()
    with pytest.raises(ValueError, match="extra"):
        ck.save(make_model(), saved, extra=extra)
    assert saved.read_bytes() == before


def test_layers_outside_the_allow_list_are_not_saved(tmp_path: pathlib.Path) -> None:
    class MyDense(gpunn.Dense):
        pass  # same kind string, different class: would not load back as itself

    model = gpunn.Sequential([MyDense(2, 2)], backend="numpy")
    with pytest.raises(ValueError, match="cannot save layer 0"):
        ck.save(model, tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fails", ["fsync", "replace"])
def test_failed_write_removes_the_temp_file_and_keeps_the_old_one(
    saved: pathlib.Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    before = saved.read_bytes()

    def broken(*args: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, fails, broken)
    with pytest.raises(OSError, match="No space"):
        ck.save(make_model(seed=9), saved)
    monkeypatch.undo()

    assert saved.read_bytes() == before
    assert temp_files(saved.parent) == []


@pytest.mark.parametrize(
    ("error", "errno"),
    [
        (OSError(28, "No space left on device"), 28),
        (OSError("no errno"), None),
        (KeyboardInterrupt(), None),
    ],
)
def test_an_error_while_writing_names_the_users_path_or_passes_through(
    saved: pathlib.Path, monkeypatch: pytest.MonkeyPatch, error: BaseException, errno: int | None
) -> None:
    """An OSError with an errno is raised again naming the user's path (not the temporary
    file); one without an errno, and anything else (Ctrl-C), passes through unchanged. The
    temporary file goes either way."""

    def broken(*args: Any) -> None:
        raise error

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(type(error)) as info:
        ck.save(make_model(seed=9), saved)
    monkeypatch.undo()
    if errno is not None:
        assert info.value is not error and info.value.errno == errno
        assert info.value.filename == str(saved)
    else:
        assert info.value is error
    assert temp_files(saved.parent) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX directories can be fsync'ed")
def test_the_directory_is_fsynced_after_the_rename(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename is only durable once the directory entry is on disk: after os.replace the
    directory itself is fsync'ed (the file's data was fsync'ed before the rename)."""
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append("replace")
        real_replace(src, dst)

    sizes: list[int] = []
    real_fsync_file = fsync

    def fsync_recording_size(fd: int) -> None:
        sizes.append(os.fstat(fd).st_size)  # what the disk is asked to keep: all of it
        real_fsync_file(fd)

    monkeypatch.setattr(os, "fsync", fsync_recording_size)
    monkeypatch.setattr(os, "replace", replace)
    tiny = gpunn.Sequential([gpunn.Dense(1, 1)], backend="numpy")  # fits in a write buffer
    path = ck.save(tiny, tmp_path / "m.safetensors")
    assert path.stat().st_size < io.DEFAULT_BUFFER_SIZE
    assert events == ["fsync file", "replace", "fsync dir"]
    assert sizes[0] == path.stat().st_size  # flushed before the fsync, not at close


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_saving_leaves_no_file_descriptor_open_and_the_umask_as_it_was(
    tmp_path: pathlib.Path,
) -> None:
    model = make_model()
    ck.save(model, tmp_path / "warm-up.safetensors")  # first-call imports open files of their own
    open_before = len(os.listdir("/proc/self/fd"))
    mask = os.umask(0o027)
    try:
        for i in range(3):
            ck.save(model, tmp_path / f"m{i}.safetensors")  # new files: the umask is read
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(mask)
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_a_failed_write_names_the_users_path_not_the_temp_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(tmp_path / ".m.st.tmp-x1y2"))

    monkeypatch.setattr(ck.tempfile, "mkstemp", refused)
    with pytest.raises(PermissionError) as info:
        ck.save(make_model(), tmp_path / "m.st")
    assert "m.st" in str(info.value) and ".tmp-" not in str(info.value)
    assert info.value.filename == str(tmp_path / "m.st")


# --------------------------------------------------------------------------------------------
# The optional data entry: where the training data came from
# --------------------------------------------------------------------------------------------

DATA = {
    "dataset": None,
    "file": "/data/train.csv",
    "sha256": "ab" * 32,
    "samples": None,
    "val": 0.1,
    "test": 0.2,
    "seed": 5,
    "task": "classification",
    "classes": 3,
}


def test_the_data_entry_round_trips_and_is_covered_by_the_checksum(tmp_path: pathlib.Path) -> None:
    path = ck.save(make_model(), tmp_path / "m.st", data=DATA)
    assert ck.load_with_optimizer(path, backend="numpy")[2]["data"] == DATA
    assert ck.read_info(path)["data"] == DATA
    assert json.loads(read_checkpoint(path)[1]["data"]) == DATA
    edited = json.dumps({**DATA, "seed": 6}, sort_keys=True)
    rewrite(path, meta={"data": edited}, resign=False)
    refuse(path, "metadata checksum mismatch")


def test_the_same_content_gives_the_same_metadata_whatever_the_key_order(
    tmp_path: pathlib.Path,
) -> None:
    """Metadata JSON is written with sorted keys: the same extra entries in another order give
    the same metadata strings and checksum (safetensors itself may order the header's entries
    differently from file to file, so the bytes are not compared)."""
    model = make_model()
    a = ck.save(model, tmp_path / "a.st", extra={"b": 1, "a": {"y": 2, "x": 3}})
    b = ck.save(model, tmp_path / "b.st", extra={"a": {"x": 3, "y": 2}, "b": 1})
    assert read_checkpoint(a)[1] == read_checkpoint(b)[1]
    assert read_checkpoint(a)[1]["extra"] == '{"a": {"x": 3, "y": 2}, "b": 1}'


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("val", "0.1", "'val' must be float, got '0.1'"),
        ("val", True, "'val' must be float, got True"),
        ("file", 5, "'file' must be str or null"),
        ("task", ["classification"], "'task' must be str"),
    ],
)
def test_data_entry_values_of_the_wrong_json_type_are_refused(
    key: str, value: Any, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        ck.check_data({**DATA, key: value})


def test_a_data_entry_of_the_wrong_shape_is_named_in_the_message() -> None:
    """An object with other keys lists the keys it has; anything else is named by its type."""
    with pytest.raises(ValueError, match=r"got \['code', 'dataset'\]$"):
        ck.check_data({"dataset": "digits", "code": "import os"})
    for value, name in (([1, 2], "list"), (5, "int"), ("digits", "str")):
        with pytest.raises(ValueError, match=f"got {name}$"):
            ck.check_data(value)


def test_data_entry_bounds_fractions_from_0_and_counts_from_1() -> None:
    """val and test are fractions in [0, 1): 0 (no split) is fine, 1 is not; samples and
    classes are positive: 1 is fine."""
    for key in ("val", "test"):
        assert ck.check_data({**DATA, key: 0.0})[key] == 0.0
        with pytest.raises(ValueError, match=f"data '{key}' must be a fraction in \\[0, 1\\)"):
            ck.check_data({**DATA, key: 1.0})
    for key in ("samples", "classes"):
        assert ck.check_data({**DATA, key: 1})[key] == 1
        with pytest.raises(ValueError, match=f"data '{key}' must be a positive integer"):
            ck.check_data({**DATA, key: 0})


def test_a_checkpoint_without_the_data_entry_still_loads(saved: pathlib.Path) -> None:
    assert "data" not in read_checkpoint(saved)[1]  # saved without data=, like older files
    assert ck.load_with_optimizer(saved, backend="numpy")[2]["data"] is None
    assert ck.read_info(saved)["data"] is None


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"seed": "5"}, "'seed' must be int"),
        ({"dataset": "digits"}, "exactly one of 'dataset' and 'file'"),
        ({"sha256": "abc"}, "64 hex digits"),
        ({"sha256": "zz" * 32}, "64 hex digits"),
        ({"sha256": None}, "64 hex digits"),
        ({"val": 1.5}, "fraction"),
        ({"test": float("inf")}, "'test' must be float"),
        ({"task": "ranking"}, "'task' must be one of"),
        ({"classes": 0}, "positive integer"),
        ({"code": "import os"}, "must be an object with the keys"),
    ],
)
def test_a_bad_data_entry_is_refused_on_saving_and_on_loading(
    tmp_path: pathlib.Path, change: dict[str, Any], match: str
) -> None:
    bad = {**DATA, **change}
    with pytest.raises(ValueError, match=match):
        ck.save(make_model(), tmp_path / "m.st", data=bad)
    assert not (tmp_path / "m.st").exists()
    path = ck.save(make_model(), tmp_path / "m.st", data=DATA)
    if not any(isinstance(v, float) and not np.isfinite(v) for v in bad.values()):
        rewrite(path, meta={"data": json.dumps(bad)})
        refuse(path, "'data' is invalid")


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_saved_file_gets_the_usual_permissions(tmp_path: pathlib.Path) -> None:
    mask = os.umask(0o022)
    try:
        path = ck.save(make_model(), tmp_path / "m.safetensors")
        assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
        path.chmod(0o600)
        ck.save(make_model(), path)
        assert path.stat().st_mode & 0o777 == 0o600  # an existing file keeps its mode
    finally:
        os.umask(mask)


CHILD = textwrap.dedent(
    """
    import os, sys, time
    import gpunn
    from gpunn import checkpoint as ck

    path, mode = sys.argv[1], sys.argv[2]

    def model(seed):
        layers = [gpunn.Dense(256, 512), gpunn.ReLU(), gpunn.Dense(512, 10)]
        return gpunn.Sequential(layers, backend="numpy", seed=seed)

    v1, v2 = model(1), model(2)
    ck.save(v1, path, epoch=1)

    def block(*args, **kwargs):
        print("blocked", flush=True)
        time.sleep(60)

    if mode in ("fsync", "replace"):
        setattr(os, mode, block)  # stop right before the rename
    elif mode == "write":
        real_fdopen = os.fdopen

        class HalfWriter:  # writes half the bytes, then hangs: a kill mid-write
            def __init__(self, f):
                self.f = f
            def __enter__(self):
                return self
            def __exit__(self, *exc):
                self.f.close()
            def fileno(self):
                return self.f.fileno()
            def write(self, data):
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                block()

        os.fdopen = lambda fd, *a, **k: HalfWriter(real_fdopen(fd, *a, **k))
    print("v1", flush=True)
    if mode == "loop":  # save v2, v1, v2, ... until killed at an arbitrary moment
        i = 0
        while True:
            i += 1
            ck.save(v2 if i % 2 else v1, path, epoch=2 if i % 2 else 1)
    ck.save(v2, path, epoch=2)
    print("finished", flush=True)
    """
)


def run_and_kill(path: pathlib.Path, mode: str, delay: float = 0.0) -> None:
    """Start the child, wait until it is where ``mode`` says, then SIGKILL it."""
    env = dict(os.environ, GPUNN_BACKEND="numpy")
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "v1\n", proc.stderr.read() if proc.stderr else ""
        if mode == "loop":
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=delay)
        else:
            assert proc.stdout.readline() == "blocked\n"
            if mode == "write":  # the temp file really is half written
                (tmp,) = temp_files(path.parent)
                assert 0 < (path.parent / tmp).stat().st_size < path.stat().st_size
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode != 0  # it was killed, it did not finish


def expected(seed: int) -> gpunn.Sequential:
    layers = [gpunn.Dense(256, 512), gpunn.ReLU(), gpunn.Dense(512, 10)]
    return gpunn.Sequential(layers, backend="numpy", seed=seed)


@pytest.mark.parametrize("mode", ["write", "fsync", "replace"])
def test_killed_save_leaves_the_previous_checkpoint(tmp_path: pathlib.Path, mode: str) -> None:
    path = tmp_path / "ckpt.safetensors"
    run_and_kill(path, mode)

    model, _, info = ck.load_with_optimizer(path, backend="numpy")
    assert info["epoch"] == 1
    assert same_bits(model.flat_params, expected(1).flat_params)
    # the interrupted save left only a distinctly named temp file, never read as a checkpoint
    leftovers = temp_files(tmp_path)
    assert all(name.startswith(".ckpt.safetensors.tmp-") for name in leftovers)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "ckpt.safetensors"
    ]


def test_save_killed_at_an_arbitrary_moment_leaves_a_whole_checkpoint(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "ckpt.safetensors"
    v1, v2 = expected(1).flat_params, expected(2).flat_params
    for delay in (0.05, 0.17, 0.31):
        run_and_kill(path, "loop", delay)
        model, _, info = ck.load_with_optimizer(path, backend="numpy")
        assert same_bits(model.flat_params, v1 if info["epoch"] == 1 else v2)
        assert all(name.startswith(".ckpt.safetensors.tmp-") for name in temp_files(tmp_path))
