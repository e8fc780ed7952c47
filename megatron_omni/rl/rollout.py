"""Rollouts: sampled responses of the policy in its training layout (TP/PP as trained), with the
log-probabilities of the sampling policy, for GRPO (docs/grpo.md, "Rollouts").

What comes from megatron-core's inference package and what is ours:

- the KV cache is megatron's ``StaticInferenceContext``: the attention layers allocate, fill and
  read it (megatron/core/transformer/attention.py, static batching);
- every forward step goes through megatron's ``GPTInferenceWrapper.run_one_forward_step``: eval
  mode, the pipeline's send/receive of hidden states between stages, the cache offsets. Our
  subclass only adds the omni model's decoder input (the prompt's media merged into the word
  embeddings, encoded once, before the first step);
- the loop is ours, after megatron's static-batch controller: right-padded prompts, a prefill up to
  the shortest prompt, then one position per step, where a sample still inside its prompt is fed
  its own next prompt token instead of the sampled one. megatron's controller itself is not used:
  it builds its sampling generator on the CUDA device when constructed, stops on the tokenizer's
  one end-of-document id, and computes log-probs by a log-softmax over full-sequence logits;
- sampling (temperature, top-p) and the sampled token's log-probability are ours, from the last
  position's logits only, which megatron's GPTModel gathers over the tensor-parallel group in
  inference mode (it asserts ``runtime_gather_output``). Every TP rank holds the same logits and
  a ``torch.Generator`` seeded alike, so all ranks draw the same tokens; the last pipeline stage
  samples and broadcasts the tokens and log-probs to the other stages.

Log-probabilities are of the policy itself (temperature 1, no top-p truncation): the values a
teacher-forced forward of the same tokens gives, the denominator of GRPO's importance ratio.

Sequence parallelism is switched off for the duration of the call (megatron's static batching
does not run it: one decode position cannot be split over the TP group) and restored after.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core import parallel_state
from megatron.core.inference.communication_utils import broadcast_from_last_pipeline_stage
from megatron.core.inference.contexts import StaticInferenceContext
from megatron.core.inference.model_inference_wrappers.gpt.gpt_inference_wrapper import GPTInferenceWrapper
from megatron.core.inference.model_inference_wrappers.inference_wrapper_config import InferenceWrapperConfig
from megatron.core.models.gpt.gpt_model import GPTModel
from megatron.core.transformer.utils import set_model_to_sequence_parallel

from megatron_omni.contract.batch import OmniBatch
from megatron_omni.models.omni.model import OmniModel

STOP_EOS, STOP_LENGTH = "eos", "length"


@dataclass
class Rollouts:
    """n sampled responses, row i answering prompt i; T = the longest response.

    ``response_ids`` int64 [n, T], ``response_mask`` float32 [n, T] (1 on the response's tokens,
    its end-of-turn token included, 0 after it), ``logprobs`` float32 [n, T] (log π(token | prefix)
    of the sampling policy at each response token, 0 where the mask is 0), ``stop_reason`` per
    sample: "eos" (an end-of-turn id was sampled) or "length" (max_new_tokens reached). The same
    on every rank."""

    prompt_ids: list[list[int]]
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    stop_reason: list[str]

    def responses(self) -> list[list[int]]:
        """Each sample's response tokens (the masked ones)."""
        lengths = self.response_mask.sum(1).long().tolist()
        return [row[:n] for row, n in zip(self.response_ids.tolist(), lengths)]


class PolicyInferenceWrapper(GPTInferenceWrapper):
    """megatron's GPT inference wrapper around the policy's GPTModel, taking an optional
    ``decoder_input`` [w, b, h] (the omni model's merged embeddings) beside the tokens."""

    def _forward(self, inference_input):
        return self.model(inference_input["tokens"], inference_input["position_ids"], None,
                          decoder_input=inference_input.get("decoder_input"),
                          inference_context=self.inference_context, runtime_gather_output=True)


def unwrap(model) -> GPTModel | OmniModel:
    """The policy module under DDP / Float16Module wrappers (one model chunk: megatron's inference
    takes no virtual pipeline)."""
    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            raise ValueError(f"rollouts take one model chunk per rank; got {len(model)} (parallel.vpp > 1)")
        model = model[0]
    while not isinstance(model, (GPTModel, OmniModel)) and hasattr(model, "module"):
        model = model.module
    if not isinstance(model, (GPTModel, OmniModel)):
        raise TypeError(f"rollouts need a GPTModel or OmniModel; got {type(model).__name__}")
    return model


