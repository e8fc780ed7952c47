"""Rollouts (megatron_omni/rl/rollout.py) on one rank: greedy tokens equal transformers' generate
on the exported model (text: the Qwen3 folder; omni: the omni folder, with an image prompt and an
audio prompt), the returned log-probs equal a teacher-forced forward's, sampling is reproducible
for a seed, stops at the end-of-turn id or at max_new_tokens. The multi-rank layouts are in
tests/parallel/test_rollout.py."""
import pytest
import torch

from megatron_omni.config import load_config
from megatron_omni.rl.rollout import STOP_EOS, STOP_LENGTH, generate, sample_tokens
from megatron_omni.training.dpo import token_logprobs

pytestmark = pytest.mark.usefixtures("megatron_single_rank")

VOCAB = 300
TEXT = ["model.num_layers=2", "model.hidden_size=64", "model.ffn_hidden_size=96", "model.num_attention_heads=4",
        "model.num_query_groups=2", "model.head_dim=16", "model.max_position_embeddings=128",
        "model.backend=local", "training.precision=fp32"]
"""The tiny text policy (the multi-rank test adds parallel.* to it)."""


def prompts(seed: int = 0, lengths=(5, 9, 7)) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(8, VOCAB, (n,), generator=g).tolist() for n in lengths]


def perturb(model, seed: int = 1) -> None:
    """Non-trivial weights with O(1) logits (norm weights around 1, the rest N(0, 0.15²)), so greedy
    choices have clear margins."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.2 * noise if "norm" in name else 0.15 * noise)


def text_policy(*overrides: str):
    from megatron.core import tensor_parallel

    from megatron_omni.models.llm.model import build_llm

    torch.manual_seed(0)
    tensor_parallel.model_parallel_cuda_manual_seed(0)
    cfg = load_config(None, TEXT + list(overrides))
    return cfg, build_llm(cfg, VOCAB)


def teacher_forced(model, prompt: list[int], response: list[int], **forward) -> torch.Tensor:
    """log p(response token) of a plain forward (no cache) over prompt + response, vocab-parallel."""
    ids = torch.tensor([prompt + response])
    position_ids = forward.pop("position_ids", torch.arange(ids.shape[1])[None])
    with torch.no_grad():
        logits = model(ids, position_ids, None, **forward)
    return token_logprobs(logits[:, len(prompt) - 1:-1], ids[:, len(prompt):])[0]


@pytest.fixture(scope="module")
def text_model():
    cfg, model = text_policy()
    perturb(model)
    return cfg, model.eval()


@pytest.fixture(scope="module")
def hf_text(text_model, tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from megatron_omni.conversion.checkpoints import plain_state
    from megatron_omni.conversion.qwen3 import hf_config, megatron_to_hf, save_hf_folder

    cfg, model = text_model
    folder = tmp_path_factory.mktemp("hf_text")
    save_hf_folder(megatron_to_hf(plain_state(model), cfg.model, VOCAB), hf_config(cfg.model, VOCAB, "float32"),
                   folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_greedy_equals_transformers_generate(text_model, hf_text):
    _, model = text_model
    ps = prompts()
    free = generate(model, ps, max_new_tokens=8, temperature=0, eos_ids=[VOCAB + 1])
    assert free.stop_reason == [STOP_LENGTH] * 3
    first = free.responses()[1]
    k = next(k for k in range(1, 8) if first[k] not in first[:k])   # a token prompt 1 first makes at step k
    eos = first[k]
    stopped = generate(model, ps, max_new_tokens=8, temperature=0, eos_ids=[eos])
    assert stopped.stop_reason[1] == STOP_EOS and stopped.responses()[1] == first[:k + 1]
    for rollouts, eos_id in ((free, None), (stopped, eos)):
        for p, response, reason in zip(ps, rollouts.responses(), rollouts.stop_reason):
            out = hf_text.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                   max_new_tokens=8, do_sample=False, eos_token_id=eos_id, pad_token_id=0)
            theirs = out[0, len(p):].tolist()
            assert response == theirs, (p, response, theirs)
            assert (reason == STOP_EOS) == (eos_id in response)
    assert len({tuple(r) for r in free.responses()}) == 3   # the prompts lead to different tokens


def test_logprobs_equal_a_teacher_forced_forward(text_model):
    _, model = text_model
    ps = prompts(seed=2)
    rollouts = generate(model, ps, max_new_tokens=6, temperature=1.0, top_p=0.9, eos_ids=[7], seed=5)
    for i, (p, response) in enumerate(zip(ps, rollouts.responses())):
        expected = teacher_forced(model, p, response)
        torch.testing.assert_close(rollouts.logprobs[i, :len(response)], expected, atol=1e-5, rtol=0)
        assert not rollouts.logprobs[i, len(response):].any() and not rollouts.response_mask[i, len(response):].any()
    assert rollouts.logprobs[rollouts.response_mask.bool()].min() < -0.1   # sampled, not all argmax


def test_sampling_is_reproducible_for_a_seed(text_model):
    _, model = text_model
    ps = prompts(seed=3)
    run = lambda seed: generate(model, ps, max_new_tokens=10, temperature=1.3, top_p=0.95,  # noqa: E731
                                eos_ids=[7, 9], seed=seed)
    first, again, other = run(11), run(11), run(12)
    assert torch.equal(first.response_ids, again.response_ids) and torch.equal(first.logprobs, again.logprobs)
    assert not torch.equal(first.response_ids, other.response_ids)
    greedy = generate(model, ps, max_new_tokens=10, temperature=0, eos_ids=[7, 9])
    assert first.responses() != greedy.responses()


def test_model_is_left_in_training_mode(text_model):
    _, model = text_model
    model.train()
    generate(model, prompts(), max_new_tokens=2, temperature=0, eos_ids=[1])
    assert model.training and all(m.training for m in model.modules())
    model.eval()


def test_top_p_keeps_the_nucleus_only():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_tokens(logits, 1.0, 0.7, g) for _ in range(400)])
    assert set(draws.flatten().tolist()) == {0, 1}   # 0.5 < 0.7 <= 0.5 + 0.3
    draws = torch.stack([sample_tokens(logits, 1.0, 0.5, g) for _ in range(50)])
    assert set(draws.flatten().tolist()) == {0}
    assert sample_tokens(logits, 0, 1.0, g).tolist() == [0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_new_tokens=0), "max_new_tokens=0 (>= 1), temperature=1.0 (>= 0), top_p=1.0 (in (0, 1])"),
    (dict(top_p=0.0), "max_new_tokens=4 (>= 1), temperature=1.0 (>= 0), top_p=0.0 (in (0, 1])"),
    (dict(prompts=[[5], []]), "every prompt needs at least one token"),
])
def test_bad_arguments_are_named(text_model, kwargs, message):
    _, model = text_model
    args = dict(prompts=[[5, 6]], max_new_tokens=4, eos_ids=1) | kwargs
    with pytest.raises(ValueError) as e:
        generate(model, args.pop("prompts"), **args)
    assert str(e.value) == message


def word_level_tokenizer(path) -> str:
    """A tokenizer.json with the omni special tokens at ids 3-7 (the placeholders at
    tests/omni_batches.py's PLACEHOLDER_IDS, its padding id 0 a plain word) and words elsewhere."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from megatron_omni.data.tokenizer import OMNI_SPECIAL_TOKENS

    special = {t: 3 + i for i, t in enumerate(OMNI_SPECIAL_TOKENS)}
    vocab = {f"w{i}": i for i in range(VOCAB) if i not in special.values()} | special
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(OMNI_SPECIAL_TOKENS))
    tok.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def omni(tmp_path_factory):
    """(the tiny omni policy with non-trivial LLM weights, its tokenizer, its HF omni export loaded
    with transformers, an OmniBatch with an image sample and an audio sample)."""
    from transformers import AutoModelForCausalLM

    from megatron_omni.conversion import hf_omni
    from megatron_omni.conversion.checkpoints import read_tokenizer
    from megatron_omni.models.omni.model import OmniModel
    from tests.omni_batches import micro_batch

    root = tmp_path_factory.mktemp("omni_rollout")
    tok_path = word_level_tokenizer(root / "tokenizer.json")
    tok = read_tokenizer(tok_path, VOCAB)
    cfg = load_config(None, ["model.num_layers=2", "model.omni.preset=tiny", "data.seq_length=96",
                             "model.backend=local", "training.precision=fp32", f"data.tokenizer={tok_path}"])
    torch.manual_seed(0)
    ids = hf_omni.placeholder_ids(tok)
    model = OmniModel(cfg, VOCAB, ids).eval()
    perturb(model.llm)
    (root / "hf").mkdir()
    hf_omni.write_folder(root / "hf", model, cfg, VOCAB, "float32", tok)
    hf = AutoModelForCausalLM.from_pretrained(root / "hf", trust_remote_code=True, dtype=torch.float32).eval()
    batch = micro_batch(cfg.model.omni, ["image", "audio"], 96, VOCAB, placeholder_ids=ids)
    return model, tok, hf, batch


