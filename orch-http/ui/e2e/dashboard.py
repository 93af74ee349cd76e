"""The dashboard end to end: a real headless Chromium (Debian's, driven by Playwright) against a
real orchd on a fresh data directory.

It signs in, dispatches a task and sees it reach `succeeded` without reloading, opens its
timeline, retries a failed task (failed and then run by this script acting as an external
worker through the API) and sees it succeed, pauses an engine and sees its new task wait,
resumes it, and signs in as a viewer who is offered no operator action and is refused one.
It saves screenshots of the overview and of a task's detail, then fills the store with
100,000 tasks, restarts orchd and measures how long a cold browser takes to render the
overview and the first page of the task list (printed, and written as JSON).

Usage: python dashboard.py ORCHD [--screenshots DIR] [--figures FILE] [--tasks N]
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

ADMIN_PASSWORD = "dashboard-e2e-admin"
VIEWER_PASSWORD = "dashboard-e2e-viewer"
CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orchd:
    """One orchd process on a data directory; stopped with SIGTERM."""

    def __init__(self, binary, data_dir, port, log_dir):
        self.binary, self.data_dir, self.port, self.log_dir = binary, data_dir, port, log_dir
        self.base = f"http://127.0.0.1:{port}"
        self.process = None
        self.token = None

    def start(self):
        env = dict(os.environ, ORCH_LISTEN=f"127.0.0.1:{self.port}",
                   ORCH_ADMIN_PASSWORD=ADMIN_PASSWORD, RUST_LOG="warn")
        out = open(os.path.join(self.log_dir, "orchd.out"), "ab")
        err = open(os.path.join(self.log_dir, "orchd.err"), "ab")
        self.process = subprocess.Popen([self.binary, "--data-dir", self.data_dir], env=env,
                                        stdout=out, stderr=err)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"orchd exited with {self.process.returncode}; see {self.log_dir}")
            try:
                urllib.request.urlopen(f"{self.base}/health/live", timeout=1).read()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        else:
            raise SystemExit("orchd did not answer within 60 s")
        self.token = self.call("POST", "/auth/login",
                               {"username": "admin", "password": ADMIN_PASSWORD})["access_token"]

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)

    def call(self, method, path, body=None, expect_status=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, text = error.code, error.read()
        if expect_status is not None:
            assert status == expect_status, f"{method} {path}: {status} {text[:300]!r}"
        elif status >= 400:
            raise AssertionError(f"{method} {path}: {status} {text[:300]!r}")
        return json.loads(text) if text else None


def claim_one(orchd, core):
    """Claims one task of `core` as an external worker, waiting up to 10 s for it."""
    deadline = time.time() + 10
    while time.time() < deadline:
        answer = orchd.call("POST", "/jobs/claim", {"core_id": core, "limit": 1, "lease": 60})
        if answer["tasks"]:
            return answer["tasks"][0]
        time.sleep(0.1)
    raise AssertionError(f"nothing to claim for {core}")


def launch(playwright):
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    return playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)


def watch_console(page, errors):
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))


def screenshot(page, path):
    """A screenshot without the passing notices."""
    page.evaluate("document.getElementById('toast').replaceChildren()")
    page.screenshot(path=path)


def sign_in(page, base, username, password):
    page.goto(f"{base}/ui")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#whoami")).to_have_text(f"{username} ({'admin' if username == 'admin' else 'viewer'})")


def operator_journey(browser, orchd, screenshots, errors):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    watch_console(page, errors)
    page.on("dialog", lambda dialog: dialog.accept())
    sign_in(page, orchd.base, "admin", ADMIN_PASSWORD)
    expect(page.get_by_test_id("totals")).to_be_visible()
    expect(page.locator("#live")).to_have_class("live on")
    page.evaluate("window.__sameDocument = true")

    # Dispatch from the page; the task's detail follows it to `succeeded` over the live stream.
    page.get_by_role("link", name="Tasks").click()
    form = page.get_by_role("form", name="Dispatch a task")
    form.get_by_label("Engine").fill("sleep")
    form.get_by_label("Payload (JSON)").fill('{"ms": 1500}')
    form.get_by_role("button", name="Dispatch").click()
    status = page.get_by_test_id("task-status")
    expect(status).not_to_have_text("succeeded", timeout=1000)
    expect(status).to_have_text("succeeded", timeout=15000)
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    timeline = page.get_by_test_id("timeline")
    expect(timeline).to_contain_text("task.queued")
    expect(timeline).to_contain_text("task.started")
    expect(timeline).to_contain_text("task.succeeded")
    expect(page.get_by_test_id("task-result")).to_contain_text('"slept_ms": 1500')

    # A task that fails for good (this script is its external worker), retried from the page.
    failing = orchd.call("POST", "/dispatch", {"core_id": "e2e-worker", "max_attempts": 1,
                                               "payload": {"invoice": 42}})
    claimed = claim_one(orchd, "e2e-worker")
    assert claimed["task"]["task_id"] == failing["task_id"]
    orchd.call("PUT", f"/jobs/{failing['task_id']}/status",
               {"lease_token": claimed["lease_token"], "status": "failed",
                "error": "upstream answered 503", "retryable": False})
    page.goto(f"{orchd.base}/ui#/tasks/{failing['task_id']}")
    expect(status).to_have_text("failed")
    expect(page.get_by_test_id("task-error")).to_have_text("upstream answered 503")
    page.get_by_role("button", name="Retry").click()
    expect(status).to_have_text("queued")
    claimed = claim_one(orchd, "e2e-worker")
    assert claimed["task"]["task_id"] == failing["task_id"]
    expect(status).to_have_text("running")
    orchd.call("PUT", f"/jobs/{failing['task_id']}/status",
               {"lease_token": claimed["lease_token"], "status": "succeeded",
                "result": {"paid": True}})
    expect(status).to_have_text("succeeded")
    expect(timeline).to_contain_text("task.failed")
    expect(timeline).to_contain_text("task.reopened")
    screenshot(page, os.path.join(screenshots, "dashboard-task.png"))

    # Pause `echo` from the engines view: a new task waits; resumed, it runs.
    page.get_by_role("link", name="Engines").click()
    row = page.locator("tr[data-engine=echo]")
    row.get_by_role("button", name="Pause").click()
    expect(row).to_contain_text("paused")
    expect(row).to_contain_text("by user:admin")
    waiting = orchd.call("POST", "/dispatch", {"core_id": "echo", "payload": {"n": 1}})
    page.goto(f"{orchd.base}/ui#/tasks/{waiting['task_id']}")
    expect(status).to_have_text("queued")
    page.wait_for_timeout(1500)
    expect(status).to_have_text("queued")
    page.get_by_role("link", name="Engines").click()
    row.get_by_role("button", name="Resume").click()
    expect(row.get_by_role("button", name="Pause")).to_be_visible()
    page.goto(f"{orchd.base}/ui#/tasks/{waiting['task_id']}")
    expect(status).to_have_text("succeeded", timeout=15000)

    # The live stream view has seen all of it.
    page.get_by_role("link", name="Live events").click()
    expect(page.get_by_test_id("event-list")).to_contain_text("engine.resumed")
    for view in ("Locks", "Plugins", "Users"):
        page.get_by_role("link", name=view).click()
        expect(page.get_by_role("heading", name=view, exact=True)).to_be_visible()

    page.get_by_role("link", name="Overview").click()
    expect(page.get_by_test_id("totals").locator("[data-state=succeeded]")).to_have_text("3")
    screenshot(page, os.path.join(screenshots, "dashboard-overview.png"))

    # The narrow window: still usable.
    page.set_viewport_size({"width": 420, "height": 800})
    page.get_by_role("link", name="Tasks").click()
    expect(page.get_by_test_id("task-list")).to_be_visible()
    context.close()
    return failing["task_id"]


def viewer_journey(browser, orchd, task_id, errors):
    orchd.call("POST", "/users", {"username": "watcher", "password": VIEWER_PASSWORD,
                                  "role": "viewer"}, expect_status=201)
    queued = orchd.call("POST", "/dispatch", {"core_id": "nobody-serves-this"})
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    expected_refusal = []
    page.on("console", lambda m: m.type == "error" and (
        expected_refusal.append(m.text) if "403" in m.text else errors.append(m.text)))
    page.on("pageerror", lambda e: errors.append(str(e)))
    sign_in(page, orchd.base, "watcher", VIEWER_PASSWORD)
    expect(page.get_by_role("link", name="Users")).to_be_hidden()

    page.get_by_role("link", name="Tasks").click()
    expect(page.get_by_test_id("task-list")).to_be_visible()
    expect(page.get_by_role("form", name="Dispatch a task")).to_have_count(0)
    page.goto(f"{orchd.base}/ui#/tasks?status=queued")
    expect(page.get_by_test_id("task-list")).to_contain_text(queued["task_id"][:8])
    expect(page.get_by_role("button", name="Cancel all…")).to_have_count(0)
    page.goto(f"{orchd.base}/ui#/tasks/{queued['task_id']}")
    expect(page.get_by_test_id("task-status")).to_have_text("queued")
    for name in ("Cancel", "Retry", "Delete"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    page.goto(f"{orchd.base}/ui#/tasks/{task_id}")
    expect(page.get_by_test_id("task-status")).to_have_text("succeeded")
    expect(page.get_by_role("button", name="Delete")).to_have_count(0)
    page.get_by_role("link", name="Engines").click()
    expect(page.get_by_test_id("engine-list")).to_be_visible()
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)

    # Asked anyway, with the session's own CSRF token, the API refuses.
    status = page.evaluate("""async (id) => {
        const csrf = document.cookie.split('; ').find(c => c.startsWith('orch_csrf=')).slice(10);
        const r = await fetch(`/jobs/${id}/cancel`, {method: 'POST', headers: {'X-CSRF-Token': csrf}});
        return r.status;
    }""", queued["task_id"])
    assert status == 403, f"a viewer's cancel answered {status}"
    assert orchd.call("GET", f"/jobs/{queued['task_id']}")["status"] == "queued"
    context.close()


def measure_cold_render(playwright, orchd, tasks, figures):
    """Fills the store with `tasks` tasks, restarts orchd, and times a cold browser."""
    per_call = 10_000
    left = tasks
    while left > 0:
        n = min(per_call, left)
        orchd.call("POST", "/workflows", {"tasks": [{"core_id": "parked", "payload": {"i": i}}
                                                    for i in range(n)]}, expect_status=201)
        left -= n
    counts = orchd.call("GET", "/stats")["totals"]
    assert counts["queued"] >= tasks, counts
    orchd.stop()
    orchd.start()
    results = {"tasks_in_store": sum(v for v in counts.values() if isinstance(v, int))}
    for name, fragment, selector in (
        ("overview", "", "[data-testid=totals] [data-state=queued]"),
        ("task_list", "#/tasks", "[data-testid=task-list] tbody tr[data-task]"),
    ):
        samples = []
        for _ in range(3):
            browser = launch(playwright)
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            login = context.request.post(f"{orchd.base}/auth/login", data={
                "username": "admin", "password": ADMIN_PASSWORD, "cookie": True})
            assert login.ok, login.status
            page = context.new_page()
            started = time.perf_counter()
            page.goto(f"{orchd.base}/ui{fragment}")
            page.wait_for_selector(selector)
            samples.append(round((time.perf_counter() - started) * 1000, 1))
            if name == "task_list":
                assert page.locator("[data-testid=task-list] tbody tr").count() == 50
            browser.close()
        results[f"{name}_ms"] = samples
    print(f"cold render with {results['tasks_in_store']:,} tasks: "
          f"overview {results['overview_ms']} ms, first task page {results['task_list_ms']} ms")
    if figures:
        with open(figures, "w") as out:
            json.dump(results, out, indent=2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("orchd")
    parser.add_argument("--screenshots", default="docs")
    parser.add_argument("--figures", default=None)
    parser.add_argument("--tasks", type=int, default=100_000)
    args = parser.parse_args()
    os.makedirs(args.screenshots, exist_ok=True)
    work = tempfile.mkdtemp(prefix="orch-dashboard-")
    orchd = Orchd(os.path.abspath(args.orchd), os.path.join(work, "data"), free_port(), work)
    errors = []
    try:
        orchd.start()
        with sync_playwright() as playwright:
            browser = launch(playwright)
            task_id = operator_journey(browser, orchd, args.screenshots, errors)
            viewer_journey(browser, orchd, task_id, errors)
            browser.close()
            assert not errors, f"console errors: {errors}"
            print("dashboard journeys passed (operator, viewer); screenshots in", args.screenshots)
            if args.tasks:
                measure_cold_render(playwright, orchd, args.tasks, args.figures)
    except BaseException:
        for name in ("orchd.out", "orchd.err"):
            path = os.path.join(work, name)
            if os.path.exists(path):
                sys.stderr.write(f"--- {name}\n{open(path).read()[-4000:]}\n")
        raise
    finally:
        orchd.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