def sample_tokens(logits: torch.Tensor, temperature: float, top_p: float,
                  generator: torch.Generator) -> torch.Tensor:
    """One token per row of ``logits`` [n, V]: the argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted to the top-p nucleus (the most probable tokens whose
    mass reaches top_p; the most probable token always stays)."""
    if temperature == 0:
        return logits.argmax(-1)
    scaled = logits / temperature
    if top_p < 1.0:
        ordered, order = scaled.sort(-1, descending=True)
        probs = ordered.softmax(-1)
        outside = probs.cumsum(-1) - probs >= top_p   # the mass before this token already reaches top_p
        scaled = scaled.scatter(-1, order, ordered.masked_fill(outside, float("-inf")))
    return torch.multinomial(scaled.softmax(-1), 1, generator=generator).squeeze(-1)


def _position_ids(prompts: list[list[int]], total: int, batch: OmniBatch | None, device) -> torch.Tensor:
    """[n, total] 1-D positions, or [n, 3, total] TMRoPE ids when the batch carries them: the
    prompt's own, then text positions continuing from the prompt's largest id."""
    n = len(prompts)
    if batch is None or batch.position_ids.dim() == 2:
        return torch.arange(total, device=device).expand(n, -1)
    out = torch.empty(n, 3, total, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        own = batch.position_ids[i, :, :len(p)].to(device)
        out[i, :, :len(p)] = own
        out[i, :, len(p):] = own.max() + torch.arange(1, total - len(p) + 1, device=device)
    return out


def _check_batch(prompts: list[list[int]], batch: OmniBatch) -> None:
    if batch.tokens.shape[0] != len(prompts):
        raise ValueError(f"the media batch has {batch.tokens.shape[0]} rows for {len(prompts)} prompts "
                         "(one prompt per row)")
    for i, p in enumerate(prompts):
        if batch.tokens[i, :len(p)].tolist() != list(p):
            raise ValueError(f"prompt {i}: its tokens differ from row {i} of the media batch")


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, eos_ids: int | list[int], seed: int = 0,
             batch: OmniBatch | None = None) -> Rollouts:
    """Sample one response per prompt from ``model`` (this rank's chunk of the policy, as trained;
    wrappers are looked through). Collective over the model-parallel group: every TP and PP rank
    of the policy calls it with the same arguments and gets the same Rollouts.

    ``prompts``: token ids per prompt (placeholders expanded). ``batch``: for an omni model, an
    OmniBatch with one prompt per row (``batch.tokens[i]`` starts with ``prompts[i]``) holding the
    prompts' media and position ids; their encoders and projectors run once. ``eos_ids``: the
    end-of-turn id(s); a sampled one ends its response (and is part of it). ``temperature`` 0 is
    greedy. ``seed`` seeds the sampling generator (the same on every rank)."""
    if not prompts or min(len(p) for p in prompts) == 0:
        raise ValueError("every prompt needs at least one token")
    if max_new_tokens < 1 or temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} (>= 1), temperature={temperature} (>= 0), "
                         f"top_p={top_p} (in (0, 1])")
    top = unwrap(model)
    gpt = top.llm if isinstance(top, OmniModel) else top
    if batch is not None:
        if not isinstance(top, OmniModel):
            raise ValueError("a media batch needs the omni model; this policy is a text GPTModel")
        _check_batch(prompts, batch)
    modes = {m: m.training for m in top.modules()}
    sequence_parallel = gpt.config.sequence_parallel
    try:
        if sequence_parallel:
            set_model_to_sequence_parallel(gpt, False)
        top.eval()
        return _generate(top, gpt, prompts, max_new_tokens, temperature, top_p,
                         {eos_ids} if isinstance(eos_ids, int) else set(eos_ids), seed, batch)
    finally:
        if sequence_parallel:
            set_model_to_sequence_parallel(gpt, True)
        for m, mode in modes.items():
            m.training = mode


