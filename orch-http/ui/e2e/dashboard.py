"""The dashboard end to end: a real headless Chromium (Debian's, driven by Playwright) against a
real orchd on a fresh data directory.

An operator signs in, dispatches a task and sees it reach `succeeded` without reloading, opens
its timeline, retries a failed task (failed and then run by this script acting as an external
worker through the API) and sees it succeed, requeues a delayed task, cancels a filter's tasks
in bulk, pauses an engine and sees its new task wait, and resumes it. An admin frees a lock
someone waits for and sees the users. A viewer filters the task list, is offered no action
that changes anything, and is refused one asked anyway.
It saves screenshots of the overview and of a task's detail, then fills the store with
100,000 tasks, restarts orchd and measures how long a cold browser takes to render the
overview and the first page of the task list (printed, and written as JSON).

Usage: python dashboard.py ORCHD [--screenshots DIR] [--figures FILE] [--tasks N]
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

ADMIN_PASSWORD = "dashboard-e2e-admin"
OPERATOR_PASSWORD = "dashboard-e2e-operator"
VIEWER_PASSWORD = "dashboard-e2e-viewer"
# The machine's own readings (a CI host's full disk) are not what the screenshots show.
CONFIG = """monitoring:
  alert_thresholds:
    cpu_percent: 100
    memory_percent: 100
    disk_usage_percent: 100
