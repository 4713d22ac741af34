"""A trained generator on disk: one directory, written atomically, loaded with clear errors.

    config.json          GeneratorConfig, format version, catalogue size
    weights.safetensors  every parameter and buffer (item vectors and centroids included)
    lexical.npz          the lexical index (vocabulary, saturated term frequencies, length stats)
    codes.npz            level sizes, each item's code prefix, the residual centroids
    item_ids.npy         catalogue row -> item id

A directory that is missing a file, or whose files disagree, raises ``ValueError`` naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from onesearch_ray.catalogue.lexical import LexicalIndex
from onesearch_ray.config import parse_config
from onesearch_ray.generator.codes import CodeTree
from onesearch_ray.generator.config import GeneratorConfig
from onesearch_ray.generator.model import CodeItemGenerator
from onesearch_ray.io import atomic_dir, read_json, write_json

FORMAT_VERSION = 1
FILES = ("config.json", "weights.safetensors", "lexical.npz", "codes.npz", "item_ids.npy")


def save_generator(model: CodeItemGenerator, item_ids: np.ndarray, path: str | Path) -> Path:
    """Write the model to ``path`` (replacing what was there only once every file is written)."""
    item_ids = np.asarray(item_ids)
    if len(item_ids) != model.n_items:
        raise ValueError(f"{len(item_ids)} item ids for a model of {model.n_items} items")
    with atomic_dir(path) as tmp:
        write_json(
            tmp / "config.json",
            {"format": FORMAT_VERSION, "n_items": model.n_items, "config": model.config.to_dict()},
        )
        state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, str(tmp / "weights.safetensors"))
        np.savez(tmp / "lexical.npz", **model.lexical.to_arrays())
        codes = model.codes
        np.savez(
            tmp / "codes.npz",
            level_sizes=np.array(codes.level_sizes),
            item_codes=codes.item_codes,
            **{f"centroids_{level}": c for level, c in enumerate(codes.centroids)},
        )
        np.save(tmp / "item_ids.npy", item_ids)
    return Path(path)


def load_generator(path: str | Path) -> tuple[CodeItemGenerator, np.ndarray]:
    """The model saved at ``path`` and its catalogue's item ids (row order)."""
    path = Path(path)
    missing = [name for name in FILES if not (path / name).is_file()]
    if missing:
        raise ValueError(f"{path} is not a saved generator: missing {', '.join(missing)}")
    meta = read_json(path / "config.json")
    if meta.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{path / 'config.json'}: format {meta.get('format')!r}, this version reads {FORMAT_VERSION}"
        )
    config = parse_config(GeneratorConfig, meta["config"], str(path / "config.json"))
    config.validate()
    lexical = LexicalIndex.from_arrays(_arrays(path / "lexical.npz"))
    raw = _arrays(path / "codes.npz")
    level_sizes = tuple(int(s) for s in raw["level_sizes"])
    codes = CodeTree(
        level_sizes, raw["item_codes"], [raw[f"centroids_{level}"] for level in range(len(level_sizes))]
    )
    try:
        state = load_file(str(path / "weights.safetensors"))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path / 'weights.safetensors'}: unreadable weights ({err})") from err
    item_ids = np.load(path / "item_ids.npy", allow_pickle=False)
    n_items = int(meta["n_items"])
    if not len(item_ids) == len(codes.item_codes) == lexical.n_items == n_items:
        raise ValueError(f"{path}: item_ids, codes and lexical index disagree on the catalogue size")
    vectors = state.get("item_vectors")
    if vectors is None or vectors.shape[0] != n_items:
        raise ValueError(f"{path / 'weights.safetensors'}: no item vectors for {n_items} items")
    model = CodeItemGenerator(config, vectors.numpy(), codes, lexical)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path / 'weights.safetensors'}: weights do not fit the config ({err})") from err
    model.eval()
    return model, item_ids


def _arrays(file: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{file}: unreadable ({err})") from err
