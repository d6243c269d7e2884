"""`TampkitLMM`: an lmms-eval model over a tampkit ModelBundle (a pruned folder, an alias, or a
bundle already in memory), using the family adapter's prompt rendering and image handling.

Batch size 1, greedy decoding (lmms-eval's usual evaluation setting); `loglikelihood` returns
(sum log p(continuation | context, image), whether greedy decoding would produce it).
"""

from __future__ import annotations

from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm.auto import tqdm

from tampkit.config import resolve_device
from tampkit.evaluation.qa import continuation_logprobs, greedy_answer
from tampkit.models import load_model
from tampkit.models.adapters import ModelBundle, Sample


class TampkitLMM(lmms):
    is_simple = True

    def __init__(self, pretrained: str | None = None, device: str = "auto", batch_size: int | str = 1,
                 max_new_tokens: int = 32, bundle: ModelBundle | None = None, **_ignored: Any) -> None:
        super().__init__()
        if bundle is None and not pretrained:
            raise ValueError("tampkit: give model_args pretrained=<alias or folder>, or a bundle in memory")
        self.bundle = bundle if bundle is not None else load_model(str(pretrained))
        self.device = resolve_device(str(device))
        self.bundle.model.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    # -- helpers --------------------------------------------------------------------------------
    def _doc(self, task: str, split: str, doc_id: int) -> Any:
        return self.task_dict[task][split][doc_id]

    def _prompt(self, context: str, visuals: list) -> dict[str, torch.Tensor]:
        images = [v for v in visuals if isinstance(v, Image.Image)]
        text = f"<image>\n{context}" if images else context
        sample = Sample("lmms-eval", [("user", text)], images[0] if images else None)
        return self.bundle.adapter.encode(self.bundle, sample, generation_prompt=True)

    def _visuals(self, doc_to_visual: Any, doc: Any) -> list:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(doc)
        return [v for v in (visuals or []) if v is not None]

    def _generate(self, context: str, visuals: list, gen_kwargs: dict[str, Any]) -> str:
        new = int(gen_kwargs.get("max_new_tokens", self.max_new_tokens))
        text = greedy_answer(self.bundle, self._prompt(context, visuals), new, self.device)
        until = gen_kwargs.get("until") or []
        for stop in [until] if isinstance(until, str) else until:
            if stop:
                text = text.split(stop)[0]
        return text

    # -- the lmms interface ---------------------------------------------------------------------
    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        results = []
        for request in tqdm(requests, desc="tampkit loglikelihood", disable=len(requests) < 8):
            context, doc_to_target, doc_to_visual, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            continuation = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
            prompt = self._prompt(context, self._visuals(doc_to_visual, doc))
            picked, is_greedy = continuation_logprobs(self.bundle, prompt, continuation, self.device)
            results.append((float(picked.sum()), is_greedy))
        return results

    def generate_until(self, requests: list[Instance]) -> list[str]:
        results = []
        for request in tqdm(requests, desc="tampkit generate", disable=len(requests) < 8):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            visuals = self._visuals(doc_to_visual, self._doc(task, split, doc_id))
            results.append(self._generate(context, visuals, dict(gen_kwargs or {})))
        return results

    def generate_until_multi_round(self, requests: list[Instance]) -> list[tuple[str, ...]]:
        """Rounds until the task's doc_to_text says stop; per request, the answer of every round."""
        results = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            visuals = self._visuals(doc_to_visual, doc)
            outputs: list[str] = []
            info = None
            round_idx = 0
            while True:
                if round_idx:
                    visuals, context, terminal, outputs, info = doc_to_text(
                        doc, previous_output=outputs, round_idx=round_idx, previous_round_info=info)
                    outputs = list(outputs)
                    if terminal:
                        break
                kwargs = {k: v for k, v in dict(gen_kwargs or {}).items() if k != "until"}
                outputs.append(self._generate(context, list(visuals or []), kwargs))
                round_idx += 1
            results.append(tuple(outputs))
        return results
