"""The course hub end to end, as a course meets it: hub/jupyterhub_config.py with real unix users, in Chromium.

The lecturer releases a1 in formgrader; two students log in, fetch it in the Assignment List, write their answers
(one correct, one partly), save and submit; the lecturer collects in formgrader, grades with the course's grader
(``grade.py``: the sandbox and the judge), generates and releases feedback; each student fetches feedback and sees
their own score and nothing of the other's. Also: a student cannot read the lecturer's course folder or list the
exchange's inbound folder, and what a student drops into inbound (a link to the lecturer's source, a folder named
after another student) is not collected.

Needs root (it creates users and runs the hub as JupyterHub's LocalProcessSpawner requires), Debian's chromium,
playwright, and configurable-http-proxy (`make hub-deps`). hub/prepare.py builds a course environment every user
can run when the test's own is not (a Python under /root): a few minutes, once per machine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHP = ROOT / "hub" / "node_modules" / ".bin" / "configurable-http-proxy"
LAB = "a1_mla"

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "the hub test creates unix users and runs JupyterHub as root"
    if not shutil.which("useradd") or not shutil.which("chpasswd"):
        return "useradd/chpasswd are missing"
    if not Path("/usr/bin/chromium").exists():
        return "Debian's chromium is missing (make browser-deps)"
    if not CHP.exists():
        return "configurable-http-proxy is missing (make hub-deps)"
    if shutil.which("jupyterhub", path=str(Path(sys.executable).parent)) is None:
        return "jupyterhub is not installed (pip install -e '.[dev]')"
    if not shutil.which("bwrap"):
        return "bubblewrap is missing (make grading-deps)"
    private = [p for p in ROOT.parents if not p.stat().st_mode & 0o001]
    if private:  # the hub's users import the course package from this checkout (hub/prepare.py)
        return f"{private[0]} is not searchable by other users, so the hub's users cannot reach this checkout"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_as(user: str, command: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["su", user, "-s", "/bin/bash", "-c", command], capture_output=True, text=True,
                          env=env, check=False)


class Hub:
    def __init__(self, tmp: Path):
        tag = secrets.token_hex(3)
        self.lecturer, self.students = f"mmlect{tag}", [f"mmstu{tag}a", f"mmstu{tag}b"]
        self.passwords = {u: secrets.token_urlsafe(12) for u in [self.lecturer, *self.students]}
        self.tmp, self.port = tmp, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.exchange = tmp / "exchange"
        self.env = dict(os.environ, MINIMOE_EXCHANGE=str(self.exchange), MINIMOE_HUB_STATE=str(tmp / "state"),
                        MINIMOE_LECTURERS=self.lecturer, MINIMOE_STUDENTS=",".join(self.students),
                        MINIMOE_HUB_PORT=str(self.port), MINIMOE_HUB_API_PORT=str(free_port()),
                        MINIMOE_PROXY_API_PORT=str(free_port()), NO_PROXY="127.0.0.1")
        self.proc = None

    def start(self) -> None:
        for user, password in self.passwords.items():
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", user], check=True)
            subprocess.run(["chpasswd"], input=f"{user}:{password}\n", text=True, check=True)
        subprocess.run([sys.executable, str(ROOT / "hub" / "prepare.py")], env=self.env, check=True)
        for line in (self.tmp / "state" / "env.env").read_text().split():
            key, value = line.split("=", 1)
            self.env[key] = value
        self.bin = Path(self.env["MINIMOE_HUB_ENV"]) / "bin"
        self.log = open(self.tmp / "hub.log", "w")
        self.proc = subprocess.Popen([str(Path(sys.executable).parent / "jupyterhub"), "-f",
                                      str(ROOT / "hub" / "jupyterhub_config.py")], cwd=self.tmp, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/hub/login", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(1)
        raise RuntimeError("JupyterHub did not start:\n" + (self.tmp / "hub.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
            self.log.close()
        for user in self.passwords:
            subprocess.run(["pkill", "-KILL", "-u", user], check=False)
            subprocess.run(["userdel", "--remove", user], capture_output=True, check=False)

    def course(self) -> Path:
        return Path(os.path.expanduser(f"~{self.lecturer}")) / "minimoe-course"


@pytest.fixture(scope="module")
def hub():
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    tmp = Path(tempfile.mkdtemp(prefix="minimoe-hub-"))
    tmp.chmod(0o755)
    hub = Hub(tmp)
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium",
                              args=["--no-sandbox", "--disable-background-networking"])
        yield b
        b.close()


def login(browser, hub: Hub, user: str):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", hub.passwords[user])
    page.click("#login_submit")
    # The user's server started and JupyterLab's menu bar is up (a second login restores the last workspace, so
    # the launcher may not be there).
    page.wait_for_selector(".lm-MenuBar-itemLabel:text('Nbgrader')", timeout=240_000)
    return page


def formgrader_action(page, hub: Hub, action: str) -> str:
    """Click an action of a1's row in formgrader's Manage Assignments; returns the modal's text."""
    page.goto(f"{hub.url}/user/{hub.lecturer}/formgrader/manage_assignments")
    row = page.locator("tr", has=page.locator(f'td.name[data-order="{LAB}"]'))
    try:
        row.locator(f"td.{action} a").click(timeout=60_000)
        page.wait_for_selector(".modal-footer button", timeout=240_000)
    except Exception:
        page.screenshot(path=str(hub.tmp.parent / f"minimoe-hub-{action}.png"))
        raise AssertionError(f"formgrader's {action} failed; the page said:\n{page.inner_text('body')[-3000:]}")
    text = page.inner_text(".modal-body")
    page.click(".modal-footer button")
    return text


