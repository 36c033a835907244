"""Fixtures: real small run folders (tests/report/runs.py), the tiny tokenizer, hostile trajectories,
and a headless Chromium driven by selenium (skipped with the reason where it is not installed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.report.runs import make_run

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "report"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PWNED = "window.__agentgym_pwned"


@pytest.fixture(scope="session")
def run_a(tmp_path_factory) -> Path:
    """HINT-SD-shaped run: 3 updates x (2 tasks x 2 members train + 1 eval task)."""
    return make_run(tmp_path_factory.mktemp("runs") / "hint_sd", learner="hint_sd", updates=3,
                    train_tasks=["multi_turn_base_0", "multi_turn_base_3"], eval_tasks=["multi_turn_base_1"])


@pytest.fixture(scope="session")
def run_b(tmp_path_factory) -> Path:
    """A second run on the same tasks (another learner name and seed), for the side-by-side view."""
    return make_run(tmp_path_factory.mktemp("runs") / "grpo", learner="grpo", updates=2, seed=7,
                    typo=(0.5, 0.5), skip=(0.5, 0.5),
                    train_tasks=["multi_turn_base_0", "multi_turn_base_3"], eval_tasks=["multi_turn_base_1"])


HOSTILE_SCRIPT = f"<script>{PWNED}=1</script>"
HOSTILE_IMG = f'<img src=x onerror="{PWNED}=2">'
HOSTILE_CLOSE = f"</script><script>{PWNED}=3</script><!--"
BIG = 1_000_000


@pytest.fixture(scope="session")
def hostile_file(run_a, tmp_path_factory) -> Path:
    """Real trajectories from run_a with hostile text put into every field the page shows."""
    from agentgym.store import read_trajectories
    from agentgym.types import Feedback, FeedbackKind, Message

    trajs = list(read_trajectories(run_a / "trajectories.jsonl"))[:3]
    evil = f"{HOSTILE_SCRIPT} {HOSTILE_IMG} {HOSTILE_CLOSE} \u2028 \u2029 lone:\udcff\udc80 end"
    t = trajs[0]
    t.task_id = "evil-" + HOSTILE_IMG
    t.messages.append(Message(role="user", content=evil))
    step = t.steps[0]
    step.observation = evil + "x" * BIG
    step.reply = [Message(role="tool", name=HOSTILE_SCRIPT, content=evil + "y" * BIG)]
    step.feedback.append(Feedback(kind=FeedbackKind.PAGE_DIFF, step=0, text=f"--- a\n+++ b\n@@ -1 +1 @@\n-{evil}\n+{HOSTILE_CLOSE}"))
    step.feedback.append(Feedback(kind=FeedbackKind.STATE_DIFF, step=0, text=evil,
                                  payload={"changes": [{"op": HOSTILE_SCRIPT, "path": evil}]}))
    step.feedback.append(Feedback(kind=FeedbackKind.HINT, step=0, text=evil, payload={"x": evil}, source=HOSTILE_IMG))
    step.info["note"] = evil
    t.error = evil
    t.metadata["targets"] = [{"step": 0, "span": [0, 1], "hint": evil, "source": HOSTILE_SCRIPT}]
    t.metadata["phase"] = HOSTILE_CLOSE
    path = tmp_path_factory.mktemp("hostile") / "hostile.jsonl"
    path.write_text("".join(x.to_json() + "\n" for x in trajs), encoding="utf-8")
    return path


def data_of(html: str) -> dict:
    """The JSON the page embeds (parsed the way the page's script parses it)."""
    start = html.index("<script type='application/json' id='agentgym-data'>")
    start = html.index(">", start) + 1
    return json.loads(html[start:html.index("</script>", start)])


@pytest.fixture(scope="session")
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"headless Chromium not installed ({', '.join(missing)} missing); "
                    f"run scripts/install_chromium.sh")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        pytest.skip(f"selenium is not installed (the `report` extra): {exc}")
    import tempfile

    profile = tempfile.mkdtemp(prefix="agentgym-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
