"""Tests that keep the shipped results honest: the manifest covers every result file under data/
with its hash, no file names a machine path, every number the READMEs quote comes from a result
file, and `python -m fasterrcnn_edu reproduce` lists, plans, runs, records and compares targets."""
import json
import re
import shutil
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from fasterrcnn_edu import cli
from fasterrcnn_edu.lab import reproduce
from fasterrcnn_edu.lab.records import file_sha256
from fasterrcnn_edu.lab.reproduce import (MANIFEST, Step, Target, compare_headlines, json_value, machine_paths,
                                          result_files, tree_sha256)

ROOT = Path(__file__).resolve().parents[1]
QUOTED = json.loads((ROOT / "data/quoted_numbers.json").read_text())


@pytest.fixture(scope="module")
def manifest():
    return json.loads((ROOT / MANIFEST).read_text())


# ---------------------------------------------------------------------------------------------
# The shipped manifest
# ---------------------------------------------------------------------------------------------

def test_every_result_file_is_in_the_manifest_with_its_hash(manifest):
    files = result_files(ROOT)
    assert files, "no result files found under data/"
    unlisted = [f for f in files if f not in manifest["files"]]
    assert not unlisted, f"{MANIFEST} does not list {unlisted}: run `reproduce` (or `--record-existing`)"
    stale = [f for f in files if manifest["files"][f]["sha256"] != file_sha256(ROOT / f)]
    assert not stale, f"{MANIFEST} holds another SHA-256 for {stale}: the files changed without `reproduce`"
    gone = [f for f in manifest["files"] if not (ROOT / f).is_file()]
    assert not gone, f"{MANIFEST} lists files that do not exist: {gone}"


def test_every_result_file_is_made_by_a_target():
    made = {f for target in reproduce.TARGETS for f in target.outputs}
    orphans = [f for f in result_files(ROOT) if f not in made]
    assert not orphans, f"no target of reproduce.TARGETS makes {orphans}"


def test_dataset_hash_matches_the_manifest(manifest):
    assert manifest["dataset"]["path"] == "data/shapes"
    assert manifest["dataset"]["sha256"] == tree_sha256(ROOT / "data/shapes"), \
        "data/shapes changed since the manifest was written"


def test_no_machine_paths_under_data(manifest):
    """No result file may name a machine path; a file recorded before `reproduce` existed may only have the
    problems its manifest entry admits (they go away when it is regenerated)."""
    for file, listed in manifest["files"].items():
        entry = manifest["targets"][listed["target"]]
        found = sorted({f"{p['file']}: {p['where'] or 'a line'} names a machine path"
                        for p in machine_paths(ROOT / file, ROOT)})
        admitted = sorted(p for p in entry.get("problems", []) if p.startswith(f"{file}:"))
        if entry["reproduced"]:
            assert not found, f"{found}"
        else:
            assert found == admitted, f"{file}: found {found}, the manifest admits {admitted}"
    for own in (MANIFEST, "data/quoted_numbers.json"):
        assert not machine_paths(ROOT / own, ROOT), f"{own} names a machine path"


def test_machine_paths_are_found_and_relative_paths_are_not(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps({"model": "/tmp/runs/ref/model.pt", "config": {"weights": "~/weights/vgg.pth"},
                                "win": "C:\\data\\x", "command": "python -m x --out /home/me/out",
                                "fine": ["runs/reference/model.pt", "AP@[.5:.95]", "1/3", "https://example.org/a",
                                         "2026-11-26T07:25:15+00:00", "data/shapes"]}))
    found = {p["where"]: p["value"] for p in machine_paths(path)}
    assert found == {"model": "/tmp/runs/ref/model.pt", "config/weights": "~/weights/vgg.pth", "win": "C:\\data\\x",
                     "command": "/home/me/out"}


# ---------------------------------------------------------------------------------------------
# Numbers quoted in the READMEs
# ---------------------------------------------------------------------------------------------

def _readme(name: str) -> str:
    return (ROOT / name).read_text()


def _number(quoted: str) -> Decimal:
    return Decimal(quoted.split()[0])


