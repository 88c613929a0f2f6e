"""The chat UI in a real browser: headless Debian Chromium driven by Playwright, against the whole mesh (real
models) as `chatqna up` starts it, the UI included. Each step saves a screenshot under test-artifacts/ui/.

The steps share one mesh and one signed-in page and run in file order: sign in, upload and watch the bar reach
done, ask and see the first words before the answer is complete, the right source, feedback, reload and find the
conversation, stop a long answer, and a plain user (phone width, dark theme) who finds no admin page.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from comps.runtime.mesh import Supervisor
from tests.support.procs import REPO, local_mesh

playwright = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; Playwright's own browser download is not used
ARTIFACTS = REPO / "test-artifacts" / "ui"
ADMIN = ("ui-admin", "ui-" + uuid.uuid4().hex)
PLAIN = ("ui-user", "user-" + uuid.uuid4().hex)
DOCUMENT = (
    "The Zorblax-7 reactor in Quellmoor was commissioned on 14 March 2031 by the engineer Idris Vantablack. "
    "Its coolant is liquid gallium and it produces 420 megawatts. Report " + uuid.uuid4().hex[:8] + "."
)
QUESTION = "Who commissioned the Zorblax-7 reactor in Quellmoor?"
STORY = "Write a very long story about a dragon who learns to cook, with many chapters."
WAIT_MS = 180_000  # an answer on a loaded 2-core machine


@pytest.fixture(scope="module")
def sup(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (make test does)")
    with local_mesh(models_dir, tmp_path_factory.mktemp("state"), ADMIN) as supervisor:
        yield supervisor


@pytest.fixture(scope="module")
def urls(sup: Supervisor) -> dict[str, str]:
    assert sup.mesh is not None
    return {name: sup.mesh.url(name) for name in ("ui", "gateway", "llm")}


@pytest.fixture(scope="module")
def admin_headers(urls: dict[str, str]) -> dict[str, str]:
    r = httpx.post(f"{urls['gateway']}/v1/auth/login", json={"username": ADMIN[0], "password": ADMIN[1]}, timeout=30)
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture(scope="module")
def shots() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    print(f"\nscreenshots: {ARTIFACTS}")
    return ARTIFACTS


@pytest.fixture(scope="module")
def browser(sup: Supervisor) -> Iterator[object]:
    """Started after the mesh: Playwright's sync API keeps an event loop running in this thread."""
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser, urls: dict[str, str]) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
    context.set_default_timeout(60_000)
    yield context.new_page()
    context.close()


def sign_in(page, url: str, user: tuple[str, str]) -> None:
    page.goto(url)
    page.get_by_role("textbox", name="Username").fill(user[0])
    page.get_by_role("textbox", name="Password").fill(user[1])
    page.get_by_role("textbox", name="Password").press("Enter")  # the keyboard alone
    page.get_by_text("Signed in as").wait_for()


def nav(page, name: str):
    """A page's link in the top navigation."""
    return page.get_by_test_id("stTopNavLink").filter(has_text=name)


def llm_metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


def last_answer(page):
    return page.get_by_test_id("stChatMessage").filter(has=page.get_by_test_id("stChatMessageAvatarAssistant")).last


def ask(page, question: str) -> int:
    """Type the question and press Enter; the number of messages on screen before it."""
    before = page.get_by_test_id("stChatMessage").count()
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(question)
    box.press("Enter")
    return before


def answer_text(page) -> str:
    return last_answer(page).get_by_test_id("stMarkdown").first.inner_text()


def wait_first_words(page, before: int) -> str:
    """The new answer's text once its first words are on screen: the question and the answer are the two newest
    messages, and the answer's first element is current (not left over from the previous run) and has text."""
    page.wait_for_function(
        """(before) => {
             const ms = [...document.querySelectorAll('[data-testid=stChatMessage]')];
             if (ms.length < before + 2) return false;
             const t = ms[ms.length - 1].querySelector('[data-testid=stMarkdown]');
             const el = t && t.closest('[data-testid=stElementContainer]');
             return el && el.getAttribute('data-stale') !== 'true' && t.innerText.trim()
                    && !t.innerText.includes('Searching your documents'); }""",
        arg=before,
        timeout=WAIT_MS,
    )
    return answer_text(page)


def stop_button(page):
    return last_answer(page).get_by_role("button", name=re.compile("Stop"))


def answer_done(page) -> None:
    """The answer is complete once its feedback buttons show (the page reran after the stream ended)."""
    last_answer(page).get_by_test_id("stFeedback").wait_for(timeout=WAIT_MS)


def test_sign_in(page, urls: dict[str, str], shots: Path) -> None:
    sign_in(page, urls["ui"], ADMIN)
    nav(page, "Admin").wait_for()
    page.get_by_test_id("stChatInputTextArea").wait_for()
    page.get_by_test_id("stSelectbox").first.wait_for()  # the pickers are loaded
    page.screenshot(path=shots / "01-signed-in.png", full_page=True)


def test_upload_a_document_and_see_its_bar_reach_done(page, urls: dict[str, str], shots: Path, tmp_path) -> None:
    nav(page, "Documents").click()
    page.get_by_text("Add documents").wait_for()
    doc = tmp_path / "zorblax.txt"
    doc.write_text(DOCUMENT)
    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(str(doc))
    page.get_by_text("zorblax.txt").first.wait_for()
    page.get_by_role("button", name=re.compile("^.*Add$")).click()
    page.get_by_text(re.compile(r"zorblax\.txt: done \(\d+ chunks\)")).wait_for(timeout=WAIT_MS)
    bar = page.get_by_test_id("stProgress").get_by_role("progressbar").first
    assert bar.get_attribute("aria-valuenow") == "100"
    page.get_by_text("All documents are in.").wait_for()
    page.screenshot(path=shots / "02-upload-done.png", full_page=True)


