"""GRPO's step (rl/grpo.py loss, training/grpo.py reference pass) on the tiny omni model (fp32,
CPU, gloo) for the same fixed rollouts (tests/parallel/grpo_runner.py: 2 prompts x 4 responses,
the rollout policy's and the reference's log-probs moved off the policy's so ratios clip and
the KL pulls) gives one rank's every-parameter gradient, loss, KL, clip fraction and entropy at
TP=2, PP=2 and DP=2. Two launches: one rank (the step-0 weights, also the reference, and the
reference result), then two ranks running the three layouts in turn and, last, two steps of the
whole loop at TP=2 (real rollouts of the addition task, a character-level tokenizer whose
<|im_end|> is one token, from random weights): it trains and logs the rollout metrics."""
from pathlib import Path

import pytest

from tests.parallel.conftest import TINY, checkpoint_tensors, torchrun

RUNNER = Path(__file__).with_name("grpo_runner.py")
BASE = TINY + ["model.omni.preset=tiny", "phase=6", "rl.grpo=true", "rl.prompts_per_step=2", "rl.group_size=4",
               "rl.kl_coef=0.1", "rl.clip_high=0.28", "rl.max_new_tokens_short=8", "rl.max_new_tokens_long=16",
               "training.eval_interval=0", "checkpoint.save_interval=0"]
LAYOUTS = {"tp2": ["parallel.tp=2"], "pp2": ["parallel.pp=2"], "dp2": ["parallel.distributed_optimizer=false"]}
LOOP = ["parallel.tp=2", "training.train_steps=2", "rl.inner_steps=2", "rl.kl_coef=0", "rl.reference=null",
        "checkpoint.load=null", "training.warmup_steps=0", "training.lr_decay_style=constant"]


def char_tokenizer(path: Path) -> Path:
    """A tokenizer.json of single characters plus the omni and chat special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    from megatron_omni.data.tokenizer import OMNI_SPECIAL_TOKENS

    special = list(OMNI_SPECIAL_TOKENS) + ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    vocab = {t: i for i, t in enumerate(special + [chr(c) for c in range(32, 127)] + ["\n"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(special)
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def grpo_runs(tmp_path_factory, text_data):
    out = tmp_path_factory.mktemp("grpo")
    results = torchrun(1, BASE + text_data, out / "one.json", "--save-init", "--layout=one=", runner=RUNNER)
    layouts = [f"--layout={n}={','.join(o)}" for n, o in LAYOUTS.items()]
    tokenizer = char_tokenizer(out / "chars.json")
    layouts.append(f"--layout=loop={','.join(LOOP + [f'data.tokenizer={tokenizer}'])}")
    results.update(torchrun(2, BASE + text_data, out / "two.json", *layouts, runner=RUNNER))
    return {**results, "dir": out}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_grpo_gradients_match_one_rank(grpo_runs, name):
    ref, got = grpo_runs["one"], grpo_runs[name]
    assert ref["loss"][1] == sum(6 + 5 * k for k in range(4)) * 2 - 2  # response tokens trained
    assert 0 < ref["rl/clip_fraction"][0] < ref["loss"][1] and ref["rl/kl"][0] > 0
    for key in ("loss", "rl/kl", "rl/clip_fraction", "rl/entropy"):
        assert got[key][1] == ref[key][1]
        assert got[key][0] == pytest.approx(ref[key][0], rel=1e-5, abs=1e-5), key
    ref_grads = checkpoint_tensors(grpo_runs["dir"] / "one" / "grads" / "iter_0000000")
    grads = checkpoint_tensors(grpo_runs["dir"] / name / "grads" / "iter_0000000")
    assert grads.keys() == ref_grads.keys()
    decoder = [k for k in ref_grads if k.startswith("decoder.")]  # the LLM's layers (stacked per key)
    assert decoder and all(ref_grads[k].abs().max() > 0 for k in decoder)
    for key, ref_grad in ref_grads.items():
        err = (grads[key] - ref_grad).abs().max().item()
        assert err <= 1e-5 * max(ref_grad.abs().max().item(), 1e-3), (key, err)


def _tensorboard(run_dir: Path) -> dict[str, dict[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_the_loop_rolls_out_trains_and_logs(grpo_runs):
    assert sorted(grpo_runs["loop"]["train"]) == ["1", "2"]
    logged = _tensorboard(grpo_runs["dir"] / "loop")
    assert logged["rl/rollout_s"][1] > 0 and logged["rl/rollout_s"][2] == 0  # one rollout, two steps
    assert logged["rl/train_s"][1] > 0
    assert logged["rl/clip_fraction"][1] == 0  # on policy: the rollout's log-probs are the policy's
    assert logged["rl/kl"][1] == 0
    assert logged["rl/share/short"][1] + logged["rl/share/long"][1] == pytest.approx(1.0)
    for mode in ("short", "long"):
        if logged[f"rl/share/{mode}"][1] > 0:
            assert 1 <= logged[f"rl/response_length/{mode}"][1] <= (8 if mode == "short" else 16)
            for term in ("accuracy", "format", "repetition", "total"):
                assert f"rl/reward/{mode}/{term}" in logged and f"rl/reward/{mode}/{term}_std" in logged
    assert logged["rl/entropy"][1] > 0
