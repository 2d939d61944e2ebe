"""The MLflow UI and the HTML report, looked at in a real browser (headless Chromium): `make ui-check`.

    python -m gm.browser                 # this checkout's store (mlflow.db) and reports/index.html
    python -m gm.browser --root /path --port 5123

What a person would look for, page by page: the registered-models page lists every `gm-` model of the
store; each model's page shows it with its champion version; that version's page shows the `champion`
alias and its model card (the description: a "Model card" heading, then the family and the dataset); the
version's run page opens, and its artifact view shows `card/samples.png` as a loaded image. In
reports/index.html every table has rows, every image loaded, every audio clip plays, and every relative
link names a file that exists. Each page is saved as a screenshot under <root>/reports/ui/.

The UI is `make ui`'s server (`mlflow ui` on the store, bound to 127.0.0.1) on a free port, in a process
group of its own that is stopped afterwards. The browser is Debian's chromium driven by its chromedriver
(`make setup` installs both), started so that it never reaches the internet.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote, unquote, urlparse

from gm.server import LOOPBACK, ServerError, answers, spawn_server, stop_group
from gm import tracking
from gm.tracking import CHAMPION, OFFLINE_ENV
from gm.training.cluster import free_port

CHROMIUM = Path(os.environ.get("GM_CHROMIUM", "/usr/bin/chromium"))  # Debian's chromium package
CHROMEDRIVER = Path(os.environ.get("GM_CHROMEDRIVER", "/usr/bin/chromedriver"))  # Debian's chromium-driver
# Without these a headless Chromium here tries to reach Google (sign-in, component updates, QUIC probes)
# and stalls; a fresh profile each time keeps one run from seeing another's state.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1600,1200")
WAIT_S = 120.0  # the most one page may take to show what is looked for (a loaded machine renders slowly)
UI_START_S = 600.0  # `mlflow ui` imports MLflow and its web app: minutes on a loaded 2-core machine
CARD_HEADING = "Model card"  # gm.cards: the description's heading
CARD_SAMPLES = "card/samples.png"  # gm.cards: the figure in the version's run
SHOTS = Path("reports") / "ui"
MAX_SHOT_HEIGHT = 12000  # px: a full-page screenshot of the report, cut here
UI_PAGE = 25  # rows a page of the UI's model and version lists shows by default


class BrowserUnavailable(RuntimeError):
    """Chromium, chromedriver or Selenium is missing (the message says how to install them)."""


# ------------------------------------------------------------------------------ the UI's server


@dataclass
class MlflowUI:
    """`make ui`: `mlflow ui` on <root>/mlflow.db, bound to 127.0.0.1, as a process group of its own."""

    root: Path
    port: int
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.root / SHOTS / f"mlflow-ui-{self.port}.log"

    def start(self, timeout: float = UI_START_S) -> "MlflowUI":
        store = self.root / "mlflow.db"
        if not store.is_file():
            raise ServerError(f"{store}: no MLflow store here; `make run` (or `gm repro`) creates it")
        if answers(self.url):
            raise ServerError(f"something already answers at {self.url}: stop it or choose another --port")
        # make ui's command; one worker is plenty for one browser and starts sooner (uvicorn kills a worker
        # that misses its 5 s health check while still importing MLflow on a loaded machine: gm.server)
        cmd = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri", f"sqlite:///{store}",
               "--host", LOOPBACK, "--port", str(self.port), "--workers", "1",
               "--uvicorn-opts", "--timeout-worker-healthcheck 120"]
        self.process = spawn_server(cmd, {**os.environ, **dict(OFFLINE_ENV)}, self.log_file, self.url, timeout,
                                    "mlflow ui", cwd=self.root)
        return self

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the whole process group (uvicorn's workers too), then SIGKILL."""
        stop_group(self.process, timeout=timeout)


@contextlib.contextmanager
def mlflow_ui(root: Path, port: int | None = None, timeout: float = UI_START_S) -> Iterator[MlflowUI]:
    """The UI of `root`'s store on `port` (a free one when None) while the block runs; always stopped."""
    ui = MlflowUI(Path(root).resolve(), port or free_port())
    try:
        yield ui.start(timeout)
    finally:
        ui.stop()


