"""Quality of generation on held-out scenes, next to the tokenizers' own reconstruction (the floor).

    report = evaluate_scenes(sampler, records, tokenizers, text_tokenizer)   # records: validation split
    report["depth"]   -> {"generated": {"abs_rel": ...}, "tokenizer": {"abs_rel": ...}}
    report["semseg"]  -> {"generated": {"miou": ..., "pixel_accuracy": ...}, "tokenizer": {...}}
    report["caption"] -> {"generated": {"names_objects": ...}, "dataset": {...}}

Every target is generated from the RGB pixels alone (no chaining), decoded through its tokenizer and
scored with the tokenizer metrics (fourm_jax.tokenizers.metrics): depth as absolute relative error
after mapping the standardised prediction back with the true depth's robust mean and scale, the
same mapping the tokenizer's floor uses; segmentation as mIoU over the classes present. A caption
"names the objects" when the set of shape words in it equals the set of shapes visible in the
scene (the det class names); recall and the share naming an absent shape are reported too. The
dataset's own captions score 1 by construction, a check of the metric.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import jax
import numpy as np

from fourm_jax.data import scenes
from fourm_jax.generate import mod_dict as md
from fourm_jax.generate.outputs import decode_outputs, pixel_input
from fourm_jax.generate.recipe import Target, build_schedule
from fourm_jax.tokenizers import inputs, metrics
from fourm_jax.tokenizers.train import make_eval_step

DENSE_TARGETS = {"depth": "tok_depth@64", "semseg": "tok_semseg@64"}


def named_shapes(caption: str, shapes: Sequence[str] = scenes.SHAPES) -> set[str]:
    """The shape words (singular or plural) a caption uses."""
    words = re.findall(r"[a-z]+", caption.lower())
    return {shape for shape in shapes if shape in words or f"{shape}s" in words}


def caption_scores(captions: Sequence[str], present: Sequence[Sequence[str]],
                   shapes: Sequence[str] = scenes.SHAPES) -> dict[str, float]:
    """names_objects: share of captions whose shape words are exactly the shapes present;
    recall: mean share of present shapes named (1 for a scene without objects); names_absent: share
    of captions naming a shape that is not there."""
    if len(captions) != len(present) or not captions:
        raise ValueError(f"caption_scores: {len(captions)} captions for {len(present)} scenes")
    exact, recall, absent = [], [], []
    for caption, objects in zip(captions, present, strict=True):
        named, truth = named_shapes(caption, shapes), set(objects)
        exact.append(named == truth)
        recall.append(len(named & truth) / len(truth) if truth else 1.0)
        absent.append(bool(named - truth))
    return {"names_objects": float(np.mean(exact)), "recall": float(np.mean(recall)),
            "names_absent": float(np.mean(absent))}


def _dense_stats(tokenizer, variables, output, raw_BHW, tokens) -> dict:
    config = tokenizer.config
    target = inputs.normalize(config.modality, raw_BHW)
    return metrics.reconstruction_stats(config.modality, output, target, tokens, config.codebook_size,
                                        raw_target=raw_BHW if config.modality == "depth" else None,
                                        num_labels=config.n_labels)


def _add(total: dict | None, stats: dict) -> dict:
    return stats if total is None else metrics.add_stats(total, stats)


def _raw(records: Sequence[Mapping], field: str) -> np.ndarray:
    """The scenes field as the tokenizer's raw input: depth [B, H, W] float, semseg ids [B, H, W]."""
    values = np.stack([np.asarray(r[field]) for r in records])
    return values[..., 0] if field == "semseg" else values