def hf_omni_ids(tok) -> dict[str, int]:
    from megatron_omni.conversion import hf_omni

    return hf_omni.placeholder_ids(tok)


def test_omni_prompts_generate_as_the_hf_omni_export(omni):
    model, tok, hf, batch = omni
    media = torch.isin(batch.tokens, torch.tensor(list(hf_omni_ids(tok).values())))
    ends = [int(row.nonzero().max()) + 1 + extra for row, extra in zip(media, (3, 5))]   # media, then text
    ps = [batch.tokens[i, :n].tolist() for i, n in enumerate(ends)]
    ours = generate(model, ps, max_new_tokens=6, temperature=0, eos_ids=tok.eod_id, batch=batch)
    inputs = [dict(pixel_values=batch.images),
              dict(input_features=batch.audio_mel, feature_frames=batch.audio_frames)]
    for i, (p, extra) in enumerate(zip(ps, inputs)):
        with torch.no_grad():
            out = hf.generate(input_ids=torch.tensor([p]), position_ids=batch.position_ids[i:i + 1, :, :len(p)],
                              attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=6,
                              do_sample=False, **extra)
        assert ours.responses()[i] == out[0, len(p):].tolist(), (i, ours.responses()[i], out[0, len(p):].tolist())
    # the media reach the tokens: the same text without its image/audio answers differently
    blind = generate(model, ps, max_new_tokens=6, temperature=0, eos_ids=tok.eod_id)
    assert blind.responses() != ours.responses()
