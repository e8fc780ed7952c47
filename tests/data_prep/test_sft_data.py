"""SFT data (docs/sft.md): the positions of a packed omni micro-batch that carry loss for a
two-turn conversation with an image and an audio clip and for an interruption sample packed
after it; reasoning_mode rendering; the interruption generator; epochs as steps."""
import json
import random
from pathlib import Path

import pytest
import torch

from megatron_omni.config import load_config
from megatron_omni.contract.media import MediaTokens
from megatron_omni.data.multimodal.dataset import LoaderConfig, MultimodalDataset
from megatron_omni.data.multimodal.loader import epoch_steps
from megatron_omni.data.multimodal.packing import collate, pack_row
from megatron_omni.data.sample_format import TURN_END, TURN_START
from megatron_omni.data.sample_reader import iter_samples
from omni_data_prep.multimodal import cli, conversations, interruptions
from omni_data_prep.multimodal.conversations import STOP_MARKER, THINK_CLOSE, THINK_EMPTY, THINK_OPEN

from ..synthetic_media import make_image, make_tone, special_id, write_jsonl

SIZE = 16
CONFIG = LoaderConfig(image_size=SIZE, max_video_frames=2, pad_audio_to_30s=False,
                      media_tokens=MediaTokens(image_grid=(2, 2), video_grid=(2, 2)))
TWO_TURNS = {"id": "chat", "images": ["a.png"], "audio": "q.wav", "conversations": [
    {"from": "human", "value": "<image><audio>\nWhat is this?"},
    {"from": "gpt", "value": "A square and a tone."},
    {"from": "human", "value": "Sure?"},
    {"from": "gpt", "value": "Yes, I am sure."}]}


def prepare(tmp_path, spm_path, records, name="out") -> Path:
    out = tmp_path / name
    conversations.main(["--input", write_jsonl(tmp_path / f"{name}.jsonl", records),
                        "--tokenizer", str(spm_path), "--output-dir", str(out)])
    return out


@pytest.fixture
def media(tmp_path):
    make_image(tmp_path / "a.png", 16, 16, 1)
    make_tone(tmp_path / "q.wav", 2.0, 16000)
    return tmp_path


def rendered(tokenizer, turns):
    """(tokens, target flags) of (role, [(token ids, is target), ...]) turns, then <eod>."""
    tokens, targets = [], []
    for role, parts in turns:
        for ids, target in [(tokenizer.encode(f"{TURN_START}{role}\n"), False), *parts]:
            tokens += ids
            targets += [target] * len(ids)
    return tokens + [tokenizer.eod_id], targets + [False]