# ------------------------------------------------------------------------------ the browser


@contextlib.contextmanager
def chromium(wait_s: float = WAIT_S):
    """A headless Chromium session (Selenium's Chrome driver on Debian's chromedriver); always quit."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not (p.is_file() and os.access(p, os.X_OK))]
    if missing:
        raise BrowserUnavailable(f"{', '.join(missing)} missing: `make setup` installs Debian's chromium and "
                                 "chromium-driver (as root: apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        raise BrowserUnavailable(f"Selenium is not installed ({e}): `make setup` installs requirements.lock") from e
    with tempfile.TemporaryDirectory(prefix="gm-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        # a driver path given to Service means Selenium Manager (which downloads drivers) never runs
        service = Service(str(CHROMEDRIVER), log_output=str(Path(profile) / "chromedriver.log"))
        driver = webdriver.Chrome(options=options, service=service)
        try:
            driver.set_page_load_timeout(wait_s)
            driver.set_script_timeout(wait_s)
            yield driver
        finally:
            driver.quit()


def body_text(driver) -> str:
    return driver.execute_script("return document.body ? document.body.innerText : ''") or ""


def wait_until(driver, condition: Callable, wait_s: float):
    """condition(driver)'s first truthy value, polled every half second for at most `wait_s`; None if never."""
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def probe(d):
        try:
            return condition(d)
        except WebDriverException:  # the page is being replaced: look again
            return None

    try:
        return WebDriverWait(driver, wait_s, poll_frequency=0.5).until(probe)
    except TimeoutException:
        return None


def screenshot(driver, path: Path, full_page: bool = False) -> Path:
    """The window as a PNG at `path`; `full_page`: the window grown to the document first (up to a cap)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if full_page:
        size = driver.get_window_size()
        height = driver.execute_script("return Math.max(document.body.scrollHeight, "
                                       "document.documentElement.scrollHeight)")
        driver.set_window_size(size["width"], min(max(int(height or 0), size["height"]), MAX_SHOT_HEIGHT))
        try:
            driver.save_screenshot(str(path))
        finally:
            driver.set_window_size(size["width"], size["height"])
    else:
        driver.save_screenshot(str(path))
    return path


def snippet(text: str, n: int = 300) -> str:
    return " ".join(text.split())[:n] or "(an empty page)"


@dataclass
class Check:
    """What one walk found missing (one line each) and the screenshots it saved."""

    findings: list[str] = field(default_factory=list)
    screenshots: list[Path] = field(default_factory=list)

    def extend(self, other: "Check") -> "Check":
        self.findings += other.findings
        self.screenshots += other.screenshots
        return self


# ------------------------------------------------------------------------------ (a) the MLflow UI


@dataclass(frozen=True)
class Registered:
    """A `gm-` registered model as the store holds it: its champion version and that version's run."""

    name: str
    family: str
    dataset: str
    champion: str | None = None  # version number
    versions: int = 0
    run_id: str | None = None
    run_name: str = ""
    experiment_id: str | None = None
    card_in_store: bool = False  # the version's description has the card heading
    samples_in_store: bool = False  # the run has card/samples.png


def registered_models(root: Path) -> list[Registered]:
    """Every `gm-` model in <root>/mlflow.db, read with MLflow's client (what the UI should show)."""
    client = tracking.client(f"sqlite:///{Path(root).resolve() / 'mlflow.db'}")
    names, token = [], None
    for _ in range(1000):  # pages of 100: far more models than a store holds
        page = client.search_registered_models(filter_string="name LIKE 'gm-%'", max_results=100, page_token=token)
        names += [m.name for m in page]
        token = page.token
        if not token:
            break
    out = []
    for name in sorted(names):
        family, _, dataset = name.removeprefix("gm-").rpartition("-")
        versions = len(client.search_model_versions(f"name = '{name}'", max_results=10000))
        try:
            v = client.get_model_version_by_alias(name, CHAMPION)
        except tracking.store_error():
            out.append(Registered(name, family, dataset, versions=versions))
            continue
        family, dataset = v.tags.get("gm.family", family), v.tags.get("gm.dataset", dataset)
        experiment_id, run_name, samples = None, "", False
        if v.run_id:
            try:
                info = client.get_run(v.run_id).info
                experiment_id, run_name = info.experiment_id, info.run_name or ""
                folder = os.path.dirname(CARD_SAMPLES)
                samples = any(f.path == CARD_SAMPLES for f in client.list_artifacts(v.run_id, folder))
            except (tracking.store_error(), OSError):
                pass
        out.append(Registered(name, family, dataset, str(v.version), versions, v.run_id, run_name, experiment_id,
                              CARD_HEADING in (v.description or ""), samples))
    return out


