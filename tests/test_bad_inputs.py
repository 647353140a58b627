"""Bad inputs and a hostile environment, through the real CLI: images and masks, zips, tables,
configs, weight files, read-only and full disks, store URLs.

Each case asserts exit 2, exactly one ``error:`` line naming the file or key, no traceback and
nothing left behind (:func:`bad_inputs.check_case`). Cases run in this process; the ones marked
``subprocess=True`` run again as a fresh process, as a user types them.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bad_inputs import Case, Ctx, case_params, check_case, run_in_process

ROOT = Path(__file__).resolve().parents[1]
TINY_CAM = ROOT / "configs" / "image-level" / "tiny.yaml"
TINY_CELL = ROOT / "configs" / "cell-level" / "tiny.yaml"
FIRST = "synth-0-00000"  # the first field: a run that fails on it has written nothing yet


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from hpasc.synth import synthesize

    out = tmp_path_factory.mktemp("bad-inputs") / "synth"
    synthesize(out, n_images=3, size=128, seed=0, progress=False)
    return out


@pytest.fixture(scope="module")
def fold(tmp_path_factory, data) -> Path:
    """A fold folder with an image-level config (what `predict` reads before the weights)."""
    from hpasc.io.runs import dump_config
    from hpasc.runconfig.image_level import load_image_level_config

    path = tmp_path_factory.mktemp("run") / "fold-0"
    dump_config(load_image_level_config(TINY_CAM, [f"data.root={data}"]), path / "config.yaml")
    return path


_MOUNTS: list[Path] = []


@pytest.fixture
def ctx(tmp_path, data, fold):
    c = Ctx(data=data, work=tmp_path / "work", extra={"fold": fold})
    c.work.mkdir()
    yield c
    while _MOUNTS:
        subprocess.run(["umount", str(_MOUNTS.pop())], check=False)


# --- setups -----------------------------------------------------------------------------------


def copy_images(c: Ctx, name: str = "imgs") -> Path:
    dst = c.work / name
    shutil.copytree(c.data / "images", dst)
    c.extra["images"] = dst
    return dst


def copy_masks(c: Ctx, name: str = "masks") -> Path:
    dst = c.work / name
    shutil.copytree(c.data / "masks", dst)
    c.extra["masks"] = dst
    return dst


def channel(c: Ctx, ch: str = "red", ext: str = ".png") -> Path:
    return c.extra["images"] / f"{FIRST}_{ch}{ext}"


def mask(c: Ctx) -> Path:
    return c.extra["masks"] / f"{FIRST}.png"


def png(array: np.ndarray) -> bytes:
    from hpasc.io.images import encode_png

    return encode_png(array)


def image_file(mutate):
    """A setup: copy the images, then ``mutate(ctx, path of the first field's red channel)``."""

    def setup(c: Ctx) -> None:
        copy_images(c)
        mutate(c, channel(c))

    return setup


def mask_file(mutate):
    def setup(c: Ctx) -> None:
        copy_masks(c)
        mutate(c, mask(c))

    return setup


def empty(c: Ctx, p: Path) -> None:
    p.write_bytes(b"")


def truncate(c: Ctx, p: Path) -> None:
    p.write_bytes(p.read_bytes()[:120])


def text(c: Ctx, p: Path) -> None:
    p.write_text("this is not an image\n")


def small(c: Ctx, p: Path) -> None:
    p.write_bytes(png(np.zeros((64, 64), np.uint8)))


def colour(c: Ctx, p: Path) -> None:
    rng = np.random.default_rng(0)
    p.write_bytes(png(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)))


def remove(c: Ctx, p: Path) -> None:
    p.unlink()


def float_tiff(c: Ctx, p: Path) -> None:
    import tifffile

    p.unlink()
    tifffile.imwrite(p.with_suffix(".tif"), np.full((128, 128), 0.5, np.float32))


def garbage_as(ext: str):
    def mutate(c: Ctx, p: Path) -> None:
        p.unlink()
        p.with_name(p.name.replace(".png", ext)).write_bytes(b"\x1f\x8b garbage " * 20)

    return mutate


def images_and_masks(mutate_mask=None):
    def setup(c: Ctx) -> None:
        copy_images(c)
        copy_masks(c)
        if mutate_mask is not None:
            mutate_mask(c, mask(c))

    return setup


def write(name: str, content: str | bytes):
    def setup(c: Ctx) -> None:
        p = c.work / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        c.extra[name] = p

    return setup


def zip_of_first_field(name: str, arcnames) -> callable:
    def setup(c: Ctx) -> None:
        with zipfile.ZipFile(c.work / name, "w") as z:
            for ch in ("red", "green", "blue", "yellow"):
                z.write(c.data / "images" / f"{FIRST}_{ch}.png", arcnames(ch))

    return setup


