"""`tamp prune` end to end on every tiny alias: checkpoint reloads, masks match weights, report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers as tf

from tampkit.store.artifacts import load_masks
from tampkit.cli import main
from tampkit.models import load_model

REPORT_KEYS = {"method", "structure", "target_sparsity", "achieved_sparsity", "nsamples", "seed", "propagation",
               "matrices", "seconds", "peak_rss_bytes"}


def _auto_class(alias: str):
    return tf.AutoModelForCausalLM if alias == "tiny-llama" else tf.AutoModelForImageTextToText


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "magnitude", "owl", "das", "amia", "tamp"])
def test_prune_every_alias_end_to_end(tiny_alias: str, method: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pruned"
    code = main(["prune", "--model", tiny_alias, "--method", method, "--sparsity", "0.5", "--out", str(out),
                 "--nsamples", "6", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "achieved" in printed and "q_proj" in printed
    report = json.loads((out / "tamp_report.json").read_text())
    assert REPORT_KEYS <= set(report)
    assert report["nsamples"] == (0 if method == "magnitude" else 6)
    # Every method prunes exactly its budget, counted from the saved weights. SparseGPT included: it
    # also zeroes inputs that are never active (H_jj = 0), but scores them 0 so they are the first
    # pruned in their block of 128 columns, and they only add zeros beyond the budget when they
    # outnumber a block's budget (tests/test_sparsegpt.py); these models have no dead inputs (and no
    # update lands on exactly 0), so the zeros are the masks, below.
    assert all(m["shape"] and m["achieved_sparsity"] == m["target_sparsity"] for m in report["matrices"])
    assert report["achieved_sparsity"] == 0.5  # floor(N / 2) of N weights, and N is even
    # The checkpoint reloads with transformers' Auto classes and its zeros are where the masks say.
    model = _auto_class(tiny_alias).from_pretrained(out)
    params = dict(model.named_parameters())
    masks = load_masks(out / "masks.safetensors")
    assert len(masks) == len(report["matrices"]) == 7 * 3
    for name, mask in masks.items():
        weight = params[name + ".weight"]
        assert torch.equal(weight == 0, mask), name
    # ...and through our own loader (processor included), ready to prune again or evaluate.
    again = load_model(str(out))
    assert again.adapter.family == load_model(tiny_alias).adapter.family


def test_multimodal_aliases_label_image_tokens(tiny_alias: str) -> None:
    from tampkit.calibration.builtin import builtin_image_samples

    bundle = load_model(tiny_alias)
    sample = builtin_image_samples()[0]
    batch = bundle.adapter.encode(bundle, sample)
    labels = bundle.adapter.modality_labels(bundle.model, batch["input_ids"])
    image_tokens = int((labels == 1).sum())
    if tiny_alias == "tiny-llama":
        assert image_tokens == 0
    else:
        assert image_tokens > 0 and int((labels == 0).sum()) > 0


def _run_cli(args: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(args))
    return exc.value.code, capsys.readouterr().err


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp_path / "empty_calib"
    empty.mkdir()
    broken = tmp_path / "broken_calib"
    broken.mkdir()
    (broken / "a.jsonl").write_text('{"conversations": [{"from": "human", "value": "hi"}]}\n{not json\n')
    bert = tmp_path / "bert"
    tf.BertForMaskedLM(tf.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32)).save_pretrained(bert)
    base = ["--nsamples", "2", "--no-progress"]
    return {
        "method": (["--model", "tiny-llama", "--method", "obs", "--sparsity", "0.5", *base], "--method"),
        "alias": (["--model", "tiny-gpt", "--method", "wanda", "--sparsity", "0.5", *base], "--model"),
        "sparsity-high": (["--model", "tiny-llama", "--method", "wanda", "--sparsity", "1.0", *base], "--sparsity"),
        "sparsity-neg": (["--model", "tiny-llama", "--method", "wanda", "--sparsity", "-0.1", *base], "--sparsity"),
        "nm": (["--model", "tiny-llama", "--method", "wanda", "--sparsity", "0.6", "--structure", "2:4", *base], "--sparsity"),
        "folder": (["--model", str(tmp_path / "nope"), "--method", "wanda", "--sparsity", "0.5", *base], "--model"),
        "hub-offline": (["--model", "someorg/somemodel", "--method", "wanda", "--sparsity", "0.5", *base], "--model"),
        "no-adapter": (["--model", str(bert), "--method", "wanda", "--sparsity", "0.5", *base], "--model"),
        "empty-calib": (["--model", "tiny-llama", "--method", "wanda", "--sparsity", "0.5", "--calibration", str(empty), *base], "--calibration"),
        "bad-jsonl": (["--model", "tiny-llama", "--method", "wanda", "--sparsity", "0.5", "--calibration", str(broken), *base], "a.jsonl:2"),
    }


@pytest.mark.parametrize("case", ["method", "alias", "sparsity-high", "sparsity-neg", "nm", "folder", "hub-offline", "no-adapter",
                                  "empty-calib", "bad-jsonl"])
def test_bad_input_is_one_line_exit_2_and_no_output(case: str, tmp_path: Path, capsys) -> None:
    args, field = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    capsys.readouterr()  # drop what building the inputs printed
    code, err = _run_cli(["prune", *args, "--out", str(out)], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("tamp: error:") and field in lines[0], err
    assert not out.exists()
    assert not any(p.name.startswith(".out.tmp") for p in tmp_path.iterdir())


def test_console_script_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "tampkit.cli", "prune", "--model", "tiny-llama", "--method", "nope",
                           "--sparsity", "0.5", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "allowed: magnitude, wanda, sparsegpt" in proc.stderr


def test_existing_output_needs_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, err = _run_cli(["prune", "--model", "tiny-llama", "--method", "magnitude", "--sparsity", "0.5",
                          "--out", str(out)], capsys)
    assert code == 2 and "--overwrite" in err
    assert (out / "keep.txt").exists()
    assert main(["prune", "--model", "tiny-llama", "--method", "magnitude", "--sparsity", "0.5", "--out", str(out),
                 "--overwrite", "--no-progress"]) == 0
    assert not (out / "keep.txt").exists() and (out / "tamp_report.json").exists()


def test_tamp_report_has_diversity_allocation_and_amia_counts(tmp_path: Path) -> None:
    out = tmp_path / "tamp"
    assert main(["prune", "--model", "tiny-llava-next", "--method", "tamp", "--sparsity", "0.6", "--out", str(out),
                 "--nsamples", "6", "--no-progress"]) == 0
    report = json.loads((out / "tamp_report.json").read_text())
    assert report["allocation"] == "das"
    total = sum(m["shape"][0] * m["shape"][1] for m in report["matrices"])
    assert abs(report["achieved_sparsity"] - 0.6) <= 1 / total  # the budget is exact
    for row in report["matrices"]:
        assert set(row["similarity_terms"]) == {"text", "image", "text-image"}
        assert row["diversity"] == pytest.approx(sum(1 - v for v in row["similarity_terms"].values()))
        assert row["target_sparsity"] <= 0.7 + 1e-12  # s_max = s + 0.1
    assert len({round(m["target_sparsity"], 6) for m in report["matrices"]}) > 3  # not uniform
    for block in report["blocks"]:
        assert set(block["amia_selected_tokens"]) == {"text", "image"}
        assert all(v >= 0 for v in block["amia_selected_tokens"].values())
    for picture in ("sparsity_by_layer.png", "diversity_by_layer.png", "amia_selected_tokens.png"):
        assert (out / picture).stat().st_size > 1000, picture


def test_owl_report_has_block_ratios_spanning_two_lambda(tmp_path: Path) -> None:
    out = tmp_path / "owl"
    assert main(["prune", "--model", "tiny-llama", "--method", "owl", "--sparsity", "0.5", "--out", str(out),
                 "--nsamples", "4", "--no-progress", "--owl-lambda", "0.1"]) == 0
    blocks = json.loads((out / "tamp_report.json").read_text())["blocks"]
    sparsities = [b["owl_sparsity"] for b in blocks]
    assert max(sparsities) - min(sparsities) == pytest.approx(0.2)
    assert sum(sparsities) / len(sparsities) == pytest.approx(0.5)
