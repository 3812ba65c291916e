"""The canary title: a tiny HLS title the origin always serves, for the synthetic probes.

Synthetic monitoring fetches a known object through every PoP as a viewer would (a signed
playlist, a signed segment) and alerts when that fails (:mod:`labkit.platform.layers.monitoring.probes`).
It needs an object that exists whatever the lessons published: this one, written into the media
root next to the titles when the media layer's configs are written. It is not in the catalog, so
no viewer is offered it.

On Kubernetes the same two files are the ConfigMap ``media-canary`` (``k8s/base/media/canary/``,
written by :func:`write_kube` through ``python -m labkit.platform.layers``; a test holds them
current), which an init container of the transcoder's pod, the one that mounts the media volume
read-write, copies into the volume (:data:`KUBE_DIR`) before the transcoder starts.
"""

from __future__ import annotations

from pathlib import Path

from labkit.core.config import repo_root

TITLE = "ottlab-probe"
PLAYLIST = "index.m3u8"
SEGMENT = "seg_00000.ts"
# One MPEG-TS null packet (PID 0x1FFF) repeated: a valid transport stream carrying nothing.
_NULL_PACKET = bytes([0x47, 0x1F, 0xFF, 0x10]) + bytes(184)
SEGMENT_BYTES = _NULL_PACKET * 8
PLAYLIST_TEXT = (
    "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-PLAYLIST-TYPE:VOD\n"
    f"#EXTINF:1.0,\n{SEGMENT}\n#EXT-X-ENDLIST\n"
)


def publish(media_root: Path) -> Path:
    """Write the canary title under ``media_root`` (only what differs), and return its folder."""
    folder = media_root / TITLE
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files().items():
        path = folder / name
        if not path.is_file() or path.read_bytes() != content:
            path.write_bytes(content)
    return folder


# The committed copy the media layer's kustomization turns into the ConfigMap media-canary.
KUBE_DIR = ("k8s", "base", "media", "canary")


def files() -> dict[str, bytes]:
    """The canary title's files, by name."""
    return {PLAYLIST: PLAYLIST_TEXT.encode(), SEGMENT: SEGMENT_BYTES}


def kube_dir() -> Path:
    return repo_root().joinpath(*KUBE_DIR)


def write_kube() -> None:
    """Write the files of the ConfigMap media-canary (what ``python -m labkit.platform.layers`` does) and say so."""
    folder = kube_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files().items():
        (folder / name).write_bytes(content)
        print(f"wrote {folder / name}")
