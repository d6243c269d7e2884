"""What a pruning result is: its masks and the saved decoder weights, and how close two results are.

The golden test compares results with ones recorded on an earlier version (issue 17), so a change
of the layers above the algorithms provably changes no result. Recorded as tensors, not hashes:
the block forwards are matmuls whose last bits depend on the CPU (this suite runs on whatever
machine CI draws), and a last bit can flip an AMIA pick or a mask entry at a near-tie, or move
SparseGPT's updated weights. On the recording machine results are equal bit for bit; elsewhere they
must agree on at least 999 of 1000 mask entries, and the weights of rows whose masks agree must be
equal to rounding (`assert_matches`).

Re-record (after a deliberate change of an algorithm, in the same commit, saying why):

    python tests/golden_hashes.py
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tampkit.core.masks import pack_mask, unpack_mask
from tampkit.store.artifacts import MASKS_FILE, load_masks

GOLDEN_FILE = Path(__file__).parent / "pipeline" / "golden_results.safetensors"
#: The recorded cases: method-sparsity-structure on tiny-llava (4 builtin-images samples).
CASES = ("magnitude-0.5-unstructured", "wanda-0.5-unstructured", "sparsegpt-0.5-unstructured", "owl-0.5-unstructured",
         "das-0.5-unstructured", "amia-0.5-unstructured", "tamp-0.5-unstructured", "tamp-0.6-unstructured",
         "wanda-0.5-2:4", "sparsegpt-0.5-2:4")
#: At most this share of mask entries may differ from the recording (another CPU's last bits).
MAX_DIFFERING = 1e-3


def masks_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for name, mask in sorted(load_masks(Path(folder) / MASKS_FILE).items()):
        digest.update(name.encode())
        digest.update(str(tuple(mask.shape)).encode())
        digest.update(mask.contiguous().numpy().tobytes())
    return digest.hexdigest()


def weights_hash(folder: Path) -> str:
    """Every tensor of the saved checkpoint (SparseGPT also changes the kept weights)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(_checkpoint(folder).items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _checkpoint(folder: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(Path(folder).glob("model*.safetensors")):
        tensors.update(load_file(str(file)))
    return tensors


def saved_weight(saved: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    """The saved tensor of decoder Linear `name` (transformers may save LLaVA in its older key layout:
    model.language_model.layers.N... is saved as language_model.model.layers.N...)."""
    if f"{name}.weight" in saved:
        return saved[f"{name}.weight"]
    tail = name[name.index("layers."):] + ".weight"
    found = [k for k in saved if k.endswith(tail) and "language_model" in k]
    assert len(found) == 1, f"{name}: {found}"
    return saved[found[0]]


def updates_weights(case: str) -> bool:
    """SparseGPT changes the kept weights: only its cases record them (the others keep the dense ones)."""
    return case.startswith("sparsegpt")


def result_tensors(folder: Path, case: str) -> dict[str, torch.Tensor]:
    """The case's masks (as uint8) and, for SparseGPT, the saved weights of every masked matrix."""
    masks = load_masks(Path(folder) / MASKS_FILE)
    weights = _checkpoint(folder)
    out = {}
    for name, mask in masks.items():
        out[f"{case}|mask|{name}"] = torch.from_numpy(pack_mask(mask))  # 8 entries a byte
        out[f"{case}|shape|{name}"] = torch.tensor(mask.shape)
        if updates_weights(case):
            out[f"{case}|weight|{name}"] = saved_weight(weights, name).contiguous()
    return out


def assert_dense_weights_kept(folder: Path, dense: dict[str, torch.Tensor]) -> None:
    """A method that only masks: every saved matrix is the dense one with zeros where masked, exactly."""
    masks = load_masks(Path(folder) / MASKS_FILE)
    saved = _checkpoint(folder)
    for name, mask in masks.items():
        assert torch.equal(saved_weight(saved, name), dense[f"{name}.weight"].masked_fill(mask, 0)), name


def _unpacked(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """mask|NAME as a bool tensor of its shape; weights as they are; shapes dropped."""
    out = {}
    for key, value in tensors.items():
        kind, name = key.split("|", 1)
        if kind == "mask":
            out[key] = unpack_mask(value.numpy(), tuple(tensors[f"shape|{name}"].tolist()))
        elif kind == "weight":
            out[key] = value
    return out


def load_golden(case: str) -> dict[str, torch.Tensor]:
    prefix = f"{case}|"
    return _unpacked({k[len(prefix):]: v for k, v in load_file(str(GOLDEN_FILE)).items() if k.startswith(prefix)})


def assert_matches(folder: Path, case: str) -> None:
    """The result in `folder` against the recording: bit for bit, or within another CPU's last bits."""
    golden = load_golden(case)
    ours = _unpacked({k.split("|", 1)[1]: v for k, v in result_tensors(folder, case).items()})
    assert golden.keys() == ours.keys(), f"{case}: other matrices than recorded"
    total = differing = 0
    for key in (k for k in golden if k.startswith("mask|")):
        name = key.split("|", 1)[1]
        same_rows = (golden[key] == ours[key]).all(dim=1)
        total += golden[key].numel()
        differing += int((golden[key] != ours[key]).sum())
        weight = f"weight|{name}"
        if weight not in golden:
            continue
        torch.testing.assert_close(ours[weight][same_rows], golden[weight][same_rows], rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{case}: {name} weights differ from the recording: {m}")
    assert differing <= math.floor(total * MAX_DIFFERING), f"{case}: {differing} of {total} mask entries differ"


def record() -> None:
    """Run every case through `tamp prune` (one torch thread) and write the recording."""
    import tempfile

    from tampkit.cli import main

    torch.set_num_threads(1)
    tensors: dict[str, torch.Tensor] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            method, sparsity, structure = case.split("-", 2)
            out = Path(tmp) / case.replace(":", "of")
            assert main(["prune", "--model", "tiny-llava", "--method", method, "--sparsity", sparsity, "--structure",
                         structure, "--nsamples", "4", "--calibration", "builtin-images", "--no-plots", "--no-progress",
                         "--out", str(out)]) == 0
            tensors.update(result_tensors(out, case))
    save_file(tensors, str(GOLDEN_FILE))
    print(f"wrote {GOLDEN_FILE} ({GOLDEN_FILE.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    record()
