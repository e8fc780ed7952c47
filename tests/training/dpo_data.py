"""Synthetic preference data for the DPO tests: jsonl records (prompts with an image, chosen and
rejected responses where the chosen one follows a learnable rule, trajectory pairs with tool
calls and results), prepared into a folder by the `preferences` command."""
import random
from pathlib import Path

from omni_data_prep.multimodal import preferences
from tests.synthetic_media import make_image, write_jsonl

GOOD = ["red", "blue", "green", "small", "large"]
BAD = ["cat", "dog", "house", "tree", "river"]


def rule_records(folder: Path, n: int, seed: int = 0) -> list[dict]:
    """n pairs: a prompt (an image every third record) names a random word; the chosen answer
    repeats a colour or size word, the rejected one an animal or thing."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / "img.png"
    make_image(image, 16, 16, 40)
    records = []
    for i in range(n):
        word, other = rng.choice(GOOD), rng.choice(BAD)
        media = i % 3 == 0
        prompt = [{"from": "human", "value": ("<image>" if media else "") + f"say {rng.choice(GOOD + BAD)}"}]
        records.append({"id": f"r{i}", "images": [str(image)] if media else [], "prompt": prompt,
                        "chosen": f"{word} {word}", "rejected": f"{other} {other}"})
    return records


def trajectory_record(tool_result: str, i: int = 0) -> dict:
    """A trajectory-level pair: two tool-use continuations of one prompt."""
    return {"id": f"t{i}", "trajectory_id": f"traj-{i}",
            "prompt": [{"from": "system", "value": "tools: search"}, {"from": "human", "value": "find a cat"}],
            "chosen": [{"from": "gpt", "value": "searching", "tool_calls": [{"name": "search", "arguments": {"q": "cat"}}]},
                       {"from": "tool", "value": tool_result},
                       {"from": "gpt", "value": "a cat is here"}],
            "rejected": [{"from": "gpt", "value": "no idea"},
                         {"from": "human", "value": "please search"},
                         {"from": "gpt", "value": "ok", "tool_calls": [{"name": "lookup", "arguments": {}}]},
                         {"from": "tool", "value": tool_result},
                         {"from": "gpt", "value": "nothing"}]}


def prepare(folder: Path, records: list[dict], tokenizer: str) -> Path:
    """The records prepared into folder/prepared (strict: a bad record fails the test)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "pairs.jsonl", records)
    out = folder / "prepared"
    preferences.main(["--input", str(folder / "pairs.jsonl"), "--tokenizer", str(tokenizer),
                      "--output-dir", str(out), "--strict"])
    return out
