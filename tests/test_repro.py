"""The pinned CPU mode (dt2it_mrm.repro): argument checks, the in-process pins, and the committed fingerprint of a tiny
end-to-end run (benchmarks/fingerprint.py) for this CPU's vendor (MKL's branch differs between Intel and other CPUs),
which a fresh pinned process must reproduce bit for bit — also when the
caller's environment asks for other kernels — while the same run on torch's generic kernels gives other bits."""
import json
import os
import subprocess

import pytest

from rm_fixtures import PY, ROOT, _env
from dt2it_mrm.repro import ISA_FLAGS, PIN_ISAS, PIN_VARS, THREAD_VARS, apply_pins, cpu_info, pinned_env

HASHES = ("weights", "scores", "base")
_cpu = cpu_info()
needs_avx2 = pytest.mark.skipif(_cpu is not None and "avx2" not in _cpu["flags"], reason="the committed fingerprint is pinned to AVX2")


def committed_for(vendor: str | None) -> "Path | None":
    "The fingerprint committed for CPUs of `vendor`: MKL runs the pinned branch on Intel and its AUTO branch elsewhere, so pinned runs agree within a vendor, not across."
    return next((p for p in sorted((ROOT / "tests").glob("fingerprint*.json")) if json.loads(p.read_text())["machine"].get("vendor") == vendor), None)


COMMITTED = committed_for((_cpu or {}).get("vendor")) or ROOT / "tests" / "fingerprint.json"
needs_fingerprint = pytest.mark.skipif(committed_for((_cpu or {}).get("vendor")) is None,
                                       reason=f"no fingerprint committed for this CPU's vendor {(_cpu or {}).get('vendor')!r}: "
                                              "python benchmarks/fingerprint.py --pinned --out tests/fingerprint.<vendor>.json")


def test_a_fingerprint_is_committed_for_each_vendor_under_the_same_pins():
    "Both vendors' pinned runs are on record, made with the same pins and torch, so each machine checks itself against its own vendor's bits."
    amd, intel = committed_for("AuthenticAMD"), committed_for("GenuineIntel")
    assert amd is not None and intel is not None and amd != intel
    a, i = json.loads(amd.read_text()), json.loads(intel.read_text())
    assert a["pins"] == i["pins"] and a["machine"]["torch"] == i["machine"]["torch"] and a["run"]["rm_steps"] == i["run"]["rm_steps"]


def test_pinned_env_sets_every_variable_as_strings_and_only_threads_without_an_isa():
    e = pinned_env("avx2", 1) if _cpu is None or "avx2" in _cpu["flags"] else None
    if e is not None:
        assert set(e) == set(PIN_VARS) and all(isinstance(v, str) for v in e.values())
        assert e["ATEN_CPU_CAPABILITY"] == "avx2" and e["ONEDNN_MAX_CPU_ISA"] == "AVX2" and e["MKL_CBWR"] == "AVX2,STRICT"
        assert e["OMP_NUM_THREADS"] == e["MKL_NUM_THREADS"] == "1" and e["OMP_DYNAMIC"] == e["MKL_DYNAMIC"] == "FALSE"
    t = pinned_env(None, 3)
    assert set(t) == set(THREAD_VARS) and t["OMP_NUM_THREADS"] == t["MKL_NUM_THREADS"] == "3"
    assert "avx2" in PIN_ISAS


@pytest.mark.parametrize("kw", [dict(threads=0), dict(threads=-2), dict(threads=1.0), dict(threads="2"), dict(threads=True),
                                dict(isa="avx9"), dict(isa="AVX2"), dict(isa="")])
def test_pinned_env_refuses_bad_arguments(kw):
    with pytest.raises(ValueError, match="threads must be|unknown isa"):
        pinned_env(**kw)


def test_pinned_env_refuses_an_isa_this_cpu_cannot_run():
    if _cpu is None: pytest.skip("no /proc/cpuinfo")
    lacking = [i for i in PIN_ISAS if any(f not in _cpu["flags"] for f in ISA_FLAGS[i])]
    if not lacking: pytest.skip("this CPU runs every pinned ISA")
    with pytest.raises(ValueError, match="cannot run"):
        pinned_env(lacking[0])


@pytest.mark.parametrize("threads", [0, -1, 2.0, "1", None])
def test_apply_pins_refuses_bad_thread_counts_before_changing_anything(threads):
    import torch
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    with pytest.raises(ValueError, match="threads must be"):
        apply_pins(threads)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before