# the description's card: the text under the rendered "Model card" heading (the heading names the model,
# and so its family and dataset: those must appear in the card's own text below it)
CARD_TEXT_JS = """
const heading = Array.from(document.querySelectorAll('h1,h2,h3,h4,h5,h6'))
    .find(h => h.textContent.includes(arguments[0]));
if (!heading) return null;
const box = heading.parentElement;
return {heading: heading.innerText, body: box.innerText.replace(heading.innerText, '')};
"""

# the images on the page showing `arguments[0]` (by src, alt or title), and whether each has loaded
# MLflow's assistant panel opens beside every page, and a page may open with a modal (the registry's "new
# Model Registry UI" announcement covers the models list): both closed, when there, so screenshots show the page
CLOSE_OVERLAYS_JS = """
let closed = 0;
for (const b of document.querySelectorAll('button[aria-label="Close"], button[aria-label="close"]')) {
  if (b.closest('[role="dialog"]')) { b.click(); closed++; continue; }
  let box = b.parentElement;
  for (let i = 0; box && i < 6; i++, box = box.parentElement) {
    if (box.innerText && box.innerText.includes('MLflow Assistant')) { b.click(); closed++; break; }
  }
}
return closed;
"""
OVERLAY_OPEN_JS = """
return Array.from(document.querySelectorAll('[role="dialog"]')).some(e => e.getClientRects().length > 0)
    || document.body.innerText.includes('MLflow Assistant');
"""

IMAGES_JS = """
return Array.from(document.images)
    .filter(i => [i.src, i.alt || '', i.title || ''].some(s => decodeURIComponent(s).includes(arguments[0])))
    .map(i => ({src: i.src.slice(0, 200), complete: i.complete, width: i.naturalWidth}));
"""


