"""The report in a real headless Chromium: loads cleanly from file://, filters, highlights the
learner's target spans exactly, compares two runs, and never runs injected script."""

from __future__ import annotations

import pytest

from agentgym.report import build_report, build_view
from agentgym.store import read_trajectories
from tests.report.conftest import HOSTILE_CLOSE, HOSTILE_IMG, HOSTILE_SCRIPT, PWNED

pytestmark = pytest.mark.browser


def _open(driver, path):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))


def _errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def _rows(driver):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, "#traj-list tr.traj-row")


def _select(driver, element_id, value):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    Select(driver.find_element(By.ID, element_id)).select_by_value(value)


def test_report_loads_filters_and_highlights_targets(browser, run_a, run_b, tiny_tokenizer, artifacts, tmp_path):
    from selenium.webdriver.common.by import By

    out = build_report(run_a, tmp_path / "report.html", compare=run_b)
    trajs = list(read_trajectories(run_a / "trajectories.jsonl"))
    _open(browser, out)
    assert _errors(browser) == []
    from agentgym.report.svg import CURVE_METRICS
    assert len(browser.find_elements(By.CSS_SELECTOR, "#curves svg.chart")) == len(CURVE_METRICS)  # 6 curves

    total = len(trajs)
    assert len(_rows(browser)) == total
    assert browser.find_element(By.ID, "f-count").text == f"{total} of {total} trajectories"

    # outcome filter: exactly the failures are listed
    _select(browser, "f-ok", "0")
    failures = [i for i, t in enumerate(trajs) if not t.success]
    assert 0 < len(failures) < total
    assert [int(r.get_attribute("data-traj")) for r in _rows(browser)] == failures
    _select(browser, "f-ok", "")

    # target filter: exactly the trajectories the learner selected targets on
    _select(browser, "f-target", "1")
    with_targets = [i for i, t in enumerate(trajs) if t.targets]
    assert 0 < len(with_targets) < total
    assert [int(r.get_attribute("data-traj")) for r in _rows(browser)] == with_targets

    # task filter (typed): only that task
    task = browser.find_element(By.ID, "f-task")
    task.send_keys("multi_turn_base_3")
    rows = _rows(browser)
    assert rows and all(r.get_attribute("data-task") == "multi_turn_base_3" for r in rows)
    browser.execute_script("arguments[0].value = ''; arguments[0].dispatchEvent(new Event('input'))", task)
    assert [int(r.get_attribute("data-traj")) for r in _rows(browser)] == with_targets

    # open every listed trajectory; each highlighted span is the decoded text of the target tokens
    checked = 0
    for row in _rows(browser):
        row.click()
        traj = trajs[int(row.get_attribute("data-traj"))]
        detail = browser.find_element(By.CSS_SELECTOR, f".detail[data-traj='{row.get_attribute('data-traj')}']")
        for k, target in enumerate(traj.targets):
            marks = detail.find_elements(By.CSS_SELECTOR, f"section.step[data-step='{target.step}'] mark.tgt")
            marked = "".join(m.get_attribute("textContent") for m in marks
                             if str(k) in m.get_attribute("data-targets").split(","))
            ids = traj.steps[target.step].action_ids[target.span[0]:target.span[1]]
            assert marked == tiny_tokenizer.decode(ids, skip_special_tokens=True)
            assert marked and "whole" not in marks[0].get_attribute("class")
            checked += 1
        assert detail.find_elements(By.CSS_SELECTOR, ".fb[data-kind='error']")
    assert checked == sum(len(t.targets) for t in trajs)
    browser.execute_script("window.scrollTo(0, 0)")
    browser.save_screenshot(str(artifacts / "report.png"))  # summary and learning curves
    browser.execute_script("document.querySelector('section.step.has-target').scrollIntoView()")
    browser.save_screenshot(str(artifacts / "report_target_step.png"))  # a highlighted span

    # side by side: a shared task opens one trajectory of each run
    _select(browser, "f-target", "")
    cmp_rows = browser.find_elements(By.CSS_SELECTOR, "#cmp-list tr.cmp-row")
    assert [r.get_attribute("data-task") for r in cmp_rows] == ["multi_turn_base_0", "multi_turn_base_1",
                                                                "multi_turn_base_3"]
    cmp_rows[0].click()
    columns = browser.find_elements(By.CSS_SELECTOR, "#cmp-side > div")
    assert [c.get_attribute("data-run") for c in columns] == ["hint_sd", "grpo"]
    assert all(c.find_elements(By.CSS_SELECTOR, ".detail section.step") for c in columns)
    browser.save_screenshot(str(artifacts / "report_compare.png"))
    assert _errors(browser) == []


def test_hostile_content_shows_as_text_and_never_runs(browser, hostile_file, artifacts, tmp_path):
    from selenium.webdriver.common.by import By

    out = build_view(hostile_file, tmp_path / "hostile.html")
    _open(browser, out)
    for row in _rows(browser):
        row.click()
    for compare in browser.find_elements(By.CSS_SELECTOR, "details"):
        browser.execute_script("arguments[0].open = true", compare)
    assert browser.execute_script(f"return typeof {PWNED}") == "undefined"
    assert browser.find_elements(By.CSS_SELECTOR, "main script, main img, .detail iframe") == []
    text = browser.execute_script("return document.querySelector('main').textContent")
    for needle in (HOSTILE_SCRIPT, HOSTILE_IMG, HOSTILE_CLOSE):
        assert needle in text
    assert "the full text has 1,000," in text and "20,000 shown" in text  # the 1 MB observation is cut, and says so
    assert _errors(browser) == []  # not even a blocked attempt (CSP) was logged
    browser.execute_script("document.querySelector('.detail').scrollIntoView()")
    browser.save_screenshot(str(artifacts / "hostile.png"))
