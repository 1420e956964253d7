"""The ``datasets`` builder that assembles per-recording window shards into one dataset.

Kept in its own module without file-system helpers: ``datasets`` patches the globals of the
module defining a builder (``open``, ``Path``, ``os.path``) for streaming, and nothing else here
must be affected by that.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets

from .recording_job import is_complete, process_recording_to_shard
from .shards import iter_shard_rows, window_features


@dataclass
class MEGDatasetConfig(datasets.BuilderConfig):
    """Options of :class:`MEGWindowsBuilder`.

    Attributes
    ----------
    jobs : tuple of dict
        One job per recording (see :func:`process_recording_to_shard`), in output order.
    window_samples : int
        Samples per window (fixes the ``input_values`` shape).
    """

    jobs: tuple = ()
    window_samples: int = 1000
    description: str | None = field(
        default="Preprocessed, anonymized MEG windows (one row per window)."
    )


class MEGWindowsBuilder(datasets.GeneratorBasedBuilder):
    """Assemble per-recording window shards into one dataset.

    Recordings whose shard is missing or incomplete are processed first (in this process), so
    the builder also works on its own; :func:`build_dataset` processes them in parallel
    beforehand. Keys are ``Key(recording index, window index)``: rebuilding gives the same rows in
    the same order.
    """

    BUILDER_CONFIG_CLASS = MEGDatasetConfig
    DEFAULT_WRITER_BATCH_SIZE = 64

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=self.config.description,
            features=window_features(self.config.window_samples),
        )

    def _split_generators(self, dl_manager: Any) -> list[datasets.SplitGenerator]:
        return [
            datasets.SplitGenerator(
                name=datasets.Split.TRAIN, gen_kwargs={"jobs": list(self.config.jobs)}
            )
        ]

    def _generate_examples(self, jobs: Sequence[Mapping[str, Any]]):
        for job_index, job in enumerate(jobs):
            if not is_complete(job):
                status = process_recording_to_shard(job)
                if status["status"] != "done":
                    continue
            for window_index, row in enumerate(iter_shard_rows(job["shard"])):
                yield datasets.builder.Key(job_index, window_index), row


__all__ = ["MEGDatasetConfig", "MEGWindowsBuilder"]