def both(*setups):
    def setup(c: Ctx) -> None:
        for s in setups:
            s(c)

    return setup


def data_copy_with(mutate):
    """A copy of the whole data set in ``work/d`` (for training), changed by ``mutate(ctx, d)``."""

    def setup(c: Ctx) -> None:
        d = c.work / "d"
        shutil.copytree(c.data, d)
        c.extra["d"] = d
        mutate(c, d)

    return setup


def zipfile_bytes(entries: dict[str, bytes]) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in entries.items():
            z.writestr(name, content)
    return buf.getvalue()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weight_file(kind: str):
    """A setup writing ``work/w.ckpt``: truncated, a foreign pickle, other keys, or text."""

    def setup(c: Ctx) -> None:
        import pickle

        import torch

        p = c.work / "w.ckpt"
        if kind in ("truncated", "keys"):
            torch.save({"state_dict": {"model.other.weight": torch.zeros(3)}}, p)
            if kind == "truncated":
                p.write_bytes(p.read_bytes()[:200])
        elif kind == "pickle":
            p.write_bytes(pickle.dumps({"state_dict": {"w": np.zeros(3)}, "what": Ctx}))
        else:
            p.write_text("not weights\n")
        c.extra["w"] = p

    return setup


def resume_from(kind: str):
    """A run folder ``work/run`` whose fold 0 holds a broken ``last.ckpt``."""

    def setup(c: Ctx) -> None:
        weight_file(kind)(c)
        ckpt = c.work / "run" / "fold-0" / "checkpoints" / "last.ckpt"
        ckpt.parent.mkdir(parents=True)
        c.extra["w"].replace(ckpt)
        c.extra["last"] = ckpt

    return setup


# --- cases ------------------------------------------------------------------------------------


def E(c: Ctx, key: str) -> str:
    return str(c.extra[key])


def red(c: Ctx) -> str:
    return str(channel(c))


