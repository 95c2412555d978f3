"""What the analysis reads: an image, a folder of images, a video file, or a camera (record mode).

Every source yields :class:`Frame` objects one at a time, so a video is never held in memory. Images are
decoded by the toolkit's one decoder (:func:`if3d.io.images.decode_image`: any common format, grey and
16-bit included, EXIF orientation not applied); videos and cameras by OpenCV (``cv2.VideoCapture``,
FFmpeg inside the OpenCV wheel).

Bad input (each an :class:`InputError` naming the file and the problem): a path that does not exist, a
file that is neither an image nor a video OpenCV can open, a video whose first frame cannot be decoded, an
unreadable image (a folder's unreadable images are an error too, unless the caller asked to skip them:
then they are counted and reported in :attr:`ImageFolderSource.skipped`). A video that stops decoding
before the frame count its header announces is reported (:attr:`VideoSource.truncated`), and what was
decoded is analysed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from if3d.data.layout import IMAGE_EXTENSIONS
from if3d.io.report import CorruptImageError

__all__ = [
    "VIDEO_EXTENSIONS",
    "CameraSource",
    "Frame",
    "ImageFolderSource",
    "InputError",
    "VideoSource",
    "open_source",
]

VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {".avi", ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts", ".mts"}
)
"""File extensions (lower case) read as videos; any other non-image file is tried as a video too."""

#: frame rate assumed when a video's header gives none (reported as ``fps_assumed``)
DEFAULT_FPS = 30.0


class InputError(ValueError):
    """An input that cannot be analysed; the message names the file and the problem.

    Attributes:
        path: the file or folder concerned.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)


@dataclass
class Frame:
    """One frame of a source.

    Attributes:
        index: 0-based position in the source (video frame number; image number in a folder).
        time_s: ``index / fps`` for videos and cameras, 0 for images.
        image: uint8 [H, W, 3] RGB.
        path: the image file, or the video file (camera: the recording).
    """

    index: int
    time_s: float
    image: np.ndarray
    path: str


