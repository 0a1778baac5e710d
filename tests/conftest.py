from __future__ import annotations

from pathlib import Path

import pytest
import torch

DATA = Path(__file__).parent / "data"
CONFORMANCE_ROOT = DATA / "conformance" / "focalcodec_stream_small"
MANIFESTS = DATA / "conformance" / "full_size_manifests"
REPO = Path(__file__).resolve().parent.parent

# One private PulseAudio for the whole test session: the session-scoped ``pulse`` fixture is registered once
# here (importing it into several test modules would start one server per module).
pytest_plugins = ["tests.pulse_fixture"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def speech_16k():
    """The bundled speech clip (16 kHz mono float32)."""
    from codec.audio import load_audio

    return load_audio(REPO / "assets" / "speech_sample.wav", 16000)
