# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The method: backbones and the DHE regressor, patch matching, re-ranking with homography
refinement, and the Localizer (images in, ranked places with homographies out). No maps, no ROS."""
from .identity import ModelIdentity, model_identity
from .localizer import Candidate, Localizer, PlaceStore, QueryResult
from .models import VPRModel, build_model, load_checkpoint, save_checkpoint
from .rerank import DEFAULT_REFINE_ROUNDS, RERANKERS, Reranker, make_reranker

__all__ = ["Candidate", "DEFAULT_REFINE_ROUNDS", "Localizer", "ModelIdentity", "PlaceStore", "QueryResult",
           "RERANKERS", "Reranker", "VPRModel", "build_model", "load_checkpoint", "make_reranker", "model_identity",
           "save_checkpoint"]