IMAGE_CASES = [
    Case(
        "resize 0-byte png",
        lambda c: ["resize", E(c, "images"), "out", "--size", "64"],
        lambda c: [red(c), "0 bytes"],
        image_file(empty),
        subprocess=True,
    ),
    Case(
        "segment 0-byte png",
        lambda c: ["segment", E(c, "images"), "out"],
        lambda c: [red(c), "0 bytes"],
        image_file(empty),
    ),
    Case(
        "crop 0-byte png",
        lambda c: ["crop", E(c, "images"), c.data / "masks", "out"],
        lambda c: [red(c), "0 bytes"],
        image_file(empty),
    ),
    Case(
        "resize truncated png",
        lambda c: ["resize", E(c, "images"), "out", "--size", "64"],
        lambda c: [red(c), "not a readable PNG"],
        image_file(truncate),
    ),
    Case(
        "segment truncated png",
        lambda c: ["segment", E(c, "images"), "out.zip"],
        lambda c: [red(c), "not a readable PNG"],
        image_file(truncate),
        subprocess=True,
    ),
    Case(
        "resize text as png",
        lambda c: ["resize", E(c, "images"), "out", "--size", "64"],
        lambda c: [red(c), "not a readable PNG"],
        image_file(text),
    ),
    Case(
        "resize channel of another size",
        lambda c: ["resize", E(c, "images"), "out", "-s", "64"],
        lambda c: [FIRST, red(c), "different sizes"],
        image_file(small),
    ),
    Case(
        "segment channel of another size",
        lambda c: ["segment", E(c, "images"), "out"],
        lambda c: [FIRST, "different sizes"],
        image_file(small),
    ),
    Case(
        "resize missing channel",
        lambda c: ["resize", E(c, "images"), "out", "--size", "64"],
        lambda c: [red(c), "incomplete"],
        image_file(remove),
    ),
    Case(
        "segment missing channel",
        lambda c: ["segment", E(c, "images"), "out"],
        lambda c: [red(c), "incomplete"],
        image_file(remove),
    ),
    Case(
        "crop missing channel",
        lambda c: ["crop", E(c, "images"), c.data / "masks", "out"],
        lambda c: [red(c), "incomplete"],
        image_file(remove),
    ),
    Case(
        "resize float tiff",
        lambda c: ["resize", E(c, "images"), "out", "--size", "64"],
        lambda c: [str(channel(c, ext=".tif")), "float32"],
        image_file(float_tiff),
    ),
    Case(
        "resize corrupt tif.gz",
        lambda c: ["resize", E(c, "images"), "out", "--size", "64"],
        lambda c: [str(channel(c, ext=".tif.gz")), "gzip"],
        image_file(garbage_as(".tif.gz")),
    ),
    Case(
        "resize corrupt tif",
        lambda c: ["resize", E(c, "images"), "out", "--size", "64"],
        lambda c: [str(channel(c, ext=".tif")), "TIFF"],
        image_file(garbage_as(".tif")),
    ),
    Case(
        "resize 0-byte mask",
        lambda c: ["resize", E(c, "masks"), "out", "-s", "64", "--masks"],
        lambda c: [str(mask(c)), "0 bytes"],
        mask_file(empty),
    ),
    Case(
        "resize truncated mask",
        lambda c: ["resize", E(c, "masks"), "o", "-s", "64", "--masks"],
        lambda c: [str(mask(c)), "not a readable PNG"],
        mask_file(truncate),
    ),
    Case(
        "resize colour mask",
        lambda c: ["resize", E(c, "masks"), "out", "-s", "64", "--masks"],
        lambda c: [str(mask(c)), "single-channel"],
        mask_file(colour),
    ),
    Case(
        "crop mask of another size",
        lambda c: ["crop", E(c, "images"), E(c, "masks"), "out"],
        lambda c: [f"{FIRST}.png", E(c, "masks"), "64×64"],
        images_and_masks(small),
        subprocess=True,
    ),
    Case(
        "crop 0-byte mask",
        lambda c: ["crop", E(c, "images"), E(c, "masks"), "out"],
        lambda c: [str(mask(c)), "0 bytes"],
        images_and_masks(empty),
    ),
    Case(
        "crop truncated mask",
        lambda c: ["crop", E(c, "images"), E(c, "masks"), "out"],
        lambda c: [str(mask(c)), "not a readable PNG"],
        images_and_masks(truncate),
    ),
    Case(
        "crop colour mask",
        lambda c: ["crop", E(c, "images"), E(c, "masks"), "out"],
        lambda c: [str(mask(c)), "single-channel"],
        images_and_masks(colour),
    ),
    Case(
        "crop missing mask",
        lambda c: ["crop", E(c, "images"), E(c, "masks"), "out"],
        lambda c: [str(mask(c)), "mask not found"],
        images_and_masks(remove),
    ),
    Case(
        "crop no images",
        lambda c: ["crop", c.work / "empty", c.data / "masks", "out"],
        lambda c: [str(c.work / "empty"), "no images"],
        write("empty/readme.txt", "x"),
    ),
    Case(
        "resize no masks",
        lambda c: ["resize", c.data / "images", "o", "-s", "8", "--masks"],
        lambda c: [str(c.data / "images"), "no masks"],
    ),
    Case(
        "segment empty folder",
        lambda c: ["segment", c.work / "empty", "out"],
        lambda c: [str(c.work / "empty"), "no"],
        write("empty/readme.txt", "x"),
    ),
    Case(
        "resize missing folder",
        lambda c: ["resize", "nowhere", "out", "--size", "64"],
        lambda c: ["nowhere"],
    ),
    Case(
        "resize bad interpolation",
        lambda c: ["resize", c.data / "images", "o", "-s", "8", "--interpolation", "bicubic"],
        lambda c: ["--interpolation", "bicubic"],
    ),
    Case(
        "resize bad dtype",
        lambda c: ["resize", c.data / "images", "o", "-s", "8", "--dtype", "uint16"],
        lambda c: ["--dtype", "uint16"],
    ),
    Case(
        "resize bad shard",
        lambda c: ["resize", c.data / "images", "o", "-s", "8", "--shard", "5/2"],
        lambda c: ["5/2"],
    ),
    Case(
        "segment bad on-error",
        lambda c: ["segment", c.data / "images", "o", "--on-error", "maybe"],
        lambda c: ["--on-error", "maybe"],
    ),
    Case(
        "segment hpa-unet without weights",
        lambda c: ["segment", c.data / "images", "o", "-m", "hpa-unet"],
        lambda c: ["--nuclei-model"],
    ),
    Case(
        "segment device without hpa-unet",
        lambda c: ["segment", c.data / "images", "o", "--device", "cpu"],
        lambda c: ["--device", "hpa-unet"],
    ),
    Case(
        "segment unknown method",
        lambda c: ["segment", c.data / "images", "o", "-m", "magic"],
        lambda c: ["--method", "magic"],
    ),
]

