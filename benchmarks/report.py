"""`agentgym report` at scale: render time and page size for 10,000 trajectories, and load /
filter / open latency measured in headless Chromium.

    .venv/bin/python benchmarks/report.py [--run RUN_DIR] [--n 10000] [--no-browser]

The trajectories are real: a small BFCL v3 multi-turn run (tests/report/runs.py, built unless
--run is given) replicated to N (prompt ids cut to the last 512 per step, see PROMPT_IDS_KEPT). Two variants are measured side by side:
  * "replicated": copies as they are (long texts repeat and are stored once, as in a real run where
    requests, references and many tool results recur across updates and group members);
  * "all unique": every action, reply, observation and feedback text of every copy made distinct
    (the worst case for the page's string table).
"""

from __future__ import annotations

import sys


import argparse
import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.report.runs builds the source run
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the benchmark's tokenizers are local: never the network

from agentgym.report import build_report  # noqa: E402
from agentgym.store import read_trajectories  # noqa: E402

# BFCL prompts are ~8k tokens, so a 10k-episode store is ~4 GB of prompt ids; the report decodes only
# a prompt's tail, so the copies keep the last PROMPT_IDS_KEPT ids of each prompt (the report then
# reads "render_MB_per_s" of JSON Lines: divide a full-size store by it for its render time).
PROMPT_IDS_KEPT = 512


def scaled_run(source: Path, dest: Path, n: int, unique: bool) -> Path:
    """``n`` copies of the source run's trajectories (prompt ids trimmed, see PROMPT_IDS_KEPT)."""
    lines = [json.loads(line) for line in (source / "trajectories.jsonl").read_text(encoding="utf-8").splitlines()
             if line.strip()]
    for t in lines:
        for s in t["steps"]:
            s["prompt_ids"] = s["prompt_ids"][-PROMPT_IDS_KEPT:]
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        if (source / name).is_file():
            shutil.copy(source / name, dest / name)
    with open(dest / "trajectories.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            t = copy.deepcopy(lines[i % len(lines)])
            t["group_id"] = f"{t['group_id']}/copy{i}"
            t["metadata"]["update"] = i * 50 // n  # 50 updates
            if unique:
                tag = f" #{i}"
                for s in t["steps"]:
                    s["observation"] += tag
                    for m in s["reply"]:
                        m["content"] += tag
                    for fb in s["feedback"]:
                        fb["text"] += tag
            f.write(json.dumps(t, separators=(",", ":")) + "\n")
    return dest


def browser_timings(page: Path) -> dict[str, float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    profile = tempfile.mkdtemp(prefix="agentgym-bench-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        t0 = time.perf_counter()
        driver.get(page.resolve().as_uri())
        WebDriverWait(driver, 300).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        load = time.perf_counter() - t0
        ready = driver.execute_script("return performance.now()")  # ms since navigation start
        # Event handlers run synchronously inside dispatchEvent: the time around it is the
        # filter's full cost (filter 10k records, rebuild the 50-row page).
        timing = driver.execute_script("""
            function t(f) { var a = performance.now(); f(); return performance.now() - a; }
            function set(id, v) { var e = document.getElementById(id); e.value = v;
              e.dispatchEvent(new Event(e.tagName === 'INPUT' ? 'input' : 'change')); }
            var r = {};
            r.filter_outcome = t(function () { set('f-ok', '0'); });
            r.filter_target = t(function () { set('f-target', '1'); });
            r.filter_task = t(function () { set('f-task', 'multi_turn_base_3'); });
            r.filter_clear = t(function () { set('f-task', ''); set('f-ok', ''); set('f-target', ''); });
            r.next_page = t(function () { document.getElementById('page-next').click(); });
            r.open_trajectory = t(function () { document.querySelector('tr.traj-row').click(); });
            r.rows = document.querySelectorAll('tr.traj-row').length;
            return r;""")
        return {"load_s": load, "ready_ms": ready, **timing}
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", type=Path, default=None, help="source run folder (default: build a small real one)")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="seconds-long check: a one-update, 3-task source run "
                        "replicated to 50 trajectories (what the test suite runs; browser timings where Chromium is "
                        "installed)")
    args = parser.parse_args()
    if args.smoke:
        args.n = 50
    work = Path(tempfile.mkdtemp(prefix="agentgym-report-bench-"))
    try:
        source = args.run
        if source is None:
            from tests.report.runs import EVAL_TASKS, TRAIN_TASKS, make_run
            t0 = time.perf_counter()
            smoke = {"updates": 1, "train_tasks": TRAIN_TASKS[:2], "eval_tasks": EVAL_TASKS[:1]} if args.smoke else {}
            source = make_run(work / "source", **smoke)
            print(f"built a real source run in {time.perf_counter() - t0:.1f}s")
        n_src = sum(1 for _ in read_trajectories(source / "trajectories.jsonl"))
        browser = not args.no_browser and os.path.exists("/usr/bin/chromium") and os.path.exists("/usr/bin/chromedriver")
        print(f"source: {source} ({n_src} real trajectories), replicated to {args.n:,}")
        rows = []
        for unique in (False, True):
            label = "all unique" if unique else "replicated"
            run = scaled_run(source, work / label.replace(" ", "_"), args.n, unique)
            jsonl_mb = (run / "trajectories.jsonl").stat().st_size / 1e6
            t0 = time.perf_counter()
            page = build_report(run, work / f"{label.replace(' ', '_')}.html")
            render = time.perf_counter() - t0
            row = {"variant": label, "jsonl_MB": jsonl_mb, "render_s": render,
                   "render_MB_per_s": jsonl_mb / render, "page_MB": page.stat().st_size / 1e6,
                   "page_KB_per_traj": page.stat().st_size / 1e3 / args.n}
            if browser:
                row.update(browser_timings(page))
            rows.append(row)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        print()
        print(f"{'':18}" + "".join(f"{r['variant']:>14}" for r in rows) + f"{'ratio':>10}")
        for k in keys[1:]:
            vals = [r.get(k) for r in rows]
            cells = "".join(f"{v:>14.3f}" if isinstance(v, float) else f"{v!s:>14}" for v in vals)
            ratio = (f"{vals[1] / vals[0]:>10.2f}" if all(isinstance(v, (int, float)) for v in vals) and vals[0]
                     else "")
            print(f"{k:18}{cells}{ratio}")
        print("\ntimes in ms unless suffixed _s; page_MB / jsonl_MB = the HTML vs the raw trajectories file")
        if not browser:
            print("(browser timings skipped: no /usr/bin/chromium + chromedriver, or --no-browser)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
