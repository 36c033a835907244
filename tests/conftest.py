import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data: the real benchmark samples (never copied into the repo)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA}; tests need ../shared/data beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The offline tiny chat model (built deterministically in seconds, cached under data/)."""
    from agentgym.agents.models import build_tiny_model
    return build_tiny_model()


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_path)