ZIP_CASES = [
    Case(
        "resize corrupt zip",
        lambda c: ["resize", E(c, "bad.zip"), "out", "--size", "64"],
        lambda c: [E(c, "bad.zip"), "not a readable zip"],
        write("bad.zip", b"PK\x03\x04" * 50),
        subprocess=True,
    ),
    Case(
        "segment corrupt zip",
        lambda c: ["segment", E(c, "bad.zip"), "out"],
        lambda c: [E(c, "bad.zip"), "not a readable zip"],
        write("bad.zip", b"PK\x03\x04" * 50),
    ),
    Case(
        "crop corrupt mask zip",
        lambda c: ["crop", c.data / "images", E(c, "bad.zip"), "out"],
        lambda c: [E(c, "bad.zip"), "not a readable zip"],
        write("bad.zip", b"garbage" * 50),
    ),
    Case(
        "resize zip-slip names",
        lambda c: ["resize", "slip.zip", "out", "--size", "64"],
        lambda c: ["slip.zip", "no images"],
        zip_of_first_field("slip.zip", lambda ch: f"../evil_{ch}.png"),
    ),
    Case(
        "resize absolute names in zip",
        lambda c: ["resize", "abs.zip", "out", "--size", "64"],
        lambda c: ["abs.zip", "no images"],
        zip_of_first_field("abs.zip", lambda ch: f"/tmp/evil_{ch}.png"),
    ),
    Case(
        "resize missing zip member",
        lambda c: ["resize", "ok.zip/nosuch", "out", "-s", "64"],
        lambda c: ["ok.zip/nosuch", "no images"],
        zip_of_first_field("ok.zip", lambda ch: f"imgs/{FIRST}_{ch}.png"),
    ),
    Case(
        "resize zip in a zip",
        lambda c: ["resize", c.data / "images", "o.zip/i.zip/x", "-s", "8"],
        lambda c: ["o.zip/i.zip/x", "more than one .zip"],
    ),
    Case(
        "resize into a zip on a URL",
        lambda c: ["resize", c.data / "images", "memory://b/x.zip/out", "-s", "8"],
        lambda c: ["memory://b/x.zip", "read-only"],
    ),
    Case(
        "crop mask missing in zip",
        lambda c: ["crop", "ok.zip/imgs", "m.zip", "out"],
        lambda c: ["m.zip", "mask not found"],
        both(
            zip_of_first_field("ok.zip", lambda ch: f"imgs/{FIRST}_{ch}.png"),
            write("m.zip", zipfile_bytes({"other.png": b"x"})),
        ),
    ),
]


def csv_case(id_, content, names, subprocess_=False):
    return Case(
        id_,
        lambda c: ["folds", E(c, "t.csv"), "-o", "folds.csv", "--n-folds", "2"],
        lambda c: [E(c, "t.csv"), *names],
        write("t.csv", content),
        subprocess=subprocess_,
    )


def submission_csv(ids) -> str:
    rows = "".join(f"{i},128,128,0 1 eNoLAAAAAAE=\n" for i in ids)
    return "ID,ImageWidth,ImageHeight,PredictionString\n" + rows


