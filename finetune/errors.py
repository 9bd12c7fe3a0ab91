"""The exceptions of the fine-tune package.

FinetuneError
├── LeaseLost      this worker no longer owns the job (its lease expired and the
│                  job was re-leased, or it ended): stop and write nothing more
├── JobCancelled   the job's owner asked to cancel it: stop, register nothing
└── DatasetError   the user's data cannot make a training set (too little,
    │              malformed, nothing new): the job fails with this message, or
    │              is refused when queued (``finetune.admission``)
    └── ConversationTooLong   one conversation is longer than the base model
                   takes: the worker leaves it out and counts it
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


class ConversationTooLong(DatasetError):
    """One conversation has more tokens than the base model takes."""
