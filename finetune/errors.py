"""The exceptions of the fine-tune package.

FinetuneError
├── LeaseLost      this worker no longer owns the job (its lease expired and the
│                  job was re-leased, or it ended): stop and write nothing more
├── JobCancelled   the job's owner asked to cancel it: stop, register nothing
└── DatasetError   the user's data cannot make a training set (too little, too
                   long, malformed): the job fails with this message
"""

from __future__ import annotations


class FinetuneError(Exception):
    """Base class of every error raised on purpose by ``finetune``."""


class LeaseLost(FinetuneError):
    """The job's lease is no longer this worker's; every write it attempts is refused."""


class JobCancelled(FinetuneError):
    """A cancel was requested while the job ran; it ends ``cancelled``."""


class DatasetError(FinetuneError):
    """The training data is unusable as it is; retrying will not help."""