def _generate(top, gpt: GPTModel, prompts, max_new_tokens, temperature, top_p, eos_ids, seed, batch):
    device = next(gpt.parameters()).device
    n = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    shortest, longest = int(lengths.min()), int(lengths.max())
    total = longest + max_new_tokens
    tokens = torch.zeros(n, total, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        tokens[i, :len(p)] = torch.tensor(p, device=device)
    positions = _position_ids(prompts, total, batch, device)
    # multimodal rotary (TMRoPE) is computed from the ids it is given, and the static cache slices
    # the query's rows [start, end) out of it: such a model gets every position's ids up to `end`
    mrope = gpt.position_embedding_type == "mrope"
    if mrope:
        positions = (positions.transpose(0, 1) if positions.dim() == 3 else positions[None].expand(3, -1, -1))

    dtype = gpt.config.params_dtype
    context = StaticInferenceContext(n, total)
    wrapper = PolicyInferenceWrapper(gpt, InferenceWrapperConfig(
        hidden_size=gpt.config.hidden_size, params_dtype=dtype, inference_batch_times_seqlen_threshold=-1,
        padded_vocab_size=gpt.vocab_size, inference_max_requests=n, inference_max_seq_length=total,
        fp32_residual_connection=gpt.config.fp32_residual_connection), context)
    wrapper.prep_model_for_inference()

    prompt_embeddings = None
    if isinstance(top, OmniModel) and top.pre_process:
        if batch is not None:   # [s, n, h]: word embeddings with the media merged, encoded once
            prompt_embeddings = top.embed(batch.tokens.to(device), batch)[:longest]
        else:
            prompt_embeddings = _word_embeddings(top, tokens[:, :longest])

    last_stage = parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    generator = torch.Generator(device=device).manual_seed(seed)
    out_tokens = torch.zeros(n, max_new_tokens, dtype=torch.long, device=device)
    out_logprobs = torch.zeros(n, max_new_tokens, dtype=torch.float32, device=device)
    produced = torch.zeros(n, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    stopped_eos = torch.zeros(n, dtype=torch.bool, device=device)
    eos = torch.tensor(sorted(eos_ids), device=device)
    start, end = 0, shortest
    while True:
        step = {"tokens": tokens[:, start:end],
                "position_ids": positions[..., :end] if mrope else positions[:, start:end],
                "attention_mask": None}
        if prompt_embeddings is not None:
            step["decoder_input"] = _decoder_input(top, prompt_embeddings, tokens, lengths, start, end)
        logits = wrapper.run_one_forward_step(step)
        sampled = torch.empty(2, n, dtype=torch.float32, device=device)
        if last_stage:
            last = logits[:, -1].float()
            new = sample_tokens(last, temperature, top_p, generator)
            sampled[0] = new.float()
            sampled[1] = last.log_softmax(-1).gather(1, new[:, None]).squeeze(1)
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            sampled = broadcast_from_last_pipeline_stage([2, n], torch.float32, sampled if last_stage else None)
        new, logprob = sampled[0].long(), sampled[1]
        # the sample's position `end` is generated once its prompt is consumed, until it stops
        active = (lengths <= end) & ~done
        tokens[active, end] = new[active]
        rows = active.nonzero().squeeze(1)
        out_tokens[rows, produced[rows]] = new[rows]
        out_logprobs[rows, produced[rows]] = logprob[rows]
        produced += active
        hit = active & torch.isin(new, eos)
        stopped_eos |= hit
        done |= hit | (produced >= max_new_tokens)
        if bool(done.all()):
            break
        if end >= longest:   # every prompt consumed: one new position per sample from here on
            context.enable_decode_mode()
        start, end = end, end + 1

    width = int(produced.max())
    mask = (torch.arange(width, device=device)[None] < produced[:, None]).float()
    return Rollouts(prompt_ids=[list(p) for p in prompts], response_ids=(out_tokens[:, :width] * mask.long()).cpu(),
                    response_mask=mask.cpu(), logprobs=(out_logprobs[:, :width] * mask).cpu(),
                    stop_reason=[STOP_EOS if s else STOP_LENGTH for s in stopped_eos.tolist()])


def _word_embeddings(top: OmniModel, tokens: torch.Tensor) -> torch.Tensor:
    """[w, n, h] word embeddings of tokens [n, w] as the omni model's decoder input."""
    embeddings = top.llm.embedding.word_embeddings(tokens).transpose(0, 1)
    return embeddings.float() if top.config.fp32_residual_connection else embeddings


def _decoder_input(top: OmniModel, prompt_embeddings: torch.Tensor, tokens: torch.Tensor,
                   lengths: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """The omni model's decoder input of positions [start, end) (the prefill, inside every
    prompt, or one position): the prompt's merged embeddings inside each prompt, the word
    embeddings of the sampled tokens after it."""
    word = _word_embeddings(top, tokens[:, start:end])
    if start >= prompt_embeddings.shape[0]:
        return word
    inside = (torch.arange(start, end, device=tokens.device)[:, None] < lengths[None])[..., None]
    return torch.where(inside, prompt_embeddings[start:end].to(word.dtype), word)
