"""The table of bad inputs for tests/test_bad_input.py, and the files they point at.

Each :class:`Case` is one command line a user could type, the words its error must contain (the
input it names) and whether it runs against a directory of earlier results that must survive.
``{w}`` in an argument is the world directory built by :func:`build_world`.
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

MARKER = "CODE_RAN"  # a file that appears only if code from a model folder ran


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    names: tuple[str, ...]
    """Substrings the error output must contain (the input it names), case-insensitive."""
    keep_out: bool = True
    """Append ``--out <copy of earlier results>`` and check nothing in it was lost."""
    force: bool = True
    """With ``keep_out``, append ``--force`` too: a rerun into an earlier run's directory with other
    settings must still lose nothing when it fails (False where the case is the run record itself)."""
    usage: bool = False
    """A click usage error: usage text allowed, exit code 2."""
    env: dict = field(default_factory=dict)
    run_json: str | None = None
    """Written as ``run.json`` into the earlier results first (a damaged run record)."""
    out_from: str = "earlier"
    """The world directory copied as ``--out`` (with ``keep_out``): an earlier run's, or a user's own files."""
    locked: bool = False
    """Another run holds the ``--out`` directory (its lock) while the command runs."""
    disk: int | None = None
    """Run on a fresh file system of this many bytes mounted at ``{d}`` (a private mount namespace:
    ``unshare -rm``; the case is skipped where the machine does not allow one)."""


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (a decompression bomb without the memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


class _Evil:
    """A pickle payload that would create the marker file when unpickled by a full unpickler."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').write('x')",))