TABLE_CASES = [
    csv_case("folds empty csv", "", ["empty"], subprocess_=True),
    csv_case("folds header only", "ID,Label\n", ["no fields"]),
    csv_case("folds bad header", "Name,Classes\na,1\nb,2\n", ["missing column"]),
    csv_case("folds label out of range", "ID,Label\na,1\nb,25\n", ["row 3"]),
    csv_case("folds label not a number", "ID,Label\na,1\nb,abc\n", ["row 3"]),
    csv_case("folds NaN label", "ID,Label\na,1\nb,nan\n", ["row 3"]),
    csv_case("folds empty label", "ID,Label\na,1\nb,\n", ["row 3"]),
    csv_case("folds duplicate IDs", "ID,Label\na,1\na,2\nb,3\n", ["duplicate", "'a'"]),
    csv_case("folds empty ID", "ID,Label\na,1\n,2\n", ["row 3", "empty ID"]),
    csv_case("folds too few fields", "ID,Label\na,1\n", ["1 fields"]),
    csv_case("folds binary file", b"\xff\xfe\x00\x81" * 40, ["not a readable CSV"]),
    Case(
        "folds missing table",
        lambda c: ["folds", "nothere.csv", "-o", "f.csv"],
        lambda c: ["nothere.csv", "not found"],
    ),
    Case(
        "evaluate no ID in common",
        lambda c: ["evaluate", "--solution", c.data / "solution.csv", "--submission", E(c, "s")],
        lambda c: [E(c, "s"), "no ID in common"],
        write("s", submission_csv(["x1", "x2"])),
        subprocess=True,
    ),
    Case(
        "evaluate empty submission",
        lambda c: ["evaluate", "--solution", c.data / "solution.csv", "--submission", E(c, "s")],
        lambda c: [E(c, "s"), "no ID in common"],
        write("s", submission_csv([])),
    ),
    Case(
        "evaluate solution bad header",
        lambda c: ["evaluate", "--solution", c.data / "train.csv", "--submission", E(c, "s")],
        lambda c: [str(c.data / "train.csv"), "header"],
        write("s", submission_csv(["x"])),
    ),
    Case(
        "evaluate missing submission",
        lambda c: ["evaluate", "--solution", c.data / "solution.csv", "--submission", "no.csv"],
        lambda c: ["no.csv"],
    ),
    Case(
        "evaluate bad mode",
        lambda c: ["evaluate", "--solution", "a", "--submission", "b", "--mode", "pixel"],
        lambda c: ["--mode", "pixel"],
    ),
    Case(
        "evaluate iou 0",
        lambda c: ["evaluate", "--solution", "a", "--submission", "b", "--iou", "0"],
        lambda c: ["--iou"],
    ),
    Case(
        "cells average not parquet",
        lambda c: ["cells", "average", E(c, "t.parquet"), "-o", "o"],
        lambda c: [E(c, "t.parquet")],
        write("t.parquet", "ID,Label\n"),
    ),
    Case(
        "cells average missing table",
        lambda c: ["cells", "average", "no.parquet", "-o", "o"],
        lambda c: ["no.parquet", "not found"],
    ),
    Case(
        "submit bad weights",
        lambda c: [
            "submit",
            "--masks",
            c.data / "masks",
            "--predictions",
            "p.parquet",
            "-o",
            "s.csv",
            "--weights",
            "1,x",
        ],
        lambda c: ["--weights", "1,x"],
    ),
    Case(
        "submission check bad rows",
        lambda c: ["submission", "check", E(c, "s")],
        lambda c: [E(c, "s"), "problem"],
        write("s", "ID,ImageWidth,ImageHeight,PredictionString\na,10,10,3 x\n"),
    ),
    Case(
        "train empty train.csv",
        lambda c: [
            "train",
            "image-level",
            TINY_CAM,
            f"data.root={E(c, 'd')}",
            "--run-dir",
            c.work / "run",
        ],
        lambda c: [str(c.extra["d"] / "train.csv"), "empty"],
        data_copy_with(lambda c, d: (d / "train.csv").write_text("")),
    ),
    Case(
        "train header-only train.csv",
        lambda c: [
            "train",
            "cell-level",
            TINY_CELL,
            f"data.root={E(c, 'd')}",
            "--run-dir",
            c.work / "run",
        ],
        lambda c: [str(c.extra["d"] / "train.csv"), "no fields"],
        data_copy_with(lambda c, d: (d / "train.csv").write_text("ID,Label\n")),
    ),
]


def train(cfg=TINY_CAM, *overrides, extra=()):
    return lambda c: [
        "train",
        "image-level" if cfg == TINY_CAM else "cell-level",
        cfg,
        f"data.root={c.data}",
        *overrides,
        "--run-dir",
        c.work / "run",
        *extra,
    ]


def config_file(text_):
    return write("c.yaml", text_)


def train_file(*extra):
    return lambda c: [
        "train",
        "image-level",
        E(c, "c.yaml"),
        f"data.root={c.data}",
        "--run-dir",
        c.work / "run",
        *extra,
    ]