def _py(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)


def _clean_env(**extra) -> dict:
    "The tests' offline environment without any pinning variable of the caller, plus `extra`."
    return {k: v for k, v in _env().items() if k not in PIN_VARS} | extra


@needs_avx2
def test_apply_pins_in_a_pinned_process_and_refuses_a_pin_that_came_too_late():
    ok = _py("import json, torch; from dt2it_mrm.repro import apply_pins; print(json.dumps(apply_pins(1)))", _clean_env(**pinned_env("avx2", 1)))
    assert ok.returncode == 0, ok.stderr[-2000:]
    got = json.loads(ok.stdout)
    assert got["threads"] == 1 and got["deterministic"] and got["cpu_capability"] == "AVX2" and got["env"]["MKL_CBWR"] == "AVX2,STRICT"
    late = _py("import os, torch; torch.ones(3).sum(); os.environ['ATEN_CPU_CAPABILITY'] = 'default'\n"
               "from dt2it_mrm.repro import apply_pins; apply_pins(1)", _clean_env())
    assert late.returncode != 0 and "before torch is imported" in late.stderr, late.stderr[-2000:]


def _fingerprint(args: list[str], env: dict) -> dict:
    r = subprocess.run([PY, "benchmarks/fingerprint.py", *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def pinned_here():
    "The fingerprint of a fresh pinned (avx2, 1 thread) process on this machine."
    return _fingerprint(["--pinned"], _clean_env())


def _mismatch(got: dict, want: dict, what: str) -> str:
    bad = [k for k in HASHES if got[k] != want[k]]
    where = ("pre-training already differs (base), so the very first kernels differ" if "base" in bad else
             "the pre-trained base is identical; the reward-model training or scoring (4-bit, LoRA) differs")
    return (f"{what}: {bad} differ from tests/fingerprint.json ({where}).\nThis machine's CPU kernels are not those of the "
            f"machine that made the committed fingerprint (or the code or a library version changed). With equal library "
            f"versions, the pinned mode does not cover these two CPUs (MKL, for one, runs its AUTO branch instead of AVX2 on "
            f"non-Intel CPUs: isa 'avx2_compat' pins MKL to its vendor-neutral branch). If the code changed on purpose, "
            f"regenerate: python benchmarks/fingerprint.py --pinned --out tests/fingerprint.json\n"
            f"committed machine: {json.dumps(want['machine'], sort_keys=True)}\nthis machine:      {json.dumps(got['machine'], sort_keys=True)}")


@needs_avx2
@needs_fingerprint
def test_a_fresh_pinned_process_reproduces_the_committed_fingerprint(pinned_here):
    want = json.loads(COMMITTED.read_text())
    assert all(pinned_here[k] == want[k] for k in HASHES), _mismatch(pinned_here, want, "a pinned run")
    assert pinned_here["machine"]["env"]["ATEN_CPU_CAPABILITY"] == "avx2" and pinned_here["pins"]["threads"] == 1


@needs_avx2
@needs_fingerprint
def test_the_pinned_mode_overrides_a_hostile_caller_environment():
    hostile = {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
               "MKL_CBWR": "COMPATIBLE", "ONEDNN_MAX_CPU_ISA": "SSE41", "ONEDNN_DEFAULT_FPMATH_MODE": "BF16", "MKL_DYNAMIC": "TRUE"}
    got = _fingerprint(["--pinned"], _clean_env(**hostile))
    want = json.loads(COMMITTED.read_text())
    assert all(got[k] == want[k] for k in HASHES), _mismatch(got, want, f"a pinned run under a hostile environment {hostile}")
    assert got["machine"]["cpu_capability"] == "AVX2" and got["machine"]["threads"] == 1


@needs_avx2
def test_the_isa_matters_here_generic_kernels_give_other_bits(pinned_here):
    "Every pin as in the pinned run except torch's kernels, which run their generic (non-AVX2) code: other bits."
    got = _fingerprint([], _clean_env(**(pinned_env("avx2", 1) | {"ATEN_CPU_CAPABILITY": "default"})))
    assert got["machine"]["cpu_capability"] == "DEFAULT"
    assert all(got[k] != pinned_here[k] for k in HASHES), (got, pinned_here)
