"""Released golden files never change: each one's SHA-256, pinned here by hand, not read from
formats/vectors/*.json (which the generators extend). A file that is regenerated, re-encoded or
edited fails here even if its digests file was updated with it."""
import hashlib
import json
import pathlib

import pytest

VECTORS = pathlib.Path(__file__).resolve().parents[1] / "formats" / "vectors"

FIRST_RELEASE = {  # format 1.0: the core files and the first uniform / model codec files
    "dense.perm": "a7f1c951c9d04eeab96a701e622ffeb3bb5f14b5f8c3039876bfdee7233ce50a",
    "mixed.perm": "29d260cfc928e28b607ca590d28f9f99151cf21c9e066517e619ba2d4b34c0e5",
    "normal.perm": "939255cc4794f1601b1e2c59bf7f892dfa7b7765b56b923e9e5f4f76192a13f2",
    "pruned50.perm": "a43f15aacb31cc386e84680c70a7564641f885a6e468824048776ed4e9c1c227",
    "pruned90.perm": "c6db3b185f11f5a18c46fd1e75ce018d852af648f76ffc6f4203d5bb2f4ee1b4",
    "raw_only.perm": "4a236681866240befa45b7ef2fc84d2fab8c6d10eb20b5b608cbd892f501cd61",
    "tiny.perm": "20d775aaa933032dd0d718ec922918fce5a57a39e8335d7365e0dfc8427f34ac",
    "weight_agnostic.perm": "15c7f3d60733ced3b9ca5bf476a20c2503b2720d4cadcca88c682b5397b4d235",
    "codec_model_dense.perm": "0c4246abf1bd194e1b34bdd33950106c66e37332f30c07e09d38b5551854d35f",
    "codec_model_mixed.perm": "43e7549e722f46f7e0ab8465a47addf3fc8cddac3968e48e5c24af7d8f359276",
    "codec_model_near.perm": "e5dec94811f29869bf37bb928dbe551f4bff46cf8a3871f2c3a74e48d394dc5a",
    "codec_model_pruned90.perm": "ae2fd018868a62ffb73661db61c60a6b6c5691c4f21752670f73756c5e009a88",
    "codec_model_tiny.perm": "9eb20983119639db5ee81511a24f0e79829598d49bbd76ff2c53a5f6f152de9d",
    "codec_model_weight_agnostic.perm": "1b814968ad7c3cc65561226ad5cda526b7eb5fd9fa22c350b1f173c469afd26a",
    "codec_uniform_dense.perm": "530ba240b6119aa8248d8a73cb7b0fe349d85b36ddb23da7856fcac15dae78a4",
    "codec_uniform_mixed.perm": "5c1e42c5fd27d50cb62f45c2d1427fd23e971bc5d63697cb97b623dc214cb706",
    "codec_uniform_near.perm": "cf73183f3d551f1830792b80bfae76f404156dfaa2bd20b58fefaec1d1d53517",
    "codec_uniform_pruned90.perm": "e0ee47f99dd20cf5fd7f3415a39d019eb9c3da081dd9fe8f52d9fb851d644672",
    "codec_uniform_tiny.perm": "031f562f54520e70d1a64ac666d93124e0c314aa6ce83b9d0b6310ff0b6cc313",
    "codec_uniform_weight_agnostic.perm": "a5a16643971c5a0872ff0073209a516ecfe01b14a9983505a4d274bc2ef11bf6",
}
CODEC_PATHS = {  # packed, multi-lane / multi-segment rANS, model contexts (issue 17)
    "codec_model_contexts.perm": "7da7394f4129d7143e045f8e9bcb6044196c37368dc70ec8590a7dca8a944436",
    "codec_model_lanes.perm": "be12a1b3a09d7445ad1ed0cb66683d8f040b5031de10b5293314ba52ecb7dcb8",
    "codec_packed_dense.perm": "93ad45196b0a7b09574de8076f0ed2ea149b30e8cf67d36f166158fc68196296",
    "codec_packed_mixed.perm": "882d3b02c45999cb3905d4a997d3054a3ff2595a3ceee7a705ba1a9a6acf1e1c",
    "codec_packed_pruned90.perm": "26463e457f737e4269eb9b3be9ef269bdca5eab870aa82624195c1876b3efd8e",
    "codec_packed_seq.perm": "5f88e1a2028589e20846fe1fb416ed22b77110b05b2f1f56961d9cc038fdb297",
    "codec_packed_weight_agnostic.perm": "b15faf544cd02acd8d857dbaa119807060b5305e90b63493e21e160088a5c9ce",
    "codec_uniform_lanes.perm": "7833abd0632fc52c74c1485ac80ad9d72c70ecc34a3fc273107cf6130a38a0dc",
}
SHARDED_SAVE = {  # SPEC §16: an index and its shards, with the shard map (save id)
    "sharded/model-00001-of-00004.perm": "d43bcb7e8196e304209844914c3323db49671fd7b8b7022e43211cc5c938b630",
    "sharded/model-00002-of-00004.perm": "ce3ea67721f1442aae9b1261539ad4e87f4b16090c8ffb701022e098b0b2e395",
    "sharded/model-00003-of-00004.perm": "16e85b02bd6287179093f8ea1ff30402b2d59d993a1d4a79734abe3052f92305",
    "sharded/model-00004-of-00004.perm": "ffb1cdd0c88ed13ca3ae71327c18207d31236c6cb37367c49e1ea52d8216d9f7",
    "sharded/model.perm.index.json": "e7e635cd99a623f9d01b088ac42816514d0f8298b5fd1e04d39be65624b9791f",
}
RELEASED = {**FIRST_RELEASE, **CODEC_PATHS, **SHARDED_SAVE}


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_bytes_unchanged(name):
    assert hashlib.sha256((VECTORS / name).read_bytes()).hexdigest() == RELEASED[name]


def test_every_golden_file_is_pinned():
    """A golden file listed in a digests file must be pinned here once it is released."""
    listed = {n for index in ("digests.json", "codec_digests.json") for n in json.loads((VECTORS / index).read_text())}
    for index, known in json.loads((VECTORS / "sharded_digests.json").read_text()).items():
        listed |= {f"sharded/{n}" for n in [index, *known["shards"]]}
    assert len(FIRST_RELEASE) == 20 and listed == set(RELEASED)
