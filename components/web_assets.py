"""Browser assets served from beside our HTML pages, so they render with no network.

Great Expectations' Data Docs templates load bootstrap, jQuery, popper, font-awesome, bootstrap-table and vega
from public CDNs: offline (a locked-down network, an air-gapped worker) the validation pages come out unstyled
with empty tables. The pinned packages in requirements/web-assets.json are fetched from the npm registry once,
at setup or image build time (never while a pipeline runs), checked against their `integrity` digests, and kept
in components/assets/ (not committed). `localize` then copies what a generated site names into its own
static/vendor/ and points the pages there, so a site folder is self-contained wherever it is opened from.

    python -m components.web_assets fetch     # scripts/setup.sh and scripts/images.sh run it
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = Path(__file__).resolve().parent
LOCK = PACKAGE.parent / "requirements" / "web-assets.json"
ASSETS = PACKAGE / "assets"  # fetched packages, one folder each, and urls.json (CDN address -> file)
URLS = "urls.json"
VENDOR = Path("static") / "vendor"
# The GX logo (light, with a timestamp query, and dark in an inline style) comes from S3; the site ships one.
GX_LOGO = re.compile(r"https://great-expectations-web-assets\.s3\.[a-z0-9-]+\.amazonaws\.com/"
                     r"(?:logo-long|full_logo_dark)\.png[^\"')]*")
LOCAL_LOGO = Path("static") / "images" / "logo-long.png"
# What a page loads (not the links a reader may click): script src, href of stylesheets, CSS url(...).
LOADED = re.compile(r"""<(?:script[^>]*\bsrc|link[^>]*\bhref|img[^>]*\bsrc)\s*=\s*["'](https?://[^"']+)["']"""
                    r"""|url\(\s*["']?(https?://[^"')]+)""", re.IGNORECASE)


class AssetError(RuntimeError):
    """A package could not be fetched or does not match its pinned digest."""


def _lock(path: Path = LOCK) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _stamp(lock: dict) -> str:
    return hashlib.sha256(json.dumps(lock, sort_keys=True).encode()).hexdigest()[:16]


def _check_integrity(data: bytes, integrity: str, name: str) -> None:
    algo, _, want = integrity.partition("-")
    got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if got != want:
        raise AssetError(f"{name}: the downloaded tarball's {algo} is {got}, the lock pins {want}; "
                         "the registry served something else — do not use it")


def _extract(data: bytes, files: list[str], dest: Path, name: str) -> None:
    """Only the listed files (a trailing '/' = a folder's files), never an arbitrary member path."""
    wanted = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            rel = member.name.split("/", 1)[1] if "/" in member.name else ""
            if not member.isfile() or not any(rel == f or (f.endswith("/") and rel.startswith(f)) for f in files):
                continue
            if ".." in Path(rel).parts:
                raise AssetError(f"{name}: member {member.name!r} leaves the package")
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(member).read())
            wanted += 1
    missing = [f for f in files if not (dest / f).exists()]
    if missing or not wanted:
        raise AssetError(f"{name}: {missing or files} not in the package; fix requirements/web-assets.json")


def fetch(dest: Path = ASSETS, lock_path: Path = LOCK, timeout: float = 60.0) -> bool:
    """Download and unpack every pinned package into dest (atomic: a new folder renamed over the old one).
    Returns False when dest already holds this lock's packages."""
    lock = _lock(lock_path)
    stamp = _stamp(lock)
    if (dest / ".stamp").is_file() and (dest / ".stamp").read_text() == stamp:
        return False
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, pkg in lock["packages"].items():
        with urllib.request.urlopen(pkg["tarball"], timeout=timeout) as resp:  # noqa: S310 (a pinned https URL)
            data = resp.read()
        _check_integrity(data, pkg["integrity"], f"{name}@{pkg['version']}")
        _extract(data, pkg["files"], tmp / name, f"{name}@{pkg['version']}")
        log.info("fetched %s@%s", name, pkg["version"])
    (tmp / URLS).write_text(json.dumps(lock["urls"], indent=1), encoding="utf-8")
    (tmp / ".stamp").write_text(stamp)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    return True


def external_loads(html: str) -> list[str]:
    """The scripts and stylesheets a page would load from the network."""
    return [a or b for a, b in LOADED.findall(html)]


def localize(site: Path, assets: Path = ASSETS) -> list[str]:
    """Point every page under `site` at local copies of its CDN scripts and stylesheets (copied into
    site/static/vendor/). Returns what still loads from the network (nothing, with the assets fetched)."""
    site = Path(site)
    urls = json.loads((assets / URLS).read_text(encoding="utf-8")) if (assets / URLS).is_file() else {}
    if not urls:
        log.warning("%s: no local web assets (run `python -m components.web_assets fetch`, which "
                    "scripts/setup.sh does); the validation pages keep their CDN links", assets)
    used: set[str] = set()
    left: set[str] = set()
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        up = os.path.relpath(site, page.parent)  # the site's root as seen from this page
        if (site / LOCAL_LOGO).is_file():
            text = GX_LOGO.sub(Path(up, LOCAL_LOGO).as_posix(), text)
        for url, rel in urls.items():
            if url in text:
                text = text.replace(f'"{url}"', f'"{Path(up, VENDOR, rel).as_posix()}"')
                used.add(rel.split("/", 1)[0])
        left.update(external_loads(text))
        tmp = page.with_name(page.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, page)
    for pkg in sorted(used):
        shutil.copytree(assets / pkg, site / VENDOR / pkg, dirs_exist_ok=True)
    if left:
        log.warning("%s: still loaded from the network: %s", site, sorted(left))
    return sorted(left)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["fetch"]:
        print("usage: python -m components.web_assets fetch", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        changed = fetch()
    except (AssetError, OSError) as exc:
        print(f"error: web assets: {exc}", file=sys.stderr)
        return 1
    print(f"web assets {'fetched into' if changed else 'already in'} {ASSETS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
