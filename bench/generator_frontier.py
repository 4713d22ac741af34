"""Quality against CPU cost: the trained generator at several beams and cost levers, beside RRF.

For each beam (prefixes kept at the generator's last code level) the split's queries are ranked by
the torch engine; the cascade's first stage (RRF of BM25 and dense MiniLM) runs on the same queries.
``--levers`` adds, at the model's own beam, the decoder in int8 (dynamic quantisation of its linear
layers) and in bf16 on the torch engine, and on vLLM (eager and compiled, ``--engine vllm`` /
``vllm-compiled`` of ``onesearch serve``). Wall ms/query for every system (RRF: retrieval only, its
index build excluded), and for the generator also CPU ms/query (this process's user + system time,
all threads); medians of ``--rounds`` rounds in alternating order. CPU core-hours per million
searches: from CPU ms for the generator, from wall ms for RRF (its CPU time is not separable from
its index build in this call: read its row as a floor). Writes a Markdown table to stdout and a PNG
of NDCG@10 and HR@350 against CPU ms/query. A run that holds items out serves them too: they join
the generator live first, as ``onesearch eval`` scores it.

    python bench/generator_frontier.py --run runs/hd --data ../shared/data/homedepot --beams 8 16 32 64
    python bench/generator_frontier.py --run runs/quickstart --data runs/quickstart/data --levers --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from onesearch_ray.data import load_track  # noqa: E402
from onesearch_ray.generator.catalogue import load_catalogue  # noqa: E402
from onesearch_ray.generator.evaluate import search_split  # noqa: E402
from onesearch_ray.generator.model import CodeItemGenerator  # noqa: E402
from onesearch_ray.generator.search import DecodingEngine, TorchDecoder  # noqa: E402
from onesearch_ray.generator.served import join_held_out, load_served  # noqa: E402
from onesearch_ray.io import write_json  # noqa: E402
from onesearch_ray.retrieval.baselines import normalise_rows  # noqa: E402
from onesearch_ray.retrieval.tracks import run_search_baselines  # noqa: E402

MS_PER_CORE_HOUR = 3.6e6


def cpu_ms() -> float:
    """This process's CPU time, all threads (``os.times`` ticks at 10 ms: too coarse for a split)."""
    return 1000 * time.process_time()


class CastDecoder(TorchDecoder):
    """The torch engine with a copy of the decoder in int8 (dynamic quantisation) or bf16; the heads
    stay in float32."""

    def __init__(self, model: CodeItemGenerator, precision: str) -> None:
        super().__init__(model)
        decoder = copy.deepcopy(model.decoder)
        if precision == "int8":
            self.decoder = torch.ao.quantization.quantize_dynamic(decoder, {nn.Linear}, dtype=torch.qint8)
            self.dtype = torch.float32
        else:
            self.decoder, self.dtype = decoder.to(torch.bfloat16), torch.bfloat16

    def last_outputs(self, sequences: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.decoder(inputs_embeds=sequences.to(self.dtype)).last_hidden_state[:, -1].float()
        return hidden @ self.model.code_head(level).T, self.model.item_correction(hidden)


def lever_decoders(model: CodeItemGenerator) -> dict[str, DecodingEngine]:
    from onesearch_ray.generator.vllm_decoder import VLLMDecoder

    return {
        "decoder int8": CastDecoder(model, "int8"),
        "decoder bf16": CastDecoder(model, "bf16"),
        "vLLM engine (eager)": VLLMDecoder.start(model),
        "vLLM engine (compiled)": VLLMDecoder.start(model, enforce_eager=False),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="encoded run with a trained generator")
    parser.add_argument("--model", type=Path, help="generator directory (default: the run's served one)")
    parser.add_argument("--data", type=Path, required=True, help="the track directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--beams", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--k", type=int, default=350)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--levers", action="store_true", help="also int8, bf16 and vLLM at the model's beam")
    parser.add_argument("--out", type=Path, help="PNG path (default MODEL/frontier.png)")
    args = parser.parse_args(argv)

    track = load_track(args.data)
    catalogue = load_catalogue(args.run, track)
    item_vectors = normalise_rows(np.load(args.run / "embeddings/items.npy"))  # every item, for RRF
    # the served catalogue: a held-out run serves those items too (as `onesearch eval` scores it)
    served, live = load_served(args.run, args.model)
    join_held_out(served, live, track)
    model, items = served.model, live.snapshot
    catalogue = replace(catalogue, item_ids=np.asarray(served.item_ids))
    own_beam = model.config.search.beams[-1]
    decoders: dict[str, DecodingEngine | None] = {f"generator, beam {b}": None for b in args.beams}
    if args.levers:
        decoders |= {f"generator, beam {own_beam}, {lever}": d for lever, d in lever_decoders(model).items()}
    beams = {name: int(name.split("beam ")[1].split(",")[0]) for name in decoders}
    systems = beams | {"rrf (BM25 + MiniLM)": None}
    cpu: dict[str, list[float]] = {name: [] for name in systems}
    wall: dict[str, list[float]] = {name: [] for name in systems}
    metrics: dict[str, dict] = {}
    for round_ in range(args.rounds):
        for name in systems if round_ % 2 == 0 else reversed(systems):
            beam = systems[name]
            started = cpu_ms()
            if beam is None:
                result = run_search_baselines(
                    track, args.split, item_vectors, catalogue.query_vectors, k=args.k
                )["rrf"]
                cpu[name].append(result["ms_per_query"])  # see the module docstring
            else:
                search = replace(model.config.search, beams=(*model.config.search.beams[:-1], beam))
                result = search_split(
                    model, catalogue, track, args.split, args.k, search, decoder=decoders[name], items=items
                )
                cpu[name].append((cpu_ms() - started) / result["n_queries"])
            wall[name].append(result["ms_per_query"])
            metrics[name] = result
            n = result["n_queries"]
    print(f"{track.name} {args.split}: {n} queries, k={args.k}, {args.rounds} rounds, medians")
    print("| system | NDCG@10 | HR@350 | wall ms/query | CPU ms/query | CPU core-hours per 1M searches |")
    print("|---|---|---|---|---|---|")
    rows = []
    for name in systems:
        ms, wall_ms = statistics.median(cpu[name]), statistics.median(wall[name])
        rows.append((name, metrics[name]["NDCG@10"], metrics[name]["HR@350"], ms))
        shown = f"{ms:.2f}" if systems[name] is not None else "-"
        print(
            f"| {name} | {rows[-1][1]:.4f} | {rows[-1][2]:.4f} | {wall_ms:.2f} | {shown} | "
            f"{ms * 1e6 / MS_PER_CORE_HOUR:.2f} |"
        )
    out = args.out or served.directory / "frontier.png"
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, column, label in ((axes[0], 1, "NDCG@10"), (axes[1], 2, "HR@350")):
        for name, *values in rows:
            axis.scatter(values[2], values[column - 1], label=name, marker="s" if "rrf" in name else "o")
        axis.set_xlabel("CPU ms / query")
        axis.set_ylabel(label)
    axes[0].legend(fontsize=7)
    figure.suptitle(f"{track.name} {args.split}: quality against CPU cost")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    write_json(out.with_suffix(".json"), {"cpu_ms": cpu, "wall_ms": wall, "metrics": metrics})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
