"""The speculation rule itself (aipc.backends.speculate): lookup, the measured replay, the decisions it makes from
given costs and acceptance, and the `speculate` setting at every front end. The runtimes are in
test_speculate_backends.py."""

from __future__ import annotations

import random

import numpy as np
import pytest

from aipc.backends import speculate
from aipc.backends.speculate import Governor, Lookup, Shadow, StepCosts, Stepper, best_width, replay
from aipc.engine.config import LoadConfig
from aipc.errors import InvalidConfigError, UsageError
from tests.conftest import run_cli


def test_lookup_proposes_what_llama_cpp_pythons_prompt_lookup_proposes():
    """aipc's incremental lookup is the runtimes' rule (longest n-gram first, earliest earlier occurrence, at
    least one token to propose), checked against llama-cpp-python's own implementation on random texts."""
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    rng = random.Random(5)
    for trial in range(200):
        vocab = rng.choice([3, 5, 12])
        ids = [rng.randrange(vocab) for _ in range(rng.randrange(1, 60))]
        k = rng.choice([1, 3, 8])
        lookup = Lookup(ids, max_ngram=3)
        theirs = LlamaPromptLookupDecoding.find_candidate_pred_tokens(np.asarray(ids, dtype=np.intc), 3, k)
        assert lookup.propose(k) == [int(t) for t in theirs], (trial, ids, k)


def test_shadow_measures_how_much_of_each_would_be_draft_the_model_then_wrote():
    prompt = [1, 2, 3, 4, 5, 6]
    shadow = Shadow(Lookup(prompt), depth=4)
    for token in [9, 2, 3, 4, 7, 8]:
        shadow.push(token)
    # at each answer position: lookup's proposal there, and how much of it matched what came next
    # pos 0: last token 6 never seen before -> nothing; pos 1: after 9 -> nothing; pos 2: after [9, 2] -> 2 was
    # seen, propose [3, 4, 5, 6], the answer wrote 3, 4, 7: matched 2 of 4; pos 3: after [2, 3] -> [4, 5, 6, 9]:
    # matched 1 (4), then 7 differs.
    assert shadow.runs[:4] == [(0, 0), (0, 0), (2, 4), (1, 4)]
    assert shadow.known() == 6  # the last positions' proposals ran out or were contradicted


def _costs(**ratios: float) -> StepCosts:
    costs = StepCosts()
    costs.observe(1, 0.010)
    for name, ratio in ratios.items():
        costs.observe(int(name[1:]), 0.010 * ratio)
    return costs


def test_costs_come_from_measurement_and_fill_gaps_between_measured_widths():
    prior = StepCosts()
    assert prior.ratio(1) == 1.0 and prior.ratio(5) == pytest.approx(1 + 0.15 + 0.4)
    costs = _costs(t2=1.2, t9=2.0)
    assert costs.ratio(2) == pytest.approx(1.2)
    assert costs.ratio(5) == pytest.approx(1.2 + 0.8 * 3 / 7)  # between the measured 2 and 9
    # beyond: along the steeper of the prior's slope and the two widest measured points' (here 0.8 / 7)
    assert costs.ratio(11) == pytest.approx(2.0 + 2 * 0.8 / 7)
    assert _costs(t2=1.05, t9=1.1).ratio(11) == pytest.approx(1.1 + 2 * StepCosts.PRIOR_PER_TOKEN)
    # llama.cpp's Q4_1 CPU kernels: a check grows by about half a plain step a token, and wider ones keep doing so
    assert _costs(t5=3.8, t13=7.0).ratio(33) == pytest.approx(7.0 + 20 * 0.4)


def test_replay_counts_steps_and_their_costs():
    runs = [(3, 3)] * 8  # every position: lookup proposes 3 tokens and the model writes all of them
    flat = [1.0, 1.5, 1.5, 1.5]
    # each step keeps 3 drafts + 1 token, costs 1.5: 8 positions in 2 steps -> 8 tokens / 3.0
    assert replay(runs, 3, flat, pads_misses=False) == pytest.approx(8 / 3.0)
    misses = [(0, 0)] * 6
    assert replay(misses, 3, flat, pads_misses=False) == 1.0  # a miss is a plain step
    assert replay(misses, 3, flat, pads_misses=True) == pytest.approx(1 / 1.5)  # OpenVINO pads: every step costs