def check_ui(driver, url: str, root: Path, shots: Path, wait_s: float = WAIT_S) -> Check:
    """Walk the MLflow UI at `url` for the store of `root`: registered models, each model, its champion
    version, that version's run and its card/samples.png. Findings name the page and what is missing."""
    out = Check()
    models = registered_models(root)
    if not models:
        out.findings.append(f"{root / 'mlflow.db'}: no gm- registered model in the store (run the pipeline first)")
        return out
    base = url.rstrip("/") + "/#"

    def visit(route: str, shot: str, ready: Callable, what: str):
        """Open `route`; wait for `ready(driver)`; screenshot; a finding naming `what` when it never came."""
        driver.get(base + route)
        got = wait_until(driver, ready, wait_s)
        if driver.execute_script(CLOSE_OVERLAYS_JS):  # for the screenshot only
            wait_until(driver, lambda d: not d.execute_script(OVERLAY_OPEN_JS), 5)
        out.screenshots.append(screenshot(driver, shots / shot))
        if not got:
            out.findings.append(f"{base}{route}: {what} not shown within {wait_s:.0f} s "
                                f"(page: {snippet(body_text(driver))}; screenshot {shots / shot})")
        return got

    # the list shows a page of models, by name: what a first page holds is looked for there
    names = sorted(m.name for m in models)[:UI_PAGE]
    listed = visit("/models", "models.png", lambda d: all(n in body_text(d) for n in names),
                   "every gm- model (" + ", ".join(names) + ")")
    if not listed:
        text = body_text(driver)
        missing = [n for n in names if n not in text]
        out.findings[-1] += f"; missing: {', '.join(missing)}"

    for m in models:
        slug = re.sub(r"[^A-Za-z0-9_.-]", "_", m.name)
        route = f"/models/{quote(m.name, safe='')}"
        if m.champion is None:
            visit(route, f"model-{slug}.png", lambda d, m=m: m.name in body_text(d), f"model {m.name}")
            out.findings.append(f"{m.name}: no `{CHAMPION}` alias in the store, so no champion version to look at")
            continue
        # the versions table shows a page of the newest versions: the champion is looked for when it fits
        row = re.compile(rf"Version {m.champion}\b" if m.versions <= UI_PAGE else r"Version \d")
        visit(route, f"model-{slug}.png", lambda d, m=m, row=row: m.name in (t := body_text(d)) and row.search(t),
              f"model {m.name} with its version {m.champion}" if m.versions <= UI_PAGE else f"model {m.name}'s versions")

        # the champion version: its alias and its card
        alias = re.compile(rf"@\s*{CHAMPION}\b")
        shown = visit(f"{route}/versions/{m.champion}", f"version-{slug}-v{m.champion}.png",
                      lambda d: alias.search(body_text(d)), f"the `{CHAMPION}` alias of {m.name} v{m.champion}")
        card = wait_until(driver, lambda d: d.execute_script(CARD_TEXT_JS, CARD_HEADING), min(wait_s, 15) if shown else 1)
        where = f"{base}{route}/versions/{m.champion}"
        if not card:
            why = ("the page shows none" if m.card_in_store else
                   "the version's description in the store has none either (the card was never written)")
            out.findings.append(f"{where}: no \"{CARD_HEADING}\" heading in the description: {why}")
        else:
            absent = [w for w in (m.family, m.dataset) if w not in card["body"]]
            if absent:
                out.findings.append(f"{where}: the card's text does not name {' and '.join(absent)} "
                                    f"(card: {snippet(card['body'])})")

        # the version's run, then its card/samples.png in the artifact view
        if not (m.run_id and m.experiment_id):
            out.findings.append(f"{m.name} v{m.champion}: no source run in the store")
            continue
        run_route = f"/experiments/{m.experiment_id}/runs/{m.run_id}"
        visit(run_route, f"run-{slug}.png", lambda d, m=m: (m.run_name or m.run_id) in body_text(d),
              f"the run {m.run_name or m.run_id} ({m.run_id}) of {m.name} v{m.champion}")
        images = visit(f"{run_route}/artifacts/{CARD_SAMPLES}", f"samples-{slug}.png",
                       lambda d: [i for i in d.execute_script(IMAGES_JS, CARD_SAMPLES) or []
                                  if i["complete"] and i["width"] > 0],
                       f"{CARD_SAMPLES} of run {m.run_id} as a loaded image")
        if not images and not m.samples_in_store:
            out.findings[-1] += f" (the run has no {CARD_SAMPLES} in the store either)"
    return out


# ------------------------------------------------------------------------------ (b) reports/index.html

REPORT_JS = """
const attr = (e, a) => e.getAttribute(a);
return {
  tables: Array.from(document.querySelectorAll('table')).map((t, i) => ({
      index: i, caption: (t.previousElementSibling ? t.previousElementSibling.innerText : '').slice(0, 80),
      rows: Array.from(t.querySelectorAll('tr')).filter(r => r.querySelector('td')).length})),
  images: Array.from(document.images).map((i, n) => ({
      index: n, src: attr(i, 'src') || '', alt: i.alt || '', complete: i.complete, width: i.naturalWidth})),
  audio: Array.from(document.querySelectorAll('audio')).map((a, n) => {
      const s = a.querySelector('source[src]');
      return {index: n, src: a.src || (s ? s.src : ''), raw: attr(a, 'src') || (s ? attr(s, 'src') : '')};
  }),
  links: Array.from(document.querySelectorAll('[href],[src]')).map(e => ({
      tag: e.tagName.toLowerCase(), raw: attr(e, 'href') !== null ? attr(e, 'href') : attr(e, 'src'),
      resolved: e.href || e.src || ''})),
};
"""

# plays = the browser decodes the clip's header: resolves with its duration, or with the media error
AUDIO_JS = """
const [src, done] = [arguments[0], arguments[arguments.length - 1]];
const a = new Audio();
a.preload = 'metadata';
a.onloadedmetadata = () => done({ok: true, duration: a.duration});
a.onerror = () => done({ok: false, error: a.error ? a.error.code + ' ' + (a.error.message || '') : 'error'});
a.src = src;
"""