def test_packed_batch_scores_only_assistant_content_and_turn_ends(media, spm_path, tokenizer, capsys):
    record = interruptions.interrupted(TWO_TURNS, random.Random(3))
    out = prepare(media, spm_path, [TWO_TURNS, record])
    assert "\nreasoning_mode: short 2, long 0\n" in capsys.readouterr().out
    enc = tokenizer.encode
    image, audio = special_id(tokenizer, "image"), special_id(tokenizer, "audio")
    n_audio = CONFIG.media_tokens.audio_tokens(200)   # 2 s = 200 mel frames
    think = (enc(THINK_EMPTY), False)
    chat = rendered(tokenizer, [
        ("user", [([image] * 4 + [audio] * n_audio + enc("\nWhat is this?"), False), (enc(TURN_END), False)]),
        ("assistant", [think, (enc("A square and a tone."), True), (enc(TURN_END), True)]),
        ("user", [(enc("Sure?"), False), (enc(TURN_END), False)]),
        ("assistant", [think, (enc("Yes, I am sure."), True), (enc(TURN_END), True)])])
    cut_turn = record["conversations"][-3]["value"]
    assert record["conversations"][-2]["value"] in interruptions.COMMANDS
    kept = [("user", [([image] * 4 + [audio] * n_audio + enc("\nWhat is this?"), False), (enc(TURN_END), False)])]
    if record["interruption"]["turn"] == 3:
        kept += [("assistant", [think, (enc("A square and a tone."), False), (enc(TURN_END), False)]),
                 ("user", [(enc("Sure?"), False), (enc(TURN_END), False)])]
    stop = rendered(tokenizer, kept + [
        ("assistant", [think, (enc(cut_turn), False), (enc(TURN_END), False)]),
        ("user", [(enc(record["conversations"][-2]["value"]), False), (enc(TURN_END), False)]),
        ("assistant", [think, (enc(STOP_MARKER), True), (enc(TURN_END), False)])])

    ds = MultimodalDataset(out, tokenizer, CONFIG)
    items = [dict(ds[i], modality="image_text") for i in range(2)]
    length = len(chat[0]) + len(stop[0]) + 5
    batch = collate([pack_row(items, length, tokenizer.pad_id, tmrope=True)], SIZE, 80, packed=True)
    tokens = chat[0] + stop[0]
    assert batch.tokens[0, :len(tokens)].tolist() == tokens
    assert batch.cu_seqlens.tolist() == [0, len(chat[0]), len(tokens), length]
    # position p carries loss iff token p + 1 (its label) is a target of the same sample
    targets = [i - 1 for i, t in enumerate(chat[1]) if t]
    targets += [len(chat[0]) + i - 1 for i, t in enumerate(stop[1]) if t]
    assert torch.nonzero(batch.loss_mask[0]).flatten().tolist() == targets
    assert batch.labels[0, targets].tolist() == [tokens[p + 1] for p in targets]
    scored = batch.labels[0, [p for p in targets if p >= len(chat[0])]].tolist()
    assert scored == enc(STOP_MARKER)   # the interruption's only target: the stop marker
    assert set(batch.sample_index[0, :len(chat[0])].tolist()) == {0}
    assert batch.images.shape[0] == 2 and batch.audio_frames.tolist() == [200, 200]


def test_reasoning_modes_render_as_asked_at_inference(tmp_path, spm_path, tokenizer, capsys):
    turns = [{"from": "human", "value": "Why?"},
             {"from": "gpt", "value": "Because.", "reasoning": "Think it through."}]
    records = [{"id": "s", "conversations": turns},                                   # short by default
               {"id": "l", "reasoning_mode": "long", "conversations": turns},
               {"id": "x", "reasoning_mode": "long", "conversations": [turns[0], {"from": "gpt", "value": "No."}]},
               {"id": "y", "reasoning_mode": "medium", "conversations": turns}]
    out = prepare(tmp_path, spm_path, records)
    printed = capsys.readouterr().out
    assert "skipped: bad_field 2\nreasoning_mode: short 1, long 1\n" in printed
    short, long = list(iter_samples(out, decode=False))
    enc = tokenizer.encode
    user = [(enc("Why?"), False), (enc(TURN_END), False)]
    assert (short.tokens.tolist(), short.loss_mask.tolist()) == rendered(tokenizer, [
        ("user", user), ("assistant", [(enc(THINK_EMPTY), False), (enc("Because."), True), (enc(TURN_END), True)])])
    assert (long.tokens.tolist(), long.loss_mask.tolist()) == rendered(tokenizer, [
        ("user", user), ("assistant", [(enc(THINK_OPEN), False), (enc("Think it through." + THINK_CLOSE), True),
                                       (enc("Because."), True), (enc(TURN_END), True)])])
    assert (short.meta.extra, long.meta.extra) == ({"reasoning_mode": "short"}, {"reasoning_mode": "long"})