@pytest.mark.parametrize(
    ("ratios", "runs", "pads", "expect_on"),
    [
        ({"t5": 1.4, "t9": 1.6}, [(8, 12)] * 40, True, True),  # copying, cheap checks: speculate wide
        ({"t5": 1.4, "t9": 1.6}, [(0, 3)] * 40, False, False),  # lookup finds text the model does not write
        ({"t5": 1.4, "t9": 1.6}, [(0, 0)] * 40, True, False),  # nothing to look up, padded steps cost
        ({"t5": 1.4, "t9": 1.6}, [(0, 0)] * 40, False, False),  # nothing to look up: nothing gained
        ({"t2": 3.0, "t5": 6.0, "t13": 14.0}, [(1, 2)] * 40, False, False),  # checks cost more than they save
    ],
)
def test_the_rule_speculates_only_where_the_measurement_says_it_pays(ratios, runs, pads, expect_on):
    width, speed = best_width(runs, _costs(**ratios), pads_misses=pads)
    assert (speed >= 1 + speculate.MARGIN) is expect_on, (width, speed)
    if expect_on:
        assert width >= 8  # long copies: the widest widths win


def test_per_request_plan_learns_from_earlier_answers_of_the_same_kind():
    governor = Governor(pads_misses=True)
    governor.costs.observe(1, 0.010)
    governor.costs.observe(5, 0.014)
    long_prompt, short_prompt = list(range(100, 300)), [7, 8, 9]
    assert governor.plan(long_prompt) == ("long", speculate.PRIOR_WIDTH)  # nothing measured: the prior
    assert governor.plan(short_prompt) == ("short", 0)
    # a long prompt whose answer copied it: long prompts keep speculating
    governor.record("long", long_prompt, long_prompt[20:120])
    assert governor.plan(list(range(1000, 1200)))[1] >= 8
    # short prompts whose answers lookup never predicts: plain decoding
    governor.record("short", short_prompt, list(range(5000, 5100)))
    assert governor.plan([7, 8, 10]) == ("short", 0)
    # a long prompt whose answers are not in it: measured, speculation stops for that kind
    for start in (2000, 3000, 4000, 6000):
        governor.record("long", list(range(start, start + 200)), list(range(start + 500, start + 600)))
    assert governor.plan(list(range(9000, 9200))) == ("long", 0)


def test_requests_of_one_template_are_planned_from_their_own_answers():
    """A copy task and a rewrite task after the same chat preamble are both long prompts; pooled, the rewrites'
    measurements would keep the copies from drafting. Each is planned from its own template's answers."""
    governor = Governor(pads_misses=True)
    governor.costs.observe(1, 0.010)
    governor.costs.observe(5, 0.014)
    preamble, text = list(range(10, 30)), list(range(100, 220))
    copy, rewrite = [*preamble, 1, 2, 3, 4, 5, 6, 7, 8, 9, *text], [*preamble, 9, 8, 7, 6, 5, 4, 3, 2, 1, *text]
    for _ in range(3):
        governor.record("long", copy, text[:100])  # the copy's answer is the text
        governor.record("long", rewrite, list(range(5000, 5100)))  # the rewrite's answer is new text
    assert governor.plan(copy)[1] >= 8
    governor.record("long", copy, text[:100])  # (the rewrite then does not continue the prompt before it)
    assert governor.plan(rewrite) == ("long", 0)
    # a long prompt of neither template: planned from both (the pooled measurement, mostly new text)
    other = [*preamble, *range(7000, 7100)]
    pooled = best_width(list(governor._history["long"]), governor.costs, pads_misses=True)
    assert governor.plan(other)[1] == (pooled[0] if pooled[1] >= 1 + speculate.MARGIN else 0)


def test_lookup_says_how_much_text_follows_the_passage_it_copies_from():
    passage = list(range(100, 160))
    lookup = Lookup([*passage, 1, 2])
    assert lookup.ahead() == 0  # the last tokens occurred nowhere before
    lookup.extend(passage[:10])  # an answer copying the passage, 10 tokens in
    assert lookup.ahead() == (len(passage) - 10) + 2 + 10  # the passage's rest, the 2 tokens, the answer so far
    assert lookup.propose(3) == passage[10:13]