IMAGES_DONE_JS = "return Array.from(document.images).every(i => i.complete)"


def is_relative(link: str) -> bool:
    """A link to a file beside the page: no scheme, not protocol-relative, not an in-page anchor."""
    link = link.strip()
    return bool(link) and not link.startswith(("#", "//")) and not urlparse(link).scheme


def check_report(driver, page: Path, shots: Path, wait_s: float = WAIT_S) -> Check:
    """reports/index.html as a browser shows it: tables with rows, images loaded, clips that play, relative
    links to files that exist. Findings name the element and what is wrong."""
    out = Check()
    page = Path(page).resolve()
    if not page.is_file():
        out.findings.append(f"{page}: no report here (the report stage writes it: `make run`)")
        return out
    driver.get(page.as_uri())
    if not wait_until(driver, lambda d: d.execute_script(IMAGES_DONE_JS), wait_s):
        out.findings.append(f"{page}: images still loading after {wait_s:.0f} s")
    out.screenshots.append(screenshot(driver, shots / "report-index.png", full_page=True))
    got = driver.execute_script(REPORT_JS)

    if not got["tables"]:
        out.findings.append(f"{page}: no table")
    for t in got["tables"]:
        if t["rows"] == 0:
            out.findings.append(f"{page}: table {t['index'] + 1} ({t['caption'] or 'no heading'}) has no rows")
    for i in got["images"]:
        if not (i["complete"] and i["width"] > 0):
            out.findings.append(f"{page}: image {i['index'] + 1} ({i['alt'] or snippet(i['src'], 80)}) did not load")
    for link in got["links"]:
        if not is_relative(link["raw"]):
            continue
        target = Path(unquote(urlparse(link["resolved"]).path))
        if not target.exists():
            out.findings.append(f"{page}: <{link['tag']}> {link['raw']!r} -> {target}, which does not exist")
    for a in got["audio"]:
        if not a["src"]:
            out.findings.append(f"{page}: audio clip {a['index'] + 1} has no source")
            continue
        played = driver.execute_async_script(AUDIO_JS, a["src"])
        if not played.get("ok"):
            out.findings.append(f"{page}: audio clip {a['index'] + 1} ({snippet(a['raw'], 80)}) does not play: "
                                f"{played.get('error')}")
    return out


# ------------------------------------------------------------------------------ both, for a user


def check_all(root: Path, port: int | None = None, wait_s: float = WAIT_S,
              start_s: float = UI_START_S) -> Check:
    """`make ui-check`: the MLflow UI of root's store and root/reports/index.html, screenshots in
    root/reports/ui/. A store or browser that cannot be started is a finding, not an exception."""
    root = Path(root).resolve()
    shots = root / SHOTS
    out = Check()
    try:
        with chromium(wait_s) as driver:
            out.extend(check_report(driver, root / "reports" / "index.html", shots, wait_s))
            try:
                with mlflow_ui(root, port, start_s) as ui:
                    out.extend(check_ui(driver, ui.url, root, shots, wait_s))
            except ServerError as e:
                out.findings.append(f"MLflow UI: {e}")
    except BrowserUnavailable as e:
        out.findings.append(f"browser: {e}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m gm.browser", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("--root", default=".", help="the pipeline root: mlflow.db and reports/ (default: %(default)s)")
    p.add_argument("--port", type=int, help="port of the MLflow UI it starts on 127.0.0.1 (default: a free one)")
    p.add_argument("--wait", type=float, default=WAIT_S, help="seconds one page may take (default: %(default)s)")
    args = p.parse_args(argv)
    result = check_all(Path(args.root), args.port, args.wait)
    for shot in result.screenshots:
        print(f"screenshot: {shot}")
    if result.findings:
        print(f"\n{len(result.findings)} thing(s) missing:", file=sys.stderr)
        for f in result.findings:
            print(f"- {f}", file=sys.stderr)
        return 1
    print("\nthe MLflow UI and reports/index.html show everything looked for")
    return 0


if __name__ == "__main__":
    sys.exit(main())
