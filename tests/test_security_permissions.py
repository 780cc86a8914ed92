"""Permissions, as a real unprivileged user (uid 65534, dropped after imports: the interpreter
lives under /root, which nobody may enter).  Each case: a working result, or AccessDenied whose
``permission`` names what is missing.  Prints one line per case."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from stress.targets import build

import softdirty

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become an unprivileged user (CI is root)")

PROLOGUE = """
import json, os, subprocess, sys, time, argparse, ctypes, ctypes.util, hashlib, tempfile
import softdirty, softdirty.process, softdirty.probe, softdirty.scanner, softdirty.tracker, softdirty.causes
import softdirty.backends.uffd, softdirty.backends.softdirty, softdirty.uffd_live, softdirty.inject, softdirty.freeze
softdirty.scanner.active_scanner()  # loads the C scanner: which one is not a question of privilege
os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
if "--non-dumpable-tracker" not in sys.argv:
    # Changing credentials cleared our dumpable flag; a user who started python as nobody has it set.
    ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
def attempt(pid, backend):
    try:
        with softdirty.track(pid, backend=backend) as t:
            t.reset(); time.sleep(0.02); d = t.harvest()
            return {"result": "works", "pages": d.page_count, "backend": t.backend_name}
    except softdirty.AccessDenied as e:
        return {"result": "AccessDenied", "permission": e.permission, "msg": str(e)}
    except softdirty.Unsupported as e:
        return {"result": "Unsupported", "msg": str(e)}
    except Exception as e:
        return {"result": "UNTYPED " + type(e).__name__, "msg": str(e)}
"""


def as_nobody(code: str, *args: str) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(softdirty.__file__)))
    got = subprocess.run([sys.executable, "-c", PROLOGUE + code, *args], capture_output=True, text=True, env=env,
                         cwd="/", timeout=60)
    assert got.returncode == 0, got.stdout + got.stderr
    out: dict[str, object] = json.loads(got.stdout.strip().splitlines()[-1])
    return out


def check(case: str, out: dict[str, object], needs: tuple[str, ...]) -> None:
    print(f"\n[security] as nobody, {case}: {json.dumps(out)}")
    assert out["result"] in ("works", "AccessDenied"), out
    if out["result"] == "AccessDenied":
        assert any(n in str(out["permission"]) for n in needs), out


OWN = """
p = subprocess.Popen([sys.argv[1], "-1"] + sys.argv[2:], stdout=subprocess.PIPE); p.stdout.readline()
out = {b: attempt(p.pid, b) for b in ("uffd", "auto")}
p.kill(); p.wait()
print(json.dumps(out))
"""


def test_own_process() -> None:
    out = as_nobody(OWN, build("victim"))
    for backend, got in out.items():
        assert isinstance(got, dict)
        # uffd in another process: injection (ptrace) + userfaultfd() under vm.unprivileged_userfaultfd
        check(f"own process, backend={backend}", got, ("userfaultfd", "ptrace", "PTRACE"))


def test_own_non_dumpable_process() -> None:
    out = as_nobody(OWN, build("victim"), "nodump")
    for backend, got in out.items():
        assert isinstance(got, dict)
        check(f"own non-dumpable process, backend={backend}", got, ("dumpable", "PTRACE", "ptrace"))
        assert got["result"] == "AccessDenied", "a non-dumpable process must not be readable by its user"


def test_another_users_process() -> None:
    p = subprocess.Popen([build("victim"), "-1"], stdout=subprocess.PIPE)
    assert p.stdout is not None
    p.stdout.readline()
    try:
        out = as_nobody("print(json.dumps({b: attempt(int(sys.argv[1]), b) for b in ('uffd', 'auto')}))",
                        str(p.pid))
    finally:
        p.kill()
        p.wait()
    for backend, got in out.items():
        assert isinstance(got, dict)
        check(f"root's process, backend={backend}", got, ("PTRACE", "ptrace"))
        assert got["result"] == "AccessDenied"


def test_non_dumpable_tracker_gets_access_denied_not_an_oserror() -> None:
    out = as_nobody("print(json.dumps(attempt(os.getpid(), 'auto')))", "--non-dumpable-tracker")
    check("a non-dumpable tracker probing", out, ("dumpable",))
    assert out["result"] == "AccessDenied"


def test_pfn_visibility_and_unprivileged_userfaultfd_are_explained() -> None:
    out = as_nobody("c = softdirty.probe(); print(json.dumps({'pfn': c.pfn_visible.to_dict(), "
                    "'uffd': c.uffd_wp_async.to_dict(), 'caps': c.to_dict()}))")
    print(f"\n[security] as nobody, probe: pfn_visible={out['pfn']} uffd_wp_async={out['uffd']}")
    pfn, uffd = out["pfn"], out["uffd"]
    assert isinstance(pfn, dict) and isinstance(uffd, dict)
    assert not pfn["ok"] and "CAP_SYS_ADMIN" in str(pfn["reason"])
    with open("/proc/sys/vm/unprivileged_userfaultfd") as f:
        sysctl = f.read().strip()
    if not uffd["ok"]:
        assert "unprivileged_userfaultfd" in str(uffd["reason"]) or "user" in str(uffd["reason"]), uffd
    print(f"[security] vm.unprivileged_userfaultfd={sysctl}")