COPYING, NEW_TEXT = [(8, 12)] * 40, [(0, 3)] * 40


@pytest.mark.parametrize(
    ("runs", "current", "remaining", "switch_seconds", "expect"),
    [
        (COPYING, 0, 200, 0.1, "on"),  # a copy decoded plainly: draft from here on
        (COPYING, 0, 200, 5.0, None),  # ... unless the other pipeline's prefill costs more than drafting saves
        (COPYING, 0, 4, 0.1, None),  # ... or too little is left to win it back
        (COPYING[:5], 0, 200, 0.1, None),  # too few positions measured to tell
        (NEW_TEXT, 0, 200, 0.1, None),  # new text decoded plainly: go on
        (NEW_TEXT, 8, 200, 0.1, 0),  # new text while drafting 8 a step: decode plainly from here on
        (NEW_TEXT, 8, 200, 5.0, None),  # ... unless switching costs more than it saves
        (COPYING, 8, 200, 0.1, None),  # a copy while drafting: go on
    ],
)
def test_mid_generation_switches_only_where_the_time_saved_repays_the_switch(
    runs, current, remaining, switch_seconds, expect
):
    costs = _costs(t5=1.4, t9=1.6)
    got = speculate.switch(runs, costs, current, pads_misses=True, remaining=remaining, switch_seconds=switch_seconds)
    assert got is not None and got > 0 if expect == "on" else got == expect, got


def test_a_plain_step_is_estimated_from_a_wider_one_until_one_is_measured():
    costs = StepCosts()
    assert costs.plain_seconds() is None
    costs.observe(5, 0.030)
    assert costs.plain_seconds() == pytest.approx(0.030 / costs.ratio(5))
    costs.observe(1, 0.020)
    assert costs.plain_seconds() == pytest.approx(0.020)


def test_a_chats_next_turn_stays_where_its_kv_cache_is():
    governor = Governor(pads_misses=True)
    history = list(range(100, 300))
    assert governor.plan(history)[1] == speculate.PRIOR_WIDTH
    governor.record("long", history, [1, 2, 3] * 30)  # measured: lookup would not pay
    # the next turn starts with the whole history: same choice, so the runtime reuses its cache
    assert governor.plan([*history, 5, 6, 7])[1] == speculate.PRIOR_WIDTH


def _copy_with(stepper: Stepper, source: list[int], n: int) -> list[int]:
    """Steps of an answer that copies `source`: each keeps the matching drafts and one more token; the widths."""
    written, widths = 0, []
    while written < n:
        widths.append(stepper.width())
        draft = stepper.propose(widths[-1])
        stepper.drafted(draft)
        kept = 0
        while kept < len(draft) and draft[kept] == source[written + kept]:
            kept += 1
        for token in source[written : written + kept + 1]:
            stepper.push(token)
        written += kept + 1
    return widths


def test_the_per_step_rule_turns_drafting_on_for_copies_and_off_for_new_text():
    governor = Governor(pads_misses=False)
    governor.costs.observe(1, 0.010)
    for n, ratio in ((2, 1.3), (5, 1.6), (9, 2.2), (13, 2.8)):
        governor.costs.observe(n, 0.010 * ratio)
    source = list(range(1000, 1100))
    stepper = governor.stepper([5, 6, *source, 7])  # long prompt: starts drafting on the prior
    assert stepper.width() == speculate.PRIOR_WIDTH
    _copy_with(stepper, source, 60)  # the answer copies the prompt
    assert stepper.width() >= 6
    assert stepper.counts.accepted > 0.8 * stepper.counts.drafted > 0
    for token in range(50_000, 50_100):  # then writes new text: lookup finds nothing, drafting stops
        stepper.drafted(stepper.propose(stepper.width()))
        stepper.push(token)
    assert stepper.width() == 0
    stepper.finish()


