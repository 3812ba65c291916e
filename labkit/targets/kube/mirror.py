"""A published version's files on this machine, fetched from the origin over HTTP (the kube target's media folder).

On Kubernetes the media root is a volume claim that only the transcoder and origin pods mount. What
a lesson measures of a published version (every segment's size and duration, the playlists, a
scratch origin serving the segments for a herd) is read from a copy on this machine: the origin
serves every file of the version, and its playlists name them all, so walking them from the
multivariant playlist gets the whole version: each rung's media playlist, its init segment and
its segments. A published version never changes (a new publish is a new version), so a complete
copy is kept and reused; a copy cut short is finished on the next call.

Example::

    folder = mirror_version("http://127.0.0.1:30060", "lab-clock", "v1a2b3", into=Path("var/data/kube-media"))
    # var/data/kube-media/lab-clock/v1a2b3/master.m3u8, 360p/index.m3u8, 360p/init.mp4, 360p/seg_00001.m4s ...
"""

from __future__ import annotations

import posixpath
from pathlib import Path, PurePosixPath

import httpx

from labkit.clients import hls
from labkit.core.console import progress
from labkit.core.errors import ConfigError, LabError

MASTER = "master.m3u8"
# Written last, when every file of the version is in: a copy without it is finished on the next call.
COMPLETE = ".complete"
TIMEOUT = 30.0


class MirrorError(LabError):
    """The origin did not give a file of the published version."""


def mirror_version(origin_url: str, title: str, version: str, *, into: Path,
                   client: httpx.Client | None = None) -> Path:
    """``into/<title>/<version>``, holding every file of the version as the origin serves it."""
    for part in (title, version):
        if not part or part in {".", ".."} or "/" in part:
            raise ConfigError(f"{part!r} is not a title or version name", hint="take them from the job's master URL")
    folder = into / title / version
    if (folder / COMPLETE).exists():
        return folder
    base = f"{origin_url.rstrip('/')}/{title}/{version}/"
    own = client is None
    http = client or httpx.Client(timeout=TIMEOUT)
    try:
        fetched = 0
        master_text = _fetch(http, base, MASTER, folder).decode()
        for variant in hls.multivariant(master_text).variants:
            media_text = _fetch(http, base, variant.uri, folder).decode()
            rung = posixpath.dirname(variant.uri)
            media = hls.media(media_text)
            for uri in ([media.init] if media.init else []) + [s.uri for s in media.segments]:
                _fetch(http, base, posixpath.join(rung, uri) if rung else uri, folder, reuse=True)
                fetched += 1
    finally:
        if own:
            http.close()
    (folder / COMPLETE).write_text(f"{base}\n")
    progress(f"copied {title}/{version} from the origin ({base}): {fetched} media files in {folder}")
    return folder


def _fetch(http: httpx.Client, base: str, relative: str, folder: Path, *, reuse: bool = False) -> bytes:
    """One file of the version, saved under ``folder`` (``reuse``: an already saved one is kept)."""
    path = PurePosixPath(posixpath.normpath(relative))
    if path.is_absolute() or ".." in path.parts or "://" in relative:
        raise MirrorError(f"{relative!r} is not a file of the version {base}",
                          hint="its playlists must name files of the version by relative paths")
    target = folder.joinpath(*path.parts)
    if reuse and target.exists():
        return target.read_bytes()
    url = base + str(path)
    try:
        answer = http.get(url)
    except httpx.HTTPError as exc:
        raise MirrorError(f"the origin did not answer {url}: {exc}",
                          hint="is the lab up (`ottlab status --target kube`)?") from None
    if answer.status_code != 200:
        raise MirrorError(f"the origin answered {url} with HTTP {answer.status_code}",
                          hint="was the version published, and is it still there?")
    target.parent.mkdir(parents=True, exist_ok=True)
    aside = target.with_name(target.name + ".part")
    aside.write_bytes(answer.content)
    aside.replace(target)
    return answer.content