def assignment_list(page):
    page.click("text=Nbgrader")
    page.click(".lm-Menu-itemLabel:text('Assignment List')")
    page.wait_for_selector("text=Released assignments", timeout=60_000)


def answers(all_parts: bool) -> dict[str, str]:
    """The reference answer of each code answer cell (all of them, or only the first), by grade_id."""
    source = json.loads((ROOT / "assignments" / "source" / LAB / f"{LAB}.ipynb").read_text())
    out = {}
    for cell in source["cells"]:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell["cell_type"] == "code" and meta.get("solution"):
            text = "".join(cell["source"])
            out[meta["grade_id"]] = re.sub(r"^\s*### (BEGIN|END) SOLUTION\s*\n", "", text, flags=re.MULTILINE)
    return out if all_parts else dict(list(out.items())[:1])


# JupyterHub's servers check the XSRF token of every API request authenticated by cookie, GET included.
XSRF = ("const cookie = document.cookie.split('; ').find(c => c.startsWith('_xsrf=')); "
        "const xsrf = cookie ? decodeURIComponent(cookie.slice(6)) : '';")


def write_answers(page, hub: Hub, user: str, all_parts: bool) -> None:
    """Save the answers into the fetched notebook through the user's Jupyter server (the browser's session)."""
    url = f"/user/{user}/api/contents/{LAB}/{LAB}.ipynb"
    got = page.evaluate("async (url) => { " + XSRF + " const r = await fetch(url + '?content=1&type=notebook', "
                        "{headers: {'X-XSRFToken': xsrf}}); return {status: r.status, body: await r.text()}; }", url)
    assert got["status"] == 200, f"reading {user}'s fetched notebook: HTTP {got['status']}: {got['body'][:500]}"
    nb = json.loads(got["body"])["content"]
    mine = answers(all_parts)
    for cell in nb["cells"]:
        grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if grade_id in mine:
            cell["source"] = mine[grade_id]
    status = page.evaluate("async ([url, nb]) => { " + XSRF + """
        const r = await fetch(url, {method: 'PUT', headers: {'Content-Type': 'application/json',
            'X-XSRFToken': xsrf}, body: JSON.stringify({type: 'notebook', format: 'json', content: nb})});
        return r.status; }""", [url, nb])
    assert status == 200, f"saving {user}'s answers: HTTP {status}"