def test_ask_and_see_the_first_words_before_the_answer_is_complete(page, shots: Path) -> None:
    nav(page, "Chat").click()
    page.get_by_test_id("stChatInputTextArea").wait_for()
    first = wait_first_words(page, ask(page, QUESTION))
    still_streaming = stop_button(page).count() == 1
    page.screenshot(path=shots / "03-first-words.png", full_page=True)
    answer_done(page)
    final = answer_text(page)
    page.screenshot(path=shots / "04-answer.png", full_page=True)
    assert still_streaming, "the first words only appeared once the answer was complete"
    assert final.startswith(first.strip()[:10]) and len(final) > len(first), (first, final)


def test_the_right_source_is_under_the_answer(page, shots: Path) -> None:
    answer = last_answer(page)
    answer.get_by_text(re.compile(r"Sources \(\d+\)")).click()
    expander = answer.get_by_test_id("stExpander")
    expander.get_by_text("zorblax.txt").first.wait_for()
    assert "Idris Vantablack" in expander.inner_text()
    page.screenshot(path=shots / "05-sources.png", full_page=True)


def test_feedback_is_stored(page, urls: dict[str, str], admin_headers: dict[str, str], shots: Path) -> None:
    last_answer(page).get_by_role("radio", name="Thumbs up").click()
    page.get_by_text("Thanks for the feedback.").wait_for()
    page.screenshot(path=shots / "06-feedback.png", full_page=True)
    conversations = httpx.get(f"{urls['gateway']}/v1/conversations", headers=admin_headers, timeout=10).json()["data"]
    newest = conversations[0]
    messages = httpx.get(
        f"{urls['gateway']}/v1/conversations/{newest['id']}/messages", headers=admin_headers, timeout=10
    ).json()["data"]
    answers = [m for m in messages if m["role"] == "assistant"]
    assert answers[-1]["feedback"]["thumbs_up"] is True


def test_reload_and_find_the_conversation_with_its_turns(page, shots: Path) -> None:
    page.reload()
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text("Signed in as").wait_for()  # still signed in after a reload
    page.get_by_role("button", name=QUESTION).first.click()
    messages = page.get_by_test_id("stChatMessage")
    messages.filter(has_text=QUESTION).first.wait_for()
    assert messages.count() == 2 and "Vantablack" in messages.nth(1).inner_text()
    page.screenshot(path=shots / "07-reloaded-conversation.png", full_page=True)


def test_stop_a_long_answer(page, urls: dict[str, str], admin_headers: dict[str, str], shots: Path) -> None:
    page.get_by_role("button", name=re.compile("New chat")).click()
    page.get_by_text("Advanced").click()
    page.get_by_text("Search my documents").click()  # the model alone: a story runs to the token limit
    tokens = page.get_by_role("spinbutton", name=re.compile("Max answer tokens"))
    tokens.fill("400")
    tokens.press("Enter")
    page.get_by_test_id("stChatMessage").first.wait_for(state="detached")
    wait_first_words(page, ask(page, STORY))
    before = llm_metric(urls["llm"], "chatqna_llm_generated_tokens_total")
    stop_button(page).click()
    last_answer(page).get_by_text("Stopped before the end.").wait_for()
    deadline = time.monotonic() + 20
    while llm_metric(urls["llm"], "chatqna_llm_active_sequences") != 0.0:
        assert time.monotonic() < deadline, "the LLM kept generating after the stop button"
        time.sleep(0.1)
    assert llm_metric(urls["llm"], "chatqna_llm_generated_tokens_total") - before < 300
    page.screenshot(path=shots / "08-stopped.png", full_page=True)
    newest = httpx.get(f"{urls['gateway']}/v1/conversations", headers=admin_headers, timeout=10).json()["data"][0]
    messages = httpx.get(
        f"{urls['gateway']}/v1/conversations/{newest['id']}/messages", headers=admin_headers, timeout=10
    ).json()["data"]
    assert messages[-1]["role"] == "assistant" and messages[-1]["cut_short"] is True


def test_a_plain_user_finds_no_admin_page(browser, urls: dict[str, str], admin_headers: dict[str, str], shots) -> None:
    body = {"username": PLAIN[0], "password": PLAIN[1], "role": "user"}
    r = httpx.post(f"{urls['gateway']}/v1/admin/users", json=body, headers=admin_headers, timeout=10)
    assert r.status_code == 201, r.text
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")  # a phone, dark
    context.set_default_timeout(60_000)
    try:
        phone = context.new_page()
        sign_in(phone, urls["ui"], PLAIN)
        phone.get_by_test_id("stChatInputTextArea").wait_for()
        assert phone.get_by_test_id("stTopNavLink").count() in (0, 2)  # at phone width the links fold into a menu
        assert nav(phone, "Admin").count() == 0 and phone.get_by_text("Admin", exact=True).count() == 0
        phone.screenshot(path=shots / "09-plain-user-phone-dark.png", full_page=True)
        phone.goto(urls["ui"] + "/admin")
        phone.get_by_text("Signed in as").wait_for()
        assert phone.get_by_role("tab", name="Users").count() == 0
        assert phone.get_by_role("heading", name="Admin").count() == 0
        phone.screenshot(path=shots / "10-plain-user-no-admin.png", full_page=True)
    finally:
        context.close()
