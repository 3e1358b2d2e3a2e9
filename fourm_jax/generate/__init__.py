"""Any-to-any generation: schedules, the sampler, decoding of its outputs."""

from fourm_jax.generate.mod_dict import (
    custom_text,
    expand_to_batch,
    init_empty_target_modality,
    init_full_input_modality,
)
from fourm_jax.generate.sampler import GenerationSampler, merge_sequences
from fourm_jax.generate.schedules import build_chained_generation_schedules

__all__ = ["GenerationSampler", "build_chained_generation_schedules", "custom_text", "expand_to_batch",
           "init_empty_target_modality", "init_full_input_modality", "merge_sequences"]
