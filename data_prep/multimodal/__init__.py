"""Offline preprocessing of multimodal corpora into the format of
megatron_omni/data/sample_format.py: token streams with media placeholders and loss masks in
Megatron indexed binaries, media in webdataset tar shards, and a manifest.

One command per source shape, each `python -m omni_data_prep.multimodal <name> --help` (or
`python -m omni_data_prep.multimodal.<name> --help`), all built by `cli`:
    image_caption     jsonl of image path + caption, or webdataset tars of image + caption
    interleaved       documents of texts and images in reading order (OmniCorpus/OBELICS)
    audio_transcript  jsonl manifests of audio path + transcript (16 kHz, clips <= 30 s)
    video_caption     videos with captions and/or subtitles (frames at 1 fps, audio track)
    conversations     the unified SFT conversation format (loss on assistant turns only)
    preferences       DPO pairs: a prompt with media + chosen + rejected (trajectories too)
    demo              a synthetic omni corpus for the trainer made with all of the above
    interruptions     conversation jsonl -> the same plus interruption samples (jsonl, then
                      `conversations`; docs/sft.md)
The shared machinery (shards, workers, resume, skip accounting) is in `runner`, media decoding
in `media`; the demo has its own command.
"""
