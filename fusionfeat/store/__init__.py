"""The feature store: one self-describing HDF5 file per dataset (schema in docs/store.md).

Writing is crash-safe by construction: extraction commits each batch as its own small file in
``<store>.partial/`` (written to a temporary name, fsynced, renamed; see ``partial``), and the HDF5 file is
assembled from them only at the end, under a temporary name that is renamed into place (``schema``). A killed
run therefore never leaves a half-written HDF5 file, and a rerun picks up every committed batch. Later changes
to a finished store (fine-tuned features) go through ``rewrite``, which works on a copy and swaps it in
atomically. ``reader`` opens finished stores; ``chunks`` compresses token maps as HDF5's filters would.
"""

from fusionfeat.store.partial import PartialStore, is_own_partial, partial_dir, read_settings, store_lock
from fusionfeat.store.reader import FeatureStore, is_own_store, verify_checksums
from fusionfeat.store.schema import (
    SCHEMA_VERSION,
    STR_DTYPE,
    FoldPlan,
    create_feature_datasets,
    create_store_file,
    dataset_sha256,
    decode_attr,
    feature_datasets,
    finetuned_fold_group,
    finish_store,
    now_iso,
    record_checksums,
    rewrite,
    write_finetuned_features,
    write_fold_plan,
)

__all__ = [
    "SCHEMA_VERSION", "STR_DTYPE", "FeatureStore", "FoldPlan", "PartialStore", "create_feature_datasets",
    "create_store_file", "is_own_partial", "is_own_store", "dataset_sha256", "decode_attr", "feature_datasets",
    "finetuned_fold_group",
    "finish_store", "now_iso", "partial_dir", "read_settings", "record_checksums", "rewrite", "store_lock",
    "verify_checksums", "write_finetuned_features", "write_fold_plan",
]
