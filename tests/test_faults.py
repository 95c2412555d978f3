"""Fault suite: the data and render command lines, run as the user runs them (subprocesses), against bad
inputs generated here from real faces of ../shared/data.

Every case checks the exit status, that the message names the file, the counts in the report or
manifest, that no traceback is printed, and that no input file was modified or deleted (every input
is hashed before and after the command).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
NOISE = ("inference_feedback_manager", "XNNPACK", "absl::InitializeLog")


# ------------------------------------------------------------------------------------------------ helpers


def digest(*roots: Path) -> dict[str, str]:
    """path -> sha256 (or link target) of every file and link under ``roots`` (a file root counts itself)."""
    out = {}
    for root in roots:
        paths = [root] if not root.is_dir() or root.is_symlink() else sorted(root.rglob("*"))
        for p in paths:
            if p.is_symlink():
                out[str(p)] = f"-> {os.readlink(p)}"
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run(args: list[str], *, inputs: list[Path], wrap: list[str] | None = None, timeout: int = 180):
    """Run a command line of the toolkit; assert no traceback and that ``inputs`` are untouched."""
    before = digest(*inputs)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, *args]
    proc = subprocess.run((wrap or []) + cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert digest(*inputs) == before, "an input file was modified or deleted"
    return proc


def data_cli(*args: str) -> list[str]:
    return ["-m", "if3d.data", *args]


def render_cli(*args: str) -> list[str]:
    return ["Smirk_batch_Render.py", *args, "--workers", "1", "--size", "64", "--no-progress"]


def one_error_line(proc, *names: str | Path) -> str:
    """The single stderr line of a refused command; it names every one of ``names``."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def read_only_wrapper(folder: Path) -> list[str] | None:
    """A command prefix that runs the command with ``folder`` read-only: a private read-only bind mount as
    root (chmod does not stop root), else None (the caller chmods the folder)."""
    if os.geteuid() != 0:
        return None
    unshare = shutil.which("unshare")
    script = 'mount --bind -o ro "$0" "$0" && exec "$@"'
    if unshare is None:
        pytest.skip("running as root without unshare: cannot make a read-only folder")
    probe = subprocess.run([unshare, "-m", "sh", "-c", script + " 2>/dev/null", str(folder), "true"],
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("running as root and a read-only bind mount is not permitted here (needs CAP_SYS_ADMIN)")
    return [unshare, "-m", "sh", "-c", script, str(folder)]


class ReadOnly:
    """``with ReadOnly(folder) as wrap: run(..., wrap=wrap)``: the folder is read-only for the command."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self) -> list[str] | None:
        self.wrap = read_only_wrapper(self.folder)
        if self.wrap is None:
            self.mode = self.folder.stat().st_mode
            self.folder.chmod(0o555)
        return self.wrap

    def __exit__(self, *exc) -> None:
        if self.wrap is None:
            self.folder.chmod(self.mode)


def fer_pixels(path: Path) -> str:
    with Image.open(path) as im:
        return " ".join(str(v) for v in np.asarray(im.convert("L")).reshape(-1))


# ------------------------------------------------------------------------------------------------ inputs


@pytest.fixture(scope="module")
def faces(data_dir) -> dict[str, list[Path]]:
    fer = data_dir / "fer2013"
    return {
        "train_happy": sorted((fer / "train" / "happy").iterdir())[:3],
        "train_sad": sorted((fer / "train" / "sad").iterdir())[:3],
        "test_happy": sorted((fer / "test" / "happy").iterdir())[:2],
        "ck": sorted((data_dir / "ckplus48" / "happy").iterdir())[:3],
        "wild": sorted((data_dir / "wild" / "uncropped").iterdir())[:1],
    }


@pytest.fixture(scope="module")
def bad_tree(faces, tmp_path_factory) -> Path:
    """FER2013 image folders with a truncated JPEG, a text file named .jpg, an empty file, a 16-bit PNG of a
    real face and a symbolic link loop."""
    root = tmp_path_factory.mktemp("faults") / "fer_src"
    for key, split, cls in (("train_happy", "train", "happy"), ("train_sad", "train", "sad"),
                            ("test_happy", "test", "happy")):
        (root / split / cls).mkdir(parents=True, exist_ok=True)
        for p in faces[key]:
            shutil.copy(p, root / split / cls / p.name)
    jpeg = faces["wild"][0].read_bytes()
    (root / "train" / "happy" / "Training_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "train" / "sad" / "Training_text.jpg").write_text("this is a text file, not a JPEG\n")
    (root / "train" / "sad" / "Training_empty.jpg").write_bytes(b"")
    with Image.open(faces["train_sad"][0]) as im:
        grey = np.asarray(im.convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(root / "train" / "sad" / "Training_16bit.png")
    os.symlink("Training_loop.jpg", root / "train" / "happy" / "Training_loop.jpg")
    return root


@pytest.fixture(scope="module")
def converted(bad_tree) -> Path:
    out = bad_tree.parent / "converted"
    proc = run(data_cli("convert", "--format", "fer2013-folders", "--src", str(bad_tree), "--out", str(out)),
               inputs=[bad_tree])
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def photo_tree(faces, tmp_path_factory) -> Path:
    """A render input: three real faces, a 16-bit PNG face, a truncated JPEG, a text file named .jpg and an
    empty .png."""
    root = tmp_path_factory.mktemp("render") / "photos"
    (root / "1").mkdir(parents=True)
    for p in faces["ck"]:
        shutil.copy(p, root / "1" / p.name)
    with Image.open(faces["ck"][0]) as im:
        Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257).save(root / "1" / "face16.png")
    jpeg = faces["wild"][0].read_bytes()
    (root / "1" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "1" / "text.jpg").write_text("not an image\n")
    (root / "1" / "empty.png").write_bytes(b"")
    return root


# ------------------------------------------------------------------------------------------------ convert


def test_convert_counts_undecodable_images_and_writes_only_good_ones(bad_tree, converted):
    report = json.loads((converted / "report.json").read_text())
    assert report["counts"] == {"empty_image": 1, "corrupt_image": 3}
    bad = {Path(p["path"]).name: p["detail"] for p in report["problems"]["corrupt_image"]}
    assert set(bad) == {"Training_truncated.jpg", "Training_text.jpg", "Training_loop.jpg"}
    assert "truncated" in bad["Training_truncated.jpg"]
    assert "not an image" in bad["Training_text.jpg"]
    assert "symbolic link" in bad["Training_loop.jpg"].lower() or "too many levels" in bad["Training_loop.jpg"]
    counts = json.loads((converted / "counts.json").read_text())
    assert counts["totals"] == {"train": 7, "val": 2}  # 6 JPEGs + the 16-bit PNG; the test folder is PublicTest
    names = {p.name for p in (converted / "photos").rglob("*") if p.is_file()}
    assert "Training_16bit.png" in names
    assert not names & (set(bad) | {"Training_empty.jpg"})


def test_check_verify_finds_nothing_bad_in_a_conversion(converted):
    proc = run(data_cli("check", "--root", str(converted), "--no-renders", "--verify"), inputs=[converted])
    assert proc.returncode == 0, proc.stderr
    assert "corrupt_image" not in proc.stdout + proc.stderr
    assert "samples: 7" in proc.stdout
    assert "samples: 2" in proc.stdout


@pytest.mark.parametrize("case", ["out_is_source_symlinks", "out_is_parent_of_source", "out_inside_source"])
def test_convert_overwrite_never_deletes_the_source(bad_tree, case):
    out = {"out_is_source_symlinks": bad_tree, "out_is_parent_of_source": bad_tree.parent,
           "out_inside_source": bad_tree / "train" / "out"}[case]
    extra = ["--link", "symlink"] if case == "out_is_source_symlinks" else []
    (bad_tree.parent / "notes.txt").write_text("a file of the user next to the source")
    proc = run(data_cli("convert", "--format", "fer2013-folders", "--src", str(bad_tree), "--out", str(out),
                        "--overwrite", *extra), inputs=[bad_tree.parent])
    line = one_error_line(proc, out, bad_tree)
    assert "source" in line


def test_convert_refuses_a_folder_it_did_not_write(bad_tree, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work")
    proc = run(data_cli("convert", "--format", "fer2013-folders", "--src", str(bad_tree), "--out", str(mine),
                        "--overwrite"), inputs=[bad_tree, mine])
    assert ".if3d-output.json" in one_error_line(proc, mine)


def test_convert_onto_a_read_only_folder(bad_tree, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    out = parent / "dataset"
    with ReadOnly(parent) as wrap:
        proc = run(data_cli("convert", "--format", "fer2013-folders", "--src", str(bad_tree), "--out", str(out)),
                   inputs=[bad_tree], wrap=wrap)
    line = one_error_line(proc, out)
    assert "cannot write" in line
    assert list(parent.iterdir()) == []


def test_convert_a_cut_off_fer2013_csv(faces, tmp_path):
    rows = [(3, "Training", p) for p in faces["train_happy"]] + [(4, "PublicTest", p) for p in faces["train_sad"]]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["emotion", "pixels", "Usage"])
    for code, usage, p in rows:
        w.writerow([code, fer_pixels(p), usage])
    w.writerow([3, "1 2 3 4", "Training"])  # a 2x2 'face'
    blob = buf.getvalue().encode() + f"6,{fer_pixels(faces['test_happy'][0])},Training\n".encode()
    src = tmp_path / "cut.csv"
    src.write_bytes(blob[: len(blob) - 3000])  # head -c: the last row ends in the middle of its pixels
    out = tmp_path / "out"
    proc = run(data_cli("convert", "--format", "fer2013-csv", "--src", str(src), "--out", str(out),
                        "--val-fraction", "0"), inputs=[src])
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"bad_label_row": 2}
    lines = {p["path"]: p["detail"] for p in report["problems"]["bad_label_row"]}
    assert "got 4" in lines[f"{src}:{len(rows) + 2}"]
    assert "cut short" in lines[f"{src}:{len(rows) + 3}"]
    assert f"{src}:{len(rows) + 2}" in proc.stdout
    assert json.loads((out / "counts.json").read_text())["totals"] == {"train": 3, "val": 3}


def test_non_utf8_csv_inputs_are_named(faces, converted, tmp_path):
    fer = tmp_path / "fer2013.csv"
    fer.write_bytes(b"emotion,pixels,Usage\n3," + fer_pixels(faces["train_happy"][0]).encode() + b",Tr\xe4ining\n")
    proc = run(data_cli("convert", "--format", "fer2013-csv", "--src", str(fer), "--out", str(tmp_path / "o")),
               inputs=[fer])
    assert "not UTF-8 text (line 2" in one_error_line(proc, fer)
    assert not (tmp_path / "o").exists()
    ann = tmp_path / "train.csv"
    ann.write_bytes(b"file,valence,arousal\n1/caf\xe9.jpg,0.1,0.2\n")
    proc = run(data_cli("check", "--photo-root", str(converted / "photos" / "train"), "--annotations", str(ann),
                        "--no-renders"), inputs=[ann, converted])
    assert "not UTF-8 text" in one_error_line(proc, ann)


# ------------------------------------------------------------------------------------------------ cache


@pytest.fixture
def paired(converted, tmp_path) -> Path:
    """A copy of the conversion with stand-in renders (the mirrored photo) for all photos but one."""
    root = tmp_path / "paired"
    shutil.copytree(converted, root)
    photos = sorted(p for p in (root / "photos" / "train").rglob("*") if p.is_file())
    for p in photos[1:]:
        render = root / "renders" / "train" / p.relative_to(root / "photos" / "train").with_suffix(".png")
        render.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(p) as im:
            im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(render)
    return root


def test_cache_over_a_symbolic_link_loop(paired):
    link = paired / "photos" / "train" / "1" / "up"
    os.symlink("..", link)
    proc = run(data_cli("cache", "--data", str(paired), "--split", "train", "--workers", "0",
                        "--skip-missing-renders"), inputs=[paired / "photos"])
    assert "symbolic link loop" in one_error_line(proc, link)
    assert not (paired / "cache").exists() or not list((paired / "cache").iterdir())


def test_stale_cache_hint_is_a_command_that_works(paired):
    build = data_cli("cache", "--data", str(paired), "--split", "train", "--workers", "0", "--skip-missing-renders")
    assert run(build, inputs=[paired / "photos", paired / "renders"]).returncode == 0
    photo = sorted((paired / "photos" / "train").rglob("*.jpg"))[0]
    st = photo.stat()
    os.utime(photo, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    check = data_cli("cache", "--data", str(paired), "--split", "train", "--check", "--skip-missing-renders")
    proc = run(check, inputs=[paired / "photos"])
    assert proc.returncode == 1
    assert str(photo.relative_to(paired)) in proc.stdout
    hint = shlex.split(proc.stdout.split("Rebuild it: ", 1)[1].strip())
    assert hint[:4] == ["python", "-m", "if3d.data", "cache"]
    assert "--skip-missing-renders" in hint
    rebuilt = run(hint[1:] + ["--workers", "0"], inputs=[paired / "photos"])
    assert rebuilt.returncode == 0, rebuilt.stderr
    # (test_cache.py checks in-process that the rebuilt cache then opens with --skip-missing-renders)
    assert f"{len(list((paired / 'renders' / 'train').rglob('*.png')))} samples" in rebuilt.stdout


# ------------------------------------------------------------------------------------------------ render


@pytest.fixture(scope="module")
def rendered(photo_tree) -> tuple[Path, subprocess.CompletedProcess]:
    out = photo_tree.parent / "renders"
    proc = run(render_cli("--input", str(photo_tree), "--output", str(out)), inputs=[photo_tree])
    return out, proc


def manifest(out: Path) -> dict[str, dict]:
    with open(out / "manifest.csv", newline="") as f:
        return {r["relative_path"]: r for r in csv.DictReader(f)}


def test_render_reports_every_bad_photo_and_renders_the_16_bit_one(rendered):
    out, proc = rendered
    assert proc.returncode == 0, proc.stderr
    assert "ok 4, no_face 0, unreadable 3, error 0" in proc.stdout
    for noise in NOISE:
        assert noise not in proc.stderr
    rows = manifest(out)
    assert rows["1/face16.png"]["status"] == "ok"
    assert {k: rows[k]["status"] for k in ("1/truncated.jpg", "1/text.jpg", "1/empty.png")} == dict.fromkeys(
        ("1/truncated.jpg", "1/text.jpg", "1/empty.png"), "unreadable")
    assert "truncated" in rows["1/truncated.jpg"]["reason"]
    assert "not an image" in rows["1/text.jpg"]["reason"]
    assert "empty file" in rows["1/empty.png"]["reason"]
    with Image.open(out / "1" / "face16.png") as im:
        assert np.asarray(im).max() > 100


def test_render_onto_a_file_or_a_read_only_folder_or_the_input(photo_tree, tmp_path):
    a_file = tmp_path / "renders"
    a_file.write_text("not a folder")
    proc = run(render_cli("--input", str(photo_tree), "--output", str(a_file)), inputs=[photo_tree, a_file])
    assert "exists and is not a folder" in one_error_line(proc, a_file)

    ro = tmp_path / "ro"
    ro.mkdir()
    with ReadOnly(ro) as wrap:
        proc = run(render_cli("--input", str(photo_tree), "--output", str(ro)), inputs=[photo_tree], wrap=wrap)
    assert "cannot write" in one_error_line(proc, ro)
    assert list(ro.iterdir()) == []

    proc = run(render_cli("--input", str(photo_tree), "--output", str(photo_tree)), inputs=[photo_tree])
    one_error_line(proc, photo_tree)
    proc = run(render_cli("--input", str(photo_tree), "--output", str(photo_tree.parent)), inputs=[photo_tree])
    assert "contains the source" in one_error_line(proc, photo_tree.parent)


def test_render_resume_redoes_a_replaced_photo(photo_tree, rendered, tmp_path):
    out, _ = rendered
    src, renders = tmp_path / "photos", tmp_path / "renders"
    shutil.copytree(photo_tree, src)
    shutil.copytree(out, renders)
    name = sorted(p.name for p in (src / "1").glob("S*.png"))[0]
    (src / "1" / name).write_text("replaced by a text file\n")
    proc = run(render_cli("--input", str(src), "--output", str(renders)), inputs=[src])
    assert proc.returncode == 0, proc.stderr
    assert "1 changed since the earlier run, 2 stale render/parameter files removed" in proc.stdout
    assert manifest(renders)[f"1/{name}"]["status"] == "unreadable"
    stem = Path(name).stem
    assert not (renders / "1" / f"{stem}.png").exists()
    assert not (renders / "1" / f"{stem}.npz").exists()


def test_render_with_a_non_utf8_manifest(photo_tree, rendered, tmp_path):
    out, _ = rendered
    renders = tmp_path / "renders"
    shutil.copytree(out, renders)
    bad = renders / "manifest.csv"
    bad.write_bytes(bad.read_bytes() + b"1/caf\xe9.jpg,ok,,1,1\n")
    proc = run(render_cli("--input", str(photo_tree), "--output", str(renders)), inputs=[photo_tree, bad])
    assert "not UTF-8 text" in one_error_line(proc, bad)
