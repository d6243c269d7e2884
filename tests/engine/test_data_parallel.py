"""Data-parallel calibration (torch.distributed, gloo): two ranks, each measuring half the samples,
against one process on the same samples.

Wanda's and AMIA-Wanda's statistics, the dense statistics and ECoFLaP's scores are gathered per
sample and added in sample order, so their masks are the one-process masks bit for bit. SparseGPT's
Hessians are added per rank in rank order (a d x d matrix per sample would not fit), so its masks
may differ at ties: at least 99.9% of entries agree. Whatever the method, both ranks hold the same
masks and weights, and a second run gives the same bits.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tampkit.core.ranks import Ranks, current_ranks

ALIAS = "tiny-llava-next"
METHODS = ("wanda", "amia-wanda", "sparsegpt", "amia-sparsegpt")  # scorers
NSAMPLES = 5  # an odd count: the shards differ in size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prune_everything(out: Path, tag: str) -> None:
    """Dense statistics, ECoFLaP scores and every method's masks/weights on this process's ranks;
    saved to out/<tag>-rank<r>.pt."""
    from tampkit.calibration import load_calibration
    from tampkit.core.types import Structure
    from tampkit.engine.block_sensitivity import ecoflap_scores
    from tampkit.engine.dense_stats import dense_pass
    from tampkit.engine.masking import decoder_linears, prune_blocks
    from tampkit.engine.plan import plan_counts
    from tampkit.methods.registry import make_scorer
    from tampkit.models import load_model
    from tampkit.pipeline.params import Params

    cpu = torch.device("cpu")
    saved: dict = {"world": current_ranks().world}
    bundle = load_model(ALIAS)
    encoded = [bundle.adapter.encode(bundle, s) for s in load_calibration("builtin", NSAMPLES, 7)]
    stats = dense_pass(bundle, encoded, cpu, True, True, False, None)
    saved["scalers"], saved["terms"] = stats.scalers, stats.terms
    saved["ecoflap"] = ecoflap_scores(bundle, encoded, cpu, 1e-3, 42, False)
    plan = plan_counts(bundle, "das", 0.6, Structure(), Params().allocation, stats)
    for method in METHODS:
        bundle = load_model(ALIAS)
        result = prune_blocks(bundle, encoded, make_scorer(method), plan.counts, Structure(), cpu, progress=False)
        saved[method] = {"masks": result.masks, "blocks": result.blocks,
                         "weights": {n: lin.weight.detach().clone() for n, lin in decoder_linears(bundle).items()}}
    rank = current_ranks().rank
    torch.save(saved, out / f"{tag}-rank{rank}.pt")


def _rank_main(rank: int, world: int, port: int, out: Path, tag: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _prune_everything(out, tag)
    finally:
        dist.destroy_process_group()


def _spawn(out: Path, tag: str) -> list[dict]:
    mp.spawn(_rank_main, args=(2, _free_port(), out, tag), nprocs=2, join=True)
    return [torch.load(out / f"{tag}-rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("dp")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the ranks' setting: the one-process reference computes the same way
    try:
        _prune_everything(out, "single")
    finally:
        torch.set_num_threads(threads)
    return {"single": [torch.load(out / "single-rank0.pt", weights_only=False)],
            "first": _spawn(out, "first"), "second": _spawn(out, "second")}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_ranks_really_ran_as_two(runs) -> None:
    assert [r["world"] for r in runs["first"]] == [2, 2] and runs["single"][0]["world"] == 1


@pytest.mark.parametrize("method", METHODS)
def test_every_rank_holds_the_same_masks_and_weights_and_reruns_agree(runs, method: str) -> None:
    first, second = runs["first"], runs["second"]
    for other in (first[1], second[0], second[1]):
        assert _equal(first[0][method]["masks"], other[method]["masks"])
        assert _equal(first[0][method]["weights"], other[method]["weights"])


def test_gathered_statistics_are_the_one_process_ones_bit_for_bit(runs) -> None:
    single, rank0 = runs["single"][0], runs["first"][0]
    assert _equal(single["scalers"], rank0["scalers"])
    assert single["terms"] == rank0["terms"]
    assert single["ecoflap"] == rank0["ecoflap"]


@pytest.mark.parametrize("method", ["wanda", "amia-wanda"])
def test_wanda_family_masks_are_the_one_process_masks(runs, method: str) -> None:
    single, rank0 = runs["single"][0][method], runs["first"][0][method]
    assert _equal(single["masks"], rank0["masks"])
    assert single["blocks"] == rank0["blocks"]  # AMIA's selected-token counts, the example's picks


@pytest.mark.parametrize("method", ["sparsegpt", "amia-sparsegpt"])
def test_sparsegpt_masks_agree_with_one_process_on_999_of_1000_entries(runs, method: str) -> None:
    single, rank0 = runs["single"][0][method], runs["first"][0][method]
    total = sum(m.numel() for m in single["masks"].values())
    differ = sum(int((single["masks"][k] != rank0["masks"][k]).sum()) for k in single["masks"])
    assert differ <= total / 1000, f"{differ} of {total} mask entries differ"
    for name, mask in single["masks"].items():  # rows with the same mask: the same update, to rounding
        same = (mask == rank0["masks"][name]).all(dim=1)
        weight = name + ".weight" if name + ".weight" in single["weights"] else name
        torch.testing.assert_close(rank0["weights"][weight][same], single["weights"][weight][same], rtol=1e-3, atol=1e-4)


def test_shards_cover_every_sample_once_in_order() -> None:
    for count in range(2, 12):
        for world in range(1, count + 1):
            shards = [list(Ranks(rank, world).shard(count)) for rank in range(world)]
            assert [i for s in shards for i in s] == list(range(count))
            assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_more_ranks_than_samples_is_a_usage_error() -> None:
    from tampkit.core.errors import UsageError

    with pytest.raises(UsageError, match="calibration.nsamples"):
        Ranks(0, 4).shard(3)