def build_world(w: Path, organism_dir: Path | None) -> None:
    """Every file the cases point at."""
    from folders import write_shapes_images

    w.mkdir(parents=True, exist_ok=True)
    # a good image folder (12 images) and label files built from it
    imgs = w / "imgs"
    imgs.mkdir()
    ps, good = write_shapes_images(imgs, 12, seed=0, name="img_{i:02d}.png", photo=True)
    good["photo"] = good["photo"].astype(str)
    good.to_csv(imgs / "labels.csv", index=False)
    (imgs / "empty.csv").write_text("")
    (imgs / "header_only.csv").write_text(",".join(good.columns) + "\n")
    (imgs / "latin1.csv").write_bytes(good.assign(note="caf\xe9").to_csv(index=False).encode("latin-1"))
    (imgs / "binary.csv").write_bytes(bytes(range(256)) * 8)
    (imgs / "bad.jsonl").write_text('{"path": "img_00.png", "color": "red"\n{"path": \n')
    nulls = good.copy().astype(object)
    nulls.loc[1, "shape"] = None
    nulls.to_json(imgs / "nulls.jsonl", orient="records", lines=True)
    (imgs / "corrupt.parquet").write_bytes(b"PAR1" + b"\x00garbage" * 50 + b"PAR1")
    blank = good.copy()
    blank.loc[3, "color"] = ""
    blank.to_csv(imgs / "blank_cell.csv", index=False)
    for name, path in (("dotdot", "../outside.png"), ("absolute", str(w / "outside.png"))):
        t = good.copy()
        t.loc[2, "path"] = path
        t.to_csv(imgs / f"{name}.csv", index=False)
    ps.images[0].save(w / "outside.png")
    t = good.copy()
    t.loc[4, "path"] = "missing.png"
    t.to_csv(imgs / "missing_image.csv", index=False)
    (imgs / "not_image.png").write_bytes(b"this is not a png at all")
    t = good.copy()
    t.loc[5, "path"] = "not_image.png"
    t.to_csv(imgs / "not_image.csv", index=False)
    (imgs / "bomb.png").write_bytes(_png_header(20000, 20000))
    t = good.copy()
    t.loc[6, "path"] = "bomb.png"
    t.to_csv(imgs / "bomb.csv", index=False)
    shutil.copy(imgs / "img_00.png", imgs / "copy_of_00.png")
    t = good.copy()
    t.loc[len(t)] = {**good.iloc[0].to_dict(), "path": "copy_of_00.png",
                     "color": "blue" if good.loc[0, "color"] != "blue" else "red"}
    t.to_csv(imgs / "conflict.csv", index=False)
    (imgs / "labels.txt").write_text("path,color\n")
    (imgs / "labels_dir.csv").mkdir()
    # a `datasets` directory with a broken dataset_info.json
    ds = w / "broken_ds"
    ds.mkdir()
    (ds / "dataset_info.json").write_text("{not json")
    (ds / "state.json").write_text("{")
    # config files
    (w / "latin1.yaml").write_bytes("task: couleur\xe9\n".encode("latin-1"))
    (w / "syntax.yaml").write_text("task: [color\n")
    (w / "unknown_key.yaml").write_text("modle: organism\n")
    (w / "huge.yaml").write_text("samples: 100000000000\n")
    (w / "list.yaml").write_text("- a\n- b\n")
    (w / "conf_dir.yaml").mkdir()
    (w / "bad.toml").write_text("samples = [\n")
    # probe inputs
    rng = np.random.default_rng(0)
    np.save(w / "feats.npy", rng.normal(size=(12, 4)))
    np.save(w / "objects.npy", np.array([{"a": 1}] * 12, dtype=object), allow_pickle=True)
    (w / "corrupt.npz").write_bytes(b"PK\x03\x04garbage")
    nan = rng.normal(size=(12, 4))
    nan[3, 1] = np.nan
    np.save(w / "nan_feats.npy", nan)
    pd.DataFrame({"color": ["a", "b"] * 6}).to_csv(w / "plabels.csv", index=False)
    pd.DataFrame({"color": ["a", "b"] * 5}).to_csv(w / "plabels_short.csv", index=False)
    (w / "plabels_zero.csv").write_text("color\n")
    (w / "plabels_latin1.csv").write_bytes("color\nrouge\xe9\n".encode("latin-1") * 6)
    pd.DataFrame({"color": ["a", None] * 6}).to_csv(w / "plabels_nan.csv", index=False)
    np.save(w / "feats_zero.npy", np.zeros((0, 4)))
    (w / "afile").write_text("a file, not a directory")
    # model folders
    (w / "no_config").mkdir()
    (w / "garbage_config").mkdir()
    (w / "garbage_config" / "config.json").write_text("{{{ not json")
    (w / "latin1_config").mkdir()
    (w / "latin1_config" / "config.json").write_bytes('{"model_type": "llava\xe9"}'.encode("latin-1"))
    (w / "custom_code").mkdir()
    (w / "custom_code" / "config.json").write_text(json.dumps({
        "model_type": "evilnet", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}}))
    (w / "custom_code" / "evil.py").write_text(f"open({str(w / MARKER)!r}, 'w').write('custom code ran')\n")
    (w / "unknown_type").mkdir()
    (w / "unknown_type" / "config.json").write_text(json.dumps({"model_type": "no_such_architecture"}))
    from safetensors.numpy import save_file

    save_file({"w": np.zeros((2, 2), dtype=np.float32)}, str(w / "unknown_type" / "model.safetensors"))
    if organism_dir is not None:
        for name, weights in (("truncated_st", "truncate"), ("garbage_st", "garbage"), ("pickle_only", "pickle"),
                              ("evil_pickle", "evil")):
            d = w / name
            shutil.copytree(organism_dir, d, ignore=shutil.ignore_patterns("*.safetensors"))
            st = (organism_dir / "model.safetensors").read_bytes()
            if weights == "truncate":
                (d / "model.safetensors").write_bytes(st[: len(st) // 2])
            elif weights == "garbage":
                (d / "model.safetensors").write_bytes(b"\xff" * 4096)
            elif weights == "pickle":
                import torch
                from safetensors.torch import load_file

                torch.save(load_file(str(organism_dir / "model.safetensors")), d / "pytorch_model.bin")
            else:
                with open(d / "pytorch_model.bin", "wb") as fh:
                    pickle.dump(_Evil(str(w / MARKER)), fh)
    # earlier results that no failed run may lose (a directory of an earlier logitleak run: its run record)
    keep = w / "earlier"
    (keep / "cache" / "probes").mkdir(parents=True)
    (keep / "run.json").write_text(json.dumps({"written_by": "logitleak", "command": "audit", "status": "finished",
                                               "identity": {"model": "organism", "data": "shapes", "task": "color",
                                                            "seed": 0}}))
    (keep / "results.csv").write_text("level,accuracy\nresidual,0.9\n")
    (keep / "report.html").write_text("<html>earlier report</html>")
    (keep / "cache" / "probes" / "abc.parquet").write_bytes(b"PAR1 earlier probe results PAR1")
    build_data_world(w)


A = ("audit",)
ORG = ("--model", "organism")
FOLDER = ("--model", "organism", "--data", "{w}/imgs", "--task", "color")


def cases() -> list[Case]:
    c = Case
    table = [
        # ---- flags (click usage errors: usage text, exit 2)
        c("audit-typo-flag", A + ("--sampels", "3"), ("--sampels",), usage=True),
        c("audit-samples-not-int", A + ("--samples", "abc"), ("--samples",), usage=True),
        c("audit-samples-float", A + ("--samples", "1e11"), ("--samples",), usage=True),
        c("audit-no-such-command", ("audti",), ("audti",), keep_out=False, usage=True),
        c("defend-levels-not-a-flag", ("defend", "--levels", "residual"), ("--levels",), usage=True),
        c("probe-missing-required", ("probe", "--features", "{w}/feats.npy"), ("--labels",), usage=True),
        # ---- numbers and choices
        c("audit-samples-too-few", A + ("--samples", "5"), ("--samples", "5")),
        c("audit-samples-huge", A + ("--samples", "100000000000"), ("--samples",)),
        c("audit-seed-negative", A + ("--seed", "-1"), ("--seed", "-1")),
        c("audit-seed-huge", A + ("--seed", str(2**70)), ("--seed",)),
        c("audit-k-zero", A + ("--k", "0,5"), ("--k",)),
        c("audit-k-letters", A + ("--k", "a,b"), ("--k", "a,b")),
        c("audit-layers-letters", A + ("--layers", "one"), ("--layers", "one")),
        c("audit-layers-negative", A + ("--layers", "-3"), ("--layers",)),
        c("audit-levels-unknown", A + ("--levels", "residual,nope"), ("--levels", "nope")),
        c("audit-task-unknown", A + ("--task", "texture"), ("texture",)),
        c("audit-attribute-unknown", A + ("--attributes", "shape,texture"), ("texture",)),
        c("audit-device-unknown", A + ("--device", "tpu9"), ("--device", "tpu9")),
        c("audit-device-absent-gpu", A + ("--device", "cuda:99"), ("--device", "cuda:99")),
        c("audit-batch-size-zero", A + ("--batch-size", "0"), ("--batch-size",)),
        c("audit-shard-size-zero", A + ("--shard-size", "0"), ("--shard-size",)),
        c("audit-folds-one", A + ("--folds", "1"), ("--folds",)),
        c("audit-permutations-negative", A + ("--permutations", "-5"), ("--permutations",)),
        c("audit-probes-unknown", A + ("--probes", "linear,forest"), ("--probes",)),
        c("audit-probe-c-negative", A + ("--probe-c", "-1"), ("--probe-c",)),
        c("audit-mlp-levels-unknown", A + ("--mlp-levels", "nope"), ("--mlp-levels", "nope")),
        c("audit-image-level-on-text-set", A + ORG + ("--data", "personas", "--task", "capital", "--levels",
                                                     "residual,vision"), ("'vision'", "text only")),
        c("audit-lens-steps-zero", A + ("--lens-steps", "0"), ("--lens-steps",)),
        c("audit-concurrency-zero", A + ("--concurrency", "0"), ("--concurrency",)),
        c("audit-max-requests-zero", A + ("--max-requests", "0"), ("--max-requests",)),
        c("audit-dtype-unknown", A + ORG + ("--dtype", "float8"), ("float8",)),
        c("audit-endpoint-without-model", A + ("--endpoint", "http://127.0.0.1:9/v1"), ("--served-model",)),
        c("audit-endpoint-bad-url", A + ("--endpoint", "not a url", "--served-model", "x"), ("not a url",)),
        c("audit-api-key-env-unset", A + ("--endpoint", "http://127.0.0.1:9/v1", "--served-model", "x",
                                          "--api-key-env", "LOGITLEAK_FUZZ_UNSET"), ("LOGITLEAK_FUZZ_UNSET",)),
        # ---- config files
        c("config-missing", A + ("--config", "{w}/none.yaml"), ("none.yaml",)),
        c("config-directory", A + ("--config", "{w}/conf_dir.yaml"), ("conf_dir.yaml", "directory")),
        c("config-latin1", A + ("--config", "{w}/latin1.yaml"), ("latin1.yaml", "UTF-8")),
        c("config-yaml-syntax", A + ("--config", "{w}/syntax.yaml"), ("syntax.yaml",)),
        c("config-toml-syntax", A + ("--config", "{w}/bad.toml"), ("bad.toml",)),
        c("config-unknown-key", A + ("--config", "{w}/unknown_key.yaml"), ("modle",)),
        c("config-samples-huge", A + ("--config", "{w}/huge.yaml"), ("huge.yaml", "samples")),
        c("config-not-mapping", A + ("--config", "{w}/list.yaml"), ("list.yaml",)),
        c("config-flag-blamed-not-file", A + ("--config", "{w}/huge.yaml", "--samples", "5"), ("--samples",)),
        # ---- output directories
        c("out-under-file", A + ("--out", "{w}/afile/sub"), ("afile",), keep_out=False),
        c("out-is-file", A + ("--out", "{w}/afile"), ("afile",), keep_out=False),
        c("out-in-proc", A + ("--out", "/proc/logitleak-fuzz/out"), ("/proc/logitleak-fuzz",), keep_out=False),
        c("out-in-sys", A + ("--out", "/sys/logitleak-fuzz"), ("/sys/logitleak-fuzz",), keep_out=False),
        c("out-damaged-run-record", A, ("run.json", "damaged"), run_json='{"identity": {"model": ', force=False),
        # ---- probe sets and label files
        c("data-missing", A + ("--data", "{w}/nowhere"), ("nowhere",)),
        c("labels-empty", A + FOLDER + ("--labels", "{w}/imgs/empty.csv"), ("empty.csv", "empty")),
        c("labels-header-only", A + FOLDER + ("--labels", "{w}/imgs/header_only.csv"), ("no rows",)),
        c("labels-latin1", A + FOLDER + ("--labels", "{w}/imgs/latin1.csv"), ("latin1.csv", "UTF-8")),
        c("labels-binary", A + FOLDER + ("--labels", "{w}/imgs/binary.csv"), ("binary.csv",)),
        c("labels-bad-jsonl", A + FOLDER + ("--labels", "{w}/imgs/bad.jsonl"), ("bad.jsonl", "JSON")),
        c("labels-jsonl-nulls", A + FOLDER + ("--labels", "{w}/imgs/nulls.jsonl"), ("'shape'", "row 2")),
        c("labels-corrupt-parquet", A + FOLDER + ("--labels", "{w}/imgs/corrupt.parquet"), ("corrupt.parquet",)),
        c("labels-blank-cell", A + FOLDER + ("--labels", "{w}/imgs/blank_cell.csv"), ("'color'", "row 4")),
        c("labels-dotdot-path", A + FOLDER + ("--labels", "{w}/imgs/dotdot.csv"), ("../outside.png",
                                                                                  "--allow-outside-data")),
        c("labels-absolute-path", A + FOLDER + ("--labels", "{w}/imgs/absolute.csv"), ("outside.png",
                                                                                      "--allow-outside-data")),
        c("labels-missing-image", A + FOLDER + ("--labels", "{w}/imgs/missing_image.csv"), ("missing.png",)),
        c("labels-not-an-image", A + FOLDER + ("--labels", "{w}/imgs/not_image.csv"), ("not_image.png",)),
        c("labels-decompression-bomb", A + FOLDER + ("--labels", "{w}/imgs/bomb.csv"), ("bomb.png",)),
        c("labels-conflicting-duplicate", A + FOLDER + ("--labels", "{w}/imgs/conflict.csv"),
          ("row", "13", "copy_of_00.png")),
        c("labels-wrong-extension", A + FOLDER + ("--labels", "{w}/imgs/labels.txt"), ("labels.txt",)),
        c("labels-is-directory", A + FOLDER + ("--labels", "{w}/imgs/labels_dir.csv"), ("labels_dir.csv",)),
        c("labels-path-column-unknown", A + FOLDER + ("--path-column", "file"), ("'file'", "--path-column")),
        c("labels-group-column-unknown", A + FOLDER + ("--group-column", "album"), ("'album'",)),
        c("datasets-broken-json", A + ORG + ("--data", "{w}/broken_ds"), ("broken_ds",)),
        # ---- models
        c("model-missing", A + ("--model", "{w}/no_model"), ("no_model",)),
        c("model-is-file", A + ("--model", "{w}/afile"), ("afile",)),
        c("model-no-config", A + ("--model", "{w}/no_config"), ("no_config", "config.json")),
        c("model-garbage-config", A + ("--model", "{w}/garbage_config"), ("garbage_config", "not valid JSON")),
        c("model-latin1-config", A + ("--model", "{w}/latin1_config"), ("latin1_config", "UTF-8")),
        c("model-custom-code", A + ("--model", "{w}/custom_code"), ("custom_code", "code")),
        c("model-unknown-type", A + ("--model", "{w}/unknown_type"), ("no_such_architecture",)),
        c("model-truncated-safetensors", A + ("--model", "{w}/truncated_st"), ("model.safetensors",)),
        c("model-garbage-safetensors", A + ("--model", "{w}/garbage_st"), ("model.safetensors",)),
        c("model-pickle-only", A + ("--model", "{w}/pickle_only"), ("pytorch_model.bin", "--allow-pickle")),
        c("model-evil-pickle-allowed", A + ("--model", "{w}/evil_pickle", "--allow-pickle"),
          ("evil_pickle", "weights-only")),
        # ---- probe
        c("probe-features-missing", ("probe", "--features", "{w}/none.npy", "--labels", "{w}/plabels.csv"),
          ("none.npy",)),
        c("probe-features-extension", ("probe", "--features", "{w}/afile", "--labels", "{w}/plabels.csv"),
          ("afile",)),
        c("probe-features-corrupt-npz", ("probe", "--features", "{w}/corrupt.npz", "--labels", "{w}/plabels.csv"),
          ("corrupt.npz",)),
        c("probe-features-pickled-objects", ("probe", "--features", "{w}/objects.npy", "--labels",
                                             "{w}/plabels.csv"), ("objects.npy",)),
        c("probe-features-nan", ("probe", "--features", "{w}/nan_feats.npy", "--labels", "{w}/plabels.csv"),
          ("nan_feats", "NaN")),
        c("probe-zero-rows", ("probe", "--features", "{w}/feats_zero.npy", "--labels", "{w}/plabels_zero.csv"),
          ("plabels_zero.csv",)),
        c("probe-row-mismatch", ("probe", "--features", "{w}/feats.npy", "--labels", "{w}/plabels_short.csv"),
          ("plabels_short.csv",)),
        c("probe-labels-latin1", ("probe", "--features", "{w}/feats.npy", "--labels", "{w}/plabels_latin1.csv"),
          ("plabels_latin1.csv",)),
        c("probe-labels-empty-cells", ("probe", "--features", "{w}/feats.npy", "--labels", "{w}/plabels_nan.csv"),
          ("'color'",)),
        c("probe-task-unknown", ("probe", "--features", "{w}/feats.npy", "--labels", "{w}/plabels.csv",
                                 "--task", "shape"), ("--task", "shape")),
        c("probe-families-unknown", ("probe", "--features", "{w}/feats.npy", "--labels", "{w}/plabels.csv",
                                     "--probes", "forest"), ("--probes",)),
        c("probe-folds-one", ("probe", "--features", "{w}/feats.npy", "--labels", "{w}/plabels.csv",
                              "--folds", "1"), ("--folds",)),
        c("probe-seed-negative", ("probe", "--features", "{w}/feats.npy", "--labels", "{w}/plabels.csv",
                                  "--seed", "-2"), ("--seed",)),
        c("probe-device-absent", ("probe", "--features", "{w}/feats.npy", "--labels", "{w}/plabels.csv",
                                  "--device", "cuda:99"), ("cuda:99",)),
        c("probe-group-column-unknown", ("probe", "--features", "{w}/feats.npy", "--labels", "{w}/plabels.csv",
                                         "--group-column", "album"), ("album",)),
        c("probe-out-is-file", ("probe", "--features", "{w}/feats.npy", "--labels", "{w}/plabels.csv",
                                "--out", "{w}/afile"), ("afile",), keep_out=False),
        c("probe-out-in-proc", ("probe", "--features", "{w}/feats.npy", "--labels", "{w}/plabels.csv",
                                "--out", "/proc/logitleak-fuzz/p"), ("/proc/logitleak-fuzz",), keep_out=False),
        # ---- defend
        c("defend-grid-unknown", ("defend", "--defenses", "bogus:1"), ("bogus",)),
        c("defend-grid-bad-value", ("defend", "--defenses", "topk:abc"), ("abc",)),
        c("defend-max-loss-negative", ("defend", "--max-loss", "-1"), ("--max-loss",)),
        c("defend-samples-too-few", ("defend", "--samples", "5"), ("--samples",)),
        c("defend-pickle-model", ("defend", "--model", "{w}/pickle_only"), ("pytorch_model.bin",)),
        c("defend-bad-labels", ("defend",) + FOLDER + ("--labels", "{w}/imgs/latin1.csv"), ("latin1.csv",)),
        c("defend-out-under-file", ("defend", "--out", "{w}/afile/x"), ("afile",), keep_out=False),
        # ---- serve (fails before listening)
        c("serve-port-out-of-range", ("serve", "--port", "70000"), ("70000",), keep_out=False),
        c("serve-port-not-int", ("serve", "--port", "http"), ("--port",), keep_out=False, usage=True),
        c("serve-model-missing", ("serve", "--model", "{w}/no_model"), ("no_model",), keep_out=False),
        c("serve-pickle-model", ("serve", "--model", "{w}/pickle_only"), ("pytorch_model.bin", "--allow-pickle"),
          keep_out=False),
        c("serve-evil-pickle-allowed", ("serve", "--model", "{w}/evil_pickle", "--allow-pickle"),
          ("weights-only",), keep_out=False),
        c("serve-custom-code", ("serve", "--model", "{w}/custom_code"), ("custom_code",), keep_out=False),
        c("serve-defense-unknown", ("serve", "--defense", "bogus:1"), ("bogus",), keep_out=False),
        c("serve-api-key-env-unset", ("serve", "--api-key-env", "LOGITLEAK_FUZZ_UNSET"), ("LOGITLEAK_FUZZ_UNSET",),
          keep_out=False),
        c("serve-max-batch-zero", ("serve", "--max-batch", "0"), ("--max-batch",), keep_out=False, usage=True),
        c("serve-device-absent", ("serve", "--device", "cuda:99"), ("cuda:99",), keep_out=False),
        # ---- serve: the token rules (issue 21.6 / 22; its HTTP refusals are in test_server_fields.py)
        c("serve-defense-topk-over-vocabulary", ("serve", "--defense", "topk:100000"),
          ("topk:100000", "more alternatives than the vocabulary has"), keep_out=False),
        # ---- guard (fails before listening)
        c("guard-upstream-missing", ("guard",), ("--upstream",), keep_out=False, usage=True),
        c("guard-upstream-not-url", ("guard", "--upstream", "ftp:/nowhere"), ("ftp:/nowhere",), keep_out=False),
        c("guard-port-out-of-range", ("guard", "--upstream", "http://127.0.0.1:9/v1", "--port", "0"), ("0",),
          keep_out=False),
        c("guard-defense-unknown", ("guard", "--upstream", "http://127.0.0.1:9/v1", "--defense", "bogus:2"),
          ("bogus",), keep_out=False),
        # ---- organism
        c("organism-seed-negative", ("organism", "train", "--seed", "-1"), ("-1",), keep_out=False),
        c("organism-seed-letters", ("organism", "train", "--seed", "abc"), ("abc",), keep_out=False),
        c("organism-steps-zero", ("organism", "train", "--steps", "0", "--out", "{w}/org"), ("0",), keep_out=False),
        c("organism-out-is-file", ("organism", "train", "--out", "{w}/afile"), ("afile",), keep_out=False),
        c("organism-out-in-proc", ("organism", "train", "--out", "/proc/logitleak-fuzz/o"), ("/proc/logitleak-fuzz",),
          keep_out=False),
        c("organism-path-seed-letters", ("organism", "path", "--seed", "x1"), ("x1",), keep_out=False),
        c("organism-no-such-subcommand", ("organism", "trian"), ("trian",), keep_out=False, usage=True),
    ]
    table += data_cases()
    ids = [t.id for t in table]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return table


# ----------------------------------------------------------------------------- issue 21: data, files, inputs
# Text probe sets, label typing, bounded config files, output directories we do not own, a full disk,
# too many pixels (the `data` block; other blocks append their own cases above this line's function).


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def build_data_world(w: Path) -> None:
    """The files of :func:`data_cases`."""
    t = w / "text"
    t.mkdir()
    base = [{"prompt": f"Tell me about item {i}.", "z": "ab"[i % 2]} for i in range(12)]
    _jsonl(t / "conflict.jsonl", base + [{"prompt": "Tell me about item 0.", "z": "b"}])
    _jsonl(t / "mixed_numbers.jsonl", [{**r, "z": [1, 1.0, "1"][i % 3]} for i, r in enumerate(base)])
    _jsonl(t / "mixed_bools.jsonl", [{**r, "z": [True, "true", 1][i % 3]} for i, r in enumerate(base)])
    _jsonl(t / "nested_label.jsonl", [{**r, "z": [1, 2]} if i == 4 else r for i, r in enumerate(base)])
    _jsonl(t / "null_label.jsonl", [{**r, "z": None} if i == 1 else r for i, r in enumerate(base)])
    rows = "".join(f"Tell me about item {i}.,{'' if i == 1 else 'ab'[i % 2]}\n" for i in range(12))
    (t / "blank_label.csv").write_text("prompt,z\n" + rows)
    _jsonl(t / "both_columns.jsonl", [{**r, "messages": [{"role": "user", "content": "hi"}]} for r in base])
    _jsonl(t / "two_systems.jsonl", [{"messages": ([{"role": "system", "content": "T"}] if i == 1 else [])
                                      + [{"role": "user", "content": r["prompt"]}], "system": "S", "z": r["z"]}
                                     for i, r in enumerate(base)])
    (t / "duplicate_key.jsonl").write_text('{"prompt": "hi", "z": "a", "z": "b"}\n')
    _jsonl(t / "long_prompt.jsonl", [{**r, "prompt": "word " * 40_000} if i == 2 else r for i, r in enumerate(base)])
    deep = "[" * 2000 + "]" * 2000
    (t / "deep_cell.jsonl").write_text(f'{{"prompt": "hi", "z": {deep}}}\n')
    (t / "huge_int.jsonl").write_text('{"prompt": "hi", "z": ' + "9" * 5000 + "}\n")
    # config files past the bounds
    (w / "deep.yaml").write_text("k: " + "[" * 5000 + "]" * 5000 + "\n")
    (w / "deep.toml").write_text("k = " + "[" * 100_000 + "]" * 100_000 + "\n")
    (w / "digits.yaml").write_text("samples: " + "9" * 5000 + "\n")
    (w / "digits.toml").write_text("samples = " + "9" * 5000 + "\n")
    (w / "digits25.toml").write_text("[lens]\nsteps = " + "9" * 25 + "\n")
    (w / "dup_key.yaml").write_text("task: color\nseed: 1\ntask: shape\n")
    (w / "dup_key.toml").write_text("task = 'color'\ntask = 'shape'\n")
    (w / "alias.yaml").write_text("attributes: &a [shape, size]\nlevels: *a\n")
    (w / "big.yaml").write_text("# padding\n" * 200_000)
    # output directories that are not logitleak's
    foreign = w / "foreign"
    foreign.mkdir()
    (foreign / "results.csv").write_text("my,own\n1,2\n")
    (foreign / "report.html").write_text("<html>my own report</html>")
    (foreign / "results.json").write_text('{"mine": true}')
    not_ours = w / "not_ours"
    not_ours.mkdir()
    (not_ours / "run.json").write_text('{"tool": "another program", "results": [1, 2]}')
    (w / "link_out").symlink_to(foreign)
    linked = w / "linked_run"
    shutil.copytree(w / "earlier", linked)
    (linked / "cache" / "results.csv").symlink_to(foreign / "results.csv")
    # an image folder whose images together hold more pixels than a probe set may
    big = w / "bigimgs"
    big.mkdir()
    for i in range(60):
        (big / f"big_{i:02d}.png").write_bytes(_png_header(9000, 9000 + i))
    pd.DataFrame({"path": [f"big_{i:02d}.png" for i in range(60)], "color": ["red", "blue"] * 30}
                 ).to_csv(big / "labels.csv", index=False)


TXT = ("--model", "organism", "--task", "z", "--data")


def data_cases() -> list[Case]:
    c = Case
    return [
        # text probe sets: duplicates, label types, blank and null labels, ambiguous columns, prompt length
        c("text-conflicting-duplicate", A + TXT + ("{w}/text/conflict.jsonl",), ("Rows 1 and 13", "conflict.jsonl")),
        c("text-label-number-and-string", A + TXT + ("{w}/text/mixed_numbers.jsonl",),
          ("'z'", "mixed_numbers.jsonl", "mixes kinds", "row 3")),
        c("text-label-bool-and-string", A + TXT + ("{w}/text/mixed_bools.jsonl",), ("'z'", "true/false", "row 2")),
        c("text-label-nested", A + TXT + ("{w}/text/nested_label.jsonl",), ("'z'", "row 5", "not a single value")),
        c("text-label-null", A + TXT + ("{w}/text/null_label.jsonl",), ("'z'", "null_label.jsonl", "row 2")),
        c("text-label-blank-csv", A + TXT + ("{w}/text/blank_label.csv",), ("'z'", "blank_label.csv", "row 2")),
        c("text-prompt-and-messages", A + TXT + ("{w}/text/both_columns.jsonl",), ("both a 'prompt' and a 'messages'",)),
        c("text-system-twice", A + TXT + ("{w}/text/two_systems.jsonl",), ("Row 2", "system cell")),
        c("text-duplicate-key", A + TXT + ("{w}/text/duplicate_key.jsonl",), ("'z' twice", "line 1")),
        c("text-deep-cell", A + TXT + ("{w}/text/deep_cell.jsonl",), ("deep_cell.jsonl", "line 1")),
        c("text-huge-integer", A + TXT + ("{w}/text/huge_int.jsonl",), ("huge_int.jsonl", "4300 digits")),
        c("text-prompt-over-context", A + TXT + ("{w}/text/long_prompt.jsonl", "--probe-workers", "0"),
          ("Row 3", "long_prompt.jsonl", "context length")),
        # config files past the bounds
        c("config-deep-yaml", A + ("--config", "{w}/deep.yaml"), ("deep.yaml", "deeper than 16")),
        c("config-deep-toml", A + ("--config", "{w}/deep.toml"), ("deep.toml", "deeper")),
        c("config-integer-digits-yaml", A + ("--config", "{w}/digits.yaml"), ("digits.yaml", "5000 digits")),
        c("config-integer-digits-toml", A + ("--config", "{w}/digits.toml"), ("digits.toml", "19 digits")),
        c("config-integer-25-digits", A + ("--config", "{w}/digits25.toml"), ("digits25.toml", "lens.steps")),
        c("config-duplicate-key-yaml", A + ("--config", "{w}/dup_key.yaml"), ("'task' twice", "lines 1 and 3")),
        c("config-duplicate-key-toml", A + ("--config", "{w}/dup_key.toml"), ("dup_key.toml", "key twice")),
        c("config-alias", A + ("--config", "{w}/alias.yaml"), ("alias.yaml", "alias")),
        c("config-too-large", A + ("--config", "{w}/big.yaml"), ("big.yaml", "1,048,576")),
        # output directories that are not logitleak's, or held by another run
        c("out-foreign-files", A, ("did not write", "results.csv"), out_from="foreign"),
        c("out-foreign-run-json", A, ("run.json that logitleak did not write",), out_from="not_ours"),
        c("out-symlink", A + ("--out", "{w}/link_out", "--force"), ("link_out", "symbolic link"), keep_out=False),
        c("out-symlink-inside", A + ("--out", "{w}/linked_run"), ("symbolic link", "results.csv"), keep_out=False),
        c("out-held-by-another-run", A + ("--samples", "20"), ("in use by another logitleak run",), locked=True),
        c("defend-out-foreign-files", ("defend",), ("did not write",), out_from="foreign"),
        c("probe-out-foreign-files", ("probe", "--features", "{w}/feats.npy", "--labels", "{w}/plabels.csv"),
          ("did not write",), out_from="foreign"),
        c("probe-out-held-by-another-run", ("probe", "--features", "{w}/feats.npy", "--labels", "{w}/plabels.csv"),
          ("in use",), locked=True),
        # a disk too small for the capture, and images holding too many pixels
        c("disk-too-small-for-capture", A + ORG + ("--samples", "200", "--probe-workers", "0", "--out", "{d}/out"),
          ("needs about", "bytes", "{d}/out"), keep_out=False, disk=256 * 1024),
        c("images-too-many-pixels", A + ORG + ("--data", "{w}/bigimgs", "--task", "color"),
          ("labels.csv", "4,294,967,296", "--samples")),
    ]
