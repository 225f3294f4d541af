"""A real ASR server for tests: a Gradio app whose prediction runs the pocketsphinx recogniser.

Run it as ``python -m autoscaler.testing.gradio_asr --port P --streams C``. It serves the seed
client's shape of request, ``{"data": [audio_path, hotwords, language, itn]}``, on Gradio's
``predict`` endpoint (``POST /gradio_api/api/predict/`` with Gradio 5+, ``/api/predict/`` with
Gradio 3), the same endpoint through Gradio's queue (``gradio_client``), and a ``transcribe_file``
endpoint that takes an uploaded audio file. Like a GPU node it runs at most ``C`` transcriptions at
once (one recogniser per stream, Gradio's ``concurrency_limit``).

pocketsphinx ships its US-English acoustic model and dictionary inside its wheel, so nothing is
downloaded. It decodes against a small command grammar (the words below plus any hotwords that
are in its dictionary), which keeps recognition of synthesised speech exact and fast on a CPU.
The ``language`` argument is accepted for compatibility and must be ``en``, ``auto`` or ``zh``
(the recogniser only knows English). ``itn`` turns spelled-out digits into figures.

``gradio`` and ``pocketsphinx`` are test dependencies: importing this module without them fails.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import wave
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("autoscaler.testing.gradio_asr")

#: The recogniser's vocabulary: short commands and digits a test can synthesise and expect back.
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOCABULARY = (
    "hello", "world", "open", "close", "the", "door", "window", "please", "turn", "on", "off", "lights",
    "start", "stop", "call", "play", "music", "next", "meeting", "room", *DIGIT_WORDS,
)
DIGITS = {w: str(i) for i, w in enumerate(DIGIT_WORDS)}
SAMPLE_RATE = 16000
LANGUAGES = ("en", "auto", "zh")


class Recogniser:
    """One pocketsphinx decoder (one stream): 16 kHz mono 16-bit audio in, words out."""

    def __init__(self, extra_words: Sequence[str] = ()) -> None:
        from pocketsphinx import Decoder

        self._decoder = Decoder(samprate=SAMPLE_RATE, logfn=os.devnull)
        words = [w for w in dict.fromkeys([*VOCABULARY, *extra_words]) if self._decoder.lookup_word(w)]
        grammar = "#JSGF V1.0;\ngrammar asr;\npublic <utterance> = ( " + " | ".join(words) + " )+ ;\n"
        self._decoder.add_jsgf_string("asr", grammar)
        self._decoder.activate_search("asr")

    def transcribe(self, pcm: bytes) -> str:
        """The words heard in ``pcm`` (16 kHz mono signed 16-bit), space-separated."""
        self._decoder.start_utt()
        self._decoder.process_raw(pcm, full_utt=True)
        self._decoder.end_utt()
        hypothesis = self._decoder.hyp()
        return hypothesis.hypstr if hypothesis is not None else ""


def read_wav(path: str | Path) -> bytes:
    """A WAV file as 16 kHz mono signed 16-bit PCM (resampled and mixed down when it is not)."""
    try:
        with wave.open(str(path), "rb") as wav:
            if wav.getsampwidth() != 2:
                raise ValueError(f"{path}: only 16-bit PCM WAV is supported")
            rate, channels = wav.getframerate(), wav.getnchannels()
            samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float64)
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"{path} is not a readable WAV file: {exc}") from exc
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    if rate != SAMPLE_RATE and len(samples):
        count = int(len(samples) * SAMPLE_RATE / rate)
        samples = np.interp(np.arange(count) * rate / SAMPLE_RATE, np.arange(len(samples)), samples)
    return bytes(np.clip(samples, -32768, 32767).astype("<i2").tobytes())


class RecogniserPool:
    """``streams`` recognisers; a transcription borrows one (a GPU's streams, on a CPU)."""

    def __init__(self, streams: int) -> None:
        self._free: queue.Queue[Recogniser] = queue.Queue()
        for _ in range(streams):
            self._free.put(Recogniser())

    @contextmanager
    def borrow(self) -> Iterator[Recogniser]:
        """Hold one recogniser for the duration of a transcription."""
        recogniser = self._free.get()
        try:
            yield recogniser
        finally:
            self._free.put(recogniser)


def transcript(words: str, itn: bool) -> str:
    """The text a client gets: digits as figures when ``itn`` (inverse text normalisation)."""
    if not itn:
        return words
    return " ".join(DIGITS.get(w, w) for w in words.split())


def build_app(streams: int) -> Any:
    """The Gradio Blocks app (loads the recognisers first: the server answers only once they are in)."""
    import gradio as gr

    pool = RecogniserPool(streams)

    def predict(audio_path: str, hotwords: Any, language: str, itn: bool) -> str:
        if not isinstance(audio_path, str) or not audio_path:
            raise gr.Error("audio must be the path of a WAV file")
        words_ok = isinstance(hotwords, list) and all(isinstance(w, str) for w in hotwords)
        if hotwords is not None and not words_ok:
            raise gr.Error("hotwords must be a list of strings")
        if language not in LANGUAGES:
            raise gr.Error(f"language must be one of {', '.join(LANGUAGES)}")
        try:
            pcm = read_wav(audio_path)
        except (OSError, ValueError) as exc:
            raise gr.Error(str(exc)) from exc
        with pool.borrow() as recogniser:
            return transcript(recogniser.transcribe(pcm), bool(itn))

    def transcribe_file(audio_file: str, itn: bool) -> str:
        return predict(audio_file, [], "en", itn)

    with gr.Blocks(title="ASR test server (pocketsphinx)") as app:
        audio_path = gr.Textbox(label="audio path (WAV on this server)")
        hotwords = gr.JSON(label="hotwords", value=[])
        language = gr.Textbox(label="language", value="auto")
        itn = gr.Checkbox(label="inverse text normalisation", value=True)
        text = gr.Textbox(label="transcript")
        button = gr.Button("Transcribe")
        button.click(predict, [audio_path, hotwords, language, itn], text, api_name="predict",
                     concurrency_limit=streams)
        upload = gr.Audio(label="or upload audio", type="filepath", sources=["upload"])
        upload_button = gr.Button("Transcribe upload")
        upload_button.click(transcribe_file, [upload, itn], text, api_name="transcribe_file",
                            concurrency_limit=streams)
    # api_open: the seed's direct POST to the predict route, besides Gradio's queue.
    app.queue(api_open=True, default_concurrency_limit=streams, max_size=None)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the app until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m autoscaler.testing.gradio_asr", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--streams", type=int, default=2, help="transcriptions at once")
    args = parser.parse_args(argv)
    if args.streams < 1:
        parser.error("--streams must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    app = build_app(args.streams)
    logger.info("recognisers loaded; serving on %s:%s", args.host, args.port)
    app.launch(server_name=args.host, server_port=args.port, show_error=True, quiet=True,
               prevent_thread_lock=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