def test_a_copy_in_progress_counts_before_its_longest_drafts_close():
    """Where checks grow with every token (llama.cpp's Q4_1 kernels), only the widest drafts of a faithful copy
    pay. Their outcome is known only 32 tokens later; positions still matching count as far as they have
    matched, so the rule widens within the copy rather than after it."""
    governor = Governor(pads_misses=False, widths=speculate.WIDE_WIDTHS)
    governor.costs.observe(1, 0.010)
    for n in (2, 5, 9, 13, 17, 33):
        governor.costs.observe(n, 0.010 * (1 + 0.42 * (n - 1)))
    source = list(range(1000, 1120))
    stepper = governor.stepper([5, 6, *source, 7])
    widths = _copy_with(stepper, source, 60)
    assert max(widths[:8]) >= 16, widths
    assert stepper.counts.accepted == stepper.counts.drafted > 0
    shadow = Shadow(Lookup([1, 2, 3, 4, 5, 6]), depth=4)
    for token in (1, 2, 3):
        shadow.push(token)
    # position 0: nothing to look up; 1 and 2: [2, 3, 4, 5] and [3, 4, 5, 6] open, matched 2 and 1 so far
    assert shadow.recent(8) == [(0, 0), (2, 2), (1, 1)]
    assert shadow.known() == 1


def test_drafts_stop_at_the_token_that_ends_the_answer():
    stepper = Governor(pads_misses=False).stepper([1, 2, 3, 99, 4, 5, 1, 2])
    assert stepper.propose(5) == [3, 99, 4, 5, 1]
    assert stepper.propose(5, lambda token: token == 99) == [3, 99]
    assert stepper.propose(0, lambda token: token == 99) == []


def test_stepper_counts_only_the_accepted_prefix():
    stepper = Stepper(Governor(pads_misses=False), "short", [1, 2, 3], 3, fixed=True)
    stepper.drafted([10, 11, 12])
    for token in (10, 99, 12):  # the second draft token is rejected: the third cannot count
        stepper.push(token)
    assert (stepper.counts.drafted, stepper.counts.accepted) == (3, 1)


def test_draft_tokenizer_check_names_what_differs():
    same = (5, lambda text: [len(text)], lambda ids: str(ids))
    speculate.check_same_tokenizer("d", same, same)
    with pytest.raises(UsageError, match="vocabulary has 6 tokens, the model's 5"):
        speculate.check_same_tokenizer("d", same, (6, *same[1:]))
    with pytest.raises(UsageError, match="splits the same text into other token ids"):
        speculate.check_same_tokenizer("d", same, (5, lambda text: [0], same[2]))
    with pytest.raises(UsageError, match="token id 3 means something else"):
        speculate.check_same_tokenizer("d", same, (5, same[1], lambda ids: "x" if ids == [3] else str(ids)))


@pytest.mark.parametrize("value", ["auto", "off", "lookup", "draft:smollm2:135m", "draft:./a b/model.gguf", " OFF "])
def test_speculate_setting_accepts(value):
    LoadConfig(speculate=value)


@pytest.mark.parametrize("value", ["on", "draft:", "draft: ", "", "lookup:5", None, 3])
def test_speculate_setting_refuses_in_one_line(value):
    with pytest.raises(InvalidConfigError) as info:
        LoadConfig(speculate=value)
    message = str(info.value)
    assert "\n" not in message and "auto, off, lookup or draft:MODEL" in message


@pytest.mark.parametrize("command", [["run", "hi"], ["serve"], ["bench", "--speculate", "off,never"]])
def test_cli_refuses_a_bad_speculate_setting_before_loading(command):
    args = [*command, "--speculate", "never"] if command[0] != "bench" else command
    result = run_cli(*args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "speculate must be auto, off, lookup or draft:MODEL" in result.stderr


def test_seeded_sampling_is_planned_from_the_prompt_alone():
    """The same seed and prompt must take the same path whatever was measured before (same text every time)."""
    governor = Governor(pads_misses=True)
    short = [7, 8, 9]
    governor.record("short", short, [*short, *short, *short] * 10)  # measured: lookup pays on short prompts
    assert governor.plan(short)[1] > 0
    assert governor.plan(short, seeded=True) == ("short", 0)
    stepper = governor.stepper(list(range(100, 300)), seeded=True)
    for token in range(5000, 5040):  # nothing to look up: a free-running stepper would stop drafting
        stepper.push(token)
    assert stepper.width() == speculate.PRIOR_WIDTH
