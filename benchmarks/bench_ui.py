"""What the chat UI adds to the time to the first answer token: in a real browser (headless Debian Chromium driven
by Playwright), from pressing Enter to the first answer word on screen, against the gateway's own time to the
first token for that very request (its `chatqna_gateway_time_to_first_token_seconds`, read around it), and a
direct client's for the same question, side by side (rounds interleaved, order alternating) on one mesh.

    python benchmarks/bench_ui.py [--rounds 9]

It starts the whole mesh (`chatqna up`'s Supervisor, the UI included) on free 127.0.0.1 ports with the default
models, ingests one small document, and prints the medians and the UI's added time (target: <= 300 ms p50).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from comps.runtime.mesh import Supervisor  # noqa: E402
from comps.runtime.settings import RuntimeSettings  # noqa: E402
from tests.support.procs import free_runtime_ports  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
DOC = "The Brindle kettle boils 1.7 litres of water in four minutes and switches itself off when empty."
QUESTIONS = [
    "How long does the Brindle kettle take to boil?",
    "How much water does the Brindle kettle hold?",
    "What does the Brindle kettle do when it is empty?",
]
WATCH = """(before) => {
  window.__t = {};
  const box = document.querySelector('[data-testid=stChatInputTextArea]');
  box.addEventListener('keydown', e => { if (e.key === 'Enter') window.__t.enter = performance.now(); },
                       {capture: true, once: true});
  const seen = () => {
    const ms = [...document.querySelectorAll('[data-testid=stChatMessage]')];
    if (ms.length < before + 2) return;
    const t = ms[ms.length - 1].querySelector('[data-testid=stMarkdown]');
    if (t && t.innerText.trim() && !t.innerText.includes('Searching your documents') && !window.__t.first) {
      window.__t.first = performance.now(); obs.disconnect();
    }
  };
  const obs = new MutationObserver(seen);
  obs.observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def gateway_ttft(url: str, headers: dict[str, str], question: str) -> float:
    """Seconds from sending the request to the first answer token, as the UI sends it."""
    body = {"messages": question, "k": 4, "top_n": 3, "search_type": "similarity", "store": True, "stream": True}
    start = time.perf_counter()
    with httpx.stream("POST", f"{url}/v1/chatqna", json=body, headers=headers, timeout=300) as r:
        r.raise_for_status()
        first = None
        for line in r.iter_lines():
            if first is None and '"content":"' in line and '"content":""' not in line:
                first = time.perf_counter() - start
        assert first is not None, "no token"
        return first


def gateway_ttft_metric(url: str) -> tuple[float, float]:
    """The gateway's own time-to-first-token histogram: (sum of seconds, count)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = {}
    for name in ("sum", "count"):
        match = re.search(rf"^chatqna_gateway_time_to_first_token_seconds_{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
        found[name] = float(match.group(1)) if match else 0.0
    return found["sum"], found["count"]


def ui_ttft(page, question: str, gateway: str) -> tuple[float, float]:
    """Seconds from Enter to the first answer word on screen, and the gateway's own time to first token for that
    very request (its metric, read around it: one request at a time)."""
    page.get_by_role("button", name="New chat").click()
    page.get_by_test_id("stChatMessage").first.wait_for(state="detached")
    page.wait_for_load_state("networkidle")
    before = page.get_by_test_id("stChatMessage").count()
    page.evaluate(WATCH, before)
    sum_before, count_before = gateway_ttft_metric(gateway)
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(question)
    box.press("Enter")
    page.wait_for_function("() => window.__t.first", timeout=300_000)
    times = page.evaluate("() => window.__t")
    page.get_by_test_id("stChatMessage").last.get_by_test_id("stFeedback").wait_for(timeout=300_000)  # complete
    sum_after, count_after = gateway_ttft_metric(gateway)
    assert count_after - count_before == 1, "one streamed request at a time"
    return (times["first"] - times["enter"]) / 1000, sum_after - sum_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    admin = ("bench", "bench-" + uuid.uuid4().hex)
    state = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    settings = RuntimeSettings(
        CHATQNA_STATE_DIR=state,
        CHATQNA_MODELS_DIR=REPO / "models",
        CHATQNA_ADMIN_USER=admin[0],
        CHATQNA_ADMIN_PASSWORD=admin[1],
        **free_runtime_ports(),
    )
    sup = Supervisor(settings, out=lambda line: None)
    sup.start()
    try:
        assert sup.mesh is not None
        gw, ui = sup.mesh.url("gateway"), sup.mesh.url("ui")
        pair = httpx.post(f"{gw}/v1/auth/login", json={"username": admin[0], "password": admin[1]}, timeout=30)
        headers = {"Authorization": f"Bearer {pair.json()['access_token']}"}
        r = httpx.post(f"{gw}/v1/dataprep/ingest", files=[("files", ("kettle.txt", DOC.encode(), "text/plain"))],
                       headers=headers, timeout=60)  # fmt: skip
        job = r.json()["jobs"][0]["job_id"]
        deadline = time.monotonic() + 120
        while httpx.get(f"{gw}/v1/dataprep/jobs/{job}", headers=headers, timeout=10).json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "ingestion did not finish"
            time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(120_000)
            page.goto(ui)
            page.get_by_role("textbox", name="Username").fill(admin[0])
            page.get_by_role("textbox", name="Password").fill(admin[1])
            page.get_by_role("textbox", name="Password").press("Enter")
            page.get_by_test_id("stChatInputTextArea").wait_for()
            gateway_ttft(gw, headers, QUESTIONS[0])  # warm-up: models, caches, connections
            ui_ttft(page, QUESTIONS[0], gw)
            ui_s, own_s, gw_s = [], [], []
            for n in range(args.rounds):
                question = QUESTIONS[n % len(QUESTIONS)]
                if n % 2:
                    gw_s.append(gateway_ttft(gw, headers, question))
                ui, own = ui_ttft(page, question, gw)
                ui_s.append(ui)
                own_s.append(own)
                if not n % 2:
                    gw_s.append(gateway_ttft(gw, headers, question))
                print(f"round {n + 1}: ui {ui * 1000:7.0f} ms (gateway's own for it {own * 1000:7.0f} ms)   "
                      f"direct client {gw_s[-1] * 1000:7.0f} ms", flush=True)  # fmt: skip
            browser.close()
    finally:
        sup.stop()
    added = [u - g for u, g in zip(ui_s, own_s, strict=True)]
    ui_p50, own_p50, gw_p50 = statistics.median(ui_s), statistics.median(own_s), statistics.median(gw_s)
    print(f"\n{args.rounds} rounds, load average {os.getloadavg()[0]:.1f} (cores: {os.cpu_count()})")
    print(f"Enter -> first token on screen (UI, browser)       p50 {ui_p50 * 1000:7.0f} ms")
    print(f"gateway's own time to first token, same requests   p50 {own_p50 * 1000:7.0f} ms")
    print(f"direct client time to first token, same questions  p50 {gw_p50 * 1000:7.0f} ms")
    print(f"UI adds (browser - gateway's own, per request)      p50 {statistics.median(added) * 1000:7.0f} ms"
          f"   ratio {ui_p50 / own_p50:.2f}x   target <= 300 ms")  # fmt: skip


if __name__ == "__main__":
    main()