def _value(entry: dict) -> float:
    file, key = entry["file"], entry["key"]
    if "*" in key:
        head, _, tail = key.partition("/*/")
        group = json_value(ROOT, f"{file}:{head}")
        values = [json_value(ROOT, f"{file}:{head}/{k}/{tail}") for k in group]
        value = {"min": min, "max": max}[entry["reduce"]](values)
    else:
        value = json_value(ROOT, f"{file}:{key}")
    assert isinstance(value, (int, float)), f"{file}: no number at {key!r} (found {value!r})"
    return value * entry.get("scale", 1)


@pytest.mark.parametrize("entry", QUOTED["numbers"], ids=lambda e: f"{e['readme']}:{e['quoted']}:{e['text'][:30]}")
def test_quoted_number_comes_from_a_result_file(entry, manifest):
    text = _readme(entry["readme"])
    assert entry["text"] in text, f"{entry['readme']} no longer says {entry['text']!r}: update data/quoted_numbers.json"
    assert entry["quoted"] in entry["text"]
    if entry["file"] is None:
        pytest.xfail(f"{entry['readme']} quotes {entry['quoted']} that no result file holds: {entry['why']}")
    # The manifest itself holds the recorded wall times; every other source must be listed in it.
    assert entry["file"] in manifest["files"] or entry["file"] == MANIFEST, f"{entry['file']} is not listed in {MANIFEST}"
    quoted = _number(entry["quoted"])
    half_step = Decimal(1).scaleb(quoted.as_tuple().exponent) / 2       # rounding at the quoted digits
    value = _value(entry)
    assert abs(Decimal(repr(value)) - quoted) <= half_step + Decimal("1e-9"), \
        f"{entry['readme']} quotes {entry['quoted']} but {entry['file']}:{entry['key']} holds {value}"


# A measured number: a decimal, or an integer with a time unit.
_MEASURED = re.compile(r"(?<![\w.])[+]?\d+(?:\.\d+)?(?:\s?(?:s|ms|min|minutes)\b)|(?<![\w.])[+]?\d+\.\d+")


@pytest.mark.parametrize("readme", sorted(QUOTED["scope"]))
def test_every_measured_number_in_a_readme_is_in_the_table(readme):
    text = _readme(readme)
    start = QUOTED["scope"][readme]
    if start:
        text = text[text.index(start):]
    known = {_number(e["quoted"]) for e in QUOTED["numbers"] if e["readme"] == readme}
    known |= {Decimal(s["number"]) for s in QUOTED["settings"] if s["readme"] == readme}
    unknown = sorted({m for m in _MEASURED.findall(text) if _number(m) not in known})
    assert not unknown, f"{readme} quotes {unknown} that data/quoted_numbers.json does not map to a result file"


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------

def test_targets_come_after_the_targets_they_depend_on():
    seen = set()
    names = [t.name for t in reproduce.TARGETS]
    assert len(names) == len(set(names))
    for target in reproduce.TARGETS:
        assert set(target.depends) <= seen, f"{target.name} depends on {set(target.depends) - seen}, listed later"
        assert all(f.startswith("data/") for f in target.outputs), target.name
        seen.add(target.name)


def test_list_and_dry_run(capsys):
    assert cli.main(["reproduce", "--list", "--root", str(ROOT)]) == 0
    listed = capsys.readouterr().out
    for target in reproduce.TARGETS:
        assert re.search(rf"^{re.escape(target.name)}\s", listed, re.M), target.name
    assert cli.main(["reproduce", "--dry-run", "metrics", "errors", "--root", str(ROOT)]) == 0
    planned = capsys.readouterr().out
    assert "python -m fasterrcnn_edu eval --model data/reference_model.pt --data data/shapes --split test " \
           "--out data/reference" in planned
    assert "python -m fasterrcnn_edu errors --model" in planned and "ablation" not in planned
    assert cli.main(["reproduce", "--dry-run", "nonsense", "--root", str(ROOT)]) == 1
    assert "unknown target(s) nonsense" in capsys.readouterr().err