CONFIG_CASES = [
    Case(
        "config unknown key in file",
        train_file(),
        lambda c: [E(c, "c.yaml"), "optim.lrr"],
        config_file("optim:\n  lrr: 0.1\n"),
    ),
    Case(
        "config unknown key override",
        train(TINY_CAM, "optim.lrr=1"),
        lambda c: ["optim.lrr", "did you mean"],
    ),
    Case(
        "config wrong type in file",
        train_file(),
        lambda c: [E(c, "c.yaml"), "optim.lr"],
        config_file("optim:\n  lr: fast\n"),
    ),
    Case(
        "config wrong type override",
        train(TINY_CAM, "optim.lr=fast"),
        lambda c: ["override 'optim.lr=fast'"],
        subprocess=True,
    ),
    Case(
        "config wrong type override int",
        train(TINY_CAM, "trainer.max_epochs=two"),
        lambda c: ["override 'trainer.max_epochs=two'"],
    ),
    Case(
        "config bad yaml",
        train_file(),
        lambda c: [E(c, "c.yaml"), "line 4, column 5"],
        config_file("name: x\nmodel:\n  arch: [a, b\ndata: {}\n"),
        subprocess=True,
    ),
    Case(
        "config yaml tab",
        train_file(),
        lambda c: [E(c, "c.yaml"), "line 2, column 1"],
        config_file("name: x\n\tmodel: 1\n"),
    ),
    Case(
        "config not a mapping",
        train_file(),
        lambda c: [E(c, "c.yaml"), "mapping"],
        config_file("- a\n- b\n"),
    ),
    Case(
        "config missing file",
        lambda c: ["train", "image-level", "nothere.yaml"],
        lambda c: ["nothere.yaml", "not found"],
    ),
    Case("override without =", train(TINY_CAM, "optim.lr"), lambda c: ["'optim.lr'", "key=value"]),
    Case(
        "max_epochs -3",
        train(TINY_CAM, "trainer.max_epochs=-3"),
        lambda c: ["trainer.max_epochs", "-3", ">= 1"],
        subprocess=True,
    ),
    Case(
        "cell max_epochs 0",
        train(TINY_CELL, "trainer.max_epochs=0"),
        lambda c: ["trainer.max_epochs", ">= 1"],
    ),
    Case(
        "arch nonexistent_net",
        train(TINY_CAM, "model.arch=nonexistent_net"),
        lambda c: ["model.arch", "nonexistent_net", "closest timm names"],
        subprocess=True,
    ),
    Case(
        "cell arch misspelt",
        train(TINY_CELL, "model.arch=resnet5O"),
        lambda c: ["model.arch", "resnet50"],
    ),
    Case(
        "batch_size 0", train(TINY_CAM, "data.batch_size=0"), lambda c: ["data.batch_size", ">= 1"]
    ),
    Case(
        "cell batch_size -1",
        train(TINY_CELL, "data.batch_size=-1"),
        lambda c: ["data.batch_size", ">= 1"],
    ),
    Case(
        "num_workers -1",
        train(TINY_CAM, "data.num_workers=-1"),
        lambda c: ["data.num_workers", ">= 0"],
    ),
    Case("hflip_p 1.5", train(TINY_CAM, "data.hflip_p=1.5"), lambda c: ["data.hflip_p", "[0, 1]"]),
    Case("lr 0", train(TINY_CAM, "optim.lr=0"), lambda c: ["optim.lr", "> 0"]),
    Case(
        "schedule linear",
        train(TINY_CAM, "optim.schedule=linear"),
        lambda c: ["optim.schedule", "linear"],
    ),
    Case(
        "unknown logger",
        train(TINY_CAM, "trainer.loggers=[csv,nope]"),
        lambda c: ["trainer.loggers", "nope"],
    ),
    Case("n_folds 1", train(TINY_CAM, "data.n_folds=1"), lambda c: ["data.n_folds", ">= 2"]),
    Case(
        "cell cutmix_p 2",
        train(TINY_CELL, "augment.cutmix_p=2"),
        lambda c: ["augment.cutmix_p", "[0, 1]"],
    ),
    Case("fold out of range", train(TINY_CAM, extra=["--fold", "7"]), lambda c: ["--fold", "7"]),
    Case(
        "recipe bad yaml",
        lambda c: ["run", E(c, "c.yaml"), "--dry-run"],
        lambda c: [E(c, "c.yaml"), "line 3"],
        config_file("name: r\nsteps: [\n"),
    ),
    Case("recipe missing", lambda c: ["run", "nothere.yaml"], lambda c: ["nothere.yaml"]),
]


def predict(c: Ctx, *extra):
    return [
        "predict",
        "image-level",
        E(c, "fold"),
        "--images",
        c.data / "images",
        "--masks",
        c.data / "masks",
        "-o",
        c.work / "p.parquet",
        *extra,
    ]


WEIGHT_CASES = [
    Case(
        "checkpoint truncated",
        lambda c: predict(c, "--checkpoint", E(c, "w")),
        lambda c: [E(c, "w"), "not a complete PyTorch checkpoint"],
        weight_file("truncated"),
        subprocess=True,
    ),
    Case(
        "checkpoint foreign pickle",
        lambda c: predict(c, "--checkpoint", E(c, "w")),
        lambda c: [E(c, "w")],
        weight_file("pickle"),
    ),
    Case(
        "checkpoint wrong keys",
        lambda c: predict(c, "--checkpoint", E(c, "w")),
        lambda c: [E(c, "w"), "does not fit"],
        weight_file("keys"),
    ),
    Case(
        "checkpoint text",
        lambda c: predict(c, "--checkpoint", E(c, "w")),
        lambda c: [E(c, "w")],
        weight_file("text"),
    ),
    Case(
        "checkpoint missing",
        lambda c: predict(c, "--checkpoint", "nothere.ckpt"),
        lambda c: ["nothere.ckpt", "not found"],
    ),
    Case(
        "resume truncated",
        train(TINY_CAM, extra=["--resume", "--fold", "0"]),
        lambda c: [E(c, "last"), "not a complete PyTorch checkpoint"],
        resume_from("truncated"),
        subprocess=True,
    ),
    Case(
        "resume foreign pickle",
        train(TINY_CELL, extra=["--resume", "--fold", "0"]),
        lambda c: [E(c, "last")],
        resume_from("pickle"),
    ),
    Case(
        "init_from truncated",
        lambda c: train(TINY_CAM, f"model.init_from={E(c, 'w')}", extra=["--fold", "0"])(c),
        lambda c: [E(c, "w")],
        weight_file("truncated"),
    ),
    Case(
        "hpa-unet weights truncated",
        lambda c: [
            "segment",
            c.data / "images",
            "out",
            "-m",
            "hpa-unet",
            "--nuclei-model",
            E(c, "w"),
            "--cell-model",
            E(c, "w"),
            "--device",
            "cpu",
        ],
        lambda c: [E(c, "w")],
        weight_file("truncated"),
    ),
]


