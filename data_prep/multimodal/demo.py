"""A ready-to-use synthetic omni corpus: a tiny tokenizer and one prepared folder per kind of
source, made through the real preprocessing CLIs in a few seconds, with learnable content.

    python -m omni_data_prep.multimodal.demo --out demo/omni

prints the data section (YAML) to train on it. From Python, `prepare_omni_demo(out)` returns
{"tokenizer": path, "multimodal": data.multimodal values} (sources per mix modality; the other
fields keep their defaults).

What it makes (sizes are arguments):
    text_document     demo text documents (make_demo_corpus) as an indexed binary
    images/           coloured squares and discs on white, caption "a <colour> <shape>"
    audio/            tones (220-660 Hz) and rising/falling chirps, transcript naming them
    videos/           clips of a square moving left or right, no audio track
    videos_audio/     the same with a tone track ("... with a <f> hertz tone")
    conversations/    questions about an image ("what colour is it?") or a sound
    sft_text/, sft_image/, sft_video/, sft_audio/
                      SFT conversations (phase 5, docs/sft.md): counting questions (text only),
                      about an image (a third of them long reasoning mode, with a <think>
                      block), a video and a sound; interruptions.py adds an interruption
                      sample for a quarter of the image and sound ones
The mix modalities: text <- text_document; image_text <- images; video <- videos; audio <- audio;
cross_modal <- videos_audio + conversations. The SFT sources are returned apart, under "sft",
as the phase-5 data.multimodal values (text, image_text, video, audio).
"""
from __future__ import annotations

import argparse
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from omni_data_prep.make_demo_corpus import make_demo_corpus
from omni_data_prep.multimodal.audio_transcript import AudioTranscriptSource
from omni_data_prep.multimodal.conversations import ConversationSource
from omni_data_prep.multimodal.image_caption import ImageCaptionSource
from omni_data_prep.multimodal.interruptions import generate
from omni_data_prep.multimodal.runner import run
from omni_data_prep.multimodal.video_caption import VideoCaptionSource
from omni_data_prep.preprocess_text import preprocess
from omni_data_prep.train_tokenizer import train_tokenizer

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220),
           "yellow": (230, 210, 30), "black": (10, 10, 10)}
TONES = (220, 330, 440, 660)
RATE = 16000


