"""Package the champion as a bento: its artifact into BentoML's model store, then `bentoml build`.

``python -m serving.bento`` (or ``recsys bento``) copies the registry champion's verified
artifact into the model store as ``recsys-champion`` (labelled with its registry version),
then builds ``bentofile.yaml``. A service started from the bento serves that model first
(``RECSYS_MODEL_SOURCE=bento``) and still follows the registry's champion afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import bentoml

from recsys import registry
from recsys.artifacts import MANIFEST_FILE, Artifact
from recsys.config import get_settings
from recsys.db.engine import create_engine

MODEL_NAME = "recsys-champion"
ROOT = Path(__file__).resolve().parents[1]


def save_champion(ref: int | str = registry.CHAMPION) -> str:
    """Copy a registered version's artifact into the model store; returns the model tag."""
    engine = create_engine(get_settings().database_url)
    try:
        artifact = registry.load_artifact(engine, ref)  # verified against the registry's hash
    finally:
        engine.dispose()
    labels = {"version": str(artifact.version), "family": artifact.family}
    keys = ("family", "version", "max_len", "num_items", "num_users", "item_map_digest")
    metadata = {key: artifact.config[key] for key in keys}
    metadata["onnx_sha256"] = artifact.manifest_sha256("model.onnx") or ""
    with bentoml.models.create(MODEL_NAME, labels=labels, metadata=metadata) as model:
        for name in (*artifact.files, MANIFEST_FILE):
            shutil.copy2(artifact.folder / name, Path(model.path) / name)
    return str(model.tag)


def stored_artifact() -> Artifact | None:
    """The artifact in the model store (the bento's own store when serving a bento), if any."""
    try:
        model = bentoml.models.get(f"{MODEL_NAME}:latest")
    except bentoml.exceptions.NotFound:
        return None
    return Artifact.load(Path(model.path))


def build(ref: int | str = registry.CHAMPION) -> dict[str, str]:
    model_tag = save_champion(ref)
    bento = bentoml.bentos.build_bentofile(str(ROOT / "bentofile.yaml"), build_ctx=str(ROOT))
    return {"model": model_tag, "bento": str(bento.tag)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="champion", help="registry version or alias")
    args = parser.parse_args()
    ref: int | str = int(args.version) if args.version.isdigit() else args.version
    print(json.dumps(build(ref)))


if __name__ == "__main__":
    main()
