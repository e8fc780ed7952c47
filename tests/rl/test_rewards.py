"""The rewards of rl/rewards.py on hand-written responses of both reasoning modes, their
weighted sum, and the prompt records and their rendering (rl/prompts.py)."""
import json

import pytest

from megatron_omni.config import ConfigError
from megatron_omni.config.validate_rl import REWARD_NAMES
from megatron_omni.rl.prompts import (MODE_MARKERS, addition_records, addition_response, load_prompts,
                                      pick_mode, prompt_ids)
from megatron_omni.rl.rewards import REWARDS, Response, accuracy, format_reward, repetition, score

END = "<|im_end|>"


def _r(text, mode="short", answer="82", stopped=True, ids=(), ngram=2):
    return Response(text, list(ids), answer, mode, stopped, ngram)


@pytest.mark.parametrize("text, mode, answer, expected", [
    (f"82{END}", "short", "82", 1.0),
    (f" 82. {END}", "short", "82", 1.0),
    (f"82.0{END}", "short", "82", 1.0),            # numeric match
    (f"1,024{END}", "short", "1024", 1.0),
    (f"Paris{END}", "short", "paris", 1.0),          # case folded
    (f"83{END}", "short", "82", 0.0),
    (f"the answer is 82{END}", "short", "82", 0.0),  # exact or numeric, no extraction
    (f"37+45=82\n</think>\n\n82{END}", "long", "82", 1.0),
    (f"37+45=82{END}", "long", "82", 0.0),           # no closed reasoning block: no answer
    (f"37+45=81\n</think>\n\n81{END}", "long", "82", 0.0),
    (f"nan{END}", "short", "nan", 1.0),              # exact text, not a number
])
def test_accuracy(text, mode, answer, expected):
    assert accuracy(_r(text, mode, answer)) == expected


@pytest.mark.parametrize("text, mode, stopped, expected", [
    (f"82{END}", "short", True, 1.0),
    (f"82{END}", "short", False, 0.0),                               # cut at max_new_tokens
    (f"<think>x</think>82{END}", "short", True, 0.0),                # short: no reasoning block
    (f"{END}", "short", True, 0.0),                                  # empty answer
    (f"37+45=82\n</think>\n\n82{END}", "long", True, 1.0),
    (f"37+45=82\n</think>\n\n{END}", "long", True, 0.0),             # no answer after the block
    (f"\n</think>\n\n82{END}", "long", True, 0.0),                   # empty reasoning
    (f"a</think>b</think>82{END}", "long", True, 0.0),              # two closes
    (f"a<think>b</think>82{END}", "long", True, 0.0),               # a second open
    ("37+45=82 and on", "long", False, 0.0),
])
def test_format(text, mode, stopped, expected):
    assert format_reward(_r(text, mode, stopped=stopped)) == expected


def test_repetition_penalty_counts_repeated_ngrams():
    assert repetition(_r("", ids=[1, 2, 3, 4, 5])) == 0.0
    assert repetition(_r("", ids=[1, 2, 1, 2, 1, 2])) == pytest.approx(-3 / 5)  # 5 bigrams, 2 distinct
    assert repetition(_r("", ids=[7])) == 0.0  # shorter than n
    assert repetition(_r("", ids=[7] * 10, ngram=4)) == pytest.approx(-6 / 7)


def test_score_is_the_weighted_sum_and_the_config_knows_every_reward():
    assert set(REWARDS) == set(REWARD_NAMES)
    terms = score(_r(f"82{END}", ids=[1, 2, 1, 2]), {"accuracy": 1.0, "format": 0.5, "repetition": 0.5})
    assert terms == {"accuracy": 1.0, "format": 1.0, "repetition": pytest.approx(-1 / 3),
                     "total": pytest.approx(1.0 + 0.5 - 0.5 / 3)}


class CharTokenizer:
    def encode(self, text):
        return [ord(c) for c in text]


def test_prompts_render_as_sft_and_records_are_checked(tmp_path):
    path = tmp_path / "p.jsonl"
    lines = [{"prompt": "2+3=", "answer": 5},
             {"prompt": [{"from": "system", "value": "Add."}, {"from": "human", "value": "1+1="}],
              "answer": "2", "reasoning_mode": "long"}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    first, second = load_prompts(path)
    assert first.turns == [("user", "2+3=")] and first.answer == "5" and first.mode is None
    assert pick_mode(second, 0, 1, 0.0) == "long"
    text = "".join(map(chr, prompt_ids(second, "long", CharTokenizer())))
    assert text == ("<|im_start|>system\nAdd.<|im_end|>\n<|im_start|>user\n1+1=<|im_end|>\n"
                    "<|im_start|>assistant\n" + MODE_MARKERS["long"])
    modes = [pick_mode(first, j, 7, 0.5) for j in range(400)]
    assert 150 < modes.count("long") < 250 and modes == [pick_mode(first, j, 7, 0.5) for j in range(400)]
    for bad, message in [({"prompt": "x"}, "needs keys prompt and answer"),
                         ({"prompt": "<image> what?", "answer": "a"}, "media placeholder"),
                         ({"prompt": [{"from": "gpt", "value": "hi"}], "answer": "a"}, "last turn must be from human"),
                         ({"prompt": "x", "answer": "a", "reasoning_mode": "medium"}, "reasoning_mode='medium'")]:
        path.write_text(json.dumps(bad) + "\n")
        with pytest.raises(ConfigError, match=f"rl.prompts={path}:1: .*{message}"):
            load_prompts(path)


def test_addition_task_and_its_warm_start_responses_earn_full_reward():
    records = addition_records(20, seed=3)
    assert records == addition_records(20, seed=3) and len({r.turns[0][1] for r in records}) > 15
    for record in records:
        a, b = map(int, record.turns[0][1].removesuffix("=").split("+"))
        assert 10 <= a <= 99 and 10 <= b <= 99 and record.answer == str(a + b)
        for mode in ("short", "long"):
            r = _r(addition_response(record, mode) + END, mode, record.answer)
            assert accuracy(r) == format_reward(r) == 1.0