def _image(path: Path, rng: random.Random) -> tuple[str, str]:
    from PIL import Image, ImageDraw

    colour, shape = rng.choice(sorted(COLOURS)), rng.choice(("square", "disc"))
    size = rng.randint(32, 48)
    img = Image.new("RGB", (size, size), (255, 255, 255))
    a, b = rng.randint(2, size // 4), rng.randint(size * 3 // 4, size - 2)
    draw = ImageDraw.Draw(img)
    (draw.rectangle if shape == "square" else draw.ellipse)((a, a, b, b), fill=COLOURS[colour])
    img.save(path)
    return colour, shape


def _sound(path: Path, rng: random.Random) -> str:
    import soundfile

    seconds = rng.choice((1.0, 1.5, 2.0))
    t = np.arange(round(seconds * RATE)) / RATE
    kind = rng.choice(("tone", "tone", "rising", "falling"))
    if kind == "tone":
        freq = rng.choice(TONES)
        phase, text = 2 * np.pi * freq * t, f"a tone of {freq} hertz"
    else:
        sign = 1 if kind == "rising" else -1
        phase = 2 * np.pi * (440 * t + sign * 100 * t * t)
        text = f"a {kind} chirp"
    soundfile.write(path, (0.4 * np.sin(phase)).astype(np.float32), RATE)
    return text


def write_mp4(path: Path, frames: list[np.ndarray], fps: int,
              audio: np.ndarray | None = None, audio_rate: int = RATE) -> None:
    """An H.264 mp4 of RGB uint8 frames [h, w, 3] at fps, with `audio` (mono float32 wave at
    audio_rate) as an AAC track when given."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        track = container.add_stream("aac", rate=audio_rate, layout="mono") if audio is not None else None
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        container.mux(stream.encode())
        if track is not None:
            for start in range(0, len(audio), 1024):
                frame = av.AudioFrame.from_ndarray(audio[None, start:start + 1024], format="fltp",
                                                   layout="mono")
                frame.sample_rate, frame.pts = audio_rate, start
                container.mux(track.encode(frame))
            container.mux(track.encode())


def _video(path: Path, rng: random.Random, tone: int | None, seconds: float = 3.0,
           fps: int = 4, size: int = 32) -> str:
    direction = rng.choice(("left", "right"))
    colour = rng.choice(sorted(COLOURS))
    count = round(seconds * fps)
    frames = []
    for i in range(count):
        pixels = np.full((size, size, 3), 255, np.uint8)
        x = round((size - 8) * (i / (count - 1)))
        x = x if direction == "right" else size - 8 - x
        pixels[12:20, x:x + 8] = COLOURS[colour]
        frames.append(pixels)
    wave = None
    if tone:
        wave = (0.3 * np.sin(2 * np.pi * tone * np.arange(round(seconds * RATE)) / RATE)
                ).astype(np.float32)
    write_mp4(path, frames, fps, wave)
    text = f"a {colour} square moving {direction}"
    return text + (f" with a {tone} hertz tone" if tone else "")


def _jsonl(path: Path, records: Sequence[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def _chats(captions: list[dict], transcripts: list[dict], n: int) -> list[dict]:
    """`n` conversations, alternately about an image and a sound of the corpus."""
    chats = []
    for i in range(n):
        if i % 2 == 0:
            cap = captions[i % len(captions)]
            colour, shape = cap["caption"].split()[1:]
            chats.append({"images": [cap["image_path"]], "conversations": [
                {"from": "human", "value": "<image>\nWhat colour is the shape?"},
                {"from": "gpt", "value": f"It is {colour}."},
                {"from": "human", "value": "And its form?"},
                {"from": "gpt", "value": f"A {shape}."}]})
        else:
            rec = transcripts[i % len(transcripts)]
            chats.append({"audio": rec["audio_path"], "conversations": [
                {"from": "human", "value": "<audio>\nWhat do you hear?"},
                {"from": "gpt", "value": rec["transcript"].capitalize() + "."}]})
    return chats


def _sft_chats(captions: list[dict], transcripts: list[dict], videos: list[dict], n: int
               ) -> dict[str, list[dict]]:
    """`n` SFT conversations of each kind (module doc), by the mix modality they go to."""
    image, video, audio, text = [], [], [], []
    for i in range(n):
        cap, rec = captions[i % len(captions)], transcripts[i % len(transcripts)]
        vid = videos[i % len(videos)]
        colour, shape = cap["caption"].split()[1:]
        chat = {"id": f"image{i}", "images": [cap["image_path"]], "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the shape?"},
            {"from": "gpt", "value": f"It is {colour}.",
             "reasoning": f"The shape is a {shape}. Its colour is {colour}."},
            {"from": "human", "value": "And its form?"},
            {"from": "gpt", "value": f"A {shape}.", "reasoning": f"It is a {colour} {shape}."}]}
        image.append(dict(chat, reasoning_mode="long" if i % 3 == 0 else "short"))
        direction = vid["caption"].split()[-1]
        video.append({"id": f"video{i}", "videos": [vid["video_path"]], "conversations": [
            {"from": "human", "value": "<video>\nWhere does the square move?"},
            {"from": "gpt", "value": f"It moves {direction}."}]})
        audio.append({"id": f"audio{i}", "audio": rec["audio_path"], "conversations": [
            {"from": "human", "value": "<audio>\nWhat do you hear?"},
            {"from": "gpt", "value": rec["transcript"].capitalize() + "."}]})
        text.append({"id": f"text{i}", "conversations": [
            {"from": "human", "value": f"What comes after {i}?"},
            {"from": "gpt", "value": f"{i + 1} comes after {i}."}]})
    return {"text": text, "image_text": image, "video": video, "audio": audio}


def prepare_omni_demo(out_dir: str | Path, num_images: int = 48, num_audio: int = 16,
                      num_videos: int = 8, num_conversations: int = 16, num_docs: int = 300,
                      vocab_size: int = 400, seed: int = 0) -> dict:
    """Write the demo corpus (module doc) under `out_dir`; returns {"tokenizer": path,
    "multimodal": {text, image_text, video, audio, cross_modal: [sources]}, "sft": {text,
    image_text, video, audio: [sources]}}. Reruns reuse the finished folders (the CLIs
    resume)."""
    out = Path(out_dir)
    media = out / "media"
    media.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)

    captions = []
    for i in range(num_images):
        colour, shape = _image(media / f"img{i}.png", rng)
        captions.append({"image_path": f"img{i}.png", "caption": f"a {colour} {shape}"})
    transcripts = [{"audio_path": f"snd{i}.wav", "transcript": _sound(media / f"snd{i}.wav", rng)}
                   for i in range(num_audio)]
    silent = [{"video_path": f"vid{i}.mp4", "caption": _video(media / f"vid{i}.mp4", rng, None)}
              for i in range(num_videos)]
    voiced = [{"video_path": f"av{i}.mp4",
               "caption": _video(media / f"av{i}.mp4", rng, rng.choice(TONES))}
              for i in range(num_videos)]
    chats = _chats(captions, transcripts, num_conversations)

    texts = ([c["caption"] for c in captions] + [t["transcript"] for t in transcripts]
             + [v["caption"] for v in silent + voiced]
             + [turn["value"].replace("<image>", "").replace("<audio>", "")
                for c in chats for turn in c["conversations"]])
    corpus = make_demo_corpus(out / "corpus.jsonl", num_docs=num_docs, seed=seed)
    with open(corpus, "a") as f:   # the media texts too, so their words have pieces
        f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
    tokenizer = train_tokenizer([str(corpus)], str(out / "tok"), vocab_size=vocab_size,
                                seed=seed, threads=1)
    preprocess([str(corpus)], tokenizer, out / "text_document", progress=False)
    for source, name, records in [(ImageCaptionSource(), "images", captions),
                                  (AudioTranscriptSource(), "audio", transcripts),
                                  (VideoCaptionSource(), "videos", silent),
                                  (VideoCaptionSource(), "videos_audio", voiced),
                                  (ConversationSource(), "conversations", chats)]:
        run(source, [_jsonl(out / f"{name}.jsonl", records)], tokenizer, out / name,
            progress=False, media_root=media)
    sft = {}
    for modality, records in _sft_chats(captions, transcripts, silent, num_conversations).items():
        name = f"sft_{modality.split('_')[0]}"
        plain = _jsonl(out / f"{name}_plain.jsonl", records)
        rate = 0.25 if modality in ("image_text", "audio") else 0.0
        generate([plain], out / f"{name}.jsonl", rate, seed)
        run(ConversationSource(), [str(out / f"{name}.jsonl")], tokenizer, out / name,
            progress=False, media_root=media)
        sft[modality] = [str(out / name)]
    return {"tokenizer": str(tokenizer), "sft": sft,
            "multimodal": {"text": [str(out / "text_document")],
                           "image_text": [str(out / "images")], "video": [str(out / "videos")],
                           "audio": [str(out / "audio")],
                           "cross_modal": [str(out / "videos_audio"),
                                           str(out / "conversations")]}}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m omni_data_prep.multimodal.demo",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    values = prepare_omni_demo(args.out, seed=args.seed)
    import yaml

    print(yaml.safe_dump({"data": {"tokenizer": values["tokenizer"],
                                   "multimodal": values["multimodal"]}}, sort_keys=False))
    print("# phase 5 (SFT): data.multimodal sources\n"
          + yaml.safe_dump({"sft": values["sft"]}, sort_keys=False))
    return values


if __name__ == "__main__":
    main()
