"""render_tree / Smirk_batch_Render.py on a generated tree of real photos plus broken files:
mirrored outputs, manifest accounting, corrupt and non-image files, no-face photos, resume, overwrite,
worker processes, CLI errors."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from if3d.outputs import MARKER_NAME, write_marker
from if3d.render.batch import MANIFEST_NAME, read_manifest, render_tree
from if3d.render.cli import main

SIZE = 64


@pytest.fixture(scope="module")
def photo_tree(data_dir, tmp_path_factory) -> Path:
    """A small tree: CK+48 and FER2013 photos in class folders, wild photos nested deeper, and
    a truncated JPEG, a text file, an empty .png and a face-less (uniform grey) photo."""
    root = tmp_path_factory.mktemp("photos")
    sources = {
        "ck/happy": sorted((data_dir / "ckplus48" / "happy").iterdir())[:3],
        "ck/surprise": sorted((data_dir / "ckplus48" / "surprise").iterdir())[:3],
        "fer/sad": sorted((data_dir / "fer2013" / "test" / "sad").iterdir())[:2],
        "wild/a/b": sorted((data_dir / "wild" / "uncropped").iterdir())[:2],
    }
    for rel, files in sources.items():
        (root / rel).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / rel / f.name)
    jpeg = sorted((data_dir / "wild" / "uncropped").iterdir())[5].read_bytes()
    (root / "wild" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (root / "ck" / "README.txt").write_text("not an image\n")
    (root / "ck" / "happy" / "empty.png").write_bytes(b"")
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(root / "fer" / "sad" / "blank.png")
    return root


def all_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def outputs_of(rel: str) -> tuple[str, str]:
    stem = rel.rsplit(".", 1)[0]
    return stem + ".png", stem + ".npz"


def test_tree_is_mirrored_and_every_input_reported(photo_tree, tmp_path):
    out = tmp_path / "renders"
    summary = render_tree(photo_tree, out, size=SIZE, workers=1, progress=False)
    inputs = all_files(photo_tree)
    manifest = read_manifest(out / MANIFEST_NAME)
    assert sorted(manifest) == inputs
    assert summary.total == len(inputs) == summary.processed
    assert summary.skipped == 0
    status = {rel: s for rel, (s, _) in manifest.items()}
    assert status["wild/truncated.jpg"] == "unreadable"
    assert status["ck/README.txt"] == "unreadable"
    assert status["ck/happy/empty.png"] == "unreadable"
    assert status["fer/sad/blank.png"] == "no_face"
    photos = [r for r in inputs if r not in {"wild/truncated.jpg", "ck/README.txt", "ck/happy/empty.png",
                                             "fer/sad/blank.png"}]
    assert all(status[r] == "ok" for r in photos), {r: manifest[r] for r in photos if status[r] != "ok"}
    assert summary.counts == {"ok": len(photos), "no_face": 1, "unreadable": 3, "error": 0}
    assert all(manifest[r][1] for r in inputs if status[r] != "ok")  # every failure has a reason
    # outputs: exactly the ok items, same relative folders and stems, nothing else (no temporaries)
    expected = {MANIFEST_NAME, MARKER_NAME} | {p for r in photos for p in outputs_of(r)}
    assert set(all_files(out)) == expected
    for r in photos:
        png, npz = outputs_of(r)
        render = np.asarray(Image.open(out / png))
        assert render.shape == (SIZE, SIZE, 3)
        assert render.max() > 100
        with np.load(out / npz) as params:  # loads without pickle
            assert params["landmarks"].shape == (478, 3)
            assert tuple(params["image_size"]) == Image.open(photo_tree / r).size[::-1]


def test_resume_skips_finished_items_and_overwrite_redoes_them(photo_tree, tmp_path):
    out = tmp_path / "renders"
    first = render_tree(photo_tree, out, size=SIZE, workers=1, progress=False)
    ok = [r for r, (s, _) in read_manifest(out / MANIFEST_NAME).items() if s == "ok"]
    inodes = {r: (out / outputs_of(r)[0]).stat().st_ino for r in ok}

    second = render_tree(photo_tree, out, size=SIZE, workers=1, progress=False)
    # ok and no_face are finished; the 3 unreadable files are tried again
    assert second.skipped == first.counts["ok"] + first.counts["no_face"]
    assert second.processed == first.counts["unreadable"]
    assert second.counts == first.counts
    assert all((out / outputs_of(r)[0]).stat().st_ino == inodes[r] for r in ok)

    # an item whose render vanished, and one missing from the manifest (interrupted run), are redone
    (out / outputs_of(ok[0])[0]).unlink()
    rows = read_manifest(out / MANIFEST_NAME)
    del rows[ok[1]]
    with open(out / MANIFEST_NAME, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["relative_path", "status", "reason"])
        w.writerows((r, s, why) for r, (s, why) in rows.items())
    third = render_tree(photo_tree, out, size=SIZE, workers=1, progress=False)
    assert third.processed == first.counts["unreadable"] + 2
    assert (out / outputs_of(ok[0])[0]).exists()
    assert read_manifest(out / MANIFEST_NAME)[ok[1]][0] == "ok"

    redo = render_tree(photo_tree, out, size=SIZE, workers=1, progress=False, overwrite=True)
    assert redo.processed == redo.total
    assert redo.skipped == 0
    assert all((out / outputs_of(r)[0]).stat().st_ino != inodes[r] for r in ok[2:])


def test_stale_outputs_of_failed_items_and_temporaries_are_removed(photo_tree, tmp_path):
    out = tmp_path / "renders"
    (out / "fer" / "sad").mkdir(parents=True)
    write_marker(out, "renders")  # an earlier run's output folder
    stale = out / "fer" / "sad" / "blank.png"
    stale.write_bytes(b"old render")
    leftover = out / "fer" / "sad" / ".x.png.999999999.abc.tmp-if3d"
    leftover.write_bytes(b"half")
    render_tree(photo_tree, out, size=SIZE, workers=1, progress=False)
    assert not stale.exists()
    assert not leftover.exists()


def test_workers_give_the_same_result(photo_tree, tmp_path):
    one = render_tree(photo_tree, tmp_path / "one", size=SIZE, workers=1, progress=False)
    two = render_tree(photo_tree, tmp_path / "two", size=SIZE, workers=2, progress=False, chunk_size=2)
    assert two.counts == one.counts
    m1, m2 = read_manifest(tmp_path / "one" / MANIFEST_NAME), read_manifest(tmp_path / "two" / MANIFEST_NAME)
    assert {r: s for r, (s, _) in m1.items()} == {r: s for r, (s, _) in m2.items()}
    for r, (s, _) in m1.items():
        if s == "ok":
            png = outputs_of(r)[0]
            a = np.asarray(Image.open(tmp_path / "one" / png)).astype(int)
            b = np.asarray(Image.open(tmp_path / "two" / png)).astype(int)
            assert np.abs(a - b).max() <= 1, r
    assert two.startup_s > 0


def test_output_stem_collision_is_an_error(data_dir, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    face = sorted((data_dir / "ckplus48" / "happy").iterdir())[0]
    shutil.copy(face, src / "a.png")
    Image.open(face).convert("RGB").save(src / "a.jpg", quality=95)
    summary = render_tree(src, tmp_path / "out", size=SIZE, workers=1, progress=False)
    manifest = read_manifest(tmp_path / "out" / MANIFEST_NAME)
    assert manifest["a.jpg"][0] == "ok"
    assert manifest["a.png"][0] == "error"
    assert "a.jpg" in manifest["a.png"][1]
    assert summary.counts["error"] == 1


def test_output_inside_input_is_not_scanned(data_dir, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    shutil.copy(sorted((data_dir / "ckplus48" / "happy").iterdir())[0], src / "x.png")
    render_tree(src, src / "renders", size=SIZE, workers=1, progress=False)
    again = render_tree(src, src / "renders", size=SIZE, workers=1, progress=False)
    assert again.total == 1
    assert again.skipped == 1


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        render_tree(tmp_path / "missing", tmp_path / "out", progress=False)
    (tmp_path / "in").mkdir()
    with pytest.raises(ValueError, match="framing"):
        render_tree(tmp_path / "in", tmp_path / "out", framing="square", progress=False)
    with pytest.raises(ValueError, match="backend"):
        render_tree(tmp_path / "in", tmp_path / "out", backend="deca", progress=False)
    with pytest.raises(ValueError, match="differ"):
        render_tree(tmp_path / "in", tmp_path / "in", progress=False)


def test_cli_end_to_end(photo_tree, tmp_path, capsys):
    out = tmp_path / "renders"
    code = main(["--input", str(photo_tree), "--output", str(out), "--size", "48", "--workers", "1",
                 "--framing", "smirk-crop", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ok 10" in printed
    assert "no_face 1" in printed
    assert "unreadable 3" in printed
    with np.load(out / "ck" / "happy" / (sorted((photo_tree / "ck" / "happy").glob("S*"))[0].stem + ".npz")) as p:
        assert str(p["framing"]) == "smirk-crop"
    assert np.asarray(Image.open(next(out.rglob("*.png")))).shape == (48, 48, 3)


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--input", str(tmp_path), "--output", str(tmp_path / "o"), "--smirk-checkpoint", "x.pt"])
    assert exc.value.code == 2
    assert "--backend smirk" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "nope"), "--output", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_smirk_backend_setup_errors_are_fatal_and_name_the_file(photo_tree, tmp_path):
    missing = tmp_path / "SMIRK_em1.pt"
    with pytest.raises(RuntimeError, match="SMIRK_em1.pt"):
        render_tree(photo_tree, tmp_path / "out", backend="smirk", size=SIZE, workers=1, progress=False,
                    backend_kwargs={"checkpoint": missing, "flame_model": tmp_path / "generic_model.pkl",
                                    "assets_dir": tmp_path, "device": "cpu"})


def test_entry_script_help(repo_root):
    result = subprocess.run([sys.executable, str(repo_root / "Smirk_batch_Render.py"), "--help"],
                            capture_output=True, text=True, cwd=repo_root, timeout=120)
    assert result.returncode == 0
    for option in ("--input", "--out", "--backend", "--size", "--workers", "--framing", "--overwrite",
                   "--smirk-checkpoint", "--flame-model", "--smirk-assets", "--no-progress"):
        assert option in result.stdout
    assert "--output" not in result.stdout  # the earlier name of --out still works, unlisted


def test_interrupted_run_leaves_no_partial_outputs_and_resumes(photo_tree, tmp_path, monkeypatch):
    """Ctrl-C while writing the 4th render: finished items are in the manifest, the interrupted one left
    neither a parameter file nor a temporary, and the next run completes the tree."""
    import if3d.render.batch as batch

    calls = {"n": 0}
    real_encode_png = batch.encode_png

    def interrupting_encode_png(image):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_encode_png(image)

    out = tmp_path / "renders"
    monkeypatch.setattr(batch, "encode_png", interrupting_encode_png)
    with pytest.raises(KeyboardInterrupt):
        render_tree(photo_tree, out, size=SIZE, workers=1, progress=False, chunk_size=1)
    monkeypatch.setattr(batch, "encode_png", real_encode_png)

    manifest = read_manifest(out / MANIFEST_NAME)
    done = [r for r, (s, _) in manifest.items() if s == "ok"]
    assert len(done) == 3
    written = [p for p in all_files(out) if p not in (MANIFEST_NAME, MARKER_NAME)]
    assert sorted(written) == sorted(p for r in done for p in outputs_of(r))  # pairs only, no temporaries
    resumed = render_tree(photo_tree, out, size=SIZE, workers=1, progress=False)
    assert resumed.skipped == 3
    assert resumed.counts["ok"] == 10


def test_benchmark_smoke(repo_root, data_dir, tmp_path):
    """benchmarks/bench_render.py --smoke runs and reports images/s as JSON (no timing is asserted)."""
    import json

    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(repo_root / "benchmarks" / "bench_render.py"), "--smoke",
                             "--data", str(data_dir / "ckplus48"), "--json", str(out)],
                            capture_output=True, text=True, cwd=repo_root, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    run = report["results"]["1"]
    assert report["config"]["images"] == 8
    assert run["counts"]["ok"] + run["counts"]["no_face"] == 8
    assert run["images_per_s"]["median"] > 0
    assert run["images_per_s"]["min"] <= run["images_per_s"]["median"] <= run["images_per_s"]["max"]


def test_sixteen_bit_png_renders_like_its_8_bit_original(data_dir, tmp_path):
    """A 16-bit PNG of a real face is decoded as the dataset decodes it (not as a white image): a face is
    found and the render equals the render of the 8-bit original."""
    src = tmp_path / "photos"
    src.mkdir()
    face = sorted((data_dir / "ckplus48" / "happy").iterdir())[0]
    grey = np.asarray(Image.open(face).convert("L"))
    Image.fromarray(grey).save(src / "face8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(src / "face16.png")
    assert Image.open(src / "face16.png").mode.startswith("I;16")
    summary = render_tree(src, tmp_path / "out", size=SIZE, workers=1, progress=False)
    manifest = read_manifest(tmp_path / "out" / MANIFEST_NAME)
    assert manifest["face16.png"][0] == "ok", manifest["face16.png"]
    assert summary.counts["ok"] == 2
    a = np.asarray(Image.open(tmp_path / "out" / "face8.png"))
    b = np.asarray(Image.open(tmp_path / "out" / "face16.png"))
    np.testing.assert_array_equal(a, b)


def _faces(data_dir: Path, n: int) -> list[Path]:
    return sorted((data_dir / "ckplus48" / "happy").iterdir())[:n]


def test_resume_redoes_changed_inputs_and_removes_renders_of_unreadable_ones(data_dir, tmp_path):
    """A photo replaced after rendering (by another face, or by a text file) is not 'already done': the new
    face is rendered, and the unreadable one loses its stale render and parameters (counted)."""
    src, out = tmp_path / "photos", tmp_path / "renders"
    src.mkdir()
    faces = _faces(data_dir, 4)
    for i, f in enumerate(faces[:3]):
        shutil.copy(f, src / f"p{i}.png")
    first = render_tree(src, out, size=SIZE, workers=1, progress=False)
    assert first.counts["ok"] == 3
    old = {i: (out / f"p{i}.png").read_bytes() for i in range(3)}

    shutil.copy(faces[3], src / "p0.png")  # another face, same name
    (src / "p1.png").write_text("not a photo any more\n")  # replaced by a text file
    second = render_tree(src, out, size=SIZE, workers=1, progress=False)
    manifest = read_manifest(out / MANIFEST_NAME)
    assert manifest["p0.png"][0] == "ok"
    assert manifest["p1.png"][0] == "unreadable"
    assert "not an image" in manifest["p1.png"][1]
    assert (second.processed, second.skipped, second.changed, second.removed) == (2, 1, 2, 2)
    assert not (out / "p1.png").exists()
    assert not (out / "p1.npz").exists()
    assert (out / "p2.png").read_bytes() == old[2]
    assert (out / "p0.png").read_bytes() != old[0]
    # the new render is the render of the new face
    ref = tmp_path / "ref"
    ref.mkdir()
    shutil.copy(faces[3], ref / "p0.png")
    render_tree(ref, tmp_path / "ref_out", size=SIZE, workers=1, progress=False)
    assert (out / "p0.png").read_bytes() == (tmp_path / "ref_out" / "p0.png").read_bytes()
    assert "2 changed since the earlier run, 2 stale render/parameter files removed" in str(second)

    third = render_tree(src, out, size=SIZE, workers=1, progress=False)
    assert (third.skipped, third.changed, third.removed) == (2, 0, 0)  # p0, p2 done; p1 retried, still unreadable


def test_resume_of_an_earlier_versions_manifest_compares_input_and_render_times(data_dir, tmp_path):
    src, out = tmp_path / "photos", tmp_path / "renders"
    src.mkdir()
    for i, f in enumerate(_faces(data_dir, 2)):
        shutil.copy(f, src / f"p{i}.png")
    render_tree(src, out, size=SIZE, workers=1, progress=False)
    rows = read_manifest(out / MANIFEST_NAME)
    with open(out / MANIFEST_NAME, "w", newline="") as fh:  # the three columns of earlier versions
        w = csv.writer(fh)
        w.writerow(["relative_path", "status", "reason"])
        w.writerows((r, s, why) for r, (s, why) in rows.items())
    (out / MARKER_NAME).unlink()  # earlier versions wrote no marker: the manifest identifies the folder
    newer = (out / "p1.png").stat().st_mtime_ns + 10**9
    os.utime(src / "p1.png", ns=(newer, newer))
    again = render_tree(src, out, size=SIZE, workers=1, progress=False)
    assert (again.skipped, again.processed, again.changed) == (1, 1, 1)
    assert (out / MARKER_NAME).is_file()


def test_output_folder_guard(data_dir, tmp_path):
    """The output may not be a file, contain the input, or be a non-empty folder this command did not write;
    nothing in the way is modified."""
    from if3d.outputs import OutputError

    src = tmp_path / "photos"
    src.mkdir()
    shutil.copy(_faces(data_dir, 1)[0], src / "a.png")
    a_file = tmp_path / "renders.png"
    a_file.write_bytes(b"user file")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        render_tree(src, a_file, size=SIZE, workers=1, progress=False)
    assert a_file.read_bytes() == b"user file"
    with pytest.raises(OutputError, match="contains the source"):
        render_tree(src, tmp_path, size=SIZE, workers=1, progress=False)
    foreign = tmp_path / "other_photos"
    foreign.mkdir()
    shutil.copy(_faces(data_dir, 1)[0], foreign / "a.png")  # would be overwritten by the render of a.png
    before = (foreign / "a.png").read_bytes()
    with pytest.raises(OutputError, match="not empty and it holds no .if3d-output.json"):
        render_tree(src, foreign, size=SIZE, workers=1, progress=False, overwrite=True)
    assert (foreign / "a.png").read_bytes() == before
    assert sorted(p.name for p in foreign.iterdir()) == ["a.png"]


def test_unwritable_output_stops_the_run_with_the_file_named(data_dir, tmp_path, monkeypatch):
    import errno

    import if3d.outputs
    import if3d.render.batch as batch
    from if3d.outputs import OutputError

    src = tmp_path / "photos"
    src.mkdir()
    for i, f in enumerate(_faces(data_dir, 3)):
        shutil.copy(f, src / f"p{i}.png")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(if3d.outputs, "atomic_write_json", read_only)
    with pytest.raises(OutputError, match=r"renders: cannot write: read-only file system"):
        render_tree(src, tmp_path / "renders", size=SIZE, workers=1, progress=False)
    monkeypatch.undo()

    real = batch.atomic_write_bytes
    calls = {"png": 0}

    def disk_full_on_second_render(path, data):
        if str(path).endswith(".png"):
            calls["png"] += 1
            if calls["png"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(batch, "atomic_write_bytes", disk_full_on_second_render)
    out = tmp_path / "renders"
    with pytest.raises(OutputError, match=r"p1\.png: cannot write: no space left on the device"):
        render_tree(src, out, size=SIZE, workers=1, progress=False, chunk_size=1)
    monkeypatch.undo()
    assert read_manifest(out / MANIFEST_NAME) == {"p0.png": ("ok", "")}  # what was finished is kept
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [MANIFEST_NAME, "p0.npz", "p0.png"]


def test_mediapipe_log_lines_are_kept_out_of_stderr_and_ours_are_not(data_dir, tmp_path, capfd):
    from if3d.face.landmarks import quiet_native_logs

    src = tmp_path / "photos"
    src.mkdir()
    shutil.copy(_faces(data_dir, 1)[0], src / "a.png")
    (src / "bad.jpg").write_text("not a photo")
    code = main(["--input", str(src), "--output", str(tmp_path / "out"), "--workers", "1", "--size", str(SIZE),
                 "--no-progress"])
    captured = capfd.readouterr()
    assert code == 0
    assert "ok 1" in captured.out
    assert "unreadable 1" in captured.out
    for noise in ("inference_feedback_manager", "XNNPACK", "absl::InitializeLog"):
        assert noise not in captured.err

    with quiet_native_logs():
        os.write(2, b"W0000 00:00:1796052655.491200   12180 inference_feedback_manager.cc:114] Feedback manager\n")
        os.write(2, b"I0000 00:00:1796052655.5   12180 gl_context.cc:357] GL version: 3.2\n")
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        os.write(2, b"E0000 00:00:1796052655.6   12180 calculator_graph.cc:887] a real C++ error\n")
        print("a message of ours", file=sys.stderr)
    err = capfd.readouterr().err
    assert "Feedback manager" not in err
    assert "GL version" not in err
    assert "XNNPACK" not in err
    assert "a real C++ error" in err
    assert "a message of ours" in err