def _bgr_to_rgb(frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


class VideoSource:
    """The frames of a video file, decoded one at a time.

    Args:
        path: the video.

    Attributes:
        fps: frames per second from the header (``DEFAULT_FPS`` when it gives none: ``fps_assumed``).
        frame_count: the header's frame count (-1 when unknown; may differ from what decodes).
        size: ``(width, height)`` in pixels.
        decoded: frames yielded so far.
        truncated: the video ended before its header's frame count (set after iteration).

    Raises:
        InputError: the file does not open as a video, or its first frame does not decode.
    """

    kind = "video"

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise InputError(f"{self.path}: cannot be opened as a video (not a video, or a codec OpenCV's FFmpeg "
                             "does not have)", self.path)
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise InputError(f"{self.path}: no frame could be decoded (empty, truncated or corrupt video)", self.path)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps_assumed = not (np.isfinite(fps) and 0.0 < fps < 1000.0)
        self.fps = DEFAULT_FPS if self.fps_assumed else fps
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if count and count > 0 else -1
        self.size = (int(first.shape[1]), int(first.shape[0]))
        self._cap, self._first = cap, first
        self.decoded = 0
        self.truncated = False

    def __iter__(self) -> Iterator[Frame]:
        if self._cap is None:
            raise RuntimeError(f"{self.path}: a VideoSource is read once; open it again to re-read")
        cap, frame = self._cap, self._first
        try:
            while frame is not None:
                yield Frame(self.decoded, self.decoded / self.fps, _bgr_to_rgb(frame), str(self.path))
                self.decoded += 1
                ok, frame = cap.read()
                frame = frame if ok else None
        finally:
            cap.release()
            self._cap = self._first = None
        self.truncated = self.frame_count > 0 and self.decoded < self.frame_count

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = self._first = None


@dataclass
class ImageFolderSource:
    """Images (one file, or every image under a folder, sorted by relative path), one frame each.

    Args:
        path: an image file or a folder (searched recursively; hidden files and non-image files are left
            out, counted in :attr:`ignored`; videos are listed in :attr:`skipped`).
        skip_unreadable: an image that does not decode is counted in :attr:`skipped` (path, problem) and
            left out instead of raising.

    Raises:
        InputError: (while iterating) an unreadable image without ``skip_unreadable``; (at construction) a
            folder without images.
    """

    path: Path
    skip_unreadable: bool = False
    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0
    kind: str = "image"
    fps: float = 0.0

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.path.is_dir():
            self.kind = "folder"
            for root, dirs, names in os.walk(self.path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(names):
                    if name.startswith("."):
                        continue
                    ext = os.path.splitext(name)[1].lower()
                    if ext in IMAGE_EXTENSIONS:
                        self.files.append(Path(root) / name)
                    elif ext in VIDEO_EXTENSIONS:  # listed, never silently dropped
                        self.skipped.append((str(Path(root) / name), "a video inside a folder of images is not "
                                             "analysed with them; give it as an input of its own"))
                    else:
                        self.ignored += 1
            self.files.sort(key=lambda p: p.relative_to(self.path).as_posix())
            if not self.files:
                raise InputError(f"{self.path}: a folder without images ({', '.join(sorted(IMAGE_EXTENSIONS))})",
                                 self.path)
        else:
            self.files = [self.path]

    def __iter__(self) -> Iterator[Frame]:
        from if3d.io.images import decode_image

        for i, f in enumerate(self.files):
            try:
                image = decode_image(f)
            except CorruptImageError as e:
                if not self.skip_unreadable:
                    raise InputError(f"{f}: {e.problem}", f) from None
                self.skipped.append((str(f), e.problem or str(e)))
                continue
            yield Frame(i, 0.0, image, str(f))

    def relative_name(self, path: str) -> str:
        """``path`` relative to the folder (the file name for a single image)."""
        p = Path(path)
        return p.relative_to(self.path).as_posix() if self.kind == "folder" else p.name


class CameraSource:
    """Record mode: frames from a camera (device index) or a stream or file OpenCV opens, saved as they come.

    Args:
        device: camera index (``0``) or a path/URL that ``cv2.VideoCapture`` opens (a video file stands in
            for a camera in tests).
        record_to: the recording (``.mp4``, MPEG-4 Part 2 through OpenCV's FFmpeg), written frame by frame;
            the analysis reads it again for the annotated video.
        max_frames: stop after this many frames (None: until the stream ends or Ctrl-C).
        duration_s: stop after this many seconds of capture (None: no limit).
        fps: frame rate of the recording when the camera reports none (30).

    Iteration stops cleanly on the stream's end, the limits, or Ctrl-C (then :attr:`interrupted` is set); the
    recording is closed in every case, and written to a temporary name first and moved into place by
    :meth:`finish`, so an aborted run leaves no half-written file under the final name.

    Raises:
        InputError: the camera or stream does not open or gives no frame.
    """

    kind = "webcam"

    def __init__(self, device: int | str, record_to: str | os.PathLike, max_frames: int | None = None,
                 duration_s: float | None = None, fps: float = DEFAULT_FPS) -> None:
        self.device = device
        self.path = Path(record_to)
        self.max_frames, self.duration_s = max_frames, duration_s
        cap = cv2.VideoCapture(device)
        if not cap.isOpened():
            cap.release()
            raise InputError(f"camera {device}: cannot be opened (no such device, or it is busy)", str(device))
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise InputError(f"camera {device}: opened but gave no frame", str(device))
        cam_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = cam_fps if np.isfinite(cam_fps) and 0.0 < cam_fps < 1000.0 else float(fps)
        self.size = (int(first.shape[1]), int(first.shape[0]))
        self._cap, self._first = cap, first
        self.decoded = 0
        self.interrupted = False
        self.truncated = False
        self.fps_assumed = False
        self.frame_count = -1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.recording.mp4")
        self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, self.size)
        if not self._writer.isOpened():
            cap.release()
            raise InputError(f"{self.path}: cannot write the recording (OpenCV's MPEG-4 writer did not open)",
                             self.path)

    def __iter__(self) -> Iterator[Frame]:
        cap, frame = self._cap, self._first
        start = time.monotonic()
        try:
            while frame is not None:
                if frame.shape[1] != self.size[0] or frame.shape[0] != self.size[1]:
                    frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
                if frame.ndim == 2:
                    frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
                elif frame.shape[2] == 4:
                    frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
                self._writer.write(frame)
                yield Frame(self.decoded, self.decoded / self.fps, _bgr_to_rgb(frame), str(self.path))
                self.decoded += 1
                if self.max_frames is not None and self.decoded >= self.max_frames:
                    break
                if self.duration_s is not None and time.monotonic() - start >= self.duration_s:
                    break
                ok, frame = cap.read()
                frame = frame if ok else None
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            cap.release()
            self._writer.release()

    def finish(self) -> Path:
        """Move the finished recording to its name (after iteration); returns its path."""
        if self._tmp.exists():
            os.replace(self._tmp, self.path)
        return self.path

    def discard(self) -> None:
        """Remove the temporary recording (a failed run)."""
        self._writer.release()
        if self._tmp.exists():
            self._tmp.unlink()


def open_source(path: str | os.PathLike, skip_unreadable: bool = False) -> VideoSource | ImageFolderSource:
    """The source of one input path: an image or a folder of images (:class:`ImageFolderSource`), else a video.

    Raises:
        InputError: the path does not exist, or is neither an image nor a video OpenCV can open.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder", p)
    if p.is_dir() or p.suffix.lower() in IMAGE_EXTENSIONS:
        return ImageFolderSource(p, skip_unreadable=skip_unreadable)
    try:
        return VideoSource(p)
    except InputError:
        if p.suffix.lower() in VIDEO_EXTENSIONS:
            raise
        raise InputError(f"{p}: neither an image ({', '.join(sorted(IMAGE_EXTENSIONS))}) nor a video OpenCV can "
                         "open", p) from None