def ro_disk(c: Ctx) -> None:
    _mount(c, "ro", "size=64k,ro")


def full_disk(c: Ctx) -> None:
    _mount(c, "full", "size=48k")


def _mount(c: Ctx, name: str, options: str) -> None:
    target = c.work / name
    target.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.decode().strip()}")
    _MOUNTS.append(target)
    c.extra[name] = target


def big_images(c: Ctx) -> None:
    from hpasc.synth import synthesize

    # noisier than the shared set, so that one field does not fit in 48 kB
    synthesize(c.work / "big", n_images=2, size=256, seed=1, progress=False)
    c.extra["big"] = c.work / "big"


DISK_CASES = [
    Case(
        "resize to read-only folder",
        lambda c: ["resize", c.data / "images", c.work / "ro" / "out", "-s", "64"],
        lambda c: [str(c.work / "ro" / "out"), "read-only"],
        ro_disk,
        subprocess=True,
    ),
    Case(
        "resize to read-only zip",
        lambda c: ["resize", c.data / "images", c.work / "ro" / "o.zip", "-s", "64"],
        lambda c: [str(c.work / "ro" / "o.zip"), "Read-only"],
        ro_disk,
    ),
    Case(
        "crop to read-only",
        lambda c: ["crop", c.data / "images", c.data / "masks", c.work / "ro" / "c"],
        lambda c: [str(c.work / "ro" / "c"), "Read-only"],
        ro_disk,
    ),
    Case(
        "segment to read-only",
        lambda c: ["segment", c.data / "images", c.work / "ro" / "m"],
        lambda c: [str(c.work / "ro" / "m"), "Read-only"],
        ro_disk,
    ),
    Case(
        "synth to read-only",
        lambda c: ["synth", c.work / "ro" / "s", "--size", "128", "-q"],
        lambda c: [str(c.work / "ro" / "s"), "Read-only"],
        ro_disk,
    ),
    Case(
        "folds to read-only",
        lambda c: ["folds", c.data / "train.csv", "-o", c.work / "ro" / "f.csv", "--n-folds", "2"],
        lambda c: [str(c.work / "ro"), "ead-only"],
        ro_disk,
    ),
    Case(
        "resize to full disk",
        lambda c: ["resize", E(c, "big") + "/images", c.work / "full" / "r", "-s", "256"],
        lambda c: [str(c.work / "full" / "r"), "No space"],
        both(big_images, full_disk),
        subprocess=True,
    ),
    Case(
        "resize zip to full disk",
        lambda c: ["resize", E(c, "big") + "/images", c.work / "full" / "r.zip", "-s", "256"],
        lambda c: [str(c.work / "full" / "r.zip"), "No space"],
        both(big_images, full_disk),
    ),
    Case(
        "crop to full disk",
        lambda c: [
            "crop",
            E(c, "big") + "/images",
            E(c, "big") + "/masks",
            c.work / "full" / "c",
            "-s",
            "96",
        ],
        lambda c: [str(c.work / "full" / "c"), "No space"],
        both(big_images, full_disk),
    ),
    Case(
        "synth to full disk",
        lambda c: ["synth", c.work / "full" / "s", "--size", "256", "-q"],
        lambda c: [str(c.work / "full"), "No space"],
        full_disk,
    ),
]

URL_CASES = [
    Case(
        "input unknown scheme",
        lambda c: ["resize", "nosuch://bucket/x", "out", "-s", "8"],
        lambda c: ["nosuch://bucket/x"],
        subprocess=True,
    ),
    Case(
        "output unknown scheme",
        lambda c: ["resize", c.data / "images", "nosuch://b/x", "-s", "8"],
        lambda c: ["nosuch://b/x"],
    ),
    Case(
        "segment unknown scheme",
        lambda c: ["segment", "nosuch://bucket/x", "out"],
        lambda c: ["nosuch://bucket/x"],
    ),
    Case(
        "input unreachable http",
        lambda c: [
            "resize",
            c.extra.setdefault("url", f"http://127.0.0.1:{closed_port()}/x"),
            "out",
            "-s",
            "8",
        ],
        lambda c: [E(c, "url"), "cannot reach"],
        subprocess=True,
    ),
    Case(
        "segment unreachable http",
        lambda c: [
            "segment",
            c.extra.setdefault("url", f"http://127.0.0.1:{closed_port()}/x"),
            "out",
        ],
        lambda c: [E(c, "url"), "cannot reach"],
    ),
    Case(
        "masks unreachable http",
        lambda c: [
            "crop",
            c.data / "images",
            c.extra.setdefault("url", f"http://127.0.0.1:{closed_port()}/m"),
            "out",
        ],
        lambda c: [E(c, "url")],
    ),
    Case(
        "relative file url",
        lambda c: ["resize", "file://imgs", "out", "-s", "8"],
        lambda c: ["file://imgs", "file:///abs/path"],
    ),
]

