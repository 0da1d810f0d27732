"""docs/scale.md: a class graded as shards on GitHub Actions, Slurm or Kubernetes, then merged,
gives the gradebook and class summary of a single run.

Each recipe's own commands run here, locally, with the shard number each engine would set
(the matrix value, SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT, JOB_COMPLETION_INDEX), on a
class of three tiny submissions (one graded, one that does not import, one empty upload),
with the quick profile and no isolation appended to every grade command to keep it cheap.
The recipes are parsed as their engines would read them (YAML for the workflow and the
manifests, #SBATCH lines for Slurm). Every run happens in the same directory, recreated
each time, as on an engine whose machines all see one layout (a runner's checkout path, a
shared file system, a volume mounted at /work): a report quotes the submission's absolute
path in tracebacks. One test, so the single run is graded once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "scale.md"
FAST = " --profile quick --isolation none --jobs 1"
RAISES = "from reference.memoization import Tensor, enable_kv_cache, disable_kv_cache\n\n\nclass KVCache:\n    def __init__(self, *args):\n        raise NotImplementedError\n"


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}[ \t]*\n(.*?)^```[ \t]*$", DOC.read_text(), flags=re.S | re.M)


def fast(command: str) -> str:
    """The recipe's command, with the test's speed options on a grade command."""
    return command.strip() + FAST if " spec grade " in command else command.strip()


def sh(command: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("KVSPEC_", "PYTEST_", "SLURM_", "JOB_COMPLETION"))}
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment.get("PATH", "")])
    proc = subprocess.run(["bash", "-c", command], cwd=cwd, env=environment | env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def workspace(base: Path) -> Path:
    """A fresh `base/` holding the class, at the same path every time."""
    shutil.rmtree(base, ignore_errors=True)
    klass = base / "submissions"
    (klass / "dan").mkdir(parents=True)
    (klass / "dan" / "memoization.py").write_text(RAISES)
    (klass / "erin").mkdir()
    (klass / "erin" / "memoization.py").write_text("def update(:\n")
    (klass / "frank").mkdir()
    (klass / "frank" / "README.txt").write_text("forgot the code")
    return base


def unrandom(text: str) -> str:
    """The grader grades a private copy of each submission in a fresh temporary directory,
    whose random name shows in tracebacks, and a report that quotes the end of the test run's
    output quotes pytest's timing line ('... in 2.98s'): the same on every machine but for
    those (as results.json's execution_time)."""
    text = re.sub(r"kvspec-submission-[A-Za-z0-9_]+", "kvspec-submission-*", text)
    return re.sub(r" in \d+\.\d+s\b", " in *s", text)


def same_as_single(merged: Path, single: Path) -> None:
    for name in ("gradebook.csv", "class-summary.md"):
        assert (merged / name).read_bytes() == (single / name).read_bytes(), name
    for student in ("dan", "erin", "frank"):
        ours, theirs = (json.loads(unrandom((d / student / "results.json").read_text())) for d in (merged, single))
        ours.pop("execution_time"), theirs.pop("execution_time")
        assert ours == theirs, student
        assert unrandom((merged / student / "report.md").read_text()) == unrandom((single / student / "report.md").read_text())


def keep(directory: Path, where: Path) -> Path:
    shutil.move(directory, where)
    return where


def github(work: Path, results: Path) -> Path:
    (text,) = blocks("yaml")[:1]
    workflow: dict[Any, Any] = yaml.safe_load(text)
    grade, merge = workflow["jobs"]["grade"], workflow["jobs"]["merge"]
    assert merge["needs"] == "grade"
    shards = grade["strategy"]["matrix"]["shard"]
    assert shards == [1, 2, 3]
    (line,) = [s["run"] for s in grade["steps"] if "spec grade" in s.get("run", "")]
    (upload,) = [s for s in grade["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    artifacts = results / "artifacts"
    for k in shards:
        runner = workspace(work)  # a fresh runner, same checkout path
        value = str(k)
        sh(fast(line.replace("${{ matrix.shard }}", value)), runner)
        name = upload["with"]["name"].replace("${{ matrix.shard }}", value)
        shutil.copytree(runner / upload["with"]["path"].replace("${{ matrix.shard }}", value), artifacts / name)
    (download,) = [s for s in merge["steps"] if s.get("uses", "").startswith("actions/download-artifact")]
    assert download["with"]["pattern"] == "shard-*"
    (merge_line,) = [s["run"] for s in merge["steps"] if "spec merge" in s.get("run", "")]
    sh(merge_line, artifacts)
    return artifacts / "class-report"


def slurm(work: Path, results: Path) -> Path:
    script, submit = blocks("bash")[:2]
    (array,) = re.findall(r"^#SBATCH --array=(\d+)-(\d+)$", script, flags=re.M)
    first, last = int(array[0]), int(array[1])
    body = [line for line in script.splitlines() if line.strip() and not line.startswith("#")]
    assert len(body) == 1 and "$SLURM_ARRAY_TASK_ID" in body[0]
    cluster = workspace(work)
    for task in range(first, last + 1):
        sh(fast(body[0]), cluster, SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_COUNT=str(last - first + 1))
    (wrap,) = re.findall(r'--dependency=afterok:\$jobid --wrap "([^"]+)"', submit)
    sh(wrap, cluster)
    return keep(cluster / "class-report", results / "class-report")


def kubernetes(work: Path, results: Path) -> Path:
    grade_job, merge_job = (yaml.safe_load(text) for text in blocks("yaml")[1:3])
    assert grade_job["kind"] == merge_job["kind"] == "Job" and grade_job["spec"]["completionMode"] == "Indexed"
    completions = grade_job["spec"]["completions"]
    (container,) = grade_job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["bash", "-c"]
    volume = workspace(work)
    for index in range(completions):
        sh(fast(container["args"][0]), volume, JOB_COMPLETION_INDEX=str(index))
    (merger,) = merge_job["spec"]["template"]["spec"]["containers"]
    sh(merger["args"][0], volume)
    return keep(volume / "class-report", results / "class-report")


def test_each_recipe_merges_to_what_a_single_run_gives(tmp_path: Path) -> None:
    work = tmp_path / "work"
    sh(f"python -m spec grade submissions/ --out class-report{FAST}", workspace(work))
    single = keep(work / "class-report", tmp_path / "single")
    rows = (single / "gradebook.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in rows[1:]] == [
        ["dan", "submissions/dan", "graded"], ["erin", "submissions/erin", "import failed"],
        ["frank", "submissions/frank", "import failed"],
    ]  # fmt: skip
    for engine in (github, slurm, kubernetes):
        (tmp_path / engine.__name__).mkdir()
        same_as_single(engine(work, tmp_path / engine.__name__), single)

    # merge refuses what is not one whole class, in one line
    shards = tmp_path / "github" / "artifacts"
    for args, fragment in (("shard-1 shard-2", "shard 3/3 is missing"), ("shard-1 shard-1 shard-2 shard-3", "are both shard 1/3")):
        proc = subprocess.run([sys.executable, "-m", "spec", "merge", *args.split(), "--out", "bad"], cwd=shards, capture_output=True, text=True)
        assert proc.returncode == 2 and fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_shard_needs_a_class(tmp_path: Path) -> None:
    workspace(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "spec", "grade", "submissions/dan", "--shard", "1/2", "--out", "out"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "--shard splits a class" in proc.stderr, proc.stderr