"""
# A loaded 2-core CI machine is slow at times: waits are generous (they end as soon as the
# page is right; only a failure waits them out).
expect.set_options(timeout=15_000)
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
        config = os.path.join(self.log_dir, "orchd.yaml")
        with open(config, "w") as f:
            f.write(CONFIG)
        self.process = subprocess.Popen([self.binary, "--data-dir", self.data_dir,
                                         "--config", config], env=env, stdout=out, stderr=err)
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


def sign_in(page, base, username, password, role):
    page.goto(f"{base}/ui")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#whoami")).to_have_text(f"{username} ({role})")


def operator_journey(browser, orchd, screenshots, errors):
    """An operator's day: dispatch, follow, retry, requeue, bulk-cancel, pause and resume."""
    orchd.call("POST", "/users", {"username": "ops", "password": OPERATOR_PASSWORD,
                                  "role": "operator"}, expect_status=201)
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    watch_console(page, errors)
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    sign_in(page, orchd.base, "ops", OPERATOR_PASSWORD, "operator")
    expect(page.get_by_test_id("totals")).to_be_visible()
    expect(page.locator("#live")).to_have_class("live on")
    expect(page.get_by_role("link", name="Users", exact=True)).to_be_hidden()
    page.evaluate("window.__sameDocument = true")

    # Dispatch from the page; the task's detail follows it to `succeeded` over the live stream.
    page.get_by_role("link", name="Tasks", exact=True).click()
    form = page.get_by_role("form", name="Dispatch a task")
    form.get_by_label("Engine").fill("sleep")
    form.get_by_label("Payload (JSON)").fill('{"ms": 1500}')
    form.get_by_role("button", name="Dispatch").click()
    status = page.get_by_test_id("task-status")
    expect(status).to_have_text(re.compile("queued|running"))
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
    # Found from the keyboard: the id typed into the search field, then Enter.
    page.get_by_role("link", name="Tasks", exact=True).click()
    page.get_by_label("Find a task by id or idempotency key").fill(failing["task_id"])
    page.keyboard.press("Enter")
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
    expect(timeline).to_contain_text('"actor":"user:ops"')
    screenshot(page, os.path.join(screenshots, "dashboard-task.png"))

    # A task delayed by an hour, requeued to run now.
    later = orchd.call("POST", "/dispatch", {"core_id": "echo", "delay": 3600,
                                             "idempotency_key": "e2e-nightly-report"})
    page.get_by_role("link", name="Tasks", exact=True).click()
    page.get_by_label("State").select_option("delayed")
    page.get_by_role("button", name="Show").click()
    delayed = page.get_by_test_id("task-list").locator("tbody tr[data-task]")
    expect(delayed).to_have_count(1)
    assert delayed.first.get_attribute("data-task") == later["task_id"]
    page.get_by_role("link", name="Tasks", exact=True).click()
    # The unfiltered list replaced the filtered one (same form: wait for it, not the old one).
    expect(page).to_have_url(re.compile(r"#/tasks$"))
    expect(page.get_by_label("State")).to_have_value("")
    page.get_by_label("Find a task by id or idempotency key").fill("e2e-nightly-report")
    page.keyboard.press("Enter")
    expect(status).to_have_text("queued")
    page.get_by_role("button", name="Requeue now").click()
    expect(status).to_have_text("succeeded", timeout=15000)
    assert orchd.call("GET", f"/jobs/{later['task_id']}")["status"] == "succeeded"
    # Deleted from the page; its events are still shown from the log.
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_test_id("task-list")).to_be_visible()
    orchd.call("GET", f"/jobs/{later['task_id']}", expect_status=404)
    before = len(errors)
    page.goto(f"{orchd.base}/ui#/tasks/{later['task_id']}")
    expect(page.get_by_role("main")).to_contain_text("Its events in the log")
    expect(page.get_by_test_id("timeline")).to_contain_text("task.requeued")
    # The page's own GET of the gone task is logged by the browser as a 404: expected here.
    errors[before:] = [e for e in errors[before:] if "status of 404" not in e]

    # Every queued task of one engine cancelled at once, after a dry-run count.
    parked = [orchd.call("POST", "/dispatch", {"core_id": "e2e-parked"})["task_id"]
              for _ in range(3)]
    page.get_by_role("link", name="Tasks", exact=True).click()
    page.get_by_label("State").select_option("queued")
    page.get_by_label("Engine").first.fill("e2e-parked")
    page.get_by_role("button", name="Show").click()
    rows = page.get_by_test_id("task-list").locator("tbody tr[data-task]")
    expect(rows).to_have_count(3)
    listed = [rows.nth(i).get_attribute("data-task") for i in range(3)]
    assert listed == parked[::-1], f"not newest first: {listed} for {parked}"
    page.get_by_role("button", name="Cancel all…").click()
    expect(page.get_by_test_id("task-list").locator("tbody tr[data-task]")).to_have_count(0)
    assert any("3 queued task(s) of e2e-parked" in m for m in dialogs), dialogs
    for task_id in parked:
        assert orchd.call("GET", f"/jobs/{task_id}")["status"] == "cancelled"

    # Pause `echo` from the engines view: a new task waits; resumed, it runs.
    page.get_by_role("link", name="Engines", exact=True).click()
    row = page.locator("tr[data-engine=echo]")
    row.get_by_role("button", name="Pause echo").click()
    expect(row.locator(".badge").first).to_have_text("paused")
    expect(row).to_contain_text("by user:ops")
    waiting = orchd.call("POST", "/dispatch", {"core_id": "echo", "payload": {"n": 1}})
    page.goto(f"{orchd.base}/ui#/tasks/{waiting['task_id']}")
    expect(status).to_have_text("queued")
    page.wait_for_timeout(1500)
    expect(status).to_have_text("queued")
    assert orchd.call("GET", f"/jobs/{waiting['task_id']}")["status"] == "queued"
    page.get_by_role("link", name="Engines", exact=True).click()
    row.get_by_role("button", name="Resume echo").click()
    expect(row.get_by_role("button", name="Pause echo")).to_be_visible()
    page.goto(f"{orchd.base}/ui#/tasks/{waiting['task_id']}")
    expect(status).to_have_text("succeeded", timeout=15000)

    # The live stream view has seen all of it; the plugins view names the engines.
    page.get_by_role("link", name="Live events", exact=True).click()
    expect(page.get_by_test_id("event-list")).to_contain_text("engine.resumed")
    page.get_by_role("link", name="Plugins", exact=True).click()
    expect(page.get_by_role("main")).to_contain_text("echo")

    page.get_by_role("link", name="Overview", exact=True).click()
    expect(page.get_by_test_id("totals").locator("[data-state=succeeded]")).to_have_text("3")
    expect(page.get_by_test_id("totals").locator("[data-state=cancelled]")).to_have_text("3")
    screenshot(page, os.path.join(screenshots, "dashboard-overview.png"))

    # A workflow (a diamond; one branch an external worker fails, the last task runs anyway):
    # its page draws the graph by level, follows it live to its end, and retries the failed
    # part; a task's detail links to it.
    flow = orchd.call("POST", "/workflows", {"tasks": [
        {"core_id": "echo", "payload": {"n": 1}},
        {"core_id": "echo", "payload": {"n": 2}, "depends_on": [{"step": 0}]},
        {"core_id": "e2e-worker", "max_attempts": 1, "payload": {"branch": 2},
         "depends_on": [{"step": 0}]},
        {"core_id": "echo", "payload": {"n": 3},
         "depends_on": [{"step": 1}, {"step": 2, "on_failure": "run_anyway"}]},
    ]}, expect_status=201)
    workflow_id = flow["workflow"]["workflow_id"]
    branch = flow["tasks"][2]["task_id"]
    page.goto(f"{orchd.base}/ui#/tasks/{flow['tasks'][3]['task_id']}")
    page.locator("[data-key=workflow]").click()
    expect(page).to_have_url(re.compile(f"#/workflows/{workflow_id}$"))
    graph = page.get_by_test_id("workflow-graph")
    expect(graph.locator(".level")).to_have_count(3)
    expect(graph.locator("[data-level='1'] .chip")).to_have_count(2)
    expect(graph.locator("[data-level='2'] [data-step='3']")).to_be_visible()
    workflow_status = page.get_by_test_id("workflow-status")
    expect(workflow_status).to_have_text("running")
    claimed = claim_one(orchd, "e2e-worker")
    assert claimed["task"]["task_id"] == branch
    orchd.call("PUT", f"/jobs/{branch}/status",
               {"lease_token": claimed["lease_token"], "status": "failed",
                "error": "branch 2 failed", "retryable": False})
    expect(workflow_status).to_have_text("partly", timeout=15000)
    expect(graph.locator("[data-step='2']")).to_have_attribute("data-status", "failed")
    expect(graph.locator("[data-step='3']")).to_have_attribute("data-status", "succeeded")
    screenshot(page, os.path.join(screenshots, "dashboard-workflow.png"))
    page.locator("[data-key=retry-workflow]").click()
    expect(workflow_status).to_have_text("running")
    claimed = claim_one(orchd, "e2e-worker")
    assert claimed["task"]["task_id"] == branch
    orchd.call("PUT", f"/jobs/{branch}/status",
               {"lease_token": claimed["lease_token"], "status": "succeeded", "result": {}})
    expect(workflow_status).to_have_text("succeeded", timeout=15000)
    graph.locator("[data-step='2']").click()
    expect(page.get_by_test_id("timeline")).to_contain_text("task.reopened")

    # A narrow window: nothing wider than the window, the list still there.
    page.set_viewport_size({"width": 420, "height": 800})
    page.get_by_role("link", name="Tasks", exact=True).click()
    expect(page.get_by_test_id("task-list")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    context.close()
    return failing["task_id"]


def admin_journey(browser, orchd, errors):
    """What only an admin does: users, and freeing a lock someone waits for."""
    holder = orchd.call("POST", "/locks/e2e-ledger/acquire", {"owner": "admin/stuck-job",
                                                              "ttl": 300})
    waiter = threading.Thread(target=lambda: orchd.call(
        "POST", "/locks/e2e-ledger/acquire", {"owner": "admin/nightly", "wait": 20, "ttl": 1}))
    waiter.start()
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    watch_console(page, errors)
    page.on("dialog", lambda dialog: dialog.accept())
    sign_in(page, orchd.base, "admin", ADMIN_PASSWORD, "admin")
    page.get_by_role("link", name="Locks", exact=True).click()
    locks = page.get_by_test_id("lock-list")
    expect(locks).to_contain_text("admin/stuck-job")
    expect(locks).to_contain_text(str(holder["fencing_token"]))
    expect(locks).to_contain_text("admin/nightly")
    locks.get_by_role("button", name="Release e2e-ledger").click()
    waiter.join(timeout=20)
    assert not waiter.is_alive(), "the waiter never got the lock"
    expect(locks).not_to_contain_text("admin/stuck-job")
    page.get_by_role("link", name="Users", exact=True).click()
    users = page.get_by_test_id("user-list")
    expect(users).to_contain_text("ops")
    expect(users.get_by_label("Role of ops")).to_have_value("operator")
    context.close()


def viewer_journey(browser, orchd, task_id, errors):
    """A viewer sees everything, is offered no action, and is refused one asked anyway."""
    orchd.call("POST", "/users", {"username": "watcher", "password": VIEWER_PASSWORD,
                                  "role": "viewer"}, expect_status=201)
    queued = orchd.call("POST", "/dispatch", {"core_id": "nobody-serves-this"})
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    refusals = []
    page.on("console", lambda m: m.type == "error" and (
        refusals.append(m.text) if "status of 403" in m.text else errors.append(m.text)))
    page.on("pageerror", lambda e: errors.append(str(e)))
    sign_in(page, orchd.base, "watcher", VIEWER_PASSWORD, "viewer")
    expect(page.get_by_test_id("totals")).to_be_visible()
    expect(page.get_by_role("link", name="Users", exact=True)).to_be_hidden()

    # Filters from the form: the queued task is listed, a succeeded one is not.
    page.get_by_role("link", name="Tasks", exact=True).click()
    row = lambda id: page.locator(f"[data-testid=task-list] tr[data-task='{id}']")
    expect(row(task_id)).to_have_count(1)
    expect(page.get_by_role("form", name="Dispatch a task")).to_have_count(0)
    page.get_by_label("State").select_option("queued")
    page.get_by_role("button", name="Show").click()
    expect(row(queued["task_id"])).to_have_count(1)
    expect(row(task_id)).to_have_count(0)
    expect(page.get_by_role("group", name="Bulk actions")).to_have_count(0)

    # No view offers a viewer a button that changes something.
    only_ours = "[...document.querySelectorAll('main button')].map(b => b.textContent)"
    page.goto(f"{orchd.base}/ui#/tasks/{queued['task_id']}")
    expect(page.get_by_test_id("task-status")).to_have_text("queued")
    assert page.evaluate(only_ours) == [], page.evaluate(only_ours)
    page.goto(f"{orchd.base}/ui#/tasks/{task_id}")
    expect(page.get_by_test_id("task-status")).to_have_text("succeeded")
    assert page.evaluate(only_ours) == [], page.evaluate(only_ours)
    for view, table in (("Engines", "engine-list"), ("Locks", "lock-list")):
        page.get_by_role("link", name=view, exact=True).click()
        expect(page.get_by_test_id(table)).to_be_visible()
        assert page.evaluate(only_ours) == [], (view, page.evaluate(only_ours))
    page.get_by_role("link", name="Live events", exact=True).click()
    expect(page.get_by_test_id("event-list")).to_be_visible()
    # Its one button pauses the view's scrolling, nothing on the server.
    assert page.evaluate(only_ours) == ["Pause"], page.evaluate(only_ours)

    # Asked anyway, with the session's own CSRF token, the API refuses.
    status = page.evaluate("""async (id) => {
        const csrf = document.cookie.split('; ').find(c => c.startsWith('orch_csrf=')).slice(10);
        const r = await fetch(`/jobs/${id}/cancel`, {method: 'POST', headers: {'X-CSRF-Token': csrf}});
        return r.status;
    }""", queued["task_id"])
    assert status == 403, f"a viewer's cancel answered {status}"
    assert len(refusals) == 1, refusals
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
            admin_journey(browser, orchd, errors)
            viewer_journey(browser, orchd, task_id, errors)
            browser.close()
            assert not errors, f"console errors: {errors}"
            print("dashboard journeys passed (operator, admin, viewer); screenshots in",
                  args.screenshots)
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