def _fake_target(calls: list, value: float, spread=(), text: str = "runs/fake") -> Target:
    def write(root: Path) -> None:
        calls.append(value)
        (root / "data/out.json").write_text(json.dumps({"score": value, "where": text}))
    return Target("fake", "a trivial target", (Step(argv=("--help",)), Step(run=write, describe="write data/out.json")),
                  inputs=("data/in.txt",), outputs=("data/out.json",), seeds=(0,), threads=1,
                  headline=("data/out.json:score",), spread=spread)


def test_a_target_runs_end_to_end_and_is_recorded(tmp_path, monkeypatch, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/in.txt").write_text("input\n")
    manifest_path = tmp_path / MANIFEST
    calls = []
    monkeypatch.setattr(reproduce, "TARGETS", (_fake_target(calls, 0.5),))
    assert reproduce.run_targets(["fake"], tmp_path, manifest_path) == 0
    entry = json.loads(manifest_path.read_text())["targets"]["fake"]
    assert entry["reproduced"] is True and calls == [0.5]
    assert entry["commands"] == ["python -m fasterrcnn_edu --help", "(in code) write data/out.json"]
    assert entry["inputs"] == {"data/in.txt": file_sha256(tmp_path / "data/in.txt")}
    assert entry["outputs"] == {"data/out.json": file_sha256(tmp_path / "data/out.json")}
    assert entry["headline"] == {"data/out.json:score": {"value": 0.5, "tolerance": None, "spread_measured": False}}
    assert entry["seeds"] == [0] and entry["threads"] == 1 and entry["wall_seconds"] >= 0
    assert "environment" in entry and "git_dirty" in entry
    files = json.loads(manifest_path.read_text())["files"]
    assert files == {"data/out.json": {"target": "fake", "sha256": entry["outputs"]["data/out.json"],
                                       "reproduced": True}}

    # The real command ran once; from here on a do-nothing interpreter stands in for it (each start costs seconds).
    monkeypatch.setattr(reproduce, "PROGRAM", (sys.executable, "-c", ""))
    # Unchanged inputs and outputs: skipped; --force runs it again; a changed input runs it again.
    assert reproduce.run_targets(["fake"], tmp_path, manifest_path) == 0
    assert calls == [0.5] and "up to date" in capsys.readouterr().out
    assert reproduce.run_targets(["fake"], tmp_path, manifest_path, force=True) == 0
    (tmp_path / "data/in.txt").write_text("changed\n")
    assert reproduce.run_targets(["fake"], tmp_path, manifest_path) == 0
    assert calls == [0.5, 0.5, 0.5]

    # --compare on an up-to-date target runs nothing: it says so and how to force a comparison.
    capsys.readouterr()
    assert reproduce.run_targets(["fake"], tmp_path, manifest_path, compare=True) == 0
    said = capsys.readouterr().out
    assert calls == [0.5, 0.5, 0.5] and "nothing ran, so nothing was compared" in said
    assert "reproduce fake --force --compare" in said

    # --compare: the new headline number against the manifest's, within the measured spread if there is one.
    monkeypatch.setattr(reproduce, "TARGETS", (_fake_target(calls, 0.6),))
    assert reproduce.run_targets(["fake"], tmp_path, manifest_path, force=True, compare=True) == 0
    assert "differs by +0.1 (run-to-run spread not measured yet)" in capsys.readouterr().out
    monkeypatch.setattr(reproduce, "TARGETS", (_fake_target(calls, 0.9, spread=(("data/out.json:score", 0.05),)),))
    assert reproduce.run_targets(["fake"], tmp_path, manifest_path, force=True, compare=True) == 1
    assert "differs (difference +0.3, tolerance 0.05)" in capsys.readouterr().out


def test_a_target_writing_a_machine_path_fails(tmp_path, monkeypatch, capsys):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/in.txt").write_text("input\n")
    monkeypatch.setattr(reproduce, "TARGETS", (_fake_target([], 0.5, text="/tmp/runs/fake"),))
    monkeypatch.setattr(reproduce, "PROGRAM", (sys.executable, "-c", ""))
    assert reproduce.run_targets(["fake"], tmp_path, tmp_path / MANIFEST) == 1
    assert "data/out.json: where names the machine path '/tmp/runs/fake'" in capsys.readouterr().err
    assert not (tmp_path / MANIFEST).exists()


def test_record_existing_is_honest(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/in.txt").write_text("input\n")
    (tmp_path / "data/out.json").write_text(json.dumps({"score": 0.5, "model": "/tmp/m.pt",
                                                        "command": "python -m old.module --out data/out.json"}))
    monkeypatch.setattr(reproduce, "TARGETS", (_fake_target([], 0.5),))
    manifest = reproduce.record_existing(tmp_path, tmp_path / MANIFEST)
    entry = manifest["targets"]["fake"]
    assert entry["reproduced"] is False and "wall_seconds" in entry
    assert entry["recorded_commands"] == ["python -m old.module --out data/out.json"]
    assert entry["problems"] == ["data/out.json: model names a machine path"]
    assert manifest["files"]["data/out.json"]["reproduced"] is False
    assert reproduce.up_to_date(tmp_path, reproduce.TARGETS[0], entry) is False    # never skipped


def test_compare_headlines():
    rows = {r["key"]: r for r in compare_headlines(
        old={"a": 0.70, "b": 0.70, "c": 0.70, "d": None, "e": 0.5},
        new={"a": 0.71, "b": 0.75, "c": 0.70, "d": 0.3, "e": None},
        tolerance={"a": 0.02, "b": 0.02})}
    assert rows["a"]["status"] == "ok" and rows["a"]["difference"] == pytest.approx(0.01)
    assert rows["b"]["status"] == "differs" and rows["b"]["difference"] == pytest.approx(0.05)
    assert rows["c"]["status"] == "unmeasured" and rows["c"]["tolerance"] is None
    assert rows["d"]["status"] == "new" and rows["e"]["status"] == "missing"
    lines = reproduce.comparison_lines(list(rows.values()))
    assert any("b: 0.75, was 0.7: differs (difference +0.05, tolerance 0.02)" in line for line in lines)


# ---------------------------------------------------------------------------------------------
# Run-to-run spread (data/experiments/spread.json)
# ---------------------------------------------------------------------------------------------

def _write(root: Path, relative: str, value) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def _spread_inputs(root: Path, repeat_ar: float = 0.51) -> None:
    runs = [{"seed": s, "ours": {"voc07_map": m}, "torchvision": {"voc07_map": t}}
            for s, m, t in ((0, 0.70, 0.68), (1, 0.72, 0.69), (2, 0.74, 0.70))]
    _write(root, "data/experiments/side_by_side.json", {"runs": runs})
    _write(root, "runs/spread/lambda_10_seed0.json", {"runs": [{"lambda": 10.0, "seed": 0, "recall": {"300": {"AR": repeat_ar}}}]})
    lam_runs = [{"lambda": lam, "seed": seed, "recall": {"300": {"AR": ar}}}
                for lam, seed, ar in ((1.0, 0, 0.40), (1.0, 1, 0.42), (10.0, 0, 0.50), (10.0, 1, 0.50))]
    _write(root, "data/experiments/lambda.json", {"settings": {"lambdas": [1.0, 10.0], "seeds": [0, 1]},
                                                   "runs": lam_runs, "summary": [{"lambda": 1.0}, {"lambda": 10.0}]})
    _write(root, "data/reference/metrics.json", {"voc07_map": 0.8})
    _write(root, "runs/spread/eval/metrics.json", {"voc07_map": 0.8})
    bench = [{"name": "a", "kind": "model", "ratio": 0.5}, {"name": "nms", "kind": "component", "ratio": 9.0}]
    _write(root, "data/experiments/bench_cpu.json", {"rows": bench})
    _write(root, "runs/spread/bench_cpu.json", {"rows": [dict(bench[0], ratio=0.55), dict(bench[1], ratio=1.0)]})
    _write(root, "data/experiments/scaling_cpu.json", {"default": {"total": 0.100}})
    _write(root, "runs/spread/scaling_cpu.json", {"default": {"total": 0.090}})
    # the reference recipe's own seeds: VOC07 mAP std 0.005, area mAP 0.003, COCO AP 0.002
    summary = {m: {"mean": 0.8, "std": std} for m, std in (("voc07_map", 0.005), ("voc12_map", 0.003), ("coco_ap", 0.002))}
    _write(root, reproduce.REFERENCE_SPREAD, {"seeds": {"0": {}, "1": {}, "2": {}, "3": {}}, "summary": summary})


def test_spread_tolerances_from_seeds_and_repeats(tmp_path):
    _spread_inputs(tmp_path)
    reproduce.assemble_spread(tmp_path)
    spread = json.loads((tmp_path / reproduce.SPREAD).read_text())
    tol = spread["tolerance"]
    assert spread["same_seed_repeat"]["lambda_10_seed0_ar_top300"]["difference"] == pytest.approx(0.01)
    # the reference recipe's numbers: twice the standard deviation of its own seeds (issue 21), not a proxy
    assert tol["data/reference/metrics.json:voc07_map"]["value"] == pytest.approx(0.010)
    assert tol["data/reference/metrics.json:coco/AP"]["value"] == pytest.approx(0.004)
    assert tol["data/experiments/reference_seeds/seed1.json:voc07_map"]["value"] == pytest.approx(0.010)
    # ... and its 4-seed mean that over sqrt(4)
    assert tol["data/experiments/reference_spread.json:summary/voc07_map/mean"]["value"] == pytest.approx(0.005)
    # another model trained once (bf16 evaluation of it aside): twice the larger seed std of the side-by-side's two
    # detectors (ours 0.70, 0.72, 0.74: std 0.02; torchvision 0.68, 0.69, 0.70: std 0.01)
    assert tol["data/experiments/training_modes.json:joint/voc07_map"]["value"] == pytest.approx(0.04)
    # a 3-seed mean: divided by sqrt(3)
    key = "data/experiments/side_by_side.json:summary/ours/voc07_map/mean"
    assert tol[key]["value"] == pytest.approx(0.04 / 3 ** 0.5)
    # the difference ours - torchvision per seed: 0.02, 0.03, 0.04 -> std 0.01
    key = "data/experiments/side_by_side.json:summary/voc07_map_difference/mean"
    assert tol[key]["value"] == pytest.approx(0.02 / 3 ** 0.5)
    # timings: relative change of a repeat; the component rows do not count
    assert tol["data/experiments/bench_cpu.json:rows/16/ratio"] == {"value": pytest.approx(0.1), "relative": True,
                                                                   "basis": tol["data/experiments/bench_cpu.json:rows/16/ratio"]["basis"]}
    assert tol["data/experiments/scaling_cpu.json:default/total"]["value"] == pytest.approx(0.1)
    # every headline number of every target has a tolerance, with its reason
    headline = {key for target in reproduce.TARGETS for key in target.headline}
    assert set(tol) == headline and all(row["basis"] for row in tol.values())


def test_compare_uses_the_spread_file(tmp_path):
    _spread_inputs(tmp_path)
    reproduce.assemble_spread(tmp_path)
    metrics = next(t for t in reproduce.TARGETS if t.name == "metrics")
    table = reproduce.tolerances(tmp_path, metrics)
    assert table["data/reference/metrics.json:voc07_map"] == pytest.approx(0.010)
    rows = compare_headlines({"data/reference/metrics.json:voc07_map": 0.80},
                             {"data/reference/metrics.json:voc07_map": 0.809}, table)
    assert rows[0]["status"] == "ok"
    rows = compare_headlines({"data/reference/metrics.json:voc07_map": 0.80},
                             {"data/reference/metrics.json:voc07_map": 0.812}, table)
    assert rows[0]["status"] == "differs"


def test_dirty_means_code_changes_not_results(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/result.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "start")
    assert reproduce._git(tmp_path)[1] is False
    (tmp_path / "data/result.json").write_text('{"new": 1}')         # a target rewrote a result file
    assert reproduce._git(tmp_path)[1] is False
    (tmp_path / "code.py").write_text("x = 2\n")                       # the code changed
    assert reproduce._git(tmp_path)[1] is True


def test_single_runs_get_the_larger_seed_spread_of_the_two_detectors():
    runs = [{"seed": s, "ours": {"voc07_map": 0.70}, "torchvision": {"voc07_map": t}}
            for s, t in ((0, 0.66), (1, 0.68), (2, 0.70))]              # ours: no spread; torchvision: std 0.02
    lam = {"settings": {"lambdas": [1.0], "seeds": [0, 1]},
           "runs": [{"lambda": 1.0, "seed": s, "recall": {"300": {"AR": 0.4}}} for s in (0, 1)]}
    table = reproduce.spread_tolerances({"runs": runs}, lam, {"eval": 0.0, "bench_ratio": 0.1, "profile_total": 0.1})
    assert table["data/reference/metrics.json:voc07_map"]["value"] == pytest.approx(0.04)


# Issue 25, class 4: a manifest whose structure is wrong is refused, naming the file and the key.
def _shipped_entry() -> dict:
    return json.loads((ROOT / MANIFEST).read_text())["targets"]["metrics"]


@pytest.mark.parametrize("change, problem", [
    (lambda m: [m], r"the top level must be a JSON object, got 'list'"),
    (lambda m: {**m, "targets": "metrics"}, r'"targets" must be an object of target name -> entry, got \'metrics\''),
    (lambda m: {**m, "targets": {"metrics": [1]}}, r"targets\['metrics'\] must be an object, got \[1\]"),
    (lambda m: {**m, "targets": {"metrics": {k: v for k, v in _shipped_entry().items() if k != "inputs"}}},
     r"targets\['metrics'\] has no 'inputs'"),
    (lambda m: {**m, "targets": {"metrics": {**_shipped_entry(), "wall_seconds": "60"}}},
     r"targets\['metrics'\]\['wall_seconds'\] must be a number of seconds >= 0, or null, got '60'"),
    (lambda m: {**m, "targets": {"metrics": {**_shipped_entry(), "inputs": ["data/shapes"]}}},
     r"targets\['metrics'\]\['inputs'\] must be an object of file -> SHA-256"),
    (lambda m: {**m, "targets": {"metrics": {**_shipped_entry(), "headline": {"k": {"value": "0.8"}}}}},
     r"targets\['metrics'\]\['headline'\] must be an object of key"),
    (lambda m: {**m, "targets": {"metrics": {**_shipped_entry(), "reproduced": "yes"}}},
     r"targets\['metrics'\]\['reproduced'\] must be true or false"),
])
def test_a_malformed_manifest_is_refused_naming_the_file_and_key(tmp_path, change, problem, capsys):
    shutil.copytree(ROOT / "data", tmp_path / "data", ignore=shutil.ignore_patterns("shapes", "*.pt", "*.png"))
    path = tmp_path / MANIFEST
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    for argv in (["--list"], ["metrics"], ["--record-existing", "metrics"]):
        assert cli.main(["reproduce", *argv, "--root", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert re.search(rf"^error: {re.escape(str(path))}: {problem}", err), err
        assert "Traceback" not in err


def test_a_manifest_that_is_a_folder_is_refused(tmp_path, capsys):
    (tmp_path / MANIFEST).mkdir(parents=True)
    assert cli.main(["reproduce", "--list", "--root", str(tmp_path)]) == 1
    assert "manifest.json: cannot be read" in capsys.readouterr().err


def test_spread_names_each_repeated_command_as_it_is_typed():
    """spread.json's `commands` are the repeats' command lines, the `python -m fasterrcnn_edu` prefix once."""
    spread = json.loads((ROOT / "data/experiments/spread.json").read_text())
    from fasterrcnn_edu.lab.reproduce import SPREAD_REPEATS
    assert set(spread["commands"]) == set(SPREAD_REPEATS)
    for name, command in spread["commands"].items():
        assert command == "python -m fasterrcnn_edu " + " ".join(SPREAD_REPEATS[name]), name
