"""Greedy parity with ml-4m's own sampler on every case under ../shared/fixtures/generation (or,
when FOURM_GENERATION_FIXTURES names a directory, every case under it).

A case (schedule.json + inputs.npz + outputs.npz, see the fixtures' README) names its model in
model.txt, a parity fixture directory relative to the case; its weights are rebuilt from the
manifest and converted. The schedule is rebuilt with our build_chained_generation_schedules from
ml-4m's builder arguments and must equal ml-4m's. Greedy MaskGIT commits equally confident
positions by torch.topk's internal order and ROAR draws its order from torch.rand, so the recorded
positions are replayed (`priorities`: committed MaskGIT positions win the tie-break, ROAR queries
the recorded positions); tokens are the port's own argmax. Every integer and boolean array of the
final mod_dict, each step's committed positions and tokens, the target after each step and the
autoregressive ids must equal ml-4m's exactly.
"""

import json
import os
import pathlib

import numpy as np
import pytest

from fourm_jax.convert import files
from fourm_jax.generate import GenerationSampler, build_chained_generation_schedules
from tests.conftest import SHARED_DIR
from tests.model.parity_fixtures import materialise_weights

ENV_VAR = "FOURM_GENERATION_FIXTURES"
KEYS = ("tensor", "input_mask", "target_mask", "decoder_attention_mask")


def _root(shared_dir: pathlib.Path) -> pathlib.Path:
    if os.environ.get(ENV_VAR):
        return pathlib.Path(os.environ[ENV_VAR])
    return shared_dir / "fixtures" / "generation"


CASES = sorted(p.parent.name for p in _root(SHARED_DIR).glob("*/schedule.json"))


def test_cases_found(shared_dir):
    assert sorted(p.parent.name for p in _root(shared_dir).glob("*/schedule.json")), \
        f"no generation fixture (directory with schedule.json) under {_root(shared_dir)}"


@pytest.fixture(scope="module")
def samplers(tmp_path_factory):
    """GenerationSampler per parity fixture directory, built on first use."""
    cache = {}

    def get(model_dir: pathlib.Path) -> GenerationSampler:
        model_dir = model_dir.resolve()
        if model_dir not in cache:
            tmp = tmp_path_factory.mktemp(model_dir.name)
            materialise_weights(model_dir, tmp / files.WEIGHTS_FILE)
            (tmp / files.CONFIG_FILE).write_text((model_dir / files.CONFIG_FILE).read_text())
            # One loop per segment: one compilation each (shape buckets are tested elsewhere).
            cache[model_dir] = GenerationSampler(files.read_ml4m(tmp), shape_buckets=1)
        return cache[model_dir]

    return get


def _mod_dict(inputs) -> dict:
    mod_dict = {}
    for domain in map(str, inputs["domains"]):
        mod_dict[domain] = {k: inputs[f"{domain}/{k}"] for k in KEYS if f"{domain}/{k}" in inputs.files}
    return mod_dict


def _replayed_priorities(schedule, outputs, mod_dict) -> list:
    """Per step, priorities that make the recorded positions come first (rank order), or None."""
    priorities = []
    for s, entry in enumerate(schedule):
        if entry["scheme"] == "autoregressive":
            priorities.append(None)
            continue
        recorded = outputs[f"step_{s:02d}/{'commit_pos' if entry['scheme'] == 'maskgit' else 'query_pos'}"]
        # The fixtures record one order for the whole batch (ml-4m's ROAR order and topk tie-break).
        np.testing.assert_array_equal(recorded, np.broadcast_to(recorded[0], recorded.shape))
        n = mod_dict[entry["target_domain"]]["tensor"].shape[1]
        priority = 1e6 + np.arange(n, dtype=np.float32)
        priority[recorded[0]] = np.arange(recorded.shape[1])
        priorities.append(priority)
    return priorities


def _check_steps(schedule, outputs, inputs_dict, out, trace, case):
    for s, entry in enumerate(schedule):
        prefix, target = f"step_{s:02d}", entry["target_domain"]
        if entry["scheme"] == "autoregressive":
            np.testing.assert_array_equal(trace["generated"][target], outputs[f"{prefix}/generated"],
                                          err_msg=f"{case} {prefix}/generated")
            continue
        step_of = trace["step"][target]
        committed = outputs[f"{prefix}/commit_pos"]
        for b in range(committed.shape[0]):
            np.testing.assert_array_equal(np.sort(np.flatnonzero(step_of[b] == s)), np.sort(committed[b]),
                                          err_msg=f"{case} {prefix}/commit_pos row {b}")
        final = out[target]["tensor"]
        tokens = outputs[f"{prefix}/commit_tokens"]
        np.testing.assert_array_equal(np.take_along_axis(final, committed, 1), tokens,
                                      err_msg=f"{case} {prefix}/commit_tokens")
        initial = inputs_dict[target]
        done = (step_of >= 0) & (step_of <= s)
        after = dict(tensor=np.where(done, final, initial["tensor"]),
                     input_mask=initial["input_mask"] & ~done, target_mask=initial["target_mask"] | done)
        for key, value in after.items():
            np.testing.assert_array_equal(value, outputs[f"{prefix}/after/{key}"],
                                          err_msg=f"{case} {prefix}/after/{key}")


@pytest.mark.parametrize("case_name", CASES)
def test_greedy_generation_matches_ml4m(case_name, shared_dir, samplers):
    case = _root(shared_dir) / case_name
    spec = json.loads((case / "schedule.json").read_text())
    inputs, outputs = np.load(case / "inputs.npz"), np.load(case / "outputs.npz")

    schedule = build_chained_generation_schedules(**spec["builder_args"])
    assert len(schedule) == len(spec["schedule"]), case_name
    for s, (ours, theirs) in enumerate(zip(schedule, spec["schedule"], strict=True)):
        for key, value in ours.items():
            where = f"{case_name} schedule[{s}][{key!r}]"
            if key in ("temperature", "cfg_scale"):
                np.testing.assert_allclose(value, theirs[key], rtol=1e-12, err_msg=where)
            else:
                assert value == theirs[key], f"{where}: {value!r} != {theirs[key]!r}"

    mod_dict = _mod_dict(inputs)
    sampler = samplers(case / (case / "model.txt").read_text().strip())
    args = spec["generate_args"]
    priorities = _replayed_priorities(schedule, outputs, mod_dict)
    out, trace = sampler.generate(mod_dict, schedule, top_k=args["top_k"], top_p=args["top_p"],
                                  seed=args["seed"], priorities=priorities, return_trace=True)

    final_domains = [str(d) for d in outputs["final/domains"]]
    assert list(out) == final_domains, case_name
    for domain in final_domains:
        for key in KEYS:
            name = f"final/{domain}/{key}"
            if name in outputs.files and outputs[name].dtype.kind in "biu":
                np.testing.assert_array_equal(out[domain][key], outputs[name], err_msg=f"{case_name} {name}")
    _check_steps(schedule, outputs, mod_dict, out, trace, case_name)