PUBLIC_HPA = "Image,Label_idx,in_trainset,Cellline\nhttps://h/1/1_A1_1,0,False,A-431\n"
URL_CASES += [
    Case(
        "import from unreachable server",
        lambda c: [
            "import",
            "public-hpa",
            E(c, "t.csv"),
            "out",
            "--retries",
            "0",
            "--no-progress",
            "--base-url",
            c.extra.setdefault("url", f"http://127.0.0.1:{closed_port()}"),
        ],
        lambda c: [E(c, "url") + "/1/1_A1_1_red.tif.gz", "Connection refused"],
        write("t.csv", PUBLIC_HPA),
    ),  # fmt: skip
]

CASES = IMAGE_CASES + ZIP_CASES + TABLE_CASES + CONFIG_CASES + WEIGHT_CASES + DISK_CASES + URL_CASES
SUBPROCESS = [c for c in CASES if c.subprocess]


@pytest.mark.parametrize("case", case_params(CASES))
def test_bad_input(case, ctx):
    line = check_case(case, ctx)
    assert "weights_only" not in line  # no torch advice to unpickle untrusted files


@pytest.mark.parametrize("case", case_params(SUBPROCESS))
def test_bad_input_in_a_fresh_process(case, ctx):
    check_case(case, ctx, subprocess=True)


def test_the_suite_is_as_large_as_promised():
    assert len(CASES) >= 100 and 12 <= len(SUBPROCESS) <= 25
    assert len({c.id for c in CASES}) == len(CASES)


def test_weights_download_from_unreachable_server(ctx, monkeypatch):
    url = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HPASC_WEIGHTS_URL", url)
    monkeypatch.setenv("HPASC_WEIGHTS_MANIFEST", "")
    case = Case("weights", lambda c: ["weights", "download", c.work / "w"],
                lambda c: [f"{url}/dpn_unet_nuclei_v1.pth", "Connection refused"])  # fmt: skip
    check_case(case, ctx)


def test_memory_output_warns_that_it_disappears(data):
    rc, out, err = run_in_process(["resize", data / "images", "memory://bad-inputs/x", "-s", "8"])
    assert rc == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "memory://bad-inputs/x" in warnings[0]
    assert "disappears" in warnings[0]


def test_no_libpng_noise_on_stderr(tmp_path, data):
    """A PNG with a malformed colour profile is read without libpng's warning on stderr."""
    import struct
    import zlib

    images = tmp_path / "imgs"
    shutil.copytree(data / "images", images)
    target = images / f"{FIRST}_red.png"
    raw = target.read_bytes()
    body = b"iCCP" + b"bad\0\0" + zlib.compress(b"\0" * 64)
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    target.write_bytes(raw[:33] + chunk + raw[33:])  # after IHDR
    proc = subprocess.run(
        [*_python(), "resize", str(images), str(tmp_path / "out"), "-s", "64", "--workers", "1"],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "libpng" not in proc.stderr and "iCCP" not in proc.stderr
    assert "WARN" not in proc.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 12


def _python():
    import sys

    return [sys.executable, "-m", "hpasc.cli"]


def _env():
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_colour_chunks_are_what_libpng_warned_about(capfd):
    """The check above is real: the same bytes through OpenCV directly print libpng's warning."""
    import struct
    import zlib

    import cv2

    from hpasc.io.images import _without_colour_chunks, encode_png

    raw = encode_png(np.zeros((8, 8), np.uint8))
    body = b"iCCP" + b"bad\0\0" + zlib.compress(b"\0" * 64)
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    bad = raw[:33] + chunk + raw[33:]
    assert _without_colour_chunks(bad) == raw
    capfd.readouterr()
    cv2.imdecode(np.frombuffer(bad, np.uint8), -1)
    assert "iCCP" in capfd.readouterr().err
    assert cv2.imdecode(np.frombuffer(_without_colour_chunks(bad), np.uint8), -1).shape == (8, 8)
    assert _without_colour_chunks(b"not a png") == b"not a png"