def test_a_semester_on_the_course_hub(hub, browser):
    lecturer = login(browser, hub, hub.lecturer)
    assert "Writing" in formgrader_action(lecturer, hub, "assign")
    assert f"Successfully released '{LAB}'" in formgrader_action(lecturer, hub, "release")

    # Two students fetch, answer (one fully, one partly), save and submit in the Assignment List.
    for student, full in zip(hub.students, (True, False)):
        page = login(browser, hub, student)
        assignment_list(page)
        page.click("button:text('Fetch')", timeout=60_000)
        page.wait_for_selector("button:text('Submit')", timeout=60_000)
        write_answers(page, hub, student, full)
        page.click("button:text('Submit')")
        page.wait_for_selector("text=Submitted assignments >> xpath=.. >> text=" + LAB, timeout=60_000)
        page.context.close()

    # What a student can reach: not the lecturer's course folder, not the list of submissions.
    intruder, victim = hub.students[1], hub.students[0]
    source = hub.course() / "source" / LAB / f"{LAB}.ipynb"
    assert run_as(intruder, f"cat {source}").returncode != 0
    inbound = hub.exchange / "minimoe" / "inbound"
    assert run_as(intruder, f"ls {inbound}").returncode != 0
    # ... and what a student drops into inbound is not collected: a link to the lecturer's source folder, newer
    # than their real submission, and a folder of theirs named as the other student's submission.
    stamp = "2099-01-01 00:00:00.000000 UTC"
    drop = (f"ln -s {source.parent} '{inbound}/{intruder}+{LAB}+{stamp}+link' && "
            f"mkdir '{inbound}/{victim}+{LAB}+{stamp}+spoof' && "
            f"echo '{stamp}' > '{inbound}/{victim}+{LAB}+{stamp}+spoof/timestamp.txt'")
    made = run_as(intruder, drop)
    assert made.returncode == 0, made.stderr

    lecturer.context.close()
    lecturer = login(browser, hub, hub.lecturer)
    collected = formgrader_action(lecturer, hub, "collect")
    assert "a symbolic link" in collected and "belongs to" in collected, collected
    submitted = hub.course() / "submitted"
    assert sorted(p.name for p in submitted.iterdir()) == sorted(hub.students)
    assert not (submitted / intruder / LAB / "timestamp.txt").read_text().startswith("2099")
    assert (submitted / victim / LAB / f"{LAB}.ipynb").exists()  # the victim's own, not the spoof

    # The lecturer grades with the course's grader: the judge, each submission in the sandbox.
    graded = run_as(hub.lecturer, f"cd {hub.course()} && {hub.bin / 'python'} grade.py {LAB} --jobs 2",
                    env=hub.env)
    assert graded.returncode == 0, graded.stdout[-3000:] + graded.stderr[-3000:]
    for action in ("generate-feedback", "release-feedback"):
        said = formgrader_action(lecturer, hub, action)
        assert "Successfully" in said and "rror" not in said, f"{action}:\n{said[-3000:]}"
    released = list((hub.exchange / "minimoe" / "feedback").glob("*.html"))
    assert len(released) == 2, (released, said[-3000:])
    lecturer.context.close()

    scores = {}
    for student in hub.students:
        page = login(browser, hub, student)
        assignment_list(page)
        page.click("button:text('Fetch Feedback')", timeout=60_000)
        try:
            page.click("a:text('view feedback')", timeout=90_000)  # opens the feedback folder in the file browser
        except Exception:
            page.screenshot(path=str(hub.tmp.parent / "minimoe-hub-feedback.png"))
            raise AssertionError("no feedback to view; the Assignment List says:\n" + page.inner_text("body")[-2500:]
                                 + "\nexchange: " + str(sorted(p.name for p in (hub.exchange / "minimoe").rglob("*")))
                                 + "\nhub log: " + (hub.tmp / "hub.log").read_text()[-3000:])
        html = page.wait_for_selector(".jp-DirListing-itemName >> text=.html", timeout=60_000).inner_text()
        folder = page.evaluate("""async (user) => {""" + XSRF + """
            const get = async (p) => (await (await fetch(`/user/${user}/api/contents/${p}`,
                {headers: {'X-XSRFToken': xsrf}})).json());
            const stamps = (await get('LAB/feedback')).content.map(c => c.path).sort();
            return stamps[stamps.length - 1]; }""".replace("LAB", LAB), student)
        feedback = page.context.new_page()
        feedback.goto(f"{hub.url}/user/{student}/files/{folder}/{html.strip()}")
        text = feedback.inner_text("body")
        other = [s for s in hub.students if s != student][0]
        assert other not in text
        score = re.search(r"Score:\s*([\d.]+)\s*/\s*([\d.]+)", text)
        assert score, text[:2000]
        scores[student] = (float(score.group(1)), float(score.group(2)))
        page.context.close()
    # The written answer is graded by hand: the correct student has every autograded point, the other some.
    sys.path.insert(0, str(ROOT / "assignments"))
    import judge
    auto = sum(item.points for item in judge.lab(LAB).ITEMS)
    (full_score, full_max), (part_score, part_max) = scores[hub.students[0]], scores[hub.students[1]]
    assert full_score == auto and full_max == part_max > auto, scores
    assert 0 < part_score < auto, scores
