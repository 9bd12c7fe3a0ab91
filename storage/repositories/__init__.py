"""Repositories: typed, keyword-only access to the tables, one class per aggregate.

Each takes an open ``Session``; the caller decides the transaction
(``with database.session() as s:``), so several repositories can change
rows together atomically.
"""

from storage.repositories.adapters import AdapterRepository
from storage.repositories.admin_sessions import AdminSessionRepository
from storage.repositories.api_keys import ApiKeyRepository, generate_api_key, hash_api_key
from storage.repositories.base_models import BaseModelRepository
from storage.repositories.examples import ExampleRepository
from storage.repositories.feedback import FeedbackForRouting, FeedbackRepository
from storage.repositories.jobs import JobRepository
from storage.repositories.responses import ResponseRepository
from storage.repositories.routing import GLOBAL_SCOPE, RoutingRatingRepository, user_scope
from storage.repositories.training_files import TrainingFileRepository
from storage.repositories.users import UserRepository

__all__ = [
    "GLOBAL_SCOPE",
    "AdapterRepository",
    "AdminSessionRepository",
    "ApiKeyRepository",
    "BaseModelRepository",
    "ExampleRepository",
    "FeedbackForRouting",
    "FeedbackRepository",
    "JobRepository",
    "ResponseRepository",
    "RoutingRatingRepository",
    "TrainingFileRepository",
    "UserRepository",
    "generate_api_key",
    "hash_api_key",
    "user_scope",
]