def evaluate_scenes(sampler, records: Sequence[Mapping], tokenizers: Mapping[str, tuple], text_tokenizer=None,
                    *, condition: str = "rgb@64", batch_size: int = 8, steps: int = 8,
                    temperature: float = 0.01, caption_tokens: int = 48, caption_temperature: float = 0.01,
                    seed: int = 0) -> dict:
    """The quality report of the module docstring over `records` (scenes validation examples).
    Targets the model cannot generate, or without a tokenizer, are left out; batches are padded
    to `batch_size` (one compilation per target) by repeating the last record."""
    outputs_ = sampler.model.config.domains_out
    dense = {field: domain for field, domain in DENSE_TARGETS.items()
             if domain in outputs_ and domain in tokenizers}
    do_caption = "caption" in outputs_ and text_tokenizer is not None
    if not dense and not do_caption:
        raise ValueError(f"nothing to evaluate: the model generates {list(outputs_)}; needs a tokenizer for "
                         f"{list(DENSE_TARGETS.values())} or a text tokenizer for caption")
    targets = {domain: Target(domain, steps=steps, temperature=temperature) for domain in dense.values()}
    if do_caption:
        targets["caption"] = Target("caption", tokens=caption_tokens, temperature=caption_temperature)
    schedules = {domain: build_schedule([condition], [t]) for domain, t in targets.items()}
    empty = {domain: md.init_empty_target_modality({}, domain, batch_size, t.num_tokens)[domain]
             for domain, t in targets.items()}

    generated_stats = {field: None for field in dense}
    floor_stats = {field: None for field in dense}
    floor_steps = {field: jax.jit(make_eval_step(tokenizers[domain][0])) for field, domain in dense.items()}
    captions, present = [], []
    for start in range(0, len(records), batch_size):
        batch = list(records[start:start + batch_size])
        real = len(batch)
        batch += [batch[-1]] * (batch_size - real)
        pixels = np.stack([pixel_input(np.asarray(r["rgb"]), condition, f"record {start + i} rgb")
                           for i, r in enumerate(batch)])
        conditions = md.init_full_input_modality({condition: {"tensor": pixels}}, condition)
        for domain, schedule in schedules.items():
            mod_dict = {**conditions, domain: dict(empty[domain])}
            out = sampler.generate(mod_dict, schedule, top_k=0.0, top_p=0.0, seed=seed + start)
            if domain == "caption":
                captions += decode_outputs(out, ["caption"], {}, text_tokenizer)["caption"][:real]
                present += [list(r["det"]["class_name"]) for r in batch[:real]]
                continue
            field = next(f for f, d in dense.items() if d == domain)
            tokenizer, variables = tokenizers[domain]
            grid = tokenizer.config.image_size // tokenizer.config.patch_size
            tokens = np.asarray(out[domain]["tensor"])[:real].reshape(real, grid, grid)
            raw = _raw(batch[:real], field)
            stats = _dense_stats(tokenizer, variables, tokenizer.decode(variables, tokens), raw, tokens)
            floor = floor_steps[field](variables, inputs.normalize(tokenizer.config.modality, raw),
                                       raw if field == "depth" else None)
            generated_stats[field] = _add(generated_stats[field], stats)
            floor_stats[field] = _add(floor_stats[field], floor)

    report: dict = {"num_scenes": len(records), "condition": condition,
                    "settings": dict(steps=steps, temperature=temperature, caption_tokens=caption_tokens,
                                     caption_temperature=caption_temperature, seed=seed)}
    keep = {"depth": ("abs_rel",), "semseg": ("miou", "pixel_accuracy")}
    for field in dense:
        generated, floor = metrics.summarize(generated_stats[field]), metrics.summarize(floor_stats[field])
        report[field] = {"generated": {k: generated[k] for k in keep[field]},
                         "tokenizer": {k: floor[k] for k in keep[field]}}
    if do_caption:
        report["caption"] = {"generated": caption_scores(captions, present),
                             "dataset": caption_scores([r["caption"] for r in records], present),
                             "examples": captions[:5]}
    return report


def markdown_table(report: Mapping) -> str:
    """The report as a markdown table: metric, generated, floor (tokenizer or dataset captions)."""
    rows = ["| target (from RGB) | metric | generated | floor |", "|---|---|---|---|"]
    names = {"abs_rel": "abs. rel. error (lower is better)", "miou": "mIoU",
             "pixel_accuracy": "pixel accuracy",
             "names_objects": "names exactly the shapes present", "recall": "shapes present named",
             "names_absent": "names an absent shape (lower is better)"}
    for field in ("depth", "semseg", "caption"):
        if field not in report:
            continue
        entry = report[field]
        floor_key = "dataset" if field == "caption" else "tokenizer"
        for metric, value in entry["generated"].items():
            rows.append(f"| {field} | {names[metric]} | {value:.3f} | {entry[floor_key][metric]:.3f} |")
    floors = "floor: the tokenizer's reconstruction of the true map; for captions, the dataset's own captions"
    return "\n".join(rows) + f"\n\n{report['num_scenes']} held-out scenes; {floors}.\n"
