"""What the app serves, under attack: the file route, symlinks, swaps after the check, tampered files, a full disk.

The served set is an allow-list of the files the app itself made (thumbnails, heat maps,
figures), re-checked when served; a dataset whose images resolve outside the allowed roots is
refused. Every expected picture is computed here, independently of the app's served files.
"""

from __future__ import annotations

import errno
import io
import json
import re
import shutil
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from PIL import Image

from tests.test_demo_support import engine as make_engine
from tests.test_demo_support import load_model, start, toy_root, use_session_cache

gradio_client = pytest.importorskip("gradio_client")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "ablation"


def _png(path: Path, colour: tuple[int, int, int], size=(16, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def _climb(frm: Path, to: Path) -> str:
    """A ``../../..`` path from folder ``frm`` to ``to`` through the filesystem root (as an attacker writes it)."""
    return "/".join([".."] * (len(frm.resolve().parts) + 2)) + str(to.resolve())


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(engine, url, client, app files, allowed folder, outside folder) of one app launched with --allow-root."""
    use_session_cache()
    from demo.gallery import dataset_gallery

    base = tmp_path_factory.mktemp("serve")
    allowed, outside = base / "allowed", base / "outside"
    allowed.mkdir()
    (outside / "secret.txt").parent.mkdir()
    (outside / "secret.txt").write_text("top secret\n")
    (allowed / "private.txt").write_text("not a picture the app showed\n")
    engine = make_engine(load_model(), dataset_gallery("toypedes", toy_root(), "test"))
    # roots= as the demo passed them before: the gallery's image folder and the allowed folder
    app, url = start(engine, allow_roots=[allowed], roots=[base])
    client = gradio_client.Client(url, verbose=False)
    try:
        yield engine, url, client, app, allowed, outside
    finally:
        client.close()
        app.close()


def _get(url: str, path: str, route: str = "file=") -> httpx.Response:
    return httpx.get(f"{url}/gradio_api/{route}{quote(path)}", timeout=30)


# ----------------------------------------------------------------------------- datasets outside the roots


def _generic(tmp_path: Path, outside_image: Path) -> Path:
    data = tmp_path / "data"
    rows = [{"image": f"images/{i}.png", "pid": i, "caption": f"person {i}", "split": "test"} for i in range(2)]
    for i in range(2):
        _png(data / "images" / f"{i}.png", (50 * i, 90, 20))
    rows.append({"image": _climb(data, outside_image), "pid": 9, "caption": "the secret", "split": "test"})
    ann = data / "ann.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ann


def test_a_dataset_with_an_image_outside_the_roots_is_refused_by_the_demo_only(tmp_path):
    from demo.gallery import GalleryError, dataset_gallery
    from upperson.data import load_dataset

    secret = _png(tmp_path / "outside" / "secret.png", (200, 0, 0))
    ann = _generic(tmp_path, secret)
    # training and evaluation keep reading it (docs/data.md): only the app refuses
    assert secret.resolve() in [Path(r.path).resolve() for r in load_dataset("generic", ann).split("test")]
    with pytest.raises(GalleryError) as err:
        dataset_gallery("generic", ann, "test")
    assert "secret.png" in str(err.value) and "--allow-root" in str(err.value)
    g = dataset_gallery("generic", ann, "test", allow_roots=[secret.parent])  # named: accepted
    assert secret.resolve() in [it.path for it in g.items]
    assert all(r in (ann.parent.resolve(), secret.parent.resolve()) for r in g.source_roots)


def test_the_cli_refuses_it_in_one_error_line(tmp_path, monkeypatch, capsys):
    import demo.__main__ as cli
    import demo.app

    secret = _png(tmp_path / "outside" / "secret.png", (200, 0, 0))
    ann = _generic(tmp_path, secret)
    monkeypatch.setattr("upperson.logs.setup_logging", lambda *a, **k: None)

    def no_launch(*a, **k):
        raise AssertionError("the demo launched on a dataset outside the roots")

    monkeypatch.setattr(demo.app, "launch", no_launch)
    rc = cli.main(["--data-root", str(ann), "--dataset", "generic", "--split", "test"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert "secret.png" in err[0] and "--allow-root" in err[0]


# ----------------------------------------------------------------------------- the file route


def test_the_file_route_serves_only_files_the_app_made(site):
    engine, url, client, _, allowed, outside = site
    main, *_ = client.predict(engine.gallery.items[0].captions[0], "", 3, False, api_name="/search")
    made = [g["image"] for g in main]  # downloaded by the client through the file route: served
    assert len(made) == 3 and all(Path(m).stat().st_size > 0 for m in made)
    for path in (outside / "secret.txt", allowed / "private.txt", engine.gallery.items[0].path, "/etc/hostname"):
        for route in ("file=", "file/"):
            r = _get(url, str(path), route)
            assert r.status_code in (403, 404) and b"secret" not in r.content, (path, route, r.status_code)
    from demo.app import served_files

    files = served_files(site[3])
    thumb = sorted(files.dir.glob("*.jpg"))[0]
    ok = _get(url, str(thumb))
    assert ok.status_code == 200 and ok.content == thumb.read_bytes()
    for path in (f"{files.dir}/../{outside.name}/secret.txt", files.dir, f"{files.dir}/x.jpg"):
        r = _get(url, str(path))
        assert r.status_code in (403, 404) and b"secret" not in r.content, (path, r.status_code)
    # a visitor's upload is shown back to them (Gradio's own upload folder)
    png = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(png, format="PNG")
    up = httpx.post(f"{url}/gradio_api/upload", files={"files": ("u.png", png.getvalue(), "image/png")}, timeout=30)
    (uploaded,) = up.json()
    back = _get(url, uploaded)
    assert back.status_code == 200 and back.content == png.getvalue()


def test_a_served_file_swapped_for_a_symlink_is_refused_when_served(site):
    engine, url, client, app, _, outside = site
    from demo.app import served_files

    files = served_files(app)
    client.predict(engine.gallery.items[1].captions[0], "", 2, False, api_name="/search")
    thumb = sorted(files.dir.glob("*.jpg"))[0]
    kept = thumb.read_bytes()
    assert _get(url, str(thumb)).status_code == 200
    thumb.unlink()
    thumb.symlink_to(outside / "secret.txt")
    try:
        r = _get(url, str(thumb))
        assert r.status_code in (403, 404) and b"secret" not in r.content
    finally:
        thumb.unlink()
        thumb.write_bytes(kept)


def test_a_gallery_image_swapped_for_a_symlink_out_is_not_shown(site, tmp_path):
    """The folder is indexed; then an image becomes a symlink to an outside picture: it is never thumbnailed."""
    engine, url, client, _, allowed, outside = site
    from demo.thumbs import ImageFiles

    folder = allowed / "swap"
    for i in range(3):
        _png(folder / f"{i}.png", (30, 60 * i, 200))
    outside_pic = _png(outside / "private.png", (250, 250, 0), size=(17, 47))
    client.predict(str(folder), api_name="/set_gallery")
    (folder / "1.png").unlink()
    (folder / "1.png").symlink_to(outside_pic)
    main, _, status, table = client.predict("a person", "", 3, False, api_name="/search")
    ref = ImageFiles()
    try:
        forbidden = Path(ref.thumbnail(outside_pic)).read_bytes()
    finally:
        ref.cleanup()
    assert all(Path(g["image"]).read_bytes() != forbidden for g in main)
    # the changed folder is re-indexed (a symlink is not a gallery file) and the search says so
    assert len(main) == 2 and "indexed again" in status, status


def test_image_files_refuse_sources_outside_their_roots(tmp_path):
    from demo.thumbs import ImageFiles, OutsideRoots

    inside = _png(tmp_path / "in" / "a.png", (1, 2, 3))
    out = _png(tmp_path / "out" / "b.png", (9, 9, 9))
    (tmp_path / "in" / "link.png").symlink_to(out)
    files = ImageFiles(source_roots=[tmp_path / "in"])
    try:
        assert Path(files.thumbnail(inside)).parent == files.dir
        for bad in (out, tmp_path / "in" / "link.png", tmp_path / "in" / ".." / "out" / "b.png"):
            with pytest.raises(OutsideRoots, match="outside"):
                files.thumbnail(bad)
        assert files.may_serve(files.thumbnail(inside)) and not files.may_serve(str(out))
    finally:
        files.cleanup()


def test_a_full_disk_while_making_thumbnails_is_one_message_and_leaves_no_temp_file(site, monkeypatch):
    engine, _, client, app, allowed, _ = site
    import demo.thumbs
    from demo.app import served_files

    folder = allowed / "full"
    for i in range(2):
        _png(folder / f"{i}.png", (200, 10 * i, 90), size=(19, 51))
    files = served_files(app)

    def full(path: Path, data: bytes) -> None:
        with open(path, "wb") as fh:
            fh.write(data[:10])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(demo.thumbs, "_write_file", full)  # the disk is full from here on
    before = set(files.dir.iterdir())
    client.predict(str(folder), api_name="/set_gallery")
    main, _, status, table = client.predict("someone new", "", 2, False, api_name="/search")
    status = re.sub(r"\\(.)", r"\1", status)  # the message is markdown: "_" in the folder's name is escaped
    assert main == [] and "No space left" in status and str(files.dir) in status
    assert set(files.dir.iterdir()) <= before  # no temporary file left behind


# ----------------------------------------------------------------------------- the Ablation view


def test_the_ablation_view_refuses_files_that_resolve_outside(site):
    _, _, client, _, allowed, outside = site
    folder = allowed / "study"
    folder.mkdir()
    shutil.copy(SHIPPED / "ablation.csv", folder / "ablation.csv")
    secret_png = outside / "curves.png"
    Image.new("RGB", (8, 8), (255, 0, 255)).save(secret_png)
    (outside / "outside.md").write_text("# x\n\n```\ncat /etc/shadow  # outside text\n```\n")
    (folder / "ablation_curves.png").symlink_to(secret_png)
    (folder / "README.md").symlink_to(outside / "outside.md")
    table, _, _, curves, command, info = client.predict(str(folder), "R1", api_name="/ablation")
    assert curves is None or Path(curves).read_bytes() != secret_png.read_bytes()
    assert "outside text" not in command
    shown = info.replace("\\", "")  # Markdown escapes
    assert "ablation_curves.png is not shown" in shown and "README.md is not shown" in shown and "outside" in shown
    assert len(table["data"]) == len(open(SHIPPED / "ablation.csv").read().strip().splitlines()) - 1

    linked = allowed / "linked"
    linked.mkdir()
    shutil.copy(SHIPPED / "ablation.csv", outside / "ablation.csv")
    (linked / "ablation.csv").symlink_to(outside / "ablation.csv")
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="outside the allowed folders"):
        client.predict(str(linked), "R1", api_name="/ablation")


# ----------------------------------------------------------------------------- the report's HTML


def test_the_report_index_replaces_a_symlink_and_survives_a_full_disk(tmp_path, monkeypatch):
    from analysis import report, style
    import upperson.io

    out = tmp_path / "report"
    out.mkdir()
    victim = tmp_path / "victim.html"
    victim.write_text("keep me")
    (out / "index.html").symlink_to(victim)
    fig = style.FigureRecord("a", "<script>x</script>", {"png": out / "a.png", "svg": out / "a.svg"})
    report.render_index([("h", [fig], "")], out, title="t")
    assert victim.read_text() == "keep me" and not (out / "index.html").is_symlink()
    first = (out / "index.html").read_text()
    assert "<script>x" not in first and 'href="a.svg"' in first
    # a file name that reads as a URL scheme stays a relative link (no javascript: href)
    odd = style.FigureRecord("b", "c", {"png": out / "javascript:alert(1).png", "svg": out / "javascript:x.svg"})
    page = report.render_index([("h", [odd], "")], out, title="t").read_text()
    assert 'href="javascript:' not in page and 'src="javascript:' not in page and 'src="./javascript:' in page
    first = (out / "index.html").read_text()

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(upperson.io, "_fsync_file", full)
    with pytest.raises(OSError, match="No space"):
        report.render_index([("h2", [fig], "")], out, title="t2")
    assert (out / "index.html").read_text() == first and sorted(p.name for p in out.iterdir()) == ["index.html"]


def test_a_symlink_loop_as_a_gallery_folder_is_a_named_error(tmp_path):
    from demo.gallery import GalleryError, folder_gallery, resolve_under

    loop = tmp_path / "loop"
    loop.symlink_to(tmp_path / "loop")
    with pytest.raises(GalleryError, match="loop"):
        folder_gallery(loop)
    chosen = resolve_under("loop", [tmp_path])  # as the UI resolves a typed folder: no exception
    with pytest.raises(GalleryError, match="loop"):
        folder_gallery(chosen)