def test_interruptions_cli_rate_cut_and_media(tmp_path, capsys):
    chinese = {"id": "zh", "images": ["a.png", "b.png"], "conversations": [
        {"from": "human", "value": "<image>看图"}, {"from": "gpt", "value": "这是一个红色的方块。"},
        {"from": "human", "value": "再看<image>"}, {"from": "gpt", "value": "一个圆。"}]}
    one_word = {"id": "w", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
    records = [chinese, "not json", one_word, chinese, chinese, one_word, chinese, chinese, TWO_TURNS, TWO_TURNS]
    src, out = write_jsonl(tmp_path / "in.jsonl", records), tmp_path / "out.jsonl"
    cli.dispatch(["interruptions", "--input", src, "--output", str(out), "--rate", "0.5", "--seed", "1"])
    assert capsys.readouterr().out.strip() == f"records 10, interruptions 4, unusable 1; wrote {out}"
    lines = out.read_text().splitlines()
    assert lines[0] == json.dumps(chinese) and len(lines) == 14
    made = [json.loads(line) for line in lines if "#interrupt" in line]
    assert [r["id"] for r in made] == ["zh#interrupt", "w#interrupt", "zh#interrupt", "chat#interrupt"]
    for r in made:
        context, (cut, command, reply) = r["conversations"][:-3], r["conversations"][-3:]
        source = {"zh": chinese, "w": one_word, "chat": TWO_TURNS}[r["id"].split("#")[0]]
        full = source["conversations"][r["interruption"]["turn"]]["value"]
        assert full.startswith(cut["value"]) and 0 < len(cut["value"]) < len(full) and cut["loss"] is False
        assert command == {"from": "human", "value": r["interruption"]["command"]}
        assert command["value"] in interruptions.COMMANDS and reply == {"from": "gpt", "value": STOP_MARKER}
        assert all(t.get("loss") is False for t in context if t["from"] == "gpt")
        kept_images = sum(t["value"].count("<image>") for t in r["conversations"])
        assert r.get("images", []) == source.get("images", [])[:kept_images] and r["reasoning_mode"] == "short"
    with pytest.raises(SystemExit) as exit_code:
        interruptions.main(["--input", src, "--output", str(tmp_path / "bad.jsonl"), "--rate", "1.5"])
    assert exit_code.value.code == 1
    assert capsys.readouterr().err.strip() == "error: rate=1.5 must be in [0, 1], e.g. 0.05"
    assert not (tmp_path / "bad.jsonl").exists()


@pytest.mark.parametrize("epochs, global_batch", [(1, 4), (3, 4), (2, 5)])
def test_epochs_are_the_steps_that_draw_every_sample_that_many_times(tmp_path, spm_path, tokenizer, epochs,
                                                                     global_batch):
    texts = [{"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
             for i in range(7)]
    out = prepare(tmp_path, spm_path, texts)
    cfg = load_config(None, [f"data.multimodal.text=[{out}]", "data.multimodal.schedule={mix: {text: 1}}",
                             "data.multimodal.packing=false", f"training.global_batch_size={global_batch}"])
    # one sample per row: ceil(epochs x 7 samples / rows per step)
    assert epoch_steps(cfg, tokenizer, CONFIG.media_tokens, epochs) == -(-epochs * 7 // global_batch)


def test_long_share_picks_the_mode_of_open_records(tmp_path, spm_path, capsys):
    records = [{"conversations": [{"from": "human", "value": f"q{i}"},
                                  {"from": "gpt", "value": f"a{i}", "reasoning": f"r{i}"}]} for i in range(40)]
    records += [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "no reasoning"}]},
                {"reasoning_mode": "short", "conversations": records[0]["conversations"]}]
    counts = {}
    for share in (0.0, 0.5, 1.0):
        out = tmp_path / f"share{share}"
        conversations.main(["--input", write_jsonl(tmp_path / "in.jsonl", records), "--tokenizer", str(spm_path),
                            "--output-dir", str(out), "--long-share", str(share)])
        modes = [s.meta.extra["reasoning_mode"] for s in iter_samples(out, decode=False)]
        assert f"reasoning_mode: short {modes.count('short')}, long {modes.count('long')}" in capsys.readouterr().out
        assert modes[-2:] == ["short", "short"]   # no reasoning to render; the record's own mode
        counts[share] = modes.count("long")
    assert counts[0.0] == 0 and counts[1.0] == 40 and 10 < counts[0.5] < 30, counts
