"""The web console in a real browser: Debian's chromium, driven by selenium through chromedriver
(`bash install.sh --dev` installs both). The page opens from the link the daemon prints, keeps
the token and drops it from the address bar, shows a process spawned from its form live, and
its kill button ends it."""

from __future__ import annotations

import shutil
import tempfile
import time

import pytest
import trio
from conftest import prog
from daemon_util import daemon_with

from llmos.abi.proc import ProcState

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                reason="needs Debian's chromium and chromium-driver (bash install.sh --dev installs them)")

# As root, on a machine with no network: no sandbox, no GPU, nothing phoning home.
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900"]


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="llmos-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    return driver, profile


def test_console_shows_a_spawned_process_and_kills_it(tiny_backend):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    async def main():
        async with daemon_with(tiny_backend, http=("127.0.0.1", 0)) as d:
            k = d.kernel

            def drive():
                driver, profile = browser()
                try:
                    wait = WebDriverWait(driver, 20)
                    driver.get(d.console_link)
                    wait.until(ec.visibility_of_element_located((By.ID, "procs")))
                    url_after = driver.current_url
                    kept = driver.execute_script("return sessionStorage.getItem('llmos-token')")
                    driver.find_element(By.ID, "spawn-program").send_keys(prog("sleeper"))
                    driver.find_element(By.ID, "spawn-args").send_keys("600")
                    driver.find_element(By.CSS_SELECTOR, "#spawn-form button").click()
                    started = wait.until(ec.text_to_be_present_in_element((By.ID, "spawn-result"), "started pid"))
                    pid = int(driver.find_element(By.ID, "spawn-result").text.split()[-1])
                    row = f'#procs tr[data-pid="{pid}"]'
                    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, f"{row} .state"), "SLEEPING"))
                    name = driver.find_element(By.CSS_SELECTOR, f"{row} td:nth-child(2)").text
                    state_in_kernel = trio.from_thread.run_sync(lambda: k.procs.get(pid).state)
                    kill = driver.find_element(By.CSS_SELECTOR, f'{row} button[data-action="kill"]')
                    kill.click()  # arms it
                    kill.click()  # kills
                    wait.until(ec.text_to_be_present_in_element((By.CSS_SELECTOR, f"{row} .state"), "ZOMBIE"))
                    exit_shown = driver.find_element(By.CSS_SELECTOR, f"{row} td.acts").text
                    charts = driver.execute_script("return document.querySelectorAll('#chart-rate path').length")
                    # The process's own page: its log and its quota.
                    driver.find_element(By.CSS_SELECTOR, f"{row} a").click()
                    wait.until(ec.text_to_be_present_in_element((By.ID, "proc-title"), f"pid {pid}"))
                    wait.until(ec.text_to_be_present_in_element((By.ID, "proc-quota"), "syscalls"))
                    facts = driver.find_element(By.ID, "proc-facts").text
                    return url_after, kept, bool(started), pid, name, state_in_kernel, exit_shown, charts, facts
                finally:
                    driver.quit()
                    shutil.rmtree(profile, ignore_errors=True)

            t0 = time.monotonic()
            result = await trio.to_thread.run_sync(drive)
            pid = result[3]
            return result, k.procs.lookup(pid), d.token, time.monotonic() - t0

    (url_after, kept, started, pid, name, state, exit_shown, charts, facts), proc, token, took = trio.run(main)
    assert "token" not in url_after and kept == token  # kept for the session, gone from the URL
    assert started and name == "sleeper" and state is ProcState.SLEEPING
    assert proc.state is ProcState.ZOMBIE and proc.exit_code == 137  # the page's kill ended it
    assert "exit 137" in exit_shown
    assert charts >= 1
    assert "exit" in facts and "137" in facts
    print(f"\nbrowser test took {took:.1f} s")
