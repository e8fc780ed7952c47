"""The long-media options of the prep CLIs: the same --fps / --max-frames / --max-audio-seconds
on every command that takes such media, checked before any record is read (one error line), and
long audio cut into consecutive encoder windows (docs/omni_batch.md "Long media")."""
import io

import numpy as np
import pytest
import soundfile

from omni_data_prep.multimodal import cli
from omni_data_prep.multimodal.media import audio_items

VIDEO_KINDS = ("video_caption", "conversations", "preferences")
AUDIO_KINDS = ("audio_transcript", "video_caption", "conversations", "preferences")


def _options(kind):
    return {a.dest: a.default for a in cli.build_parser(kind)._actions}


def test_video_and_audio_options_are_the_same_on_every_command():
    for kind in VIDEO_KINDS:
        options = _options(kind)
        assert (options["fps"], options["max_frames"]) == (1.0, 64), kind
    for kind in AUDIO_KINDS:
        assert _options(kind)["max_audio_seconds"] == 30.0, kind
    assert "fps" not in _options("interleaved") and "fps" not in _options("audio_transcript")


@pytest.mark.parametrize("kind, option, value, message", [
    ("video_caption", "--fps", "0", "error: --fps=0.0 must be > 0, e.g. 2"),
    ("conversations", "--max-frames", "0", "error: --max-frames=0 must be >= 1, e.g. 64"),
    ("audio_transcript", "--max-audio-seconds", "45",
     "error: --max-audio-seconds=45.0 must be in (0, 30] seconds (the audio encoder's window), "
     "e.g. 30"),
])
def test_bad_long_media_options_are_one_error_line(tmp_path, capsys, kind, option, value,
                                                   message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(kind, ["--input", str(tmp_path / "none.jsonl"), "--tokenizer",
                        str(tmp_path / "none.model"), "--output-dir", str(tmp_path / "out"),
                        option, value])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seconds, lengths", [
    (65.0, [480000, 480000, 80000]),      # the last window shorter
    (60.0, [480000, 480000]),             # an exact multiple: no empty window
    (60.005, [480000, 480000]),           # a last piece under one mel frame (10 ms) is dropped
    (0.5, [8000]),
])
def test_audio_is_cut_into_consecutive_30s_windows(seconds, lengths):
    wave = np.sin(np.arange(round(seconds * 16000)) / 7.0) * 0.5
    items = audio_items(wave, 16000, 12.0, 30.0)
    assert [info.num_samples for info, _ in items] == lengths
    assert [info.start for info, _ in items] == [12.0 + 30.0 * k for k in range(len(lengths))]
    decoded = np.concatenate([soundfile.read(io.BytesIO(data))[0] for _, data in items])
    np.testing.assert_allclose(decoded, wave[:len(decoded)], atol=1.5 / 32768)
