"""aipc's own sampler (llama.cpp's backend samples with it): the repetition penalty, temperature, top_k, top_p,
min_p and draws mean what GenerationConfig says, and transformers agrees."""

from __future__ import annotations

import numpy as np
import pytest

from aipc.backends.sampling import Sampler
from aipc.engine.config import GenerationConfig


def test_the_penalty_covers_the_prompt_and_the_answer_ctrl_style():
    logits = np.array([3.0, 2.9, -1.0, 0.5, 2.05], dtype=np.float32)
    greedy = GenerationConfig(temperature=0, repetition_penalty=1.5)
    # Token 0 is in the prompt: 3.0 / 1.5 = 2.0 loses to token 1 (2.9).
    sample = Sampler(greedy, [0, 2], vocab_size=5)
    assert sample(logits) == 1
    # Token 1 is now in the answer too: 2.9 / 1.5 = 1.93 loses to token 4 (2.05), which is not penalised.
    assert sample(logits) == 4
    # Negative logits are multiplied (more negative), never divided towards zero.
    negative = np.array([-1.0, -1.2], dtype=np.float32)
    assert Sampler(greedy, [0], vocab_size=2)(negative) == 1  # -1.5 < -1.2
    # 1.0 turns it off.
    assert Sampler(GenerationConfig(temperature=0, repetition_penalty=1.0), [0, 2], vocab_size=5)(logits) == 0


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 0.7, "top_k": 10, "top_p": 0.8},
        {"temperature": 0.7, "top_k": 10, "top_p": 0.8, "min_p": 0.1},
        {"temperature": 1.5, "top_k": 0, "top_p": 0.95, "min_p": 0.05},
        {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.3},
    ],
)
def test_top_k_top_p_and_min_p_keep_what_transformers_keeps(options):
    torch = pytest.importorskip("torch", reason="transformers is the reference for the filters")
    from transformers.generation import logits_process as lp

    rng = np.random.default_rng(0)
    logits = rng.normal(size=64).astype(np.float32) * 3
    config = GenerationConfig(repetition_penalty=1.0, seed=0, **options)
    scores = torch.tensor(logits)[None]
    warpers = [lp.TemperatureLogitsWarper(config.temperature), lp.TopPLogitsWarper(config.top_p)]
    if config.top_k:
        warpers.insert(1, lp.TopKLogitsWarper(config.top_k))
    if config.min_p:
        warpers.append(lp.MinPLogitsWarper(config.min_p))
    for warper in warpers:
        scores = warper(None, scores)
    allowed = set(np.flatnonzero(np.isfinite(scores[0].numpy())).tolist())
    drawn = {Sampler(config.updated(seed=s), [], vocab_size=64)(logits) for s in range(600)}
    assert drawn == allowed  # every token transformers keeps is drawn sometimes, and nothing else
    assert len(allowed) > 1


@pytest.mark.parametrize(
    "options",
    [
        {"top_k": 0, "top_p": 1.0, "min_p": 0.2},
        {"top_k": 5, "top_p": 1.0, "min_p": 0.01},
        {"top_p": 0.5, "min_p": 0.01},
    ],
)
def test_min_p_for_a_runtime_that_samples_itself_masks_what_the_sampler_would_drop(options):
    """ONNX Runtime GenAI applies the penalty and temperature itself and has no min_p: with min_p, every token
    outside the draw's candidates (top_k, top_p, min_p, judged after the penalty) reaches it as -inf, so that its
    draws keep the tokens aipc's sampler keeps, whichever of the three filters is the narrowest."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=200).astype(np.float32) * 2
    prompt = np.argsort(-logits)[:6].tolist()  # the most likely tokens, penalised: the order changes
    config = GenerationConfig(temperature=1.2, repetition_penalty=1.6, **options)
    prepared = Sampler(config, prompt, 200).prepared(logits)
    kept = set(np.flatnonzero(np.isfinite(prepared)).tolist())
    assert np.array_equal(prepared[list(kept)], logits[list(kept)])  # the rest is left as the runtime gave it
    drawn = {Sampler(config.updated(seed=s), prompt, 200)(logits) for s in range(800)}
    assert drawn == kept and 1 < len(kept) < 40
    unmasked = Sampler(config.updated(min_p=0), prompt, 200).prepared(logits)
    assert np.isfinite(unmasked).all()  # without min_p the runtime's own top_k and top_p do it


def test_a_seed_repeats_its_draws_and_no_seed_varies():
    logits = np.zeros(1000, dtype=np.float32)
    config = GenerationConfig(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=42)

    def draws(cfg):
        sample = Sampler(cfg, [], vocab_size=1000)
        return [sample(logits) for _ in range(20)]

    assert draws(config) == draws(config)
    assert draws(config.updated(seed=43)) != draws(config)
    unseeded = GenerationConfig(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
    assert draws(unseeded) != draws(unseeded)


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 0},
        {"temperature": 0.7, "top_k": 40, "top_p": 0.9},
        {"temperature": 1.0, "top_k": 0, "top_p": 0.8},
        {"temperature": 0.5, "top_k": 5, "top_p": 1.0},
        {"temperature": 1.3, "top_k": 0, "top_p": 1.0},
        {"temperature": 0.7, "top_k": 40, "top_p": 0.9, "min_p": 0.05},
    ],
)
def test_a_draw_from_a_shortlist_is_the_draw_from_the_whole_vocabulary(options):
    """`pick_known` (llama.cpp's grammar checks only the most likely tokens first) settles a draw only when it is
    the draw `pick` makes with every disallowed token at -inf, from the same random state; and it settles most."""
    rng = np.random.default_rng(0)
    config = GenerationConfig(seed=3, **options)
    settled = 0
    for trial in range(400):
        vocab, short = 600, 64
        x = (rng.standard_normal(vocab) * rng.uniform(0.5, 4)).astype(np.float32)
        allowed = rng.random(vocab) < rng.choice([0.01, 0.05, 0.5, 0.95])
        allowed[rng.integers(vocab)] = True
        full, part = Sampler(config, [], vocab), Sampler(config, [], vocab)
        expected = full.pick(np.where(allowed, x, -np.inf).astype(np.float32))
        ids = np.argpartition(-x, short - 1)[:short]
        got = part.pick_known(x, ids[allowed[ids]], ids)
        if got is not None:
            settled += 1
            assert got == expected, (trial, options)
    if options.get("min_p"):  # min_p's threshold may lie among the unchecked tokens: always a full check
        assert settled == 0
    elif options["temperature"] == 0 or options["top_k"]:
        assert settled >= 100, settled
    elif options["top_p"] < 1:  # flat random logits: the unchecked tokens' mass often could move the nucleus
        assert settled >= 10, settled
    else:  # with top_p 1 and no top_k every allowed token is a candidate: never settled without a full check
        assert settled == 0
