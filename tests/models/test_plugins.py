"""Plug-in adapters: a package registered under the `tampkit.adapters` entry point group is found
and used for a model class no built-in adapter knows, and for the --model values it claims."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from tampkit.cli import main
from tampkit.models import plugins

PLUGIN = '''
"""A test plug-in: a custom multimodal LM class (a Llama decoder behind a class name no built-in
adapter serves) whose "audio" is every byte of a vowel, loaded from --model toy:<anything>."""
import torch
import transformers as tf

from tampkit.core.types import AUDIO, TEXT
from tampkit.models.adapters import Adapter, ModelBundle
from tampkit.models.tokenizer import byte_tokenizer


class ToyMultimodalLM(tf.LlamaForCausalLM):
    pass


class ToyAdapter(Adapter):
    family = "toy"
    class_names = ("ToyMultimodalLM",)
    class_suffixes = ()

    def claims(self, spec):
        return spec.startswith("toy:")

    def load(self, spec, dtype="auto"):
        tokenizer = byte_tokenizer()
        config = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=1)
        torch.manual_seed(0)
        model = ToyMultimodalLM(config).eval()
        return ModelBundle(model=model, processor=tokenizer, adapter=self, name=spec, max_length=256)

    def modality_labels(self, model, input_ids):
        digits = set(byte_tokenizer()("aeiou", add_special_tokens=False).input_ids)
        flat = input_ids.reshape(-1)
        labels = torch.full(flat.shape, TEXT, dtype=torch.int8)
        labels[torch.tensor([int(t) in digits for t in flat])] = AUDIO
        return labels
'''


@pytest.fixture
def toy_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Install the plug-in the way pip would leave it: a module and a dist-info with entry points."""
    (tmp_path / "toy_tamp_plugin.py").write_text(textwrap.dedent(PLUGIN))
    info = tmp_path / "toy_tamp_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-tamp-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[tampkit.adapters]\ntoy = toy_tamp_plugin:ToyAdapter\n"
                                           "broken = toy_tamp_plugin_missing:Nothing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.plugin_adapters(refresh=True)
    yield
    sys.modules.pop("toy_tamp_plugin", None)
    monkeypatch.undo()
    plugins.plugin_adapters(refresh=True)


def test_a_registered_plugin_is_discovered_and_prunes(toy_plugin, tmp_path: Path, caplog) -> None:
    from tampkit.models import adapter_for, load_model
    from tampkit.models.loading import model_identity

    found = plugins.plugin_adapters(refresh=True)
    assert [a.family for a in found] == ["organism", "toy"]  # this package's organism is a plug-in too
    # a broken plug-in is one warning, not a crash
    assert any("adapter plug-in 'broken'" in r.getMessage() for r in caplog.records if r.name == "tampkit")
    bundle = load_model("toy:tiny")
    assert bundle.adapter.family == "toy" and adapter_for(bundle.model).family == "toy"
    assert model_identity("toy:tiny") == "plugin:toy:toy:tiny"
    out = tmp_path / "pruned"
    assert main(["prune", "--model", "toy:tiny", "--method", "das", "--sparsity", "0.5", "--calibration", "builtin-text",
                 "--nsamples", "4", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "tamp_report.json").read_text())
    assert report["family"] == "toy" and abs(report["achieved_sparsity"] - 0.5) < 1e-3
    # the plug-in's own token labels reached DAS: the vowels of the calibration text are "audio"
    assert any("audio" in row["similarity_terms"] for row in report["matrices"])


def test_without_the_plugin_the_class_has_no_adapter(toy_plugin) -> None:
    from tampkit.core.errors import UsageError
    from tampkit.models.adapters import ADAPTERS

    assert not any(a.matches("ToyMultimodalLM") for a in ADAPTERS)
    plugins._CACHE = []  # as if the plug-in were not installed
    try:
        from tampkit.models import adapter_for

        with pytest.raises(UsageError, match="no adapter for model class ToyMultimodalLM"):
            adapter_for(type("ToyMultimodalLM", (), {}))
    finally:
        plugins.plugin_adapters(refresh=True)


def test_the_videollama2_example_registers_without_videollama2(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example plug-in imports with tampkit alone (VideoLLaMA2 is needed only to load a model),
    its pyproject names the class it defines, and without the package a claimed --model is one
    clear error."""
    import tomllib

    from tampkit.core.errors import UsageError
    from tampkit.models.adapters import Adapter

    folder = Path(__file__).resolve().parents[2] / "examples" / "videollama2_adapter"
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    target = project["project"]["entry-points"]["tampkit.adapters"]["videollama2"]
    module_name, _, class_name = target.partition(":")
    monkeypatch.syspath_prepend(str(folder))
    module = __import__(module_name)
    adapter = getattr(module, class_name)()
    assert isinstance(adapter, Adapter) and adapter.family == "videollama2"
    assert adapter.claims("videollama2:DAMO-NLP-SG/VideoLLaMA2.1-7B-AV") and not adapter.claims("tiny-llama")
    try:
        import videollama2  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match="needs the videollama2 package"):
            adapter.load("videollama2:DAMO-NLP-SG/VideoLLaMA2.1-7B-AV")
